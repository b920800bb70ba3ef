"""P-POTS estimation (SPEC §4; variance paper §3.1.1, A.5.2): p̂ from nested losses, the online
second-moment tracker, and the result file (JSON + plot).

The fits themselves (EPR, degree-7 polynomial, density tables) live in :mod:`maskdiff.ppots_fit`
and are re-exported here, so ``from maskdiff.ppots import fit_epr, DensityTable`` works.

Normalisation used throughout: a table ``p̂_j`` sums to 1 over its grid (the paper's convention,
what the KL fit compares); a :class:`DensityTable` integrates to 1 over ``[eps, 1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from maskdiff.ppots_fit import (  # noqa: F401  (re-exported API)
    EPR_KEYS, MIN_GRID_POINTS, MIN_TABLE_POINTS, DensityTable, EPRFit, PolyFit, check_table,
    epr_density, epr_log_p, epr_p, fit_epr, fit_poly7, poly_density,
)

ESTIMATORS = ("direct", "paper")
JSON_FORMAT = "maskdiff.ppots"
JSON_VERSION = 1


# ----------------------------------------------------------------------------- p̂ from losses
@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class PHat:
    """Per-rate statistics of a nested loss array ``l_ijk`` (a examples, b rates, c masks).

    ``g_hat`` mean of l; ``second_moment`` mean over (i, k) of l² (unbiased for E[l² | t]);
    ``v_hat`` the paper's mean over i of the per-example sample variance over k (None if c < 2);
    ``p_hat_direct ∝ sqrt(second_moment)`` (SPEC §4 [fix]); ``p_hat_paper ∝ sqrt(g_hat² + v_hat)``;
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
    """Estimate p̂ on the rates ``t`` (b,) from losses (a, b, c) (SPEC §4 "Estimation").

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


# ----------------------------------------------------------------------------- online tracker
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
    """Per-bin running estimate of ``E[l² | t]`` from training losses (SPEC §4 [beyond]).

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
        if int(n_bins) != n_bins or n_bins < MIN_TABLE_POINTS:
            raise ValueError(f"n_bins must be an integer >= {MIN_TABLE_POINTS}, got {n_bins}")
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
    """Keeps an :class:`~maskdiff.samplers.Importance` sampler's density fresh during training
    (SPEC §4 [beyond]): tracks ``E[l² | t]`` from the training losses and refits EPR every
    ``refit_every`` steps. ``config`` is a :class:`maskdiff.config.RefitConfig`.

    Every rank calls :meth:`after_step` with its *local* per-example ``t``, plain loss ``l`` and
    weight ``w``; the statistics are all-reduced at once, so every rank fits the same table with
    the same seed and draws from the same density. A failed fit (too few filled bins early on)
    keeps the current density and is reported, not raised.
    """

    def __init__(self, config, sampler) -> None:
        if not hasattr(sampler, "set_density"):
            raise ValueError(f"online P-POTS needs an importance sampler, got {sampler!r}")
        self.config, self.sampler = config, sampler
        self.tracker = SecondMomentTracker(config.n_bins, eps=sampler.eps, decay=config.decay)
        self.params: dict[str, float] | None = None
        self.refits = 0

    def after_step(self, step: int, t: torch.Tensor, losses: torch.Tensor,
                   weights: torch.Tensor) -> dict | None:
        """Fold in one step's losses; at a refit step, refit and return a log record."""
        self.tracker.update(t, losses, weights)
        self.tracker.all_reduce_()
        if step % self.config.refit_every != 0:
            return None
        try:
            refit = self.tracker.refit(min_count=self.config.min_count,
                                       restarts=self.config.restarts, seed=step, init=self.params)
        except ValueError as err:  # not enough filled bins yet
            return {"step": step, "refit": None, "reason": str(err)}
        self.sampler.set_density(refit.density.as_tuple())
        self.params, self.refits = dict(refit.epr.params), self.refits + 1
        return {"step": step, "refit": self.refits, "kl": refit.epr.kl, "params": self.params,
                "bins_used": int(refit.table.t.size)}

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "refits": self.refits,
                "params": json.dumps(self.params)}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.refits = int(state["refits"])
        self.params = json.loads(state["params"])


# ----------------------------------------------------------------------------- result + JSON
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
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
              forward_passes: int | None = None, seconds: float | None = None) -> PPotsResult:
    """Fit EPR and the degree-7 polynomial to a p̂ table and bundle the result (SPEC §4)."""
    t, p = check_table(t, p_hat)
    return PPotsResult(t=t, p_hat=p, epr=fit_epr(t, p, restarts=restarts, seed=seed),
                       poly7=fit_poly7(t, p), mix=mix, estimator=estimator, eps=eps,
                       p_hat_paper=p_hat_paper, p_hat_direct=p_hat_direct,
                       forward_passes=forward_passes, seconds=seconds)


@dataclass(frozen=True, eq=False)
class ModelPHat:
    """p̂ of a model with what it cost: the nested design's forward passes and seconds."""

    phat: PHat
    forward_passes: int
    seconds: float


def model_p_hat(model, batch, *, mask_token_id: int, n_rates: int = 70, n_masks: int = 15,
                eps: float = 1e-3, estimator: str = "direct", normalizer: str = "eligible",
                seed: int = 0, batch_size: int = 128, device=None, progress: bool = True) -> ModelPHat:
    """p̂ for ``model`` on the a examples of ``batch`` (SPEC §4 "Estimation").

    The nested design: every example × ``n_rates`` rates on the midpoint grid × ``n_masks``
    Bernoulli masks, losses as the standard estimator defines them (no gradient, eval mode).
    """
    import time

    from maskdiff.masking import Bernoulli
    from maskdiff.nested import nested_losses, rates_on_grid
    from maskdiff.objective import Estimator
    from maskdiff.probe import estimator_loss_fn
    from maskdiff.samplers import Uniform

    start = time.perf_counter()
    probe = Estimator(rate_sampler=Uniform(eps=eps), masker=Bernoulli(),
                      mask_token_id=mask_token_id, normalizer=normalizer)
    grid = rates_on_grid(n_rates, eps)
    was_training = model.training
    model.eval()
    try:
        losses = nested_losses(estimator_loss_fn(model, batch, probe, device=device),
                               n_examples=len(batch), rates=grid, n_masks=n_masks,
                               batch_size=batch_size, seed=seed, progress=progress)
    finally:
        model.train(was_training)
    phat = estimate_p_hat(losses, grid.double().numpy(), estimator=estimator)
    return ModelPHat(phat=phat, forward_passes=int(losses.size), seconds=time.perf_counter() - start)


def estimate_ppots(model, batch, *, mask_token_id: int, n_rates: int = 70, n_masks: int = 15,
                   eps: float = 1e-3, estimator: str = "direct", mix: float = 0.05,
                   normalizer: str = "eligible", restarts: int = 16, seed: int = 0,
                   batch_size: int = 128, device=None, progress: bool = True) -> PPotsResult:
    """:func:`model_p_hat` then :func:`fit_ppots`: the whole P-POTS estimation for a model.

    ``forward_passes`` and ``seconds`` of the result cover the estimation and the fits, so the
    cost can be set against the training run it serves.
    """
    import time

    start = time.perf_counter()
    measured = model_p_hat(model, batch, mask_token_id=mask_token_id, n_rates=n_rates,
                           n_masks=n_masks, eps=eps, estimator=estimator, normalizer=normalizer,
                           seed=seed, batch_size=batch_size, device=device, progress=progress)
    phat = measured.phat
    result = fit_ppots(phat.t, phat.p_hat, eps=eps, mix=mix, restarts=restarts, seed=seed,
                       estimator=estimator, p_hat_paper=phat.p_hat_paper,
                       p_hat_direct=phat.p_hat_direct, forward_passes=measured.forward_passes)
    return replace(result, seconds=time.perf_counter() - start)


def cached_density(out_dir: str | Path, estimate) -> dict[str, list[float]]:
    """The density of ``out_dir/ppots.json`` as a config table; when the file is missing, call
    ``estimate()`` (→ :class:`PPotsResult`) first and write ``ppots.json`` and ``ppots.png``.
    Experiments use it so a restarted job estimates P-POTS once."""
    from maskdiff.methods import density_from_ppots

    out = Path(out_dir)
    path = out / "ppots.json"
    if not path.exists():
        result = estimate()
        out.mkdir(parents=True, exist_ok=True)
        save_ppots_json(path, result)
        plot_ppots(out / "ppots.png", result)
    return density_from_ppots(path)


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def save_ppots_json(path: str | Path, result: PPotsResult) -> None:
    """Write the result as JSON: ``t``, ``p_hat``, ``epr {params, kl}``, ``poly7 {coeffs, kl,
    floor}``, ``mix``, ``estimator``, ``eps`` and, when known, ``p_hat_paper``, ``p_hat_direct``,
    ``forward_passes``, ``seconds``."""
    doc = dict(format=JSON_FORMAT, version=JSON_VERSION, estimator=result.estimator,
               eps=result.eps, mix=result.mix, t=_floats(result.t), p_hat=_floats(result.p_hat),
               epr=dict(params=dict(result.epr.params), kl=result.epr.kl,
                        restarts=list(result.epr.restarts)))
    if result.poly7 is not None:
        doc["poly7"] = dict(coeffs=list(result.poly7.coeffs), kl=result.poly7.kl, floor=result.poly7.floor)
    for key in ("p_hat_paper", "p_hat_direct"):
        if getattr(result, key) is not None:
            doc[key] = _floats(getattr(result, key))
    if result.forward_passes is not None:
        doc["forward_passes"] = int(result.forward_passes)
    if result.seconds is not None:
        doc["seconds"] = float(result.seconds)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_ppots_json(path: str | Path) -> PPotsResult:
    """Read a file written by :func:`save_ppots_json` (``eps`` defaults to 1e-3 if absent)."""
    doc = json.loads(Path(path).read_text())
    missing = [k for k in ("t", "p_hat", "epr", "mix", "estimator") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a P-POTS result, missing keys {missing}")
    poly = doc.get("poly7")
    return PPotsResult(
        t=np.asarray(doc["t"], dtype=np.float64), p_hat=np.asarray(doc["p_hat"], dtype=np.float64),
        epr=EPRFit(params=doc["epr"]["params"], kl=float(doc["epr"]["kl"]),
                   restarts=tuple(doc["epr"].get("restarts", ()))),
        poly7=None if poly is None else PolyFit(coeffs=tuple(poly["coeffs"]), kl=float(poly["kl"]),
                                                floor=float(poly["floor"])),
        mix=float(doc["mix"]), estimator=doc["estimator"], eps=float(doc.get("eps", 1e-3)),
        p_hat_paper=None if doc.get("p_hat_paper") is None else np.asarray(doc["p_hat_paper"]),
        p_hat_direct=None if doc.get("p_hat_direct") is None else np.asarray(doc["p_hat_direct"]),
        forward_passes=doc.get("forward_passes"), seconds=doc.get("seconds"))


# ----------------------------------------------------------------------------- plot
def plot_ppots(path_png: str | Path, result: PPotsResult) -> None:
    """Left: p̂ (points, both estimators when known) with the EPR and poly7 shapes on the grid
    scale (sum 1 over the grid). Right: the sampling densities on [eps, 1] after mixing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    direct = result.p_hat if result.estimator == "direct" else result.p_hat_direct
    paper = result.p_hat if result.estimator == "paper" else result.p_hat_paper
    if direct is not None:
        left.plot(result.t, direct, "o", ms=4, color="C0", label="p̂ direct: √mean l² (SPEC §4 [fix])")
    if paper is not None:
        left.plot(result.t, paper, "s", ms=4, mfc="none", color="C3", label="p̂ paper: √(ĝ² + v̂)")
    fine = np.linspace(result.t[0], result.t[-1], 600)
    log_grid = epr_log_p(result.t, result.epr.params)
    left.plot(fine, np.exp(epr_log_p(fine, result.epr.params) - np.logaddexp.reduce(log_grid)),
              "-", color="k", lw=2, label=f"EPR fit (KL {result.epr.kl:.2e})")
    if result.poly7 is not None:
        left.plot(fine, result.poly7.p(fine) / result.poly7.p(result.t).sum(), "--", color="C2",
                  lw=1.5, label=f"degree-7 polynomial (KL {result.poly7.kl:.2e})")
    params = result.epr.params
    left.text(0.02, 0.97, "EPR: √(a·t^r + b·(1−t)^q + A²·exp(2κ·t^m))\n"
              + f"r={params['r']:.3g}  q={params['q']:.3g}  κ={params['kappa']:.3g}  m={params['m']:.3g}",
              transform=left.transAxes, va="top", fontsize=8, family="monospace")
    left.set(xlabel="masking rate t", ylabel="p̂_j  (normalised: Σ_j p̂_j = 1)",
             title=f"P-POTS estimate ({result.estimator} estimator, {result.t.size} rates)")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)

    densities = [("EPR", result.density("epr"), "k", "-")]
    if result.poly7 is not None:
        densities.append(("poly7", result.density("poly7"), "C2", "--"))
    for label, table, color, style in densities:
        mixed = table.mixed(result.mix)
        right.plot(mixed.t_grid, mixed.p_grid, style, color=color,
                   label=f"{label}, mixed λ={result.mix:g} (max weight {1 / mixed.p_grid.min():.1f})")
    right.axhline(1.0 / (1.0 - result.eps), color="C7", lw=1, ls=":", label="uniform U[eps, 1]")
    right.set(xlabel="masking rate t", ylabel="density p(t) on [eps, 1]",
              title="Sampling density (weight w = 1/p(t))")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8, loc="upper left")
    right.grid(alpha=0.3)
    fig.savefig(path_png, dpi=120)
    plt.close(fig)
