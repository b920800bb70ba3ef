"""Argument checks shared by every layer: one wording for one mistake."""

from __future__ import annotations

from typing import Any

import numpy as np


def int_at_least(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= ``minimum``
    (bools are refused: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
