"""Gradient-targeted rate densities on a model (docs/method.md §4 [beyond] "Gradient-targeted
densities"): the ground truth from exact per-example gradients, the free proxies checked
against it, and the gradient ``tr Cov`` each density gives.

One nested design (a examples × b grid rates × c masks, the same draws for every statistic)
measures, per rate, ``E[s² | t]`` of four per-example statistics of the standard estimator's
loss ``l``: the loss itself (P-POTS's target), the exact ``‖∇θ l‖`` (a backward pass per
triple) and the two logit-gradient proxies (``logits``, ``bias``; free). Each gives a density
``p ∝ sqrt(E[s² | t])`` fitted with EPR exactly as P-POTS is; the proxies are validated by their
correlation across t with the exact second moment, and every density by the per-example
gradient ``tr Cov`` it gives (paired: same draws). ``maskdiff decompose`` runs it for the
``gpots`` methods and writes ``gradient_targets.json``, ``gpots.json`` and ``densities.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskdiff.core.batch import Batch
from maskdiff.core.masking import Bernoulli
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Importance, Uniform
from maskdiff.diagnostics.gradient import paired_difference
from maskdiff.diagnostics.measure import _eval_mode, estimator_gradient_variance
from maskdiff.diagnostics.nested import nested_losses, rates_on_grid
from maskdiff.diagnostics.probe import estimator_gradient_fn, estimator_loss_fn
from maskdiff.jobs import reuse_or_run

__all__ = ["STATISTICS", "GradientTargets", "measure_gradient_targets", "gradient_density",
           "density_gradient_variance", "plot_densities", "report_lines"]

STATISTICS = ("loss", "gradient", "logits", "bias")
PROXIES = ("logits", "bias")


@dataclass(frozen=True, eq=False)
class GradientTargets:
    """Per grid rate ``t`` (b,): ``second_moment[s]`` = mean over (example, mask) of ``s²`` and
    its ``se`` (over the a·c draws), for every statistic ``s`` of :data:`STATISTICS`."""

    t: np.ndarray
    second_moment: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    n_examples: int
    n_masks: int
    seconds: float

    def p_hat(self, statistic: str) -> np.ndarray:
        root = np.sqrt(self.second_moment[statistic])
        return root / root.sum()

    def correlation(self, proxy: str) -> dict[str, float]:
        """How well ``proxy`` tracks the exact gradient across t: Pearson correlation of the
        second moments and of their logs, and the total-variation distance between the two
        p̂ tables (0: the same density)."""
        exact, other = self.second_moment["gradient"], self.second_moment[proxy]
        return {"pearson": float(np.corrcoef(exact, other)[0, 1]),
                "pearson_log": float(np.corrcoef(np.log(exact), np.log(other))[0, 1]),
                "tv_distance": float(0.5 * np.abs(self.p_hat("gradient") - self.p_hat(proxy)).sum())}


def measure_gradient_targets(model, batch: Batch, *, mask_token_id: int, n_rates: int,
                             n_masks: int, normalizer: str = "eligible", eps: float = 1e-3,
                             seed: int = 0, device=None) -> GradientTargets:
    """The nested design of the module docstring on ``model`` (eval mode, restored after)."""
    start = time.perf_counter()
    probe = Estimator(rate_sampler=Uniform(eps=eps), masker=Bernoulli(),
                      mask_token_id=mask_token_id, normalizer=normalizer)
    grid = rates_on_grid(n_rates, eps)
    moments, errors = {}, {}
    with _eval_mode(model):
        for statistic in STATISTICS:
            fn = (estimator_loss_fn(model, batch, probe, device=device) if statistic == "loss"
                  else estimator_gradient_fn(model, batch, probe, statistic=statistic, device=device))
            values = nested_losses(fn, n_examples=len(batch), rates=grid, n_masks=n_masks,
                                   batch_size=64, seed=seed, progress=False)
            squares = (values ** 2).transpose(1, 0, 2).reshape(n_rates, -1)
            moments[statistic] = squares.mean(axis=1)
            errors[statistic] = squares.std(axis=1, ddof=1) / np.sqrt(squares.shape[1])
    return GradientTargets(t=grid.double().numpy(), second_moment=moments, se=errors,
                           n_examples=len(batch), n_masks=n_masks,
                           seconds=time.perf_counter() - start)


def _fits(targets: GradientTargets, *, mix: float, seed: int) -> dict[str, Any]:
    from maskdiff.ppots import fit_ppots

    return {s: fit_ppots(targets.t, targets.p_hat(s), mix=mix, restarts=16, seed=seed, target=s)
            for s in STATISTICS}


def density_gradient_variance(model, pool: Batch, densities: dict[str, Any], *,
                              mask_token_id: int, normalizer: str, n_draws: int, seed: int,
                              mix: float = 0.05) -> dict[str, Any]:
    """Per-example gradient ``tr Cov`` (± SE) of the Importance sampler at each density (and of
    Uniform), all on the same draws, with the paired difference to Uniform and to the
    ``gradient`` density (docs/method.md §2, §4 [beyond])."""
    samplers = {"uniform": Uniform()}
    samplers.update({name: Importance(table, mix=mix) for name, table in densities.items()})
    results = {}
    for name, sampler in samplers.items():
        estimator = Estimator(rate_sampler=sampler, masker=Bernoulli(),
                              mask_token_id=mask_token_id, normalizer=normalizer)
        results[name] = estimator_gradient_variance(model, pool, estimator, n_draws=n_draws,
                                                    seed=seed)
    out = {}
    for name, result in results.items():
        row = {"trace_cov": result.trace_cov.to_dict()}
        for ref in ("uniform", "gradient"):
            if ref in results and ref != name:
                row[f"minus_{ref}"] = paired_difference(result, results[ref]).to_dict()
        out[name] = row
    return out


def gradient_density(model, batch: Batch, *, out: Path, mask_token_id: int, normalizer: str,
                     n_rates: int, n_masks: int, seed: int, grad_draws: int,
                     mix: float = 0.05) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The ``gpots`` methods' density (exact-gradient target) and the validation record: runs
    the design once into ``out`` (``gradient_targets.json``, ``gpots.json`` = the exact
    target's fit, ``gpots_<proxy>.json``, ``densities.png``), a :mod:`maskdiff.jobs` record
    reused when its settings match (else measured again)."""
    from maskdiff.ppots import density_from_ppots, load_ppots_json, save_ppots_json

    settings = {"a": len(batch), "b": n_rates, "c": n_masks, "seed": seed,
                "normalizer": normalizer, "grad_draws": grad_draws, "mix": mix}

    def compute() -> dict:
        targets = measure_gradient_targets(model, batch, mask_token_id=mask_token_id,
                                           n_rates=n_rates, n_masks=n_masks,
                                           normalizer=normalizer, seed=seed)
        fits = _fits(targets, mix=mix, seed=seed)
        for statistic, result in fits.items():
            if statistic != "loss":
                name = "gpots.json" if statistic == "gradient" else f"gpots_{statistic}.json"
                save_ppots_json(out / name, result)
        tables = {s: r.density().as_tuple() for s, r in fits.items()}
        variance = density_gradient_variance(model, batch, tables, mask_token_id=mask_token_id,
                                             normalizer=normalizer, n_draws=grad_draws,
                                             seed=seed, mix=mix)
        plot_densities(out / "densities.png", targets, fits)
        return {"settings": settings, "t": targets.t.tolist(),
                "second_moment": {s: v.tolist() for s, v in targets.second_moment.items()},
                "second_moment_se": {s: v.tolist() for s, v in targets.se.items()},
                "correlation": {p: targets.correlation(p) for p in PROXIES},
                "epr_kl": {s: r.epr.kl for s, r in fits.items()},
                "gradient_variance": variance, "seconds": targets.seconds}

    # The record is reused only with its fit: a missing or damaged gpots.json recomputes both.
    record = reuse_or_run(out / "gradient_targets.json", settings, compute, on_change="recompute",
                          what="gradient-target measurement",
                          required=("settings", "gradient_variance"),
                          check=lambda r: load_ppots_json(out / "gpots.json"),
                          legacy=lambda r: r.get("settings"))
    return density_from_ppots(out / "gpots.json"), record


LABELS = {"loss": "loss (P-POTS)", "gradient": "exact ‖∇θ l‖ (gpots)",
          "logits": "proxy: logit gradient", "bias": "proxy: output-bias gradient"}


def plot_densities(path: Path, targets: GradientTargets, fits: dict[str, Any]) -> None:
    """Left: ``E[s² | t]`` of each statistic, scaled to mean 1 over the grid (log scale, ± SE).
    Right: the fitted, mixed sampling densities side by side."""
    from maskdiff.plotting import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for index, statistic in enumerate(STATISTICS):
        moment, se = targets.second_moment[statistic], targets.se[statistic]
        scale = moment.mean()
        left.errorbar(targets.t, moment / scale, yerr=se / scale, fmt="o-", ms=3, capsize=2,
                      color=f"C{index}", label=LABELS[statistic])
        table = fits[statistic].density().mixed(fits[statistic].mix)
        right.plot(table.t_grid, table.p_grid, color=f"C{index}", label=LABELS[statistic])
    left.set(xlabel="masking rate t", ylabel="E[s² | t] / its mean over t", yscale="log",
             title=f"second moments (a={targets.n_examples}, c={targets.n_masks})")
    right.set(xlabel="masking rate t", ylabel="density on [eps, 1] (EPR fit, mixed)",
              title="p ∝ sqrt(E[s² | t])", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_lines(record: dict[str, Any]) -> list[str]:
    """The ``report.md`` section of a ``gradient_targets.json`` record."""
    lines = ["## Gradient-targeted densities (docs/method.md §4 [beyond])", "",
             "| proxy | Pearson r of E[s²|t] vs exact | r of logs | TV distance of p̂ |",
             "|---|---|---|---|"]
    for proxy, c in record["correlation"].items():
        lines.append(f"| {proxy} | {c['pearson']:.3f} | {c['pearson_log']:.3f} | "
                     f"{c['tv_distance']:.3f} |")
    lines += ["", "| density | per-example grad tr Cov | − uniform (paired) | − gradient (paired) |",
              "|---|---|---|---|"]
    for name, row in record["gradient_variance"].items():
        cells = [f"{row['trace_cov']['value']:.4g} ± {row['trace_cov']['se']:.2g}"]
        for ref in ("uniform", "gradient"):
            d = row.get(f"minus_{ref}")
            cells.append("–" if d is None else f"{d['value']:+.4g} ± {d['se']:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", "![densities](densities.png)", ""]
