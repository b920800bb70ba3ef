"""Summary statistics, plots and ``report.md`` of a ``maskdiff compare`` job."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.plotting import pyplot


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "range": float(arr.max() - arr.min()),
            "n": int(arr.size)}


def summarise(preset, records: list[dict], *, seconds: float, ppots: dict | None,
              window: list[float] | None, workers: int = 1, threads: int | None = None) -> dict:
    """Per method: per-seed values and mean/sd/min/max/range; worst seed vs standard's best."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    methods = {}
    for label, rows in by_label.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        methods[label] = {
            "method": rows[0]["method"], "task": rows[0]["task"],
            "seeds": [r["seed"] for r in rows],
            "pass_at_1": [r["pass_at_1"] for r in rows],
            "pass_at_1_stats": _stats([r["pass_at_1"] for r in rows]),
            "test_loss": [r["test_loss"] for r in rows],
            "test_loss_se": [r["test_loss_se"] for r in rows],
            "test_loss_kind": rows[0]["test_loss_kind"],
            "test_loss_stats": _stats([r["test_loss"] for r in rows]),
            "variance_proxy": [r["variance_proxy"] for r in rows],
            "forward_passes": [r["forward_passes"] for r in rows],
            "train_seconds": [r["train_seconds"] for r in rows],
            "steps": [r["steps"] for r in rows],
        }
    for label, m in methods.items():
        base = next((b for b in methods.values() if b["method"] == BASELINE and b["task"] == m["task"]), None)
        if base is not None:
            m["worst_minus_standard_best"] = m["pass_at_1_stats"]["min"] - base["pass_at_1_stats"]["max"]
            m["mean_minus_standard"] = m["pass_at_1_stats"]["mean"] - base["pass_at_1_stats"]["mean"]
            m["sd_ratio_to_standard"] = (m["pass_at_1_stats"]["sd"] / base["pass_at_1_stats"]["sd"]
                                         if base["pass_at_1_stats"]["sd"] > 0 else None)
            m["fwd_ratio_to_standard"] = float(np.mean(m["forward_passes"]) / np.mean(base["forward_passes"]))
    if ppots is not None and ppots.get("seconds"):
        served = [r["train_seconds"] for r in records if "density" in get_method(r["method"]).needs]
        if served:
            ppots = {**ppots, "cost_fraction": ppots["seconds"] / float(np.mean(served))}
    return {"preset": preset.name, "seeds": sorted({r["seed"] for r in records}),
            "methods": methods, "runs": records, "seconds": seconds, "ppots": ppots,
            "window": window, "workers": workers, "threads": threads, "machine": f"{platform.machine()}, {platform.system()}, "
                                         f"Python {platform.python_version()}",
            "config": {"pretrain_steps": preset.pretrain_steps, "n_test": preset.n_test,
                       "finetune_steps": preset.base.optim.max_steps,
                       "batch_size": preset.base.optim.batch_size,
                       "task": preset.base.data.task, "difficulty": preset.base.data.difficulty,
                       "model": {"d_model": preset.base.model.d_model,
                                 "n_layers": preset.base.model.n_layers}}}


def plot_pass_at_1(path: Path, results: dict) -> None:
    plt = pyplot()
    labels = list(results["methods"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2), constrained_layout=True)
    for x, label in enumerate(labels):
        m = results["methods"][label]
        ys = np.asarray(m["pass_at_1"]) * 100
        jitter = np.linspace(-0.12, 0.12, len(ys)) if len(ys) > 1 else np.zeros(1)
        ax.plot(x + jitter, ys, "o", color=f"C{x % 10}", ms=7, alpha=0.85)
        ax.errorbar(x + 0.28, ys.mean(), yerr=ys.std(ddof=1) if len(ys) > 1 else 0, fmt="_",
                    color="k", ms=14, capsize=3)
    base = results["methods"].get(BASELINE)
    if base is not None:
        ax.axhspan(min(base["pass_at_1"]) * 100, max(base["pass_at_1"]) * 100, color="C7", alpha=0.15,
                   label="standard: seed range")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("pass@1 on the test split (%)")
    ax.set_title(f"compare {results['preset']}: every seed a dot; bar = mean ± sd "
                 f"({len(results['seeds'])} seeds)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _diffusion_runs(results: dict):
    """(colour index, label, runs) of each diffusion method (the causal NLL is another quantity)."""
    for k, (label, m) in enumerate(results["methods"].items()):
        if m["test_loss_kind"] == "ELBO":
            yield k, label, [r for r in results["runs"] if r["label"] == label]


def _save(fig, ax, path: Path, **labels) -> None:
    ax.set(**labels)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plot_val_curves(path: Path, results: dict) -> None:
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for k, label, runs in _diffusion_runs(results):
        steps = sorted({h["step"] for r in runs for h in r["history"]})
        grid = np.full((len(runs), len(steps)), np.nan)
        for i, r in enumerate(runs):
            for h in r["history"]:
                grid[i, steps.index(h["step"])] = h["val_loss"]
        mean = np.nanmean(grid, axis=0)
        lo, hi = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
        ax.plot(steps, mean, "-o", ms=3, color=f"C{k % 10}", label=label)
        ax.fill_between(steps, lo, hi, color=f"C{k % 10}", alpha=0.15)
    _save(fig, ax, path, xlabel="fine-tuning step", ylabel="validation ELBO (nats / response token)",
          title="Validation loss: mean over seeds, band = min..max")


def plot_loss_per_bin(path: Path, results: dict) -> None:
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for k, label, runs in _diffusion_runs(results):
        runs = [r for r in runs if r["loss_per_t_bin"]]
        if not runs:
            continue
        table = np.array([[np.nan if v is None else v for v in r["loss_per_t_bin"]] for r in runs])
        centres = (np.arange(table.shape[1]) + 0.5) / table.shape[1]
        seen = ~np.isnan(table).all(axis=0)  # a window or clipped sampler leaves bins empty
        means = np.nanmean(table[:, seen], axis=0)
        ax.plot(centres[seen], means, "-o", ms=3, color=f"C{k % 10}", label=label)
    _save(fig, ax, path, xlabel="masking rate t (bin centre)",
          ylabel="training loss l (per eligible token)",
          title="Training loss per t-bin (second half of training, mean over seeds)")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _processes(results: dict) -> str:
    """How the runs trained: worker processes × intra-op threads (float results depend on it)."""
    workers, threads = results.get("workers", 1), results.get("threads")
    shown = "?" if threads is None else threads
    how = (f"{workers} worker processes × {shown} thread(s) each" if workers > 1
           else f"one process, {shown} thread(s)")
    used = sorted({r["threads"] for r in results.get("runs", []) if r.get("threads") is not None})
    if used and used != [threads]:  # runs reused from an earlier invocation
        how += f"; the runs trained with {', '.join(map(str, used))} thread(s)"
    return how


def write_report(out_dir: Path, results: dict) -> None:
    plot_pass_at_1(out_dir / "pass_at_1.png", results)
    plot_val_curves(out_dir / "val_loss.png", results)
    plot_loss_per_bin(out_dir / "loss_per_t_bin.png", results)
    cfg = results["config"]
    lines = [
        f"# maskdiff compare — preset `{results['preset']}`", "",
        f"Seeds {results['seeds']}; task `{cfg['task']}` {cfg['difficulty']}; model d_model="
        f"{cfg['model']['d_model']}, {cfg['model']['n_layers']} layers; starting checkpoint "
        f"{cfg['pretrain_steps']} steps of the standard objective on another sample of the task; "
        f"fine-tuning {cfg['finetune_steps']} steps × batch {cfg['batch_size']} (early stopping on "
        f"validation ELBO); pass@1 on {cfg['n_test']} test problems by low-confidence decoding.",
        f"Machine: {results['machine']}; {_processes(results)}; whole job "
        f"{results['seconds'] / 60:.1f} min (reused runs count as 0).", "",
        "| method | pass@1 mean ± sd (%) | min | max | range | worst − standard best | "
        "test loss (mean) | fwd / standard | train s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in results["methods"].items():
        st = m["pass_at_1_stats"]
        wb = m.get("worst_minus_standard_best")
        lines.append(
            f"| {label} | {_pct(st['mean'])} ± {_pct(st['sd'])} | {_pct(st['min'])} | {_pct(st['max'])} "
            f"| {_pct(st['range'])} | {'' if wb is None else _pct(wb)} | "
            f"{m['test_loss_stats']['mean']:.4f} ({m['test_loss_kind']}) | "
            f"{m.get('fwd_ratio_to_standard', float('nan')):.2f} | {np.mean(m['train_seconds']):.0f} |")
    lines += ["", "Per seed (pass@1 %):", "", "| method | " + " | ".join(f"seed {s}" for s in results["seeds"]) + " |",
              "|---|" + "---|" * len(results["seeds"])]
    for label, m in results["methods"].items():
        by_seed = dict(zip(m["seeds"], m["pass_at_1"]))
        lines.append(f"| {label} | " + " | ".join(
            _pct(by_seed[s]) if s in by_seed else "" for s in results["seeds"]) + " |")
    if results.get("ppots"):
        p = results["ppots"]
        lines += ["", f"P-POTS: estimated once on the starting checkpoint in {p['seconds']:.1f} s "
                      f"({p['forward_passes']} forward passes), EPR KL {p['epr']['kl']:.2e}, "
                      f"poly7 KL {p['poly7']['kl']:.2e}; see `ppots/ppots.png`."]
        if p.get("cost_fraction") is not None:
            lines[-1] += (f" Its cost is {100 * p['cost_fraction']:.1f}% of one P-POTS run's "
                          "training time (it serves every P-POTS run of the job).")
    if results.get("window"):
        lo, hi = results["window"]
        lines += ["", f"Signal-rich window: U[{lo:.3f}, {hi:.3f}] (t* of the task's character n-grams)."]
    lines += ["", "![pass@1 per seed](pass_at_1.png)", "", "![validation loss](val_loss.png)", "",
              "![loss per t-bin](loss_per_t_bin.png)", "",
              "A method helps only if its dots sit above standard's band and its spread is smaller; "
              "with 3 seeds a difference of one or two test problems is noise."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
