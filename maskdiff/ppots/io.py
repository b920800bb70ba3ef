"""The P-POTS result file: ``ppots.json`` (docs/method.md §4), its plot ``ppots.png``, and the cache that
estimates P-POTS once per experiment directory.

The result itself is :class:`maskdiff.ppots.estimate.PPotsResult`; this module only writes,
reads and draws it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from maskdiff import jsonio
from maskdiff.ppots.estimate import PPotsResult
from maskdiff.ppots.fit import EPRFit, PolyFit, epr_log_p
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run
from maskdiff.ppots.schema import (  # noqa: F401  (re-exported)
    DEFAULT_EPS, JSON_FORMAT, JSON_VERSION, REQUIRED, PPotsFileError, check_ppots_doc,
)


def cached_density(out_dir: str | Path, estimate, key=None) -> dict[str, list[float]]:
    """The density of ``out_dir/ppots.json`` as a config table, a job of
    :func:`maskdiff.jobs.reuse_or_run` keyed on ``key`` (what it was estimated from and how):
    reused under the same key, else ``estimate()`` (→ :class:`PPotsResult`) runs and
    ``ppots.json`` and ``ppots.png`` are written. A damaged file, or one estimated under another
    key, is set aside and estimated again. Experiments use it so a restarted job estimates
    P-POTS once."""
    out = Path(out_dir)
    path = out / "ppots.json"

    def compute() -> dict:
        result = estimate()
        out.mkdir(parents=True, exist_ok=True)
        plot_ppots(out / "ppots.png", result)
        return ppots_doc(result)

    def check(doc: dict) -> PPotsResult:
        return _ppots_from_doc(check_ppots_doc(doc, str(path)))

    doc = reuse_or_run(path, {} if key is None else key, compute, on_change="recompute",
                       what="fitted density", required=REQUIRED, check=check)
    return density_table(check(doc), source=path)


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def save_ppots_json(path: str | Path, result: PPotsResult) -> None:
    """Write :func:`ppots_doc` of the result (atomically)."""
    atomic_write_text(path, jsonio.dumps(ppots_doc(result), indent=1) + "\n")


def ppots_doc(result: PPotsResult) -> dict:
    """The result as the JSON object of ``ppots.json``: ``t``, ``p_hat``, ``epr {params, kl}``, ``poly7 {coeffs, kl,
    floor}``, ``mix``, ``estimator``, ``eps`` and, when known, ``p_hat_paper``, ``p_hat_direct``,
    ``forward_passes``, ``seconds``; ``target``: what p̂ is the root second moment of
    (``loss``; ``gradient``, ``logits``, ``bias``: gradient-targeted, docs/method.md §4)."""
    doc = dict(format=JSON_FORMAT, version=JSON_VERSION, estimator=result.estimator,
               eps=result.eps, mix=result.mix, target=result.target, t=_floats(result.t), p_hat=_floats(result.p_hat),
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
    return doc


def load_ppots_json(path: str | Path) -> PPotsResult:
    """Read a file written by :func:`save_ppots_json` (``eps`` defaults to 1e-3 if absent),
    every field checked first (:func:`maskdiff.ppots.schema.check_ppots_doc`): a bad file is
    a :class:`~maskdiff.ppots.schema.PPotsFileError` (ValueError) in one line naming the file
    and the field."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PPotsFileError(f"{path}: not a P-POTS result (not valid JSON: {err})") from None
    return _ppots_from_doc(check_ppots_doc(doc, str(path)))


def _ppots_from_doc(doc: dict) -> PPotsResult:
    poly = doc.get("poly7")
    return PPotsResult(
        t=np.asarray(doc["t"], dtype=np.float64), p_hat=np.asarray(doc["p_hat"], dtype=np.float64),
        epr=EPRFit(params=doc["epr"]["params"], kl=float(doc["epr"]["kl"]),
                   restarts=tuple(doc["epr"].get("restarts", ()))),
        poly7=None if poly is None else PolyFit(coeffs=tuple(poly["coeffs"]), kl=float(poly["kl"]),
                                                floor=float(poly["floor"])),
        mix=float(doc["mix"]), estimator=doc["estimator"], eps=float(doc.get("eps", DEFAULT_EPS)),
        p_hat_paper=None if doc.get("p_hat_paper") is None else np.asarray(doc["p_hat_paper"]),
        p_hat_direct=None if doc.get("p_hat_direct") is None else np.asarray(doc["p_hat_direct"]),
        forward_passes=doc.get("forward_passes"), seconds=doc.get("seconds"),
        target=doc.get("target", "loss"))


def plot_ppots(path_png: str | Path, result: PPotsResult) -> None:
    """Left: p̂ (points, both estimators when known) with the EPR and poly7 shapes on the grid
    scale (sum 1 over the grid). Right: the sampling densities on [eps, 1] after mixing."""
    from maskdiff.plotting import pyplot

    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    direct = result.p_hat if result.estimator == "direct" else result.p_hat_direct
    paper = result.p_hat if result.estimator == "paper" else result.p_hat_paper
    if direct is not None:
        left.plot(result.t, direct, "o", ms=4, color="C0", label="p̂ direct: √mean l² (docs/method.md §4 [fix])")
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
             title=f"P-POTS estimate ({result.estimator} estimator, {result.t.size} rates"
                   + ("" if result.target == "loss" else f", target {result.target}") + ")")
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


def density_for_method(path: str | Path, method) -> dict[str, list[float]]:
    """:func:`density_from_ppots` for a registered :class:`~maskdiff.core.methods.Method`,
    refusing a file fitted to another target than the method's ``density_target`` (a P-POTS
    ``ppots.json`` for a ``gpots`` method, or a gradient-targeted one for ``ppots``)."""
    result = load_ppots_json(path)
    kind = "loss" if result.target == "loss" else "gradient"
    if kind != method.density_target:
        raise ValueError(f"{path} is fitted to target {result.target!r}, but method "
                         f"{method.name!r} needs a density fitted to the "
                         f"{method.density_target} (maskdiff fit-pots --target "
                         f"{method.density_target})")
    return density_table(result, source=path)


def density_from_ppots(path: str | Path, model: str = "epr", n_points: int = 256) -> dict[str, list[float]]:
    """The fitted density of a ``ppots.json`` as a compact table for a config: ``{"t", "p",
    "mix", "eps"}`` (the ``density`` of :meth:`maskdiff.core.methods.Method.estimator_config`,
    which takes the file's ``mix`` and ``eps`` from it; see :func:`density_table`).

    The fit (EPR by default, or ``poly7``) is tabulated on ``n_points`` rates, denser near
    both ends where EPR bends most; the importance sampler interpolates it linearly.
    """
    return density_table(load_ppots_json(path), model, n_points, source=path)


def coverage_note(result: PPotsResult, source: str | Path = "ppots.json") -> str | None:
    """Why the density of ``result`` is extrapolated, or None. The p̂ table covers its rates
    ±one grid step (a midpoint grid on ``[eps, 1]`` covers it all); beyond that the sampler
    draws rates where p̂ was never measured, from the EPR fit alone."""
    t, eps = result.t, result.eps
    step = float(np.median(np.diff(t)))
    below, above = t[0] - eps > step + 1e-12, 1.0 - t[-1] > step + 1e-12
    if not (below or above):
        return None
    gaps = " and ".join(gap for gap, on in ((f"[{eps:.4g}, {t[0]:.4g})", below),
                                             (f"({t[-1]:.4g}, 1]", above)) if on)
    hint = (f"; refit with `maskdiff fit-pots --eps {np.floor(t[0] * 1e4) / 1e4:g}` to sample "
            f"only rates it was estimated on" if below else "")
    return (f"{source}: warning: p̂ was estimated on t in [{t[0]:.4g}, {t[-1]:.4g}] only, but "
            f"the density is used on [{eps:.4g}, 1]: rates in {gaps} are drawn from the EPR "
            f"fit extrapolated there{hint}")


def density_table(result: PPotsResult, model: str = "epr", n_points: int = 256, *,
                  source: str | Path = "ppots.json") -> dict[str, list[float]]:
    """:func:`density_from_ppots` of a result already read (``source`` names it in messages).

    Says once on stderr when the density reaches beyond the rates p̂ was estimated on
    (:func:`coverage_note`: used, not refused: EPR is a model of the whole of ``[eps, 1]``;
    refit with ``--eps`` to stay inside). A fit whose density is not finite or has no mass on
    ``[eps, 1]`` is refused in one line naming the file and the field."""
    note = coverage_note(result, source)
    if note is not None:  # each command reads its file once: said once
        print(f"maskdiff: {note}", file=sys.stderr, flush=True)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
            table = result.density(model)
    except ValueError as err:
        field = "epr.params" if model == "epr" else "poly7"
        raise PPotsFileError(f"{source}: field {field!r} gives no usable density on "
                             f"[{result.eps:g}, 1] ({err})") from None
    eps = result.eps
    half = n_points // 2
    # Denser near both ends. For eps <= 0.25 this is the historic grid (configs made with it
    # stay identical, so their finished runs are reused); above, it shrinks with [eps, 1].
    reach = 0.5 - eps if eps <= 0.25 else (1.0 - eps) / 2
    low = min(1e-6, reach / 10)
    ends = np.concatenate([eps + np.geomspace(low, 0.5 if eps <= 0.25 else reach, half),
                           1.0 - np.geomspace(low, reach, half)])
    t = np.unique(np.clip(np.concatenate([ends, np.linspace(eps, 1.0, n_points)]), eps, 1.0))
    p = np.interp(t, table.t_grid, table.p_grid)
    return {"t": [float(x) for x in t], "p": [float(x) for x in p],
            "mix": float(result.mix), "eps": float(eps)}
