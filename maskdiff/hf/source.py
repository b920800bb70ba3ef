"""The model source of ``maskdiff fit-pots --hf`` and ``maskdiff decompose --hf``."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskdiff.core.batch import Batch
from maskdiff.hf.adapter import HFAdapter
from maskdiff.hf.loading import load_hf_model
from maskdiff.data.jsonl import read_json_lines
from maskdiff.hf.collate import encode_row, hf_batch


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
                   device: str = "cpu", **load_options: Any) -> HFSource:
    """A HF model plus the rows of a JSONL file (``{"text"}``, ``{"prompt", "response"}`` or
    ``{"messages"}`` per line; see :func:`encode_row`). A malformed line names file and line.
    ``load_options``: more :func:`load_hf_model` keywords (``attention``, ``auto_class``, ...)."""
    numbered = read_numbered_rows(data)
    model, tokenizer, mask_id = load_hf_model(name_or_path, mask_token_id=mask_token_id,
                                              trust_remote_code=trust_remote_code,
                                              logit_shift=logit_shift, device=device,
                                              **load_options)
    check_context(tokenizer, numbered, context_limit(model), data, str(name_or_path))
    return HFSource(model=model, tokenizer=tokenizer, mask_token_id=mask_id,
                    rows=[row for _, row in numbered], name=str(name_or_path))


def read_numbered_rows(data: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line number, row)`` of the JSON-object rows of a JSONL file; a malformed line (not
    UTF-8, not JSON, not an object) names file and line (:func:`maskdiff.data.jsonl.read_json_lines`)."""
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {path}: no such file")
    return read_json_lines(path)


def check_context(tokenizer: Any, numbered: list[tuple[int, dict]], limit: int | None,
                  data: str | os.PathLike, model: str) -> None:
    """Refuse rows longer than the model's context (``max_position_embeddings``) with one
    line naming the file, the line and the length, before a model sees them: a longer row
    would fail deep inside the model with a tensor-size error, and cutting it would score a
    different text. The count of further long rows is given too."""
    if limit is None:
        return
    long = [(number, len(encode_row(tokenizer, row)["input_ids"])) for number, row in numbered]
    long = [(number, n) for number, n in long if n > limit]
    if long:
        number, n = long[0]
        more = f" ({len(long) - 1} more rows are too long)" if len(long) > 1 else ""
        raise ValueError(f"{data}:{number}: the row is {n} tokens, longer than the {limit}-token "
                         f"context of {model} (max_position_embeddings){more}; shorten or "
                         f"drop it")


def context_limit(adapter: Any) -> int | None:
    """The longest sequence a HF model takes (its config's ``max_position_embeddings``)."""
    limit = getattr(getattr(getattr(adapter, "model", adapter), "config", None),
                    "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None
