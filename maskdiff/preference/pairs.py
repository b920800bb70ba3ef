"""Preference pairs: JSONL rows ``{"prompt", "chosen", "rejected"}`` (docs/method.md §13).

Every problem with a row (bad JSON, a missing or non-string field, an empty response, unknown
keys, a response that does not fit the run's ``max_len``) is one ValueError naming the file and
line. Pair ``i`` becomes two examples of the run's collator: the chosen response with example
index ``2i`` and the rejected one with ``2i + 1`` (the indices key their ELBO draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maskdiff.core.batch import Batch
from maskdiff.data.collate import Collator
from maskdiff.data.examples import Example
from maskdiff.data.jsonl import read_json_lines

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    line: int = 0


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """The pairs of a JSONL file; a bad row is a ValueError naming ``path:line``."""
    path = Path(path)
    pairs = []
    for line, row in read_json_lines(path):
        where = f"{path}:{line}"
        for key in FIELDS:
            if key not in row:
                raise ValueError(f"{where}: missing key {key!r} (a row is "
                                 f'{{"prompt", "chosen", "rejected"}}; got {sorted(row)})')
            if not isinstance(row[key], str):
                raise ValueError(f"{where}: {key!r} must be a string, got "
                                 f"{type(row[key]).__name__}")
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        for key in ("chosen", "rejected"):
            if not row[key].strip():
                raise ValueError(f"{where}: {key!r} is empty")
        pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"], line))
    return pairs


def check_pairs_fit(pairs: Sequence[PreferencePair], collate: Collator, path: str | Path) -> None:
    """Refuse, naming ``path:line``, a pair whose prompt and response do not fit the collator
    (``max_len``, unknown characters): DPO never trains on a silently truncated response."""
    for i, pair in enumerate(pairs):
        for role, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            try:
                encoded = collate.encode(2 * i, Example(pair.prompt, response))
            except ValueError as err:
                raise ValueError(f"{path}:{pair.line}: {role}: {err}") from None
            if encoded.truncated:
                raise ValueError(f"{path}:{pair.line}: {role}: prompt + response have more "
                                 f"than max_len={collate.config.max_len} tokens")


def pair_batches(pairs: Sequence[PreferencePair], indices: Sequence[int],
                 collate: Collator) -> tuple[Batch, Batch]:
    """The chosen and the rejected responses of pairs ``indices`` as two batches (example
    indices ``2i`` and ``2i + 1``)."""
    chosen = collate([(2 * i, Example(pairs[i].prompt, pairs[i].chosen)) for i in indices])
    rejected = collate([(2 * i + 1, Example(pairs[i].prompt, pairs[i].rejected))
                        for i in indices])
    return chosen, rejected
