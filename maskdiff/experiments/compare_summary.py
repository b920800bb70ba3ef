"""The statistics of a ``maskdiff compare`` job: ``results.json`` (docs/method.md §11).

Per method (:func:`summarise`): the per-seed scores; mean with a 95% t interval; the seed sd
with a bootstrap interval; the evaluation floor (bootstrap SE over test items, and the
split-half share of the seed variance that is the test set's); and against standard on the
same task, over the seeds both ran (paired): the mean difference with its interval and p-values,
the spread ratio with its interval and equal-variance tests, worst seed − standard's best, and
the compute multiplier to standard's final validation ELBO. The statistics themselves live in
:mod:`maskdiff.experiments.stats`.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import numpy as np

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.experiments import stats
from maskdiff.experiments.compare_ceiling import noise_ceiling
from maskdiff.experiments.prior_policy import versus_prior
from maskdiff.jobs import load_record

BIG_FIELDS = ("hits", "elbo_items")  # per-item scores: in each run's compare.json only
POWER_SEEDS = (5, 10, 12, 20)


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "range": float(arr.max() - arr.min()),
            "n": int(arr.size)}


def _items(rows: list[dict], key: str) -> np.ndarray | None:
    """(seeds, items) per-item scores, or None when a run lacks them."""
    if key == "hits":
        vals = [[c == "1" for c in r.get("hits", "")] for r in rows]
    else:
        vals = [r.get("elbo_items") or [] for r in rows]
    if not vals or not vals[0] or any(len(v) != len(vals[0]) for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)


def _metric(rows: list[dict], key: str, items_key: str) -> dict:
    """Mean, sd and floor of one metric over a method's seeds (None-safe)."""
    values = [r[key] for r in rows]
    if any(v is None for v in values):
        return {}
    out = {f"{key}_stats": _stats(values)}
    if len(values) >= 2:
        out[f"{key}_ci"] = stats.mean_ci(values)
        out[f"{key}_sd"] = stats.sd_ci(values)
    items = _items(rows, items_key)
    if items is not None:
        floor = {"item_se": float(np.sqrt(np.mean([stats.item_se(x) ** 2 for x in items]))),
                 "n_items": int(items.shape[1])}
        if items.shape[0] >= 2:
            floor["split_half"] = stats.split_half(items)
        out[f"{key}_floor"] = floor
    return out


def curves(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, forward passes, best-so-far validation loss (seeds, evaluations)) of a method's
    runs; a run that stopped early keeps its best value to the end."""
    longest = max(rows, key=lambda r: len(r["history"]))["history"]
    steps = np.array([h["step"] for h in longest], dtype=np.float64)
    fwd = np.array([h.get("fwd", h["step"]) for h in longest], dtype=np.float64)
    grid = np.empty((len(rows), len(longest)))
    for i, r in enumerate(rows):
        vals = np.minimum.accumulate([h["val_loss"] for h in r["history"]])
        grid[i] = np.r_[vals, np.full(len(longest) - len(vals), vals[-1])]
    return steps, fwd, grid


def _versus(rows: list[dict], base_rows: list[dict], has_pass: bool) -> dict:
    """Paired comparison of a method with standard over the seeds both ran."""
    base = {r["seed"]: r for r in base_rows}
    rows = [r for r in rows if r["seed"] in base]
    paired = [base[r["seed"]] for r in rows]
    out: dict = {"paired_seeds": [r["seed"] for r in rows],
                 "fwd_ratio": float(np.mean([r["forward_passes"] for r in rows]) /
                                    np.mean([b["forward_passes"] for b in paired]))}
    keys = (["pass_at_1"] if has_pass else []) + ["test_loss"]
    for key in keys:
        a, b = [r[key] for r in rows], [p[key] for p in paired]
        entry = {}
        if len(a) >= 2:
            entry["difference"] = stats.paired_difference(a, b)
        if len(a) >= 3:
            entry["spread"] = stats.spread_ratio(a, b)
        out[key] = entry
    if has_pass:
        out["worst_minus_standard_best"] = min(r["pass_at_1"] for r in rows) - max(
            p["pass_at_1"] for p in paired)
    if rows and rows[0]["test_loss_kind"] == "ELBO" and all(r["history"] for r in rows + paired):
        _, x_m, y_m = curves(rows)
        _, x_b, y_b = curves(paired)
        out["compute"] = stats.compute_multiplier(x_b, y_b, x_m, y_m)
    return out


def _method_summary(rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["seed"])
    has_pass = all(r.get("pass_at_1") is not None for r in rows)
    return {
        "method": rows[0]["method"], "task": rows[0]["task"], "seeds": [r["seed"] for r in rows],
        "pass_at_1": [r.get("pass_at_1") for r in rows], "has_pass_at_1": has_pass,
        "test_loss": [r["test_loss"] for r in rows],
        "test_loss_se": [r["test_loss_se"] for r in rows],
        "test_loss_kind": rows[0]["test_loss_kind"],
        "variance_proxy": [r["variance_proxy"] for r in rows],
        "forward_passes": [r["forward_passes"] for r in rows],
        "tokens": [r.get("tokens") for r in rows],
        "tokens_per_step": [r.get("tokens_per_step") for r in rows],
        "block_size": rows[0].get("block_size"),
        "train_seconds": [r["train_seconds"] for r in rows],
        "eval_seconds": [r.get("eval_seconds") for r in rows],
        "steps": [r["steps"] for r in rows],
        **(_metric(rows, "pass_at_1", "hits") if has_pass else {}),
        **_metric(rows, "test_loss", "elbo_items"),
    }


def _equal_compute(methods: dict, by_label: dict[str, list[dict]]) -> None:
    """The equal-compute view: each k-view method against standard with k times the batch
    (``standard@kx``, when the job ran it on the same task), paired over the seeds both ran, as
    ``vs_equal_compute`` = ``{"baseline": label, ...the fields of vs_standard}``."""
    for control, cm in methods.items():
        spec = get_method(cm["method"])
        if spec.base != BASELINE:
            continue
        for label, m in methods.items():
            method = get_method(m["method"])
            if (label == control or m["task"] != cm["task"] or m["test_loss_kind"] != "ELBO"
                    or method.batch_factor != 1
                    or method.forward_passes != spec.batch_factor):
                continue
            vs = _versus(by_label[label], by_label[control],
                         m["has_pass_at_1"] and cm["has_pass_at_1"])
            m["vs_equal_compute"] = {"baseline": control, **vs}


def power_analysis(methods: dict, n_seeds: int) -> dict:
    """What this many seeds can detect, from the measured sd of the paired differences to
    standard (median over the methods): the 80%-power detectable difference of the paired
    t-test, and the detectable sd ratio of the F test, at this job's seeds and at others."""
    out: dict = {"n_seeds": n_seeds, "power": 0.8, "alpha": 0.05, "metrics": {}}
    sizes = sorted({n_seeds, *POWER_SEEDS})
    for key in ("pass_at_1", "test_loss"):
        sds = [m["vs_standard"][key]["difference"]["sd"] for m in methods.values()
               if m.get("vs_standard", {}).get(key, {}).get("difference")
               and m["method"] != BASELINE and m["test_loss_kind"] == "ELBO"]
        sds = [s for s in sds if s > 0]
        if not sds:
            continue
        sd = float(np.median(sds))
        out["metrics"][key] = {"sd_diff": sd, "detectable_difference": {
            str(n): stats.detectable_difference(sd, n) for n in sizes if n >= 2}}
    out["detectable_sd_ratio"] = {str(n): stats.detectable_sd_ratio(n) for n in sizes if n >= 3}
    return out


def summarise(preset, records: list[dict], *, seconds: float, ppots: dict | None,
              window: list[float] | None, grad_noise: dict | None = None,
              task: dict | None = None, workers: int = 1, threads: int | None = None,
              block: dict | None = None) -> dict:
    """``results.json`` of a job from its run records (see the module docstring)."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    methods = {label: _method_summary(rows) for label, rows in by_label.items()}
    for label, m in methods.items():
        base_label = next((b for b, bm in methods.items()
                           if bm["method"] == BASELINE and bm["task"] == m["task"]), None)
        if base_label is None:
            continue
        vs = _versus(by_label[label], by_label[base_label],
                     m["has_pass_at_1"] and methods[base_label]["has_pass_at_1"])
        m["vs_standard"] = vs
        m["fwd_ratio_to_standard"] = vs["fwd_ratio"]
        if "pass_at_1_stats" in m and "pass_at_1_stats" in methods[base_label]:
            st, bst = m["pass_at_1_stats"], methods[base_label]["pass_at_1_stats"]
            m["worst_minus_standard_best"] = st["min"] - bst["max"]
            m["mean_minus_standard"] = st["mean"] - bst["mean"]
            m["sd_ratio_to_standard"] = st["sd"] / bst["sd"] if bst["sd"] > 0 else None
    _equal_compute(methods, by_label)
    ceiling = noise_ceiling(methods, by_label)
    if ppots is not None and ppots.get("seconds"):
        served = [r["train_seconds"] for r in records if "density" in get_method(r["method"]).needs]
        if served:
            ppots = {**ppots, "cost_fraction": ppots["seconds"] / float(np.mean(served))}
    seeds = sorted({r["seed"] for r in records})
    prior = versus_prior({label: rows for label, rows in by_label.items()
                          if rows[0]["label"] == rows[0]["method"]},  # the main task's
                         (task or {}).get("operator_prior"))
    return {"preset": preset.name, "seeds": seeds, "task": task or {"name": preset.base.data.task},
            "methods": methods, "power": power_analysis(methods, len(seeds)),
            "runs": [{k: v for k, v in r.items() if k not in BIG_FIELDS} for r in records],
            "seconds": seconds, "ppots": ppots, "window": window, "grad_noise": grad_noise,
            "workers": workers, "threads": threads, "block": block, "ceiling": ceiling,
            "operator_prior": prior,
            "machine": f"{platform.machine()}, {platform.system()}, "
                       f"Python {platform.python_version()}",
            "config": _config(preset)}


def _config(preset) -> dict:
    base = preset.base
    return {"pretrain_steps": preset.pretrain_steps, "n_test": preset.n_test,
            "n_test_elbo": preset.n_test_elbo, "elbo_rates": preset.elbo_rates,
            "decoding": {k: getattr(preset.decoding, k)
                         for k in ("gen_length", "steps", "block_length")},
            "finetune_steps": base.optim.max_steps, "batch_size": base.optim.batch_size,
            "lr": base.optim.lr, "eval_every": base.eval.every, "n_val": base.eval.n_examples,
            "patience": base.eval.patience, "task": base.data.task,
            "max_len": base.data.max_len, "block_size": base.block_size,
            "difficulty": base.data.difficulty,
            "model": {"d_model": base.model.d_model, "n_layers": base.model.n_layers}}


def paired_labels(results: dict) -> Sequence[str]:
    """The methods compared with standard (not standard itself), in the job's order."""
    return [label for label, m in results["methods"].items()
            if m["method"] != BASELINE and "vs_standard" in m]


def invocations(previous, seconds: float) -> list[float]:
    """The wall seconds of every invocation of a job so far (a resumed or re-summarised job
    adds one), read from its previous ``results.json``."""
    doc = load_record(previous)
    if doc is None:
        return [seconds]
    return [*doc.get("invocations", [doc.get("seconds", 0.0)]), seconds]
