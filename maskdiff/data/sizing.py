"""Sizes derived from the data: the BPE vocabulary and the row length ``max_len``.

- **BPE vocabulary** (``data.tokenizer="bpe"`` without ``data.vocab_size``):
  ``vocab_size = fixed + clamp(round(2·sqrt(C)), 64, 16000)`` merges, where ``C`` is the number
  of characters of the training split and ``fixed`` the 256 byte tokens plus the extra and
  control tokens. The number of distinct words of a corpus grows roughly as the square root of
  its size (Heaps' law), so the merges follow the corpus: ~750 merges for 140 k characters,
  ~4 600 for GSM8K's 5 M. (The BPE trainer stops early when nothing repeats, so a tiny corpus
  gets fewer.)
- **Row length** (``data.max_len="auto"`` or ``"pNN"``): the ``NN``-th percentile (nearest
  rank; ``auto`` = ``p99``) of the training split's tokenised lengths (prompt + response + EOS,
  as the collator encodes them), raised so that the longest prompt keeps
  :data:`MIN_RESPONSE_ROOM` tokens of response, rounded up to a multiple of 8. Longer examples
  are truncated at the response end, and the run reports how many.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

AUTO_PERCENTILE = 99.0
MIN_RESPONSE_ROOM = 8
MIN_MERGES, MAX_MERGES = 64, 16000
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def max_len_percentile(value: object, where: str = "data.max_len") -> float | None:
    """None for a fixed length (an int >= 1), else the percentile a rule names (``"auto"``,
    ``"p95"``, ``"p100"``); anything else is a ValueError naming ``where`` and the value."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{where} must be >= 1, got {value}")
        return None
    if isinstance(value, str):
        if value == "auto":
            return AUTO_PERCENTILE
        match = _PERCENTILE.match(value)
        if match and 0 < float(match.group(1)) <= 100:
            return float(match.group(1))
    raise ValueError(f"{where} must be an integer >= 1, 'auto' (p{AUTO_PERCENTILE:g}) or "
                     f"'pNN' (a percentile of the training examples' tokenised lengths, "
                     f"0 < NN <= 100), got {value!r}")


def derive_max_len(lengths: Sequence[int], prompt_lengths: Sequence[int],
                   percentile: float) -> int:
    """The row length of the module docstring's rule for examples of ``lengths`` tokens."""
    if not lengths:
        raise ValueError("no training examples to derive data.max_len from")
    ordered = sorted(lengths)
    rank = max(1, math.ceil(percentile / 100.0 * len(ordered)))
    length = max(ordered[rank - 1], max(prompt_lengths, default=0) + MIN_RESPONSE_ROOM)
    return -(-length // 8) * 8


def auto_vocab_size(n_chars: int, n_fixed: int) -> int:
    """The BPE vocabulary of the module docstring's rule for ``n_chars`` training characters."""
    merges = min(MAX_MERGES, max(MIN_MERGES, round(2.0 * math.sqrt(max(0, n_chars)))))
    return n_fixed + merges
