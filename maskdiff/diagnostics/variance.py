"""The A/B/C variance decomposition and the direct measures it is checked against (docs/method.md §2;
variance paper eq. 2 and A.5.1).

Pure math on numbers already computed (numpy; torch tensors are accepted and converted to
float64): the A/B/C decomposition of the per-example loss with unbiased nested-ANOVA estimators
and bootstrap standard errors (:func:`decompose`), the directly measured ``Var(l)``
(:func:`total_variance`) and the variance of mini-batch estimates (:func:`batch_variance`). The
losses come from :func:`maskdiff.diagnostics.nested.nested_losses`; nothing here knows about
models. The gradient variance is in :mod:`maskdiff.diagnostics.gradient`, the conditional curves
``g(t)``, ``v(t)`` that P-POTS needs in :mod:`maskdiff.diagnostics.curves`.

Every random draw (only the bootstrap) takes an explicit seed or ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from maskdiff.diagnostics.stats import (
    Estimate, Seed, as_array, as_generator, bootstrap_counts, bootstrap_se, check_n_boot,
    json_float,
)

__all__ = [
    "BatchVariance", "Decomposition", "VarianceEstimate", "batch_variance", "decompose",
    "total_variance",
]

RateDesign = Literal["random", "fixed"]


@dataclass(frozen=True)
class Decomposition:
    """Result of :func:`decompose`. ``A``, ``B``, ``C``, ``total`` are the unbiased
    method-of-moments estimates, *unclipped*: B or C may come out negative by chance when the
    true component is small; :meth:`clipped` gives the non-negative versions. Standard errors
    are by bootstrap over examples (NaN when ``n_boot = 0``); the grand mean's is analytic.

    ``naive_*`` are the plug-in estimates (ddof = 1 at every level), with their expectations
    under the random design, which show the bias docs/method.md §2 [fix] removes (mean squares as in
    :func:`decompose`):

    - ``naive_A`` = mean within-cell variance = ``MS_W``: ``E = A`` (unbiased);
    - ``naive_B`` = mean over examples of the between-rate variance of cell means = ``MS_R/c``:
      ``E = B + A/c``;
    - ``naive_C`` = variance of the example means = ``MS_E/(b c)``: ``E = C + (B + A/c)/b``;
    (fixed design: ``E naive_B = b/(b−1)·B + A/c``, ``E naive_C = C + A/(b c)``).
    """

    n_examples: int
    n_rates: int
    n_masks: int
    rate_design: str
    mean: Estimate
    A: Estimate
    B: Estimate
    C: Estimate
    total: Estimate
    naive_A: Estimate
    naive_B: Estimate
    naive_C: Estimate
    naive_total: Estimate
    ms_within: float
    ms_rates: float
    ms_examples: float
    n_boot: int

    def clipped(self) -> dict[str, float]:
        """Components clipped at zero (the usual truncated ANOVA estimates) and their sum."""
        parts = {k: max(0.0, getattr(self, k).value) for k in ("A", "B", "C")}
        return {**parts, "total": sum(parts.values())}

    def shares(self) -> dict[str, float]:
        """Fraction of the (clipped) total carried by each component."""
        parts = self.clipped()
        total = parts.pop("total")
        return {k: (v / total if total > 0 else math.nan) for k, v in parts.items()}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_examples": self.n_examples,
            "n_rates": self.n_rates,
            "n_masks": self.n_masks,
            "rate_design": self.rate_design,
            "n_boot": self.n_boot,
        }
        for name in ("mean", "A", "B", "C", "total", "naive_A", "naive_B", "naive_C",
                     "naive_total"):
            out[name] = getattr(self, name).to_dict()
        out["mean_squares"] = {
            "within": self.ms_within, "rates": self.ms_rates, "examples": self.ms_examples,
        }
        out["clipped"] = self.clipped()
        out["shares"] = {k: json_float(v) for k, v in self.shares().items()}
        return out


def _mean_squares(
    ssw: np.ndarray, ssr: np.ndarray, example_means: np.ndarray, counts: np.ndarray, b: int, c: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three mean squares for each row of ``counts`` (how often each example is used), from
    per-example sufficient statistics, so a bootstrap replicate costs one matrix product."""
    a = ssw.shape[0]
    ms_within = counts @ ssw / (a * b * (c - 1))
    ms_rates = counts @ ssr / (a * (b - 1))
    centred = example_means - example_means.mean()  # centring keeps the sums well conditioned
    mean = counts @ centred / a
    ms_examples = b * c * (counts @ centred**2 - a * mean**2) / (a - 1)
    return ms_within, ms_rates, ms_examples


def _components(
    ms_within: np.ndarray, ms_rates: np.ndarray, ms_examples: np.ndarray, b: int, c: int,
    rate_design: str,
) -> np.ndarray:
    """Rows: A, B, C, total, naive A, naive B, naive C, naive total."""
    if rate_design == "random":
        comp_b = (ms_rates - ms_within) / c
        comp_c = (ms_examples - ms_rates) / (b * c)
    else:
        comp_b = (b - 1) / b * (ms_rates - ms_within) / c
        comp_c = (ms_examples - ms_within) / (b * c)
    naive_b = ms_rates / c
    naive_c = ms_examples / (b * c)
    return np.stack([
        ms_within, comp_b, comp_c, ms_within + comp_b + comp_c,
        ms_within, naive_b, naive_c, ms_within + naive_b + naive_c,
    ])


def decompose(
    losses: Any, *, rate_design: RateDesign = "random", n_boot: int = 1000, seed: Seed = 0
) -> Decomposition:
    r"""Unbiased A/B/C decomposition of a balanced nested design (docs/method.md §2 [fix]; paper eq. 2).

    ``losses[i, j, k]`` (shape ``(a, b, c)``, a, b, c >= 2) is the per-example value the
    trainer averages (``w·l``, the MIRROR mean, ...) for example ``i``, its ``j``-th rate
    ``t_ij`` and the ``k``-th mask drawn at that rate (the c masks of a cell independent given
    (x0, t); examples independent).

    **Model.** With ``g(x0, t) = E[l | x0, t]`` and ``h(x0) = E_t g``, write
    ``l_ijk = μ + α_i + β_ij + γ_ijk`` where ``α_i = h(x0_i) − μ``,
    ``β_ij = g(x0_i, t_ij) − h(x0_i)``, ``γ_ijk = l_ijk − g(x0_i, t_ij)``. Each term has mean zero
    given the ones before it, so they are uncorrelated, and by A.5.1
    ``E γ² = A``, ``E β² = B``, ``E α² = C``. Neither normality nor equal variances are needed:
    ``Var(l | x0, t)`` and ``Var_t(g | x0)`` may depend on x0 and t.

    **Mean squares.** With cell means ``ȳ_ij·``, example means ``ȳ_i··`` and grand mean ``ȳ``:

    - ``MS_W = Σ_ijk (l_ijk − ȳ_ij·)² / (a b (c−1))``; each within-cell sample variance is
      unbiased for ``Var(l | x0_i, t_ij)``, so ``E MS_W = A``.
    - ``MS_R = c Σ_ij (ȳ_ij· − ȳ_i··)² / (a (b−1))``. With ``rate_design="random"`` (each
      example's b rates drawn i.i.d. from the rate distribution, independently of the other
      examples) the cell means of example i are i.i.d. given x0_i with variance
      ``Var_t(g | x0_i) + E_t[Var(l | x0_i, t)]/c``, so ``E MS_R = A + c B``.
    - ``MS_E = b c Σ_i (ȳ_i·· − ȳ)² / (a−1)``; the example means are i.i.d. with variance
      ``C + (B + A/c)/b``, so ``E MS_E = A + c B + b c C``.

    Solving: ``Â = MS_W``, ``B̂ = (MS_R − MS_W)/c``, ``Ĉ = (MS_E − MS_R)/(b c)``, all unbiased.

    ``rate_design="fixed"``: every example uses the same b rates (e.g.
    :func:`maskdiff.diagnostics.nested.rates_on_grid`), a crossed design; the decomposition is then that of
    t uniform on those b points (for the midpoint grid, a quadrature of U[eps, 1]). Now
    ``E MS_R = A + c·b/(b−1)·B``, B being the grid's population spread
    ``E_x0[(1/b)Σ_j (g_ij − ḡ_i)²]``, and ``E MS_E = A + b c C`` (the fixed rates add no spread
    between example means), so ``B̂ = (b−1)/b · (MS_R − MS_W)/c`` and ``Ĉ = (MS_E − MS_W)/(b c)``.
    Using the random-design formulas on grid data would overstate B by b/(b−1) and understate C
    by B/(b−1).

    The plug-in estimates and their bias: see :class:`Decomposition`.

    Raw estimates are returned **unclipped** (negative B̂ or Ĉ happen by chance when the true
    component is small; clipping would bias them upwards); :meth:`Decomposition.clipped` gives
    ``max(0, ·)``. Standard errors: nonparametric bootstrap over examples (the independent units;
    each resampled example keeps all its rates and masks), ``n_boot`` replicates drawn from
    ``seed``; ``n_boot=0`` skips it (SE = NaN).
    """
    if rate_design not in ("random", "fixed"):
        raise ValueError(f"rate_design must be 'random' or 'fixed', got {rate_design!r}")
    check_n_boot(n_boot)
    x = _balanced_design(losses)
    a, b, c = x.shape
    rng = as_generator(seed)
    cell_means = x.mean(axis=2)  # (a, b)
    example_means = cell_means.mean(axis=1)  # (a,)
    ssw = ((x - cell_means[..., None]) ** 2).sum(axis=(1, 2))
    ssr = c * ((cell_means - example_means[:, None]) ** 2).sum(axis=1)

    ms = _mean_squares(ssw, ssr, example_means, np.ones((1, a)), b, c)
    point = _components(*ms, b, c, rate_design)[:, 0]
    if n_boot:
        counts = bootstrap_counts(rng, a, n_boot)
        reps = _components(*_mean_squares(ssw, ssr, example_means, counts, b, c), b, c,
                           rate_design)
        ses = bootstrap_se(reps.T)
    else:
        ses = np.full(point.shape, math.nan)
    est = [Estimate(float(v), float(s)) for v, s in zip(point, ses)]
    mean = Estimate(float(example_means.mean()), float(example_means.std(ddof=1) / math.sqrt(a)))
    return Decomposition(
        n_examples=a, n_rates=b, n_masks=c, rate_design=rate_design, mean=mean,
        A=est[0], B=est[1], C=est[2], total=est[3],
        naive_A=est[4], naive_B=est[5], naive_C=est[6], naive_total=est[7],
        ms_within=float(ms[0][0]), ms_rates=float(ms[1][0]), ms_examples=float(ms[2][0]),
        n_boot=int(n_boot),
    )


def _balanced_design(losses: Any) -> np.ndarray:
    """``losses`` as a finite float64 ``(a, b, c)`` array with a, b, c >= 2."""
    x = as_array(losses, "losses", 3)
    for axis, (label, size) in enumerate(zip(("a (examples)", "b (rates)", "c (masks)"), x.shape)):
        if size < 2:
            raise ValueError(f"losses axis {axis} = {label} must be >= 2, got shape {x.shape}")
    return x


# Directly measured variances


def _variance_with_se(x: np.ndarray) -> tuple[Estimate, Estimate]:
    n = x.shape[0]
    dev = x - x.mean()
    s2 = float(dev @ dev / (n - 1))
    m4 = float(np.mean(dev**4))
    # Var(s²) = (μ4 − σ⁴ (n−3)/(n−1)) / n for i.i.d. data of any distribution, with plug-in
    # moments; for normal data it reduces to 2σ⁴/(n−1). Positive for every n >= 2.
    var_s2 = (m4 - s2**2 * (n - 3) / (n - 1)) / n
    return (Estimate(float(x.mean()), math.sqrt(s2 / n)),
            Estimate(s2, math.sqrt(max(var_s2, 0.0))))


@dataclass(frozen=True)
class VarianceEstimate:
    """Sample mean and unbiased sample variance of i.i.d. draws, with standard errors."""

    n: int
    mean: Estimate
    variance: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean.to_dict(), "variance": self.variance.to_dict()}


def total_variance(samples: Any) -> VarianceEstimate:
    """Directly measured ``Var(l)`` from ``samples`` (n >= 2 i.i.d. values, e.g. losses of
    fully independent (x0, t, mask) triples); the check on A + B + C of :func:`decompose`.
    SE of the variance from the sample fourth moment (distribution-free, first order)."""
    x = as_array(samples, "samples", 1)
    if x.shape[0] < 2:
        raise ValueError(f"samples must hold at least 2 values, got {x.shape[0]}")
    mean, var = _variance_with_se(x)
    return VarianceEstimate(n=int(x.shape[0]), mean=mean, variance=var)


@dataclass(frozen=True)
class BatchVariance:
    """Spread of mini-batch estimates across repeated batches. ``per_example`` is
    ``batch_size × variance``: for i.i.d. examples it estimates the per-example ``Var(l)``,
    comparable with :attr:`Decomposition.total`."""

    n_batches: int
    batch_size: int | None
    mean: Estimate
    variance: Estimate
    per_example: Estimate | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_batches": self.n_batches,
            "batch_size": self.batch_size,
            "mean": self.mean.to_dict(),
            "variance": self.variance.to_dict(),
            "per_example": None if self.per_example is None else self.per_example.to_dict(),
        }


def batch_variance(estimates: Any, *, batch_size: int | None = None) -> BatchVariance:
    """Variance of the mini-batch estimates ``estimates`` (one scalar per repeated batch,
    n >= 2), with the same distribution-free SE as :func:`total_variance`."""
    x = as_array(estimates, "estimates", 1)
    if x.shape[0] < 2:
        raise ValueError(f"estimates must hold at least 2 values, got {x.shape[0]}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    mean, var = _variance_with_se(x)
    per_example = None
    if batch_size is not None:
        per_example = Estimate(var.value * batch_size, var.se * batch_size)
    return BatchVariance(n_batches=int(x.shape[0]), batch_size=batch_size, mean=mean,
                         variance=var, per_example=per_example)
