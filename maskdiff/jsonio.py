"""Strict JSON for every file and line maskdiff writes (it imports nothing of maskdiff).

Python's ``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default: not JSON
(RFC 8259), refused by strict readers (``jq``, JavaScript, most other languages). :func:`dumps`
writes ``null`` for every non-finite float instead (an undefined value, such as the standard
error of one example) and then serialises with ``allow_nan=False``, so no writer can let one
through. ``tests/test_reliability_inputs.py`` checks that no module calls ``json.dumps``
directly.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists and tuples) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes non-finite floats as ``null`` and never emits NaN/Infinity."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def load(path: Any) -> Any:
    """The JSON document in the file ``path``. A file that is not UTF-8 or not JSON is a
    ValueError naming the file and the line (Python's own errors name neither); a missing
    file is the usual ``FileNotFoundError``, which names it."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte {raw[err.start]:#04x})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column "
                         f"{err.colno})") from None
