"""Bell-shaped and annealed rate samplers (docs/method.md §3, "Bell-shaped rates" and
"Annealed windows").

- :class:`Bell` draws ``t`` from a bell-shaped density on [eps, 1] with ``w = 1``: bell-shaped
  time sampling as arXiv 2605.13026 trains with it. It *changes* the objective: its declared
  target is its own density (:meth:`Bell.target_pdf`), not U[eps, 1].
- :class:`BellImportance` draws from the same density mixed with the uniform one and weights
  ``w = 1/((1 - eps)·p(t))``: unbiased for U[eps, 1], so the full-range ELBO stays the
  objective. It is :class:`~maskdiff.core.samplers.Importance` with the density given by name.
- :class:`Annealed` [beyond]: a window early in training that widens linearly in steps to
  U[eps, 1]; biased while narrower, unbiased after.

The exact density of 2605.13026 could not be read from the sources at hand (only its abstract:
"bell-shaped time sampling"), so the family is a stand-in: a symmetric Beta(α, α) (α = 1 is
uniform) or a logit-normal(μ, σ). docs/method.md §3 says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from maskdiff.core.samplers import (
    DEFAULT_EPS, Importance, RateSampler, Window, _as_output, _check_eps,
    _PiecewiseLinearDensity, register_sampler,
)

FAMILIES = ("beta", "logit_normal")


def bell_pdf(family: str = "beta", alpha: float = 4.0, mu: float = 0.0,
             sigma: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The density on (0, 1) of a bell family, as a callable on float64 tensors (not
    normalised to [eps, 1]): ``beta``, ``Γ(2α)/Γ(α)² · t^(α-1)(1-t)^(α-1)`` (α >= 1), or
    ``logit_normal``, ``exp(-(logit t - μ)²/(2σ²)) / (σ√(2π)·t(1-t))``. Both are 0 at t = 1
    (Beta for α > 1), so ``1/p`` is unbounded there: the importance-weighted form mixes."""
    if family not in FAMILIES:
        raise ValueError(f"bell family must be one of {FAMILIES}, got family={family!r}")
    if family == "beta":
        if not (math.isfinite(alpha) and alpha >= 1.0):
            raise ValueError(f"the beta bell needs alpha >= 1 (alpha = 1 is uniform), got "
                             f"alpha={alpha}")
        log_norm = math.lgamma(2 * alpha) - 2 * math.lgamma(alpha)

        def beta(t: torch.Tensor) -> torch.Tensor:
            t = t.double()
            if alpha == 1.0:
                return torch.ones_like(t)
            inner = t.clamp(0.0, 1.0) * (1.0 - t.clamp(0.0, 1.0))
            return torch.exp(log_norm + (alpha - 1.0) * torch.log(inner))

        return beta
    if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(mu)):
        raise ValueError(f"the logit_normal bell needs a finite mu and sigma > 0, got "
                         f"mu={mu}, sigma={sigma}")

    def logit_normal(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        inside = (t > 0) & (t < 1)
        s = torch.where(inside, t, torch.full_like(t, 0.5))
        z = (torch.log(s) - torch.log1p(-s) - mu) / sigma
        p = torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi) * s * (1 - s))
        return torch.where(inside, p, torch.zeros_like(p))

    return logit_normal


def _family_config(family: str, alpha: float, mu: float, sigma: float) -> dict[str, Any]:
    return ({"family": family, "alpha": float(alpha)} if family == "beta"
            else {"family": family, "mu": float(mu), "sigma": float(sigma)})


@register_sampler
class Bell(RateSampler):
    """Bell-shaped time sampling (arXiv 2605.13026's training recipe): ``t ~ p`` on [eps, 1],
    ``w = 1``. A biased objective: its target is ``p`` itself (:meth:`target_pdf`).

    ``p`` (:func:`bell_pdf`) is tabulated on ``n_grid`` points of [eps, 1] and drawn by exact
    inversion of that table's CDF (the machinery of :class:`Importance`), so :meth:`target_pdf`
    is the density the draws follow."""

    name = "bell"

    def __init__(self, family: str = "beta", alpha: float = 4.0, mu: float = 0.0,
                 sigma: float = 1.0, eps: float = DEFAULT_EPS, n_grid: int = 4096) -> None:
        self.eps = _check_eps(eps)
        if n_grid < 4096:
            raise ValueError(f"n_grid must be at least 4096 (docs/method.md §3), got n_grid={n_grid}")
        pdf = bell_pdf(family, alpha, mu, sigma)
        self.family, self.alpha, self.mu, self.sigma = family, float(alpha), float(mu), float(sigma)
        self.n_grid = int(n_grid)
        grid = np.linspace(self.eps, 1.0, self.n_grid)
        self._density = _PiecewiseLinearDensity(grid, pdf(torch.from_numpy(grid)).numpy())

    def target_interval(self) -> tuple[float, float]:
        return (self.eps, 1.0)

    def target_pdf(self, t: torch.Tensor) -> torch.Tensor:
        """The density the draws follow (normalised on [eps, 1]), which is also the target."""
        t = t.double()
        inside = (t >= self.eps) & (t <= 1.0)
        return torch.from_numpy(self._density.pdf(t.cpu().numpy())) * inside

    def target(self) -> tuple:
        return ("bell", *self.config().items())

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        t = torch.from_numpy(self._density.inverse_cdf(u.double().cpu().numpy()))
        return _as_output(t, torch.ones_like(t))

    def config(self) -> dict[str, Any]:
        return {**_family_config(self.family, self.alpha, self.mu, self.sigma), "eps": self.eps,
                "n_grid": self.n_grid}


@register_sampler
class BellImportance(Importance):
    """The unbiased form of :class:`Bell`: ``t ~ (1 - mix)·p + mix·U`` on [eps, 1],
    ``w = 1/((1 - eps)·p_mix(t))`` (:class:`Importance` with ``p`` named by its family).

    The bell densities vanish at t = 1, where the loss does not, so ``1/p`` alone has infinite
    variance for Beta α >= 2; the uniform share ``mix`` (default 0.05) bounds ``w <= 1/mix``
    and keeps the estimator unbiased for U[eps, 1]. Stateless (not refitted)."""

    name = "bell_iw"

    def __init__(self, family: str = "beta", alpha: float = 4.0, mu: float = 0.0,
                 sigma: float = 1.0, mix: float = 0.05, stratified: bool = False,
                 eps: float = DEFAULT_EPS, n_grid: int = 4096) -> None:
        super().__init__(bell_pdf(family, alpha, mu, sigma), mix=mix, stratified=stratified,
                         eps=eps, n_grid=n_grid)
        self.family, self.alpha, self.mu, self.sigma = family, float(alpha), float(mu), float(sigma)

    def config(self) -> dict[str, Any]:
        return {**_family_config(self.family, self.alpha, self.mu, self.sigma), "mix": self.mix,
                "stratified": self.stratified, "eps": self.eps, "n_grid": self.n_grid}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state) -> None:
        RateSampler.load_state_dict(self, state)


@register_sampler
class Annealed(RateSampler):
    """[beyond] A window that widens linearly in steps to U[eps, 1] (docs/method.md §3).

    At training step ``s`` (0-based) the rates are uniform on
    ``[a·(1 - f), b + (1 - b)·f]`` (the lower end floored at eps), ``f = min(1, s / (widen_fraction
    · total_steps))``, ``w = 1``, with ``start = (a, b)``: the start window at step 0, U[eps, 1]
    from step ``widen_fraction · total_steps`` on. The estimator draws step ``s`` with
    :meth:`at_step` (its BatchRandomness's step), so a resumed run and every rank draw the same
    rates; nothing is stored. ``total_steps`` is the run's ``optim.max_steps`` unless configured
    (``run_params``); without one the schedule stays at its start (what a diagnostic on a starting
    checkpoint measures), with a warning. :meth:`sample` / :meth:`sample_at` draw step 0.
    """

    name = "annealed"
    run_params = {"total_steps": "max_steps"}

    def __init__(self, start: Sequence[float] = (0.45, 0.55), widen_fraction: float = 0.5,
                 total_steps: int | None = None, eps: float = DEFAULT_EPS) -> None:
        self.eps = _check_eps(eps)
        if len(start) != 2:
            raise ValueError(f"annealed start must be a window (t_min, t_max), got start={start!r}")
        self.start = (float(start[0]), float(start[1]))
        Window(*self.start, eps=self.eps)  # checks the window
        if not (0.0 < widen_fraction <= 1.0):
            raise ValueError(f"annealed widen_fraction must lie in (0, 1], got "
                             f"widen_fraction={widen_fraction}")
        if total_steps is not None and (isinstance(total_steps, bool) or int(total_steps) != total_steps
                                        or total_steps < 1):
            raise ValueError(f"annealed total_steps must be an integer >= 1 (the run's "
                             f"optim.max_steps), got total_steps={total_steps!r}")
        self.widen_fraction = float(widen_fraction)
        self.total_steps = None if total_steps is None else int(total_steps)
        self._warned = False

    def fraction(self, step: int) -> float:
        """How far the window has widened at ``step``: 0 at the start, 1 at U[eps, 1]."""
        if self.total_steps is None:
            if step > 0 and not self._warned:
                warnings.warn("annealed sampler without total_steps (the run's optim.max_steps): "
                              "its window stays at the start", stacklevel=3)
                self._warned = True
            return 0.0
        return min(1.0, max(0, int(step)) / (self.widen_fraction * self.total_steps))

    def window_at(self, step: int) -> tuple[float, float]:
        """The interval ``(t_min, t_max)`` of step ``step`` (before the eps floor)."""
        f = self.fraction(step)
        a, b = self.start
        return (a * (1.0 - f), b + (1.0 - b) * f)

    def at_step(self, step: int) -> RateSampler:
        return Window(*self.window_at(step), eps=self.eps)

    def target_interval(self) -> tuple[float, float]:
        return self.at_step(0).target_interval()

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        return self.at_step(0).sample_at(u, positions, global_batch_size, batch_generator)

    def config(self) -> dict[str, Any]:
        out = {"start": list(self.start), "widen_fraction": self.widen_fraction, "eps": self.eps}
        return out if self.total_steps is None else {**out, "total_steps": self.total_steps}


__all__ = ["Annealed", "Bell", "BellImportance", "FAMILIES", "bell_pdf"]
