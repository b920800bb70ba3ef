"""Building blocks shared by the array estimators of :mod:`maskdiff.diagnostics`.

A point estimate with its standard error (:class:`Estimate`), the conversion of numpy arrays and
torch tensors to validated float64 arrays, and the nonparametric bootstrap over examples (the
independent units of every nested design) that :mod:`.variance` and :mod:`.curves` share. Every
random draw takes an explicit seed or ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Estimate", "Seed", "as_array", "as_generator", "bootstrap_counts", "bootstrap_se",
           "check_n_boot", "json_float"]

Seed = int | np.random.Generator


def json_float(x: float) -> float | None:
    """``x``, or None when it is not finite: JSON has no NaN (an undefined SE is written null)."""
    return float(x) if math.isfinite(x) else None


def as_array(values: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``values`` (array-like or tensor) as a finite float64 array of an allowed ``ndim``."""
    if isinstance(values, torch.Tensor):
        arr = values.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(values, dtype=np.float64)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must have ndim in {allowed}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(arr)))} NaN/inf")
    return arr


def as_generator(seed: Seed) -> np.random.Generator:
    """A numpy Generator from a non-negative int seed (or the Generator itself)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be a non-negative int or a numpy Generator, got {seed!r}")


def check_n_boot(n_boot: int) -> None:
    """Raise ValueError unless ``n_boot`` is 0 (no bootstrap) or at least 2."""
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0 or n_boot == 1:
        raise ValueError(f"n_boot must be 0 (no bootstrap) or an int >= 2, got {n_boot!r}")


def bootstrap_counts(rng: np.random.Generator, n_units: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_units) resampling counts: how often each unit is drawn in each replicate."""
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(float)


def bootstrap_se(replicates: np.ndarray) -> np.ndarray:
    """Bootstrap standard error: the standard deviation over replicates (axis 0)."""
    if replicates.shape[0] < 2:
        return np.full(replicates.shape[1:], math.nan)
    return replicates.std(axis=0, ddof=1)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its standard error (NaN when not computed)."""

    value: float
    se: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": json_float(self.value), "se": json_float(self.se)}
