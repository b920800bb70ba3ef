"""A leak-free validation split of one data file, with its repeated rows counted.

A file can repeat rows (a scrape, a concatenation, deliberate up-weighting). Training keeps
every row with its copies, as the file weights them; validation never holds a row that is also
trained on:

* without a validation file (:func:`holdout`), the last ``fraction`` of the *distinct* rows (in
  order of first appearance, at least ``minimum``) is held out: each once, and none of their
  copies stays in training;
* with one (:func:`separate`), validation rows that also occur in training are dropped from
  validation, and repeats inside the validation file are kept once.

Both say what they did in :class:`Split` (``notes()``: one line, or None when nothing repeats),
which a run prints once and records in ``results.json`` (``"duplicates"``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

HOLDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Split:
    """Training rows (copies kept), validation rows (distinct, none trained on), and counts."""

    train: list
    val: list
    counts: dict[str, int] = field(default_factory=dict)

    def notes(self, where: str) -> str | None:
        """One line about repeated rows (what was kept, dropped), or None when none repeat."""
        c = self.counts
        parts = []
        if c.get("train_repeats"):
            parts.append(f"{c['train_repeats']} of {c['train_rows']} training rows repeat an "
                         f"earlier row (kept in training, weighted as the file repeats them)")
        if c.get("val_repeats"):
            parts.append(f"{c['val_repeats']} repeated validation rows kept once")
        if c.get("val_in_train"):
            parts.append(f"{c['val_in_train']} validation rows that also occur in training "
                         f"dropped from validation")
        if not parts:
            return None
        return (f"{where}: " + "; ".join(parts)
                + f"; the validation split holds {len(self.val)} distinct rows, none trained on")


def _first_copies(rows: Sequence, key: Callable[[Any], Hashable]) -> dict:
    first: dict = {}
    for row in rows:
        first.setdefault(key(row), row)
    return first  # insertion-ordered: by first appearance


def holdout(rows: Sequence, *, key: Callable[[Any], Hashable] = lambda r: r,
            fraction: float = HOLDOUT_FRACTION, minimum: int = 1, where: str = "data") -> Split:
    """Hold out the last ``fraction`` of the distinct rows (at least ``minimum``) as validation.
    Without repeats this is the last ``max(minimum, int(len(rows) * fraction))`` rows."""
    first = _first_copies(rows, key)
    if len(first) < minimum + 1:
        repeats = f" (of {len(rows)} rows)" if len(first) != len(rows) else ""
        raise ValueError(f"{where}: need at least {minimum + 1} distinct rows to hold out a "
                         f"validation split (or give a validation file), got {len(first)}"
                         f"{repeats}")
    keys = list(first)
    held = set(keys[-max(minimum, int(len(keys) * fraction)):])
    train = [row for row in rows if key(row) not in held]
    val = [first[k] for k in keys if k in held]
    return Split(train, val, {"train_rows": len(rows), "train_repeats": len(rows) - len(first),
                              "val_repeats": 0, "val_in_train": 0})


def separate(train: Sequence, val: Sequence, *, key: Callable[[Any], Hashable] = lambda r: r,
             where: str = "data") -> Split:
    """A given validation set made leak-free: its rows that occur in ``train`` are dropped, its
    repeats kept once; a validation set left empty is an error naming ``where``."""
    trained = {key(row) for row in train}
    val_first = _first_copies(val, key)
    kept = [row for k, row in val_first.items() if k not in trained]
    if not kept:
        raise ValueError(f"{where}: every validation row also occurs in the training data: "
                         f"nothing is left to validate on")
    return Split(list(train), kept, {"train_rows": len(train),
                                     "train_repeats": len(train) - len(trained),
                                     "val_repeats": len(val) - len(val_first),
                                     "val_in_train": len(val_first) - len(kept)})
