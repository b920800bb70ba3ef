"""Variance diagnostics (SPEC §2; variance paper eq. 2 and A.5.1).

Pure math on numbers already computed (numpy; torch tensors are accepted and converted to
float64): the A/B/C decomposition of the per-example loss with unbiased nested-ANOVA estimators
and bootstrap standard errors, directly measured variances to check it against, the variance of
mini-batch estimates, the trace of the per-example gradient covariance, and the conditional
curves ``g(t)``, ``v(t)`` that P-POTS needs (SPEC §4). The losses come from
:func:`maskdiff.diagnostics.nested.nested_losses`; nothing here knows about models.

Every random draw (only the bootstrap) takes an explicit seed or ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "BatchVariance", "ConditionalCurves", "Decomposition", "Estimate", "GradientVariance",
    "GradientVarianceAccumulator", "VarianceEstimate", "batch_variance", "conditional_curves",
    "decompose", "gradient_variance", "total_variance",
]

RateDesign = Literal["random", "fixed"]
Seed = int | np.random.Generator


def _json_float(x: float) -> float | None:
    # JSON has no NaN: an undefined standard error is written as null.
    return float(x) if math.isfinite(x) else None


def _as_array(values: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
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


def _generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be a non-negative int or a numpy Generator, got {seed!r}")


def _check_n_boot(n_boot: int) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0 or n_boot == 1:
        raise ValueError(f"n_boot must be 0 (no bootstrap) or an int >= 2, got {n_boot!r}")


def _bootstrap_counts(rng: np.random.Generator, n_units: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_units) resampling counts: how often each unit is drawn in each replicate."""
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(float)


def _spread(replicates: np.ndarray) -> np.ndarray:
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
        return {"value": _json_float(self.value), "se": _json_float(self.se)}


# --------------------------------------------------------------------------------------------
# The A/B/C decomposition


@dataclass(frozen=True)
class Decomposition:
    """Result of :func:`decompose`. ``A``, ``B``, ``C``, ``total`` are the unbiased
    method-of-moments estimates, *unclipped*: B or C may come out negative by chance when the
    true component is small; :meth:`clipped` gives the non-negative versions. ``naive_*`` are the
    biased plug-in estimates (expectations in :func:`decompose`). Standard errors are by
    bootstrap over examples (NaN when ``n_boot = 0``); the grand mean's is analytic."""

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
        out["shares"] = {k: _json_float(v) for k, v in self.shares().items()}
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
    r"""Unbiased A/B/C decomposition of a balanced nested design (SPEC §2 [fix]; paper eq. 2).

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

    **Plug-in estimates** (ddof = 1 at every level), with their expectations under the random
    design, which show the bias the SPEC fixes:

    - ``naive_A`` = mean within-cell variance = ``MS_W``: ``E = A`` (unbiased);
    - ``naive_B`` = mean over examples of the between-rate variance of cell means = ``MS_R/c``:
      ``E = B + A/c``;
    - ``naive_C`` = variance of the example means = ``MS_E/(b c)``: ``E = C + (B + A/c)/b``;
    (fixed design: ``E naive_B = b/(b−1)·B + A/c``, ``E naive_C = C + A/(b c)``).

    Raw estimates are returned **unclipped** (negative B̂ or Ĉ happen by chance when the true
    component is small; clipping would bias them upwards); :meth:`Decomposition.clipped` gives
    ``max(0, ·)``. Standard errors: nonparametric bootstrap over examples (the independent units;
    each resampled example keeps all its rates and masks), ``n_boot`` replicates drawn from
    ``seed``; ``n_boot=0`` skips it (SE = NaN).
    """
    if rate_design not in ("random", "fixed"):
        raise ValueError(f"rate_design must be 'random' or 'fixed', got {rate_design!r}")
    _check_n_boot(n_boot)
    x = _as_array(losses, "losses", 3)
    a, b, c = x.shape
    for axis, (label, size) in enumerate((("a (examples)", a), ("b (rates)", b),
                                          ("c (masks)", c))):
        if size < 2:
            raise ValueError(f"losses axis {axis} = {label} must be >= 2, got shape {x.shape}")
    rng = _generator(seed)

    cell_means = x.mean(axis=2)  # (a, b)
    example_means = cell_means.mean(axis=1)  # (a,)
    ssw = ((x - cell_means[..., None]) ** 2).sum(axis=(1, 2))
    ssr = c * ((cell_means - example_means[:, None]) ** 2).sum(axis=1)

    ones = np.ones((1, a))
    ms = _mean_squares(ssw, ssr, example_means, ones, b, c)
    point = _components(*ms, b, c, rate_design)[:, 0]
    if n_boot:
        counts = _bootstrap_counts(rng, a, n_boot)
        reps = _components(*_mean_squares(ssw, ssr, example_means, counts, b, c), b, c,
                           rate_design)
        ses = _spread(reps.T)
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


# --------------------------------------------------------------------------------------------
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
    x = _as_array(samples, "samples", 1)
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
    x = _as_array(estimates, "estimates", 1)
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


# --------------------------------------------------------------------------------------------
# Gradient variance (SPEC §2, the reviewers' request)


@dataclass(frozen=True)
class GradientVariance:
    """``trace_cov`` = unbiased ``tr Cov(∇l)`` over the draws, with SE; ``mean_norm_sq`` =
    ``‖ḡ‖²`` (plug-in, biased up by ``tr Cov / n``) and ``mean_norm_sq_unbiased`` =
    ``‖ḡ‖² − tr Cov / n``, unbiased for ``‖E ∇l‖²``."""

    n_draws: int
    dim: int
    trace_cov: Estimate
    mean_norm_sq: float
    mean_norm_sq_unbiased: float

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
            "signal_to_noise": _json_float(self.signal_to_noise),
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
        x = _as_array(grads, "grads", (1, 2))
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
        )


def gradient_variance(grads: Any) -> GradientVariance:
    """``tr Cov`` of per-draw flattened gradients (SPEC §2).

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


# --------------------------------------------------------------------------------------------
# Conditional curves g(t), v(t) (SPEC §4)


@dataclass(frozen=True, eq=False)
class ConditionalCurves:
    """Per-rate estimates at the shared rates ``t`` (arrays of shape (b,)):
    ``g = E[l | t]``, ``v = Var_{x0,xt}(l | t)`` (unbiased, between-example part included),
    ``v_within = E_x0[Var(l | x0, t)]`` (the paper's v̂, which omits the between-example part;
    NaN when c = 1), ``second_moment = E[l² | t] = g² + v`` (what P-POTS uses), each with SE."""

    t: np.ndarray
    g: np.ndarray
    g_se: np.ndarray
    v: np.ndarray
    v_se: np.ndarray
    v_within: np.ndarray
    v_within_se: np.ndarray
    second_moment: np.ndarray
    second_moment_se: np.ndarray
    n_examples: int
    n_masks: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_examples": self.n_examples, "n_masks": self.n_masks}
        for name in ("t", "g", "g_se", "v", "v_se", "v_within", "v_within_se", "second_moment",
                     "second_moment_se"):
            out[name] = [_json_float(float(x)) for x in getattr(self, name)]
        return out


def conditional_curves(
    losses: Any, rates: Any, *, n_boot: int = 1000, seed: Seed = 0
) -> ConditionalCurves:
    """``g(t_j)``, ``v(t_j)`` and ``E[l² | t_j]`` from ``losses`` (a, b, c) at the b ``rates``
    shared by all examples (e.g. :func:`maskdiff.diagnostics.nested.rates_on_grid`); SPEC §4.

    At each rate the data are a two-level nested design (a examples, c masks). With
    ``s²_ij`` the sample variance over masks and ``ȳ_ij`` the mean:
    ``E var_i(ȳ_ij) = Var_x0(g) + A_t/c`` and ``E mean_i s²_ij = A_t`` (``A_t = E_x0 Var(l|x0,t)``),
    so ``v̂_j = var_i(ȳ_ij) + (1 − 1/c)·mean_i s²_ij`` is unbiased for
    ``Var_x0(g) + A_t = v(t_j)`` (c = 1 is allowed: then ``v̂_j = var_i(l_ij1)``).
    SEs: ``g``, ``v_within`` and ``E[l²|t]`` are means over independent examples (sd/√a);
    ``v`` by bootstrap over examples (``n_boot``, ``seed``; NaN if ``n_boot = 0``).
    """
    _check_n_boot(n_boot)
    x = _as_array(losses, "losses", 3)
    a, b, c = x.shape
    if a < 2:
        raise ValueError(f"losses axis 0 = a (examples) must be >= 2, got shape {x.shape}")
    t = _as_array(rates, "rates", 1)
    if t.shape[0] != b:
        raise ValueError(f"rates has {t.shape[0]} values but losses has b = {b} rates")
    rng = _generator(seed)

    cell_means = x.mean(axis=2)  # (a, b)
    within = x.var(axis=2, ddof=1) if c >= 2 else np.zeros((a, b))
    shrink = 1.0 - 1.0 / c
    v = cell_means.var(axis=0, ddof=1) + shrink * within.mean(axis=0)
    squares = (x**2).mean(axis=2)
    if n_boot:
        counts = _bootstrap_counts(rng, a, n_boot)
        centred = cell_means - cell_means.mean(axis=0)
        boot_mean = counts @ centred / a
        boot_var = (counts @ centred**2 - a * boot_mean**2) / (a - 1)
        v_se = _spread(boot_var + shrink * (counts @ within) / a)
    else:
        v_se = np.full(b, math.nan)
    root_a = math.sqrt(a)
    return ConditionalCurves(
        t=t,
        g=cell_means.mean(axis=0),
        g_se=cell_means.std(axis=0, ddof=1) / root_a,
        v=v,
        v_se=v_se,
        v_within=within.mean(axis=0) if c >= 2 else np.full(b, math.nan),
        v_within_se=within.std(axis=0, ddof=1) / root_a if c >= 2 else np.full(b, math.nan),
        second_moment=squares.mean(axis=0),
        second_moment_se=squares.std(axis=0, ddof=1) / root_a,
        n_examples=a,
        n_masks=c,
    )
