"""The model source of ``maskdiff fit-pots --hf`` and ``maskdiff decompose --hf``."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskdiff.core.batch import Batch
from maskdiff.hf.adapter import HFAdapter
from maskdiff.hf.loading import load_hf_model
from maskdiff.hf.collate import hf_batch


# ----------------------------------------------------------------------------- CLI model source
@dataclass
class HFSource:
    """A HF model and the rows it is probed on, for ``maskdiff fit-pots`` / ``decompose``."""

    model: HFAdapter
    tokenizer: Any
    mask_token_id: int
    rows: list[dict]
    name: str

    def batch(self, n: int) -> Batch:
        if not 1 <= n:
            raise ValueError(f"need at least one example, got n={n}")
        batch = hf_batch(self.tokenizer, self.rows[:n])
        return dataclasses.replace(batch, eligible=self.model.options.eligible(batch.eligible))


def load_hf_source(name_or_path: str, data: str | os.PathLike, *, mask_token_id: int | None = None,
                   trust_remote_code: bool = False, logit_shift: int | None = None,
                   device: str = "cpu") -> HFSource:
    """A HF model plus the rows of a JSONL file (``{"text"}``, ``{"prompt", "response"}`` or
    ``{"messages"}`` per line; see :func:`encode_row`). A malformed line names file and line."""
    rows = read_rows(data)
    model, tokenizer, mask_id = load_hf_model(name_or_path, mask_token_id=mask_token_id,
                                              trust_remote_code=trust_remote_code,
                                              logit_shift=logit_shift, device=device)
    return HFSource(model=model, tokenizer=tokenizer, mask_token_id=mask_id, rows=rows,
                    name=str(name_or_path))


def read_rows(data: str | os.PathLike) -> list[dict]:
    """The JSON-object rows of a JSONL file; a malformed line names file and line."""
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
