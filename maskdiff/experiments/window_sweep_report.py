"""The window sweep's report and plots, from its ``results.json`` dict
(:func:`maskdiff.experiments.window_sweep.run_window_sweep`; docs/method.md §10, parity paper Fig. 3).

The settings are told apart by their ``kind`` ("baseline", "interval", "predicted"), so nothing
here depends on the sweep's code, only on its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskdiff.experiments.report_md import write_report_md

__all__ = ["write_plots", "write_report"]


def _of_kind(summary: dict, kind: str) -> tuple[str, dict] | None:
    """The (label, entry) of the one setting of ``kind`` ("baseline" or "predicted"), if any."""
    return next(((label, v) for label, v in summary.items() if v["kind"] == kind), None)


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    """``test_loss_vs_window.png`` (absolute and paired test loss against the window centre)
    and ``val_curves.png``; returns their paths."""
    from maskdiff.plotting import pyplot

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    _plot_test_loss(ax, results)
    _plot_paired(ax2, results)
    fig.tight_layout()
    path = out_dir / "test_loss_vs_window.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path, _plot_val_curves(plt, results, out_dir)]


def _plot_test_loss(ax: Any, results: dict) -> None:
    """Test loss (mean over seeds ± se) against the window centre, the baseline as a band."""
    summary = results["summary"]
    _, base = _of_kind(summary, "baseline")
    ax.axhline(base["test_loss_mean"], color="tab:blue", ls="--", label="U[0,1] baseline (±se)")
    ax.axhspan(base["test_loss_mean"] - base["se"], base["test_loss_mean"] + base["se"],
               color="tab:blue", alpha=0.15)
    xs = [v["centre"] for v in summary.values() if v["kind"] == "interval"]
    ys = [v["test_loss_mean"] for v in summary.values() if v["kind"] == "interval"]
    es = [v["se"] for v in summary.values() if v["kind"] == "interval"]
    ax.errorbar(xs, ys, yerr=es, fmt="o-", color="black", capsize=3,
                label="width-0.1 window (mean over seeds ±se)")
    for r in results["runs"]:
        if r["kind"] == "interval":
            ax.plot(0.5 * sum(r["window"]), r["test_loss"], ".", color="grey", alpha=0.5)
    predicted = _of_kind(summary, "predicted")
    if predicted:
        p = predicted[1]
        ax.errorbar([p["centre"]], [p["test_loss_mean"]], yerr=[p["se"]], fmt="*", ms=13,
                    color="tab:red", capsize=3, label="predicted window")
    ax.axvline(results["t_star"], color="tab:red", ls=":", label=f"t* = {results['t_star']:.3f}")
    ax.set_xlabel("window centre (training t ~ U[c-0.05, c+0.05])")
    ax.set_ylabel("test loss: full-range ELBO (nats/token)")
    ax.set_title(f"Test loss vs masking window ({results['preset']} preset, "
                 f"{len(results['seeds'])} seed(s))")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_paired(ax2: Any, results: dict) -> None:
    """Paired difference of every window from the U[0,1] baseline (grey dots: per seed): same
    seeds, test examples and masks as the baseline."""
    summary = results["summary"]
    predicted = _of_kind(summary, "predicted")
    ax2.axhline(0.0, color="tab:blue", ls="--", label="U[0,1] baseline")
    pts = [(v["centre"], v["paired_vs_baseline"]) for v in summary.values()
           if v["kind"] == "interval" and v.get("paired_vs_baseline")]
    if pts:
        ax2.errorbar([c for c, _ in pts], [p["delta"] for _, p in pts],
                     yerr=[p["se_total"] for _, p in pts], fmt="o-", color="black", capsize=3,
                     label="window − U[0,1] (± se over seeds)")
        for c, p in pts:
            ax2.plot([c] * len(p["per_seed"]), list(p["per_seed"].values()), ".", color="grey",
                     alpha=0.6)
    pred = predicted[1].get("paired_vs_baseline") if predicted else None
    if pred:
        ax2.errorbar([predicted[1]["centre"]], [pred["delta"]], yerr=[pred["se_total"]],
                     fmt="*", ms=13, color="tab:red", capsize=3, label="predicted window")
    ax2.axvline(results["t_star"], color="tab:red", ls=":", label=f"t* = {results['t_star']:.3f}")
    ax2.set_xlabel("window centre")
    ax2.set_ylabel("paired Δ test loss vs U[0,1] (nats/token; < 0 is better)")
    ax2.set_title("Paired difference from the U[0,1] baseline (grey: per seed)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)


def _plot_val_curves(plt: Any, results: dict, out_dir: Path) -> Path:
    """Validation ELBO against steps for every setting (mean over seeds)."""
    summary = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for label, v in summary.items():
        rows = [r for r in results["runs"] if r["label"] == label and r["val_history"]]
        if not rows:
            continue
        steps = [h["step"] for h in rows[0]["val_history"]]
        vals = [sum(r["val_history"][i]["val_loss"] for r in rows) / len(rows)
                for i in range(len(steps))]
        if v["kind"] == "baseline":
            ax.plot(steps, vals, color="black", lw=2, label=label)
        elif v["kind"] == "predicted":
            lo, hi = v["window"]
            ax.plot(steps, vals, color="tab:red", lw=2, ls="--",
                    label=f"predicted {lo:.2f}-{hi:.2f}")
        else:
            ax.plot(steps, vals, color=cmap(v["centre"]), lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss: full-range ELBO")
    ax.set_title("Validation ELBO during training (mean over seeds)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "val_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: Path, preset: Any) -> Path:
    """``report.md``: the configuration, the per-setting table and the best interval, plus a
    hand-written ``notes.md`` if present; ``preset`` (a ``WindowSweepPreset``) gives its notes."""
    summary = results["summary"]
    _, predicted = _of_kind(summary, "predicted")
    train = results["config"]["train"]
    lines = [
        f"# Window sweep ({results['preset']} preset)",
        "",
        "Parity paper §5.1 / Fig. 3 (docs/method.md §10): the tiny maskdiff transformer on the natural-text "
        "task (World English Bible, char-level) trained with U[0,1] and with t ~ U[lo, hi] on each "
        "width-0.1 interval plus the interval centred on the corpus' predicted t*. Test loss is "
        "always the full-range ELBO over U[1e-3, 1] (maskdiff.training.evaluate.elbo), same test examples "
        "and masks for every run.",
        "",
        f"- model: d_model={train['model']['d_model']}, n_layers={train['model']['n_layers']}, "
        f"n_heads={train['model']['n_heads']}; data: {train['data']['n_train']} training chunks of "
        f"{train['data']['difficulty'].get('chunk_chars')} characters; "
        f"{train['optim']['max_steps']} steps of batch {train['optim']['batch_size']}, "
        f"AdamW lr {train['optim']['lr']}, wd {train['optim']['weight_decay']}",
        f"- seeds: {results['seeds']}; test: {results['config']['n_test']} chunks × "
        f"{results['config']['test_rates']} stratified rates",
        f"- predicted t* = {results['t_star']:.4f} ({results['prediction'].get('source')}; "
        f"level {results['prediction'].get('level')}, weights "
        f"{results['prediction'].get('weights')}) -> window "
        f"[{predicted['window'][0]:.3f}, {predicted['window'][1]:.3f}]",
        f"- training time (with validation) summed over the runs "
        f"{sum(r['train_seconds'] for r in results['runs']) / 60:.1f} min (this invocation "
        f"{results['seconds'] / 60:.1f} min, finished runs are reused) on {results['machine']}",
    ]
    if preset.notes:
        lines.append(f"- note: {preset.notes}")
    lines += ["", "`se` combines the seed spread and the test-set error of each run. The paired "
              "Δ compares each setting with U[0,1] on the same seeds, test examples and masks; "
              "`se test` is the test-set noise of Δ alone, `se seeds` the standard error of the "
              "per-seed Δ (training-seed noise included): the latter decides whether a window "
              "beats the baseline.", "",
              "| setting | window | test loss (mean) | ± se | sd over seeds | paired Δ vs U[0,1] "
              "| se test | se seeds | Δ per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for label, v in summary.items():
        window = "—" if v["window"] is None else f"[{v['window'][0]:.3f}, {v['window'][1]:.3f}]"
        paired = v.get("paired_vs_baseline")
        if paired is None:
            delta = se_test = se_seeds = per_seed = "—"
        else:
            delta = f"{paired['delta']:+.4f}"
            se_test, se_seeds = f"{paired['se']:.4f}", f"{paired['se_seeds']:.4f}"
            per_seed = ", ".join(f"{x:+.4f}" for x in paired["per_seed"].values())
        lines.append(f"| {label} | {window} | {v['test_loss_mean']:.4f} | {v['se']:.4f} | "
                     f"{v['test_loss_sd_seeds']:.4f} | {delta} | {se_test} | {se_seeds} | "
                     f"{per_seed} |")
    best = results["best_interval"]
    lines += [
        "",
        f"Best width-0.1 interval: {best['label']} (centre {best['centre']:.2f}), "
        f"|centre − t*| = {best['distance_to_t_star']:.3f}.",
        "",
        "![test loss vs window](test_loss_vs_window.png)",
        "",
        "![validation curves](val_curves.png)",
        "",
    ]
    return write_report_md(out_dir, lines)
