"""The variance of gradient draws: an unbiased ``tr Cov`` in O(d) memory (docs/method.md §2).

Pure math on flattened gradients already computed;
:func:`maskdiff.diagnostics.measure.estimator_gradient_variance` draws them from an estimator on
a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from maskdiff.diagnostics.stats import Estimate, as_array, json_float

__all__ = ["GradientVariance", "GradientVarianceAccumulator", "gradient_variance",
           "paired_difference"]


@dataclass(frozen=True)
class GradientVariance:
    """``trace_cov`` = unbiased ``tr Cov(∇l)`` over the draws, with SE; ``mean_norm_sq`` =
    ``‖ḡ‖²`` (plug-in, biased up by ``tr Cov / n``) and ``mean_norm_sq_unbiased`` =
    ``‖ḡ‖² − tr Cov / n``, unbiased for ``‖E ∇l‖²``. ``contrasts``: the n − 1 squared
    Helmert contrasts whose mean is ``trace_cov`` (for paired comparisons of two
    configurations measured on the same draws: :func:`paired_difference`)."""

    n_draws: int
    dim: int
    trace_cov: Estimate
    mean_norm_sq: float
    mean_norm_sq_unbiased: float
    contrasts: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def signal_to_noise(self) -> float:
        """``‖E ∇l‖² / tr Cov``: per-example gradient signal-to-noise ratio."""
        tr = self.trace_cov.value
        return self.mean_norm_sq_unbiased / tr if tr > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_draws": self.n_draws,
            "dim": self.dim,
            "trace_cov": self.trace_cov.to_dict(),
            "mean_norm_sq": self.mean_norm_sq,
            "mean_norm_sq_unbiased": self.mean_norm_sq_unbiased,
            "signal_to_noise": json_float(self.signal_to_noise),
        }


class GradientVarianceAccumulator:
    """Streaming ``tr Cov`` of gradient draws in O(d) memory (float64).

    Uses the Helmert contrasts ``z_k = sqrt((k−1)/k)·(g_k − ḡ_{k−1})``, k = 2..n: they are
    exactly what Welford's update adds (``Σ_k ‖z_k‖² = Σ_k ‖g_k − ḡ‖²``), each ``‖z_k‖²`` has
    expectation ``tr Cov``, and they are uncorrelated (for Gaussian gradients i.i.d.). So
    ``tr Cov = mean_k ‖z_k‖²`` (the usual unbiased estimate, whatever the order) and its SE is
    ``sd_k ‖z_k‖² / sqrt(n−1)``, which needs only the n scalars, not the n×d draws. The SE is
    exact for Gaussian draws and first-order correct otherwise; it depends (slightly) on the
    order of the draws.
    """

    def __init__(self) -> None:
        self.n = 0
        self.dim: int | None = None
        self._mean: np.ndarray | None = None
        self._helmert: list[np.ndarray] = []

    def update(self, grads: Any) -> None:
        """Add one draw ``(d,)`` or a chunk of draws ``(m, d)``."""
        x = as_array(grads, "grads", (1, 2))
        if x.ndim == 1:
            x = x[None, :]
        m, d = x.shape
        if self.dim is None:
            if d < 1:
                raise ValueError(f"grads must have at least one coordinate, got shape {x.shape}")
            self.dim = d
            self._mean = np.zeros(d)
        elif d != self.dim:
            raise ValueError(f"grads has dimension {d}, earlier draws had {self.dim}")
        if m == 0:
            return
        assert self._mean is not None
        before = self.n + np.arange(m)  # draws seen before each row
        prefix = np.cumsum(x, axis=0) - x  # exclusive prefix sums within the chunk
        means_before = (self.n * self._mean + prefix) / np.maximum(before, 1)[:, None]
        dev = x - means_before
        sq = before / (before + 1) * np.einsum("ij,ij->i", dev, dev)
        self._helmert.append(sq[before >= 1])
        self._mean = (self.n * self._mean + x.sum(axis=0)) / (self.n + m)
        self.n += m

    def result(self) -> GradientVariance:
        if self.n < 2:
            raise ValueError(f"grads must hold at least 2 draws, got {self.n}")
        assert self._mean is not None and self.dim is not None
        helmert = np.concatenate(self._helmert)
        trace = float(helmert.mean())
        se = float(helmert.std(ddof=1) / math.sqrt(helmert.size)) if helmert.size >= 2 else math.nan
        norm_sq = float(self._mean @ self._mean)
        return GradientVariance(
            n_draws=self.n, dim=self.dim, trace_cov=Estimate(trace, se),
            mean_norm_sq=norm_sq, mean_norm_sq_unbiased=norm_sq - trace / self.n,
            contrasts=helmert,
        )


def gradient_variance(grads: Any) -> GradientVariance:
    """``tr Cov`` of per-draw flattened gradients (docs/method.md §2).

    ``grads``: an array/tensor ``(n_draws, d)``, or an iterable of draws ``(d,)`` or chunks
    ``(m, d)`` (streamed, O(d) memory). Each draw is one gradient of the per-example estimator
    with fresh randomness (x0, t, mask, as the configuration draws them). See
    :class:`GradientVarianceAccumulator` for the estimator and its SE.
    """
    acc = GradientVarianceAccumulator()
    if isinstance(grads, (np.ndarray, torch.Tensor)):
        if grads.ndim != 2:
            raise ValueError(f"grads must be (n_draws, d), got shape {tuple(grads.shape)}")
        acc.update(grads)
    elif isinstance(grads, Iterable):
        for draw in grads:
            acc.update(draw)
    else:
        raise ValueError(f"grads must be an array (n_draws, d) or an iterable, got {type(grads)}")
    return acc.result()


def paired_difference(a: GradientVariance, b: GradientVariance) -> Estimate:
    """``tr Cov(a) − tr Cov(b)`` with a paired SE: the two were measured on the same draws
    (same seed: the same examples and uniforms), so their Helmert contrasts pair up and the SE
    is ``sd(h_a − h_b) / sqrt(n − 1)``, usually far below the two SEs combined."""
    if a.contrasts is None or b.contrasts is None or a.contrasts.shape != b.contrasts.shape:
        raise ValueError("paired_difference needs two results with contrasts of equal length "
                         "(measured with the same number of draws)")
    diff = a.contrasts - b.contrasts
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size >= 2 else math.nan
    return Estimate(float(diff.mean()), se)
