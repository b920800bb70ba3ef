"""Masking-rate samplers (docs/method.md §3).

Every sampler returns ``(t, w)`` for a batch, float32 tensors of shape (n,), such that
``E[w(t)·f(t)] = E_{t~target}[f(t)]`` for the target distribution it declares through
:meth:`RateSampler.target_interval` (the target is uniform on that interval).

A sampler turns one uniform draw per example into a rate. :meth:`RateSampler.sample` draws those
uniforms from one generator (the simple API); :meth:`RateSampler.sample_at` takes them ready-made
together with the examples' positions in the *global* batch and a batch generator shared by all
ranks, which is how the trainer gets per-example seeding (docs/architecture.md §3) and rank-independent
stratification.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from maskdiff.core.registry import Registry

DEFAULT_EPS = 1e-3

Density = Callable[[torch.Tensor], torch.Tensor] | tuple[Sequence[float], Sequence[float]]


def _check_eps(eps: float) -> float:
    if not (0.0 < eps < 1.0) or not math.isfinite(eps):
        raise ValueError(f"eps must lie in (0, 1), got eps={eps}")
    return float(eps)


class RateSampler(ABC):
    """A masking-rate sampler: ``sample(n, generator) -> (t, w)``."""

    name: ClassVar[str]

    @abstractmethod
    def target_interval(self) -> tuple[float, float]:
        """The target distribution is U[lo, hi]: the weighted draws are unbiased for it."""

    @abstractmethod
    def sample_at(
        self,
        u: torch.Tensor,
        positions: torch.Tensor,
        global_batch_size: int,
        batch_generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rates and weights from per-example uniforms ``u`` (float64, shape (n,)).

        ``positions`` (long, (n,)) are the examples' positions in the global batch of size
        ``global_batch_size``; ``batch_generator`` is identical on every rank.
        """

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` rates and weights from one generator (the batch is the global batch)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got n={n}")
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sample_at(u, torch.arange(n), n, generator)

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this sampler through :func:`build_sampler`."""
        return {}

    # Constructor arguments the training run supplies where a configuration leaves them out:
    # {argument: run field}, e.g. the annealed schedule's {"total_steps": "max_steps"}
    # (filled by EstimatorConfig.build(run=...); docs/method.md §3).
    run_params: ClassVar[dict[str, str]] = {}

    def at_step(self, step: int) -> "RateSampler":
        """The sampler that draws training step ``step`` (0-based; the estimator asks with every
        BatchRandomness): itself unless it follows a schedule. A function of the step alone, so
        a resumed run and every rank draw the same."""
        return self

    def target_pdf(self, t: torch.Tensor) -> torch.Tensor:
        """The target's density at ``t`` (float64): uniform on :meth:`target_interval` unless
        the sampler says otherwise (a biased bell sampler's target is its own density)."""
        lo, hi = self.target_interval()
        t = t.double()
        return ((t >= lo) & (t <= hi)).double() / (hi - lo)

    def target(self) -> tuple:
        """A hashable name of the target: samplers with equal targets estimate the same
        objective (``("uniform", lo, hi)`` unless the sampler says otherwise)."""
        return ("uniform", *self.target_interval())

    # Stateless by default; adaptive samplers (online P-POTS) override both.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless, got state keys {list(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if not callable(v))
        return f"{type(self).__name__}({args})"


def _as_output(t: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.to(torch.float32), w.to(torch.float32)


SAMPLERS: Registry[RateSampler] = Registry("sampler")


def register_sampler(cls: type[RateSampler]) -> type[RateSampler]:
    """Class decorator: make ``cls`` buildable by its ``name`` through :func:`build_sampler`."""
    return SAMPLERS.register(cls)


def build_sampler(name: str, **kwargs: Any) -> RateSampler:
    """Build a registered sampler by name, e.g. ``build_sampler("window", t_min=0.4, t_max=0.5)``."""
    return SAMPLERS.build(name, **kwargs)


@register_sampler
class Uniform(RateSampler):
    """``t = eps + (1 - eps)·u``, ``w = 1``: the standard sampler, unbiased for U[eps, 1]."""

    name = "uniform"

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        self.eps = _check_eps(eps)

    def target_interval(self) -> tuple[float, float]:
        return (self.eps, 1.0)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        t = self.eps + (1.0 - self.eps) * u
        return _as_output(t, torch.ones_like(t))

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps}


@register_sampler
class Window(RateSampler):
    """The signal-rich window U[t_min, t_max], ``w = 1`` (parity paper §5).

    Deliberately biased against the full objective: it *changes* the objective. ``eps`` is a
    floor on the window's lower end (``max(t_min, eps)``) so that ``1/t`` stays bounded when
    ``t_min = 0``, as in the parity paper's U[0, t1].
    """

    name = "window"

    def __init__(self, t_min: float, t_max: float, eps: float = DEFAULT_EPS) -> None:
        self.eps = _check_eps(eps)
        if not (0.0 <= t_min < t_max <= 1.0):
            raise ValueError(
                f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}"
            )
        if t_max <= self.eps:
            raise ValueError(f"t_max={t_max} must exceed eps={self.eps}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def target_interval(self) -> tuple[float, float]:
        return (max(self.t_min, self.eps), self.t_max)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        lo, hi = self.target_interval()
        t = lo + (hi - lo) * u
        return _as_output(t, torch.ones_like(t))

    def config(self) -> dict[str, Any]:
        return {"t_min": self.t_min, "t_max": self.t_max, "eps": self.eps}


@register_sampler
class Clipped(Window):
    """The clipped schedule baseline (variance paper §4, after Block Diffusion): U[low, high]."""

    name = "clipped"

    def __init__(self, low: float = 0.45, high: float = 0.95, eps: float = DEFAULT_EPS) -> None:
        if not (0.0 <= low < high <= 1.0):
            raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
        super().__init__(low, high, eps)

    def config(self) -> dict[str, Any]:
        return {"low": self.t_min, "high": self.t_max, "eps": self.eps}


def stratum_layout(
    global_batch_size: int, batch_generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """StraTS's stratum of every position of a global batch of size n (docs/method.md §3).

    ``k = ceil(sqrt(n))`` strata; position p < k·floor(n/k) goes to stratum ``p mod k``, so each
    stratum gets ``floor(n/k)`` draws; the ``n mod k`` leftover positions go to distinct strata
    chosen uniformly at random (each leftover draw is then marginally uniform, so the
    estimator stays unbiased). Depends only on ``n`` and the shared batch generator, so every
    rank computes the same layout. Returns ``(layout, k)``.
    """
    n = int(global_batch_size)
    if n <= 0:
        return torch.empty(0, dtype=torch.long), 1
    k = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
    per_stratum = n // k
    regular = torch.arange(per_stratum * k) % k
    leftovers = torch.randperm(k, generator=batch_generator)[: n - per_stratum * k]
    return torch.cat([regular, leftovers]), k


def _stratify(u: torch.Tensor, positions: torch.Tensor, global_batch_size: int,
              batch_generator: torch.Generator) -> torch.Tensor:
    """Map per-example uniforms into their strata: ``(stratum + u) / k`` in [0, 1)."""
    layout, k = stratum_layout(global_batch_size, batch_generator)
    strata = layout[positions.long()].to(u.dtype)
    return (strata + u) / k


@register_sampler
class Stratified(RateSampler):
    """StraTS (variance paper §3.2.3, A.5.5): stratified rates over [eps, 1], ``w = 1``.

    ``t = eps + (1 - eps)·(stratum + u)/k`` with the strata of :func:`stratum_layout`, assigned
    by position in the *global* batch. Unbiased for U[eps, 1]; reduces masking-rate noise B.
    """

    name = "stratified"

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        self.eps = _check_eps(eps)

    def target_interval(self) -> tuple[float, float]:
        return (self.eps, 1.0)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        v = _stratify(u, positions, global_batch_size, batch_generator)
        t = self.eps + (1.0 - self.eps) * v
        return _as_output(t, torch.ones_like(t))

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps}


class _PiecewiseLinearDensity:
    """A density on a grid, linear between grid points, normalised exactly on [eps, 1].

    Inverse-CDF sampling inverts the piecewise-quadratic CDF exactly, so the weight ``1/p(t)``
    is evaluated on the very density the draws come from: no interpolation bias.
    """

    def __init__(self, grid: np.ndarray, values: np.ndarray) -> None:
        widths = np.diff(grid)
        mass = widths * (values[:-1] + values[1:]) / 2.0
        total = mass.sum()
        self.grid = grid
        self.values = values / total
        self.cdf = np.concatenate([[0.0], np.cumsum(mass / total)])
        self.cdf[-1] = 1.0

    def pdf(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.grid, self.values)

    def inverse_cdf(self, v: np.ndarray) -> np.ndarray:
        cell = np.clip(np.searchsorted(self.cdf, v, side="right") - 1, 0, len(self.grid) - 2)
        t0, h = self.grid[cell], self.grid[cell + 1] - self.grid[cell]
        p0, p1 = self.values[cell], self.values[cell + 1]
        slope = (p1 - p0) / h
        need = v - self.cdf[cell]
        # Solve p0·x + slope·x²/2 = need for x in [0, h]; the rationalised root is stable when
        # slope is ~0 and avoids cancellation.
        disc = np.maximum(p0 * p0 + 2.0 * slope * need, 0.0)
        denom = p0 + np.sqrt(disc)
        x = np.where(denom > 0, 2.0 * need / np.where(denom > 0, denom, 1.0), 0.0)
        return t0 + np.clip(x, 0.0, h)


@register_sampler
class Importance(RateSampler):
    """P-POTS's importance sampler (docs/method.md §3, §4): ``t ~ p``, ``w = 1 / ((1-eps)·p(t))``.

    ``density`` is a callable on a float64 tensor of t in [eps, 1], or a table ``(t, p)`` (or a
    mapping with keys ``t`` and ``p``) interpolated linearly. It is tabulated on ``n_grid``
    points of [eps, 1], normalised by exact quadrature of the piecewise-linear table, and
    mixed with the uniform density, ``p <- (1 - mix)·p + mix/(1 - eps)``, which bounds the
    weights by ``1/mix`` (``mix`` and ``eps`` default to a fitted mapping's own keys, else
    0.05 and 1e-3) (the safety guard of docs/method.md §4 "Safety"; ``mix = 0`` disables it). The target is
    U[eps, 1]: the constant ``1 - eps`` of the uniform density is folded into ``w``.

    ``stratified=True`` stratifies the uniforms in quantile space (docs/method.md §3 [beyond]):
    ``t = F^-1((stratum + u)/k)`` with the strata of StraTS; still unbiased.
    """

    name = "importance"

    def __init__(
        self,
        density: Density | Mapping[str, Sequence[float]],
        mix: float | None = None,
        stratified: bool = False,
        eps: float | None = None,
        n_grid: int = 4096,
    ) -> None:
        # A fitted table (maskdiff.ppots.density_from_ppots) carries its file's mix and eps:
        # they hold unless given here.
        fitted = density if isinstance(density, Mapping) else {}
        mix = fitted.get("mix", 0.05) if mix is None else mix
        self.eps = _check_eps(fitted.get("eps", DEFAULT_EPS) if eps is None else eps)
        if not (0.0 <= mix < 1.0):
            raise ValueError(f"mix must lie in [0, 1), got mix={mix}")
        if n_grid < 4096:
            raise ValueError(f"n_grid must be at least 4096 (docs/method.md §3), got n_grid={n_grid}")
        self.mix, self.stratified, self.n_grid = float(mix), bool(stratified), int(n_grid)
        self.grid = np.linspace(self.eps, 1.0, self.n_grid)
        self.set_density(density)

    def set_density(self, density: Density | Mapping[str, Sequence[float]]) -> None:
        """Replace the density (online P-POTS refits call this)."""
        raw = _tabulate(density, self.grid)
        base = _PiecewiseLinearDensity(self.grid, raw)
        mixed = (1.0 - self.mix) * base.values + self.mix / (1.0 - self.eps)
        self._density = _PiecewiseLinearDensity(self.grid, mixed)

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        """The normalised, mixed density on [eps, 1] (float64)."""
        return torch.from_numpy(self._density.pdf(t.double().cpu().numpy()))

    def target_interval(self) -> tuple[float, float]:
        return (self.eps, 1.0)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        if self.stratified:
            u = _stratify(u, positions, global_batch_size, batch_generator)
        t = self._density.inverse_cdf(u.double().cpu().numpy())
        w = 1.0 / ((1.0 - self.eps) * self._density.pdf(t))
        return _as_output(torch.from_numpy(t), torch.from_numpy(w))

    def config(self) -> dict[str, Any]:
        return {
            "density": {"t": self.grid.tolist(), "p": self._density.values.tolist()},
            "mix": 0.0,  # the stored table is already mixed
            "stratified": self.stratified,
            "eps": self.eps,
            "n_grid": self.n_grid,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"density": torch.from_numpy(self._density.values.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = torch.as_tensor(state["density"], dtype=torch.float64).numpy()
        if values.shape != self.grid.shape:
            raise ValueError(
                f"density state has {values.shape[0]} points, this sampler's grid has {self.n_grid}"
            )
        self._density = _PiecewiseLinearDensity(self.grid, values)


def _tabulate(density: Any, grid: np.ndarray) -> np.ndarray:
    """Evaluate a density argument on ``grid`` and check it is a usable density."""
    if isinstance(density, Mapping):
        if "t" not in density or "p" not in density:
            raise ValueError(f"a density mapping needs keys 't' and 'p', got {sorted(density)}")
        density = (density["t"], density["p"])
    if callable(density):
        values = np.asarray(
            torch.as_tensor(density(torch.from_numpy(grid.copy())), dtype=torch.float64)
        )
        if values.shape != grid.shape:
            raise ValueError(
                f"density callable returned shape {values.shape} for {grid.shape[0]} points"
            )
    elif isinstance(density, tuple) and len(density) == 2:
        t_tab = np.asarray(density[0], dtype=np.float64)
        p_tab = np.asarray(density[1], dtype=np.float64)
        if t_tab.ndim != 1 or t_tab.shape != p_tab.shape or t_tab.size < 2:
            raise ValueError(
                f"density table needs two 1-D arrays of equal length >= 2, "
                f"got t {t_tab.shape} and p {p_tab.shape}"
            )
        if not np.all(np.isfinite(t_tab)) or np.any(np.diff(t_tab) <= 0):
            raise ValueError("density table t must be finite and strictly increasing")
        values = np.interp(grid, t_tab, p_tab)
        if not np.all(np.isfinite(p_tab)) or np.any(p_tab < 0):
            bad = p_tab[~np.isfinite(p_tab) | (p_tab < 0)][0]
            raise ValueError(f"density must be finite and non-negative, got p={bad}")
    else:
        raise ValueError(
            f"density must be a callable, a (t, p) table or a {{'t', 'p'}} mapping, "
            f"got {type(density).__name__}"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = values[~np.isfinite(values) | (values < 0)][0]
        raise ValueError(f"density must be finite and non-negative on [eps, 1], got p={bad}")
    if float(np.sum(np.diff(grid) * (values[:-1] + values[1:]))) <= 0:
        raise ValueError("density integrates to 0 on [eps, 1]")
    return values
