"""P-POTS estimation (SPEC §4; variance paper §3.1.1, A.5.2): p̂ from nested losses, and the
result file (JSON + plot).

The fits themselves (EPR, degree-7 polynomial, density tables) live in :mod:`maskdiff.ppots.fit`
and the online tracker in :mod:`maskdiff.ppots.online`; the package re-exports all three.

Normalisation used throughout: a table ``p̂_j`` sums to 1 over its grid (the paper's convention,
what the KL fit compares); a :class:`DensityTable` integrates to 1 over ``[eps, 1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from maskdiff.ppots.fit import (
    MIN_GRID_POINTS, MIN_TABLE_POINTS, DensityTable, EPRFit, PolyFit, check_table, epr_density,
    epr_log_p, fit_epr, fit_poly7, poly_density,
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

    from maskdiff.core.masking import Bernoulli
    from maskdiff.diagnostics.nested import nested_losses, rates_on_grid
    from maskdiff.core.objective import Estimator
    from maskdiff.diagnostics.probe import estimator_loss_fn
    from maskdiff.core.samplers import Uniform

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
    from maskdiff.plotting import pyplot

    plt = pyplot()

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


def density_from_ppots(path: str | Path, model: str = "epr", n_points: int = 256) -> dict[str, list[float]]:
    """The fitted density of a ``ppots.json`` as a compact ``{"t", "p"}`` table for a config
    (the ``density`` of :meth:`maskdiff.core.methods.Method.estimator_config`).

    The fit (EPR by default, or ``poly7``) is tabulated on ``n_points`` rates, denser near
    both ends where EPR bends most; the importance sampler interpolates it linearly.
    """
    result = load_ppots_json(path)
    table = result.density(model)
    eps = result.eps
    half = n_points // 2
    ends = np.concatenate([eps + np.geomspace(1e-6, 0.5, half), 1.0 - np.geomspace(1e-6, 0.5 - eps, half)])
    t = np.unique(np.clip(np.concatenate([ends, np.linspace(eps, 1.0, n_points)]), eps, 1.0))
    p = np.interp(t, table.t_grid, table.p_grid)
    return {"t": [float(x) for x in t], "p": [float(x) for x in p]}
