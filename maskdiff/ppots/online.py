"""Online P-POTS (docs/method.md §4 [beyond]): track E[l² | t] per bin of t from the training losses
themselves (or E[G² | t] of a free gradient-norm proxy G: gradient-targeted P-POTS) and refit the
EPR density during training, all-reduced across ranks."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from maskdiff import jsonio
from maskdiff.core.checks import int_at_least
from maskdiff.ppots.fit import (
    MIN_GRID_POINTS, MIN_TABLE_POINTS, DensityTable, EPRFit, check_table, epr_density, fit_epr,
)


@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class TrackedPHat:
    """p̂ on the midpoints of the bins that have enough counts (sums to 1 over them)."""

    t: np.ndarray
    p_hat: np.ndarray
    second_moment: np.ndarray
    counts: np.ndarray
    dropped: tuple[int, ...]  # indices of bins left out for too few counts


@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class TrackerRefit:
    epr: EPRFit
    density: DensityTable
    table: TrackedPHat


class SecondMomentTracker:
    """Per-bin running estimate of ``E[l² | t]`` from training losses (docs/method.md §4 [beyond]).

    ``l`` may be any per-example statistic drawn at rate ``t``: the loss (P-POTS), or a
    gradient-norm proxy ``G`` (:func:`maskdiff.core.objective.logit_gradient_norms`), whose
    tracked ``E[G² | t]`` gives the gradient-targeted density ``p ∝ sqrt(E[G² | t])``.

    ``update(t, losses, weights)`` takes the per-example losses ``l`` (not ``w·l``) at their rates
    and the sampler's importance weights ``w ∝ 1/p(t)``. Why the weights: a draw at ``t`` estimates
    ``E[l² | t]`` directly, but within a bin the rates follow ``p`` restricted to the bin, so a
    plain average estimates ``∫ m p / ∫ p`` over the bin (``m = E[l² | t]``), which differs from
    the uniform bin average ``(1/h) ∫ m`` by ``≈ (h²/12)·m'·p'/p`` — second order in the bin
    width ``h`` but first order in ``p'/p``, which P-POTS makes large near the ends. The
    self-normalised average ``Σ w l² / Σ w`` estimates the uniform average, so the bins mean the
    same thing as the fixed-grid p̂ (whose midpoint value differs from it by ``h² m''/24``);
    within a narrow bin w is nearly constant, so this costs almost no variance. With ``w = 1``
    (Uniform sampler) both coincide.

    ``decay`` (forget factor γ ≤ 1) multiplies all statistics once per ``update`` call, so the
    estimate follows a drifting model with a memory of ~1/(1-γ) calls. Counts decay too: the
    ``min_count`` of :meth:`p_hat` is compared with the decayed (effective recent) count.

    Distributed use: statistics gathered since the last :meth:`all_reduce_` are kept apart from
    the synced ones, so repeated all-reduces never double count. Call ``update`` the same number
    of times on every rank (once per micro-batch) so the decay agrees, call ``all_reduce_`` on
    every rank before ``p_hat``/``refit`` and before ``state_dict``.
    """

    _ROWS = 4  # count, Σw, Σw·l, Σw·l²

    def __init__(self, n_bins: int = 50, eps: float = 1e-3, decay: float = 1.0) -> None:
        int_at_least(n_bins, "n_bins", minimum=MIN_TABLE_POINTS)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.n_bins, self.eps, self.decay = int(n_bins), float(eps), float(decay)
        self.edges = torch.linspace(self.eps, 1.0, self.n_bins + 1, dtype=torch.float64)
        self._synced = torch.zeros(self._ROWS, self.n_bins, dtype=torch.float64)
        self._pending = torch.zeros_like(self._synced)
        self.updates = 0

    @property
    def midpoints(self) -> np.ndarray:
        return (0.5 * (self.edges[1:] + self.edges[:-1])).numpy()

    def update(self, t: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add per-example losses ``l`` drawn at rates ``t`` with sampler weights ``w`` (default 1)."""
        t = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)
        loss = torch.as_tensor(losses).detach().to("cpu", torch.float64).reshape(-1)
        w = (torch.ones_like(t) if weights is None
             else torch.as_tensor(weights).detach().to("cpu", torch.float64).reshape(-1))
        if not t.shape == loss.shape == w.shape:
            raise ValueError(f"t, losses, weights must have equal length, got {t.numel()}, {loss.numel()}, {w.numel()}")
        if not bool(torch.isfinite(loss).all()):
            raise ValueError("losses must be finite")
        if not bool(((t > 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in (0, 1], got range [{t.min().item()}, {t.max().item()}]")
        if not bool((torch.isfinite(w) & (w > 0)).all()):
            raise ValueError("weights must be finite and > 0")
        if self.decay < 1.0:
            self._synced.mul_(self.decay)
            self._pending.mul_(self.decay)
        # float32 rates may fall a hair below eps or on 1: they belong to the end bins
        index = torch.bucketize(t, self.edges[1:-1], right=True).clamp_(0, self.n_bins - 1)
        rows = torch.stack([torch.ones_like(t), w, w * loss, w * loss * loss])
        self._pending.index_add_(1, index, rows)
        self.updates += 1

    def _totals(self) -> torch.Tensor:
        return self._synced + self._pending

    def moments(self) -> dict[str, np.ndarray]:
        """Per bin: ``count``, ``mean`` = E_w[l], ``second_moment`` = E_w[l²] (NaN if empty)."""
        count, sum_w, sum_wl, sum_wl2 = self._totals().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return dict(t=self.midpoints, count=count, mean=sum_wl / sum_w, second_moment=sum_wl2 / sum_w)

    def p_hat(self, min_count: float = 20.0) -> TrackedPHat:
        """``p̂ ∝ sqrt(E[l² | t])`` on the midpoints of bins with at least ``min_count`` draws.

        Bins below ``min_count`` are left out (listed in ``dropped``), never filled in: the EPR
        fit works on any increasing grid. Fewer than 8 usable bins → ValueError.
        """
        if min_count <= 0:
            raise ValueError(f"min_count must be > 0, got {min_count}")
        stats = self.moments()
        keep = stats["count"] >= min_count
        if keep.sum() < MIN_TABLE_POINTS:
            raise ValueError(f"only {int(keep.sum())} of {self.n_bins} bins have >= {min_count} draws "
                             f"(need {MIN_TABLE_POINTS}); track longer or lower min_count")
        second = stats["second_moment"][keep]
        t, p = check_table(stats["t"][keep], np.sqrt(second), name="tracked p_hat")
        return TrackedPHat(t=t, p_hat=p, second_moment=second, counts=stats["count"][keep],
                           dropped=tuple(int(i) for i in np.flatnonzero(~keep)))

    def refit(self, *, min_count: float = 20.0, restarts: int = 8, seed: int = 0,
              init: dict[str, float] | None = None, n_grid: int = MIN_GRID_POINTS) -> TrackerRefit:
        """Fit EPR to the tracked p̂ (warm-started from ``init``, e.g. the previous fit) and
        tabulate it on ``[eps, 1]``."""
        table = self.p_hat(min_count)
        fit = fit_epr(table.t, table.p_hat, restarts=restarts, seed=seed, init=init)
        return TrackerRefit(epr=fit, density=epr_density(fit.params, self.eps, n_grid), table=table)

    def all_reduce_(self, group=None) -> None:
        """Sum the statistics gathered since the last call across ranks (no-op on one process)."""
        pending = self._pending
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buffer = pending.clone()
            if torch.distributed.get_backend(group) == "nccl":  # NCCL reduces CUDA tensors only
                buffer = buffer.to(torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM, group=group)
            pending = buffer.cpu()
        self._synced += pending
        self._pending.zero_()

    def state_dict(self) -> dict:
        """Plain tensors and numbers (loads with ``torch.load(weights_only=True)``)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1 and bool(self._pending.any()):
            raise RuntimeError("SecondMomentTracker.state_dict: call all_reduce_() on every rank first, "
                               "or each rank's unsynced statistics would be lost or counted twice")
        return dict(n_bins=self.n_bins, eps=self.eps, decay=self.decay, updates=self.updates,
                    synced=self._synced.clone(), pending=self._pending.clone())

    def load_state_dict(self, state: dict) -> None:
        for key in ("n_bins", "eps"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state {key}={state[key]} does not match this tracker's {getattr(self, key)}")
        for key in ("synced", "pending"):
            if tuple(state[key].shape) != (self._ROWS, self.n_bins):
                raise ValueError(f"state {key} has shape {tuple(state[key].shape)}, expected {(self._ROWS, self.n_bins)}")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self._synced = state["synced"].to(torch.float64).clone()
        self._pending = state["pending"].to(torch.float64).clone()


class OnlineRefitter:
    """Keeps an :class:`~maskdiff.core.samplers.Importance` sampler's density fresh during training
    (docs/method.md §4 [beyond]): tracks ``E[l² | t]`` from the training losses and refits EPR every
    ``refit_every`` steps. Both trainers use it: the native one builds it with
    :meth:`from_config`, the Hugging Face one around the tracker its user hands it.

    Every rank calls :meth:`after_step` with its *local* per-example ``t``, plain loss ``l`` and
    weight ``w``; the statistics are all-reduced at once, so every rank fits the same table with
    the same seed and draws from the same density. A failed fit (too few filled bins early on)
    keeps the current density and is reported, not raised.

    ``statistic`` names what the caller feeds as ``losses``: ``"loss"`` (the raw loss ``l``)
    or a gradient-norm proxy (``"logits"``, ``"bias"``: ``EstimatorOutput.grad_proxy``).
    """

    def __init__(self, sampler, tracker: SecondMomentTracker, *, refit_every: int,
                 min_count: float, restarts: int, statistic: str = "loss") -> None:
        if not hasattr(sampler, "set_density"):
            raise ValueError(f"online P-POTS needs an importance sampler, got {sampler!r}")
        from maskdiff.core.config import REFIT_STATISTICS

        if statistic not in REFIT_STATISTICS:
            raise ValueError(f"statistic must be one of {REFIT_STATISTICS}, got {statistic!r}")
        self.statistic = statistic
        self.sampler, self.tracker = sampler, tracker
        self.refit_every, self.min_count, self.restarts = refit_every, min_count, restarts
        self.params: dict[str, float] | None = None
        self.refits = 0

    @classmethod
    def from_config(cls, config, sampler) -> "OnlineRefitter":
        """From a :class:`maskdiff.core.config.RefitConfig`, with a tracker on the sampler's range."""
        if not hasattr(sampler, "set_density"):
            raise ValueError(f"online P-POTS needs an importance sampler, got {sampler!r}")
        tracker = SecondMomentTracker(config.n_bins, eps=sampler.eps, decay=config.decay)
        return cls(sampler, tracker, refit_every=config.refit_every, min_count=config.min_count,
                   restarts=config.restarts, statistic=config.statistic)

    def after_step(self, step: int, t: torch.Tensor, losses: torch.Tensor,
                   weights: torch.Tensor) -> dict | None:
        """Fold in one step's losses; at a refit step, refit and return a log record."""
        self.tracker.update(t, losses, weights)
        self.tracker.all_reduce_()
        if step % self.refit_every != 0:
            return None
        try:
            refit = self.tracker.refit(min_count=self.min_count, restarts=self.restarts,
                                       seed=step, init=self.params)
        except ValueError as err:  # not enough filled bins yet
            return {"step": step, "refit": None, "reason": str(err)}
        self.sampler.set_density(refit.density.as_tuple())
        self.params, self.refits = dict(refit.epr.params), self.refits + 1
        return {"step": step, "refit": self.refits, "kl": refit.epr.kl, "params": self.params,
                "bins_used": int(refit.table.t.size)}

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "refits": self.refits,
                "params": jsonio.dumps(self.params)}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.refits = int(state["refits"])
        self.params = json.loads(state["params"])


