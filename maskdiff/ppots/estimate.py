"""P-POTS estimation (docs/method.md §4; variance paper §3.1.1, A.5.2): p̂ from nested losses, on a model
or on given losses, and the fitted result.

The fits themselves (EPR, degree-7 polynomial, density tables) live in :mod:`maskdiff.ppots.fit`,
the result file (``ppots.json``, plot) in :mod:`maskdiff.ppots.io` and the online tracker in
:mod:`maskdiff.ppots.online`; the package re-exports all four.

Normalisation used throughout: a table ``p̂_j`` sums to 1 over its grid (the paper's convention,
what the KL fit compares); a :class:`DensityTable` integrates to 1 over ``[eps, 1]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from maskdiff.core.masking import Bernoulli
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Uniform
from maskdiff.diagnostics.nested import nested_losses, rates_on_grid
from maskdiff.diagnostics.probe import (
    GRADIENT_STATISTICS, estimator_gradient_fn, estimator_loss_fn, estimator_unit_loss_fn,
)
from maskdiff.ppots.fit import (
    MIN_GRID_POINTS, MIN_TABLE_POINTS, DensityTable, EPRFit, PolyFit, check_table, epr_density,
    fit_epr, fit_poly7, poly_density,
)

ESTIMATORS = ("direct", "paper")
# What p̂ ∝ sqrt(E[s² | t]) is taken of (docs/method.md §4): the loss (P-POTS), the exact parameter
# gradient norm, or a free logit-gradient proxy of it (gradient-targeted P-POTS, §4 [beyond]).
TARGETS = ("loss",) + GRADIENT_STATISTICS


# ----------------------------------------------------------------------------- p̂ from losses
@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class PHat:
    """Per-rate statistics of a nested loss array ``l_ijk`` (a examples, b rates, c masks).

    ``g_hat`` mean of l; ``second_moment`` mean over (i, k) of l² (unbiased for E[l² | t]);
    ``v_hat`` the paper's mean over i of the per-example sample variance over k (None if c < 2);
    ``p_hat_direct ∝ sqrt(second_moment)`` (docs/method.md §4 [fix]); ``p_hat_paper ∝ sqrt(g_hat² + v_hat)``;
    ``p_hat`` the one chosen by ``estimator``. Every p̂ sums to 1 over the grid.
    """

    t: np.ndarray
    g_hat: np.ndarray
    second_moment: np.ndarray
    v_hat: np.ndarray | None
    p_hat_direct: np.ndarray
    p_hat_paper: np.ndarray | None
    estimator: str
    n_examples: int
    n_masks: int

    @property
    def p_hat(self) -> np.ndarray:
        return self.p_hat_direct if self.estimator == "direct" else self.p_hat_paper


def _as_float64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _normalise(unnormalised: np.ndarray, name: str) -> np.ndarray:
    total = unnormalised.sum()
    if not total > 0:
        raise ValueError(f"{name} is zero at every rate (all losses zero?)")
    return unnormalised / total


def estimate_p_hat(losses: np.ndarray | torch.Tensor, t: np.ndarray | torch.Tensor,
                   estimator: str = "direct") -> PHat:
    """Estimate p̂ on the rates ``t`` (b,) from losses (a, b, c) (docs/method.md §4 "Estimation").

    ``direct`` (default): ``p̂_j ∝ sqrt((1/(a c)) Σ_ik l_ijk²)``, unbiased for E[l² | t_j].
    ``paper``: ``p̂_j ∝ sqrt(ĝ_j² + v̂_j)``; its expectation is
    ``E[l² | t_j] − σ²_ex(t_j)·(1 − 1/a) + σ²_mask(t_j)/(a c)``: it misses the between-example
    variance σ²_ex (the [fix]). Both are computed when c ≥ 2 so the report can show both.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    values, rates = _as_float64(losses), _as_float64(t)
    if values.ndim != 3:
        raise ValueError(f"losses must have shape (a, b, c), got {values.shape}")
    n_examples, n_rates, n_masks = values.shape
    if rates.shape != (n_rates,):
        raise ValueError(f"t must have shape ({n_rates},) to match losses, got {rates.shape}")
    if n_examples < 1 or n_masks < 1 or n_rates < MIN_TABLE_POINTS:
        raise ValueError(f"losses needs a >= 1, b >= {MIN_TABLE_POINTS}, c >= 1; got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"losses must be finite, found {int(np.sum(~np.isfinite(values)))} bad values")
    if estimator == "paper" and n_masks < 2:
        raise ValueError(f"estimator='paper' needs c >= 2 masks per (example, rate), got c={n_masks}")
    g_hat = values.mean(axis=(0, 2))
    second_moment = np.mean(values**2, axis=(0, 2))
    p_direct = _normalise(np.sqrt(second_moment), "second moment")
    v_hat = p_paper = None
    if n_masks >= 2:
        v_hat = values.var(axis=2, ddof=1).mean(axis=0)
        p_paper = _normalise(np.sqrt(g_hat**2 + v_hat), "g_hat² + v_hat")
    check_table(rates, p_direct)  # t in (0, 1], increasing
    return PHat(t=rates, g_hat=g_hat, second_moment=second_moment, v_hat=v_hat,
                p_hat_direct=p_direct, p_hat_paper=p_paper, estimator=estimator,
                n_examples=n_examples, n_masks=n_masks)


# ----------------------------------------------------------------------------- the result
@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class PPotsResult:
    """Everything a P-POTS estimation produces: the table, both fits, and the settings."""

    t: np.ndarray
    p_hat: np.ndarray
    epr: EPRFit
    poly7: PolyFit | None
    mix: float
    estimator: str
    eps: float = 1e-3
    p_hat_paper: np.ndarray | None = None
    p_hat_direct: np.ndarray | None = None
    forward_passes: int | None = None
    seconds: float | None = None
    target: str = "loss"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 <= self.mix < 1.0:  # the importance sampler's range: weights <= 1/mix
            raise ValueError(f"mix must be in [0, 1), got {self.mix}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        t, p = check_table(self.t, self.p_hat)
        if t[0] < self.eps:
            raise ValueError(f"t starts at {t[0]}, below eps={self.eps}")
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "p_hat", p)
        for name in ("p_hat_paper", "p_hat_direct"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_table(t, getattr(self, name), name=name)[1])

    def density(self, model: str = "epr", n_grid: int = MIN_GRID_POINTS) -> DensityTable:
        """The unmixed density on ``[eps, 1]`` (the sampler mixes in ``mix`` itself)."""
        if model == "epr":
            return epr_density(self.epr.params, self.eps, n_grid)
        if model == "poly7" and self.poly7 is not None:
            return poly_density(self.poly7, self.eps, n_grid)
        raise ValueError(f"model must be 'epr' or 'poly7' (when fitted), got {model!r}")

    def as_tuple(self, model: str = "epr") -> tuple[np.ndarray, np.ndarray]:
        return self.density(model).as_tuple()


def fit_ppots(t: np.ndarray, p_hat: np.ndarray, *, eps: float = 1e-3, mix: float = 0.05,
              restarts: int = 16, seed: int = 0, estimator: str = "direct",
              p_hat_paper: np.ndarray | None = None, p_hat_direct: np.ndarray | None = None,
              forward_passes: int | None = None, seconds: float | None = None,
              target: str = "loss") -> PPotsResult:
    """Fit EPR and the degree-7 polynomial to a p̂ table and bundle the result (docs/method.md §4)."""
    t, p = check_table(t, p_hat)
    return PPotsResult(t=t, p_hat=p, epr=fit_epr(t, p, restarts=restarts, seed=seed),
                       poly7=fit_poly7(t, p), mix=mix, estimator=estimator, eps=eps,
                       p_hat_paper=p_hat_paper, p_hat_direct=p_hat_direct,
                       forward_passes=forward_passes, seconds=seconds, target=target)


@dataclass(frozen=True, eq=False)
class ModelPHat:
    """p̂ of a model with what it cost: the nested design's forward passes and seconds."""

    phat: PHat
    forward_passes: int
    seconds: float


def model_p_hat(model, batch, *, mask_token_id: int, n_rates: int = 70, n_masks: int = 15,
                eps: float = 1e-3, estimator: str = "direct", normalizer: str = "eligible",
                seed: int = 0, batch_size: int = 128, device=None, progress: bool = True,
                target: str = "loss", layout=None) -> ModelPHat:
    """p̂ for ``model`` on the a examples of ``batch`` (docs/method.md §4 "Estimation").

    The nested design: every example × ``n_rates`` rates on the midpoint grid × ``n_masks``
    Bernoulli masks, losses as the standard estimator defines them (no gradient, eval mode).
    ``target`` (one of :data:`TARGETS`): ``"loss"`` gives P-POTS's ``p̂ ∝ sqrt(E[l² | t])``;
    ``"gradient"`` the gradient-targeted ``p̂ ∝ sqrt(E[‖∇θ l‖² | t])`` from exact per-example
    gradients (a backward pass per loss); ``"logits"`` / ``"bias"`` the same from the free
    proxies (docs/method.md §4 [beyond] "Gradient-targeted densities"). Same seed, same masks.

    ``layout`` (a :class:`~maskdiff.core.blocks.BlockLayout`, ``rates="block"``): block
    diffusion's sampler draws one rate per (example, block), so p̂ is taken over those units —
    the losses are ``(a · blocks, b, c)``, every block of a row masked at the row's rate (one
    forward pass of ``[xt ; x0]`` gives all its blocks); loss target only.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    start = time.perf_counter()
    probe = Estimator(rate_sampler=Uniform(eps=eps), masker=Bernoulli(),
                      mask_token_id=mask_token_id, normalizer=normalizer, layout=layout)
    grid = rates_on_grid(n_rates, eps)
    units = 1 if layout is None else layout.units(batch.x0.shape[1])
    if units > 1 and target != "loss":
        raise ValueError(f"target={target!r} under a block layout: only the loss target is "
                         "estimated per (example, block)")
    fn = (estimator_unit_loss_fn(model, batch, probe, device=device) if units > 1 else
          estimator_loss_fn(model, batch, probe, device=device) if target == "loss" else
          estimator_gradient_fn(model, batch, probe, statistic=target, device=device))
    was_training = model.training
    model.eval()
    try:
        losses = nested_losses(fn, n_examples=len(batch), rates=grid, n_masks=n_masks,
                               batch_size=batch_size, seed=seed, progress=progress, units=units)
    finally:
        model.train(was_training)
    phat = estimate_p_hat(losses, grid.double().numpy(), estimator=estimator)
    return ModelPHat(phat=phat, forward_passes=int(losses.size) // units,
                     seconds=time.perf_counter() - start)


def estimate_ppots(model, batch, *, mask_token_id: int, n_rates: int = 70, n_masks: int = 15,
                   eps: float = 1e-3, estimator: str = "direct", mix: float = 0.05,
                   normalizer: str = "eligible", restarts: int = 16, seed: int = 0,
                   batch_size: int = 128, device=None, progress: bool = True,
                   target: str = "loss", layout=None) -> PPotsResult:
    """:func:`model_p_hat` then :func:`fit_ppots`: the whole P-POTS estimation for a model.

    ``forward_passes`` and ``seconds`` of the result cover the estimation and the fits, so the
    cost can be set against the training run it serves.
    """
    start = time.perf_counter()
    measured = model_p_hat(model, batch, mask_token_id=mask_token_id, n_rates=n_rates,
                           n_masks=n_masks, eps=eps, estimator=estimator, normalizer=normalizer,
                           seed=seed, batch_size=batch_size, device=device, progress=progress,
                           target=target, layout=layout)
    phat = measured.phat
    result = fit_ppots(phat.t, phat.p_hat, eps=eps, mix=mix, restarts=restarts, seed=seed,
                       estimator=estimator, p_hat_paper=phat.p_hat_paper,
                       p_hat_direct=phat.p_hat_direct, forward_passes=measured.forward_passes,
                       target=target)
    return replace(result, seconds=time.perf_counter() - start)


def inverse_rate_density(t: np.ndarray, second_moment: np.ndarray, *, eps: float = 1e-3,
                         n_points: int = 512) -> tuple[dict[str, list[float]], list[float]]:
    """``p(t) ∝ sqrt(a/t + b + c·t)`` fitted to measured ``E[l² | t]`` (docs/method.md §8).

    Under Bernoulli masks the ELBO integrand's second moment is ``A(t)/t + B(t)`` (the masked
    tokens' squared losses over ``t·L²``, plus their cross terms), with ``A``, ``B`` smooth:
    non-negative least squares of ``t·E[l² | t]`` on ``(1, t, t²)``, rows weighted ``√t``
    (the estimate's noise grows like ``1/√t``). Unlike EPR, the form keeps the integrand's
    ``1/t`` singularity below the grid's first rate. Returns the table ``{"t", "p"}`` on
    ``n_points`` rates, log-spaced near ``eps``, and ``[a, b, c]``."""
    from scipy.optimize import nnls

    t, m2 = _as_float64(t), _as_float64(second_moment)
    weight = np.sqrt(t)
    design = np.stack([np.ones_like(t), t, t * t], axis=1) * weight[:, None]
    coef, _ = nnls(design, t * m2 * weight)
    if not coef.sum() > 0:
        raise ValueError("the measured second moments are zero at every rate (all losses zero?)")
    grid = np.unique(np.concatenate([eps + np.geomspace(1e-6, 0.5, n_points // 2),
                                     np.linspace(eps, 1.0, n_points // 2)]).clip(eps, 1.0))
    p = np.sqrt(coef[0] / grid + coef[1] + coef[2] * grid)
    return {"t": grid.tolist(), "p": p.tolist()}, [float(c) for c in coef]
