"""Loading a tokeniser saved by either implementation.

Both :class:`~maskdiff.data.char_tokenizer.CharTokenizer` and
:class:`~maskdiff.data.bpe.BPETokenizer` save to one JSON file whose ``"type"`` field
:func:`load_tokenizer` dispatches on.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskdiff.data.bpe import BPETokenizer
from maskdiff.data.char_tokenizer import CharTokenizer
from maskdiff.data.tokenizer import Tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokeniser saved by ``save()`` of either implementation."""
    path = Path(path)
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"path {str(path)!r} is not a saved tokenizer: {err}") from err
    loaders = {"char": CharTokenizer.load, "bpe": BPETokenizer.load}
    if kind not in loaders:
        raise ValueError(
            f"path {str(path)!r}: unknown tokenizer type {kind!r}; known {sorted(loaders)}"
        )
    return loaders[kind](path)
