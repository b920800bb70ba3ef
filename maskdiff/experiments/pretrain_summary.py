"""The statistics of ``maskdiff compare --regime pretrain`` (docs/method.md §11): the final test
ELBO paired against standard, and compute-to-target on every seed's curve.

**Compute to target.** For seed s and a fraction q of training, the target is standard's
best-so-far test ELBO at q of its budget (``seed_target``); standard reaches it after
``F_std(s, q)`` forward passes, a method after ``F_m(s, q)``: the first point of its curve at
or below the target, interpolated linearly in forward passes between evaluations
(:func:`maskdiff.experiments.stats.first_crossing`). The multiplier is
``mean_s F_std / mean_s F_m`` (> 1: the method needs less compute), with a percentile
bootstrap interval over seeds that keeps the pairs. A method that never reaches the target on
some seed is **censored**: no multiplier, the number of censored seeds, and the upper bound
the multiplier would have had if every censored seed had reached the target at its last
evaluation.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.experiments import stats
from maskdiff.training.config import to_dict

N_BOOT = 2000


def _xy(curve: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([p["fwd"] for p in curve], np.float64),
            np.array([p["test_loss"] for p in curve], np.float64))


def seed_target(xs: Sequence[float], ys: Sequence[float], fraction: float) -> float:
    """The best (lowest) value of the curve up to ``fraction`` of its last ``x``."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    return float(ys[xs <= fraction * xs[-1] * (1 + 1e-12)].min())


def crossings(base: Sequence[tuple], curves: Sequence[tuple],
              fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per paired seed: the target (the baseline's value at ``fraction``), the forward passes
    the baseline and the method need to reach it (``inf``: never), from ``(xs, ys)`` curves."""
    targets, f_base, f_m = [], [], []
    for (xb, yb), (xm, ym) in zip(base, curves, strict=True):
        target = seed_target(xb, yb, fraction)
        targets.append(target)
        f_base.append(stats.first_crossing(xb, yb, target))
        f_m.append(stats.first_crossing(xm, ym, target))
    return np.array(targets), np.array(f_base), np.array(f_m)


def _ratio_of_means(f_base: np.ndarray, f_m: np.ndarray, idx) -> float:
    return float(f_base[idx].mean() / f_m[idx].mean())


def multiplier(f_base: Sequence[float], f_m: Sequence[float], last: Sequence[float],
               level: float = stats.LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """``mean F_base / mean F_m`` with its paired bootstrap interval (n >= 3 seeds), or, when
    some ``F_m`` is ``inf`` (censored), None and ``upper_bound`` with ``last`` (each seed's
    final forward passes) in place of the censored crossings."""
    f_base, f_m, last = (np.asarray(v, np.float64) for v in (f_base, f_m, last))
    n, censored = f_base.size, int(np.sum(~np.isfinite(f_m)))
    out = {"n": n, "censored": censored, "level": level,
           "fwd_base": float(f_base.mean()), "fwd_method": None, "multiplier": None,
           "lo": None, "hi": None, "upper_bound": None,
           "per_seed": [float(b / m) if math.isfinite(m) and m > 0 else None
                        for b, m in zip(f_base, f_m)]}
    if censored:
        out["upper_bound"] = float(f_base.mean() / np.where(np.isfinite(f_m), f_m, last).mean())
        return out
    out["fwd_method"] = float(f_m.mean())
    out["multiplier"] = _ratio_of_means(f_base, f_m, np.arange(n))
    if n >= 3 and np.all(f_m > 0):
        out["lo"], out["hi"] = stats.seed_bootstrap(
            n, lambda i: _ratio_of_means(f_base, f_m, i), level=level, n_boot=n_boot, seed=seed)
    return out


def compute_to_target(base_runs: list[dict], runs: list[dict],
                      fractions: Sequence[float]) -> list[dict]:
    """Compute-to-target of ``runs`` against ``base_runs`` (records paired by seed, in the same
    order), one entry per fraction of training (see the module docstring)."""
    base = [_xy(r["curve"]) for r in base_runs]
    curves = [_xy(r["curve"]) for r in runs]
    out = []
    for q in fractions:
        targets, f_base, f_m = crossings(base, curves, q)
        row = multiplier(f_base, f_m, [x[-1] for x, _ in curves])
        out.append({"fraction": q, "target_mean": float(targets.mean()),
                    "targets": targets.tolist(), **row})
    return out


def _paired(records: list[dict]) -> dict[str, dict[int, dict]]:
    by: dict[str, dict[int, dict]] = {}
    for r in records:
        by.setdefault(r["method"], {})[r["seed"]] = r
    return by


def _final(r: dict) -> float:
    return float(r["curve"][-1]["test_loss"])


def method_summary(rows: dict[int, dict], base: dict[int, dict], fractions) -> dict:
    """One method's numbers: its final test loss over seeds, and against standard (paired)."""
    seeds = sorted(rows)
    finals = [_final(rows[s]) for s in seeds]
    causal = rows[seeds[0]]["causal"]
    out = {"seeds": seeds, "loss_kind": "causal NLL" if causal else "ELBO",
           "final_test_loss": finals,
           "final_ci": stats.mean_ci(finals) if len(finals) >= 2 else None,
           "forward_passes": [rows[s]["forward_passes"] for s in seeds],
           "fwd_per_step": rows[seeds[0]]["fwd_per_step"],
           "train_seconds": [rows[s]["train_seconds"] for s in seeds],
           "window": rows[seeds[0]].get("window"),
           "generation": generation_summary(rows, base)}
    common = [s for s in seeds if s in base]
    if causal or not common or rows is base:
        return out
    diffs = [_final(rows[s]) - _final(base[s]) for s in common]
    out["vs_standard"] = {
        "paired_seeds": common,
        "final_test_loss": (stats.paired_difference([_final(rows[s]) for s in common],
                                                    [_final(base[s]) for s in common])
                            if len(common) >= 2 else {"mean": diffs[0]}),
        "compute_to_target": compute_to_target([base[s] for s in common],
                                               [rows[s] for s in common], fractions)}
    return out


def _gen_values(generation: dict) -> dict[str, float]:
    """The judge's numbers of one run: NLL per token of each source, distinct-2 of the
    unconditional samples, and the probe's masked-token accuracy and NLL per rate."""
    out = {f"{name}_nll": row["judge_nll"]["mean"] for name, row in generation["sources"].items()}
    out["unconditional_distinct_2"] = generation["sources"]["unconditional"]["diversity"][
        "distinct_2"]
    for row in generation["probe"]:
        masked = row.get("masked_accuracy")
        out[f"probe_{row['rate']:g}_accuracy"] = None if masked is None else masked["mean"]
        out[f"probe_{row['rate']:g}_nll"] = row["judge_nll"]["mean"]
    return out


def generation_summary(rows: dict[int, dict], base: dict[int, dict]) -> dict | None:
    """Per judge number: the mean over seeds, and the paired difference to standard's (the
    same seeds) where two or more seeds have both; None when no run was judged."""
    seeds = [s for s in sorted(rows) if rows[s].get("generation")]
    if not seeds:
        return None
    values = {s: _gen_values(rows[s]["generation"]) for s in seeds}
    base_values = {s: _gen_values(base[s]["generation"]) for s in seeds
                   if s in base and base[s].get("generation")}
    out = {}
    for key in values[seeds[0]]:
        xs = [values[s][key] for s in seeds if values[s].get(key) is not None]
        pairs = [(values[s][key], base_values[s][key]) for s in base_values
                 if values[s].get(key) is not None and base_values[s].get(key) is not None]
        out[key] = {"mean": float(np.mean(xs)) if xs else None, "n": len(xs),
                    "vs_standard": (stats.paired_difference(*zip(*pairs))
                                    if len(pairs) >= 2 and rows is not base else None)}
    return out


def power(methods: dict, n_seeds: int) -> dict:
    """From the seed sd of each method's paired final-ELBO difference: the difference the paired
    t-test detects with 80% power at ``n_seeds`` seeds (and the sd it rests on)."""
    out = {}
    for label, m in methods.items():
        d = (m.get("vs_standard") or {}).get("final_test_loss") or {}
        if d.get("sd"):
            out[label] = {"sd_diff": d["sd"], "n_seeds": n_seeds,
                          "detectable": stats.detectable_difference(d["sd"], max(2, n_seeds))}
    return out


def summarise(preset, records: list[dict], *, prediction: dict | None, seconds: float,
              task: dict, threads: int, workers: int) -> dict:
    """``results.json`` of a pretraining job (see :mod:`maskdiff.experiments.pretrain`)."""
    by = _paired(records)
    if BASELINE not in by:
        raise ValueError(f"the pretraining job ran no {BASELINE!r} runs: nothing to compare with")
    order = [m for m in preset.methods if m in by]
    methods = {m: method_summary(by[m], by[BASELINE], preset.targets) for m in order}
    seeds = sorted({r["seed"] for r in records})
    judge = {s: r["run_dir"] for s, r in by.get("ar", {}).items()}
    return {
        "format": "maskdiff.compare_pretrain", "version": 1, "regime": "pretrain",
        "preset": preset.name, "seeds": seeds, "methods": methods, "prediction": prediction,
        "task": task, "power": power(methods, len(seeds)),
        "judge": {"method": "ar", "runs": {str(s): d for s, d in judge.items()},
                  "config": None if preset.judge is None else asdict(preset.judge),
                  "note": "each diffusion run's final model judged by the causal twin of its "
                          "seed: runs[].generation, methods[].generation (PretrainJob(judge=...) "
                          "plugs in another judge)"},
        "config": {"train": to_dict(preset.base), "n_test": preset.n_test,
                   "test_rates": preset.test_rates, "test_seed": preset.test_seed,
                   "curve_points": preset.curve_points, "targets": list(preset.targets),
                   "window_width": preset.window_width, "level": preset.level,
                   "costs": {m: get_method(m).cost for m in order}},
        "runs": [{k: v for k, v in r.items()} for r in records],
        "seconds": seconds, "threads": threads, "workers": workers,
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                   f"Python {platform.python_version()}",
    }


def write_outputs(out_dir, results: dict) -> None:
    from maskdiff.experiments.pretrain_report import plot_curves, write_report

    plot_curves(out_dir / "curves.png", results)
    write_report(out_dir, results)
