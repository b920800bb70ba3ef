"""The plots of a ``maskdiff compare`` report, drawn from ``results.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats as st

from maskdiff.core.methods import BASELINE
from maskdiff.experiments.compare_summary import curves
from maskdiff.plotting import pyplot


def plot_pass_at_1(path: Path, results: dict) -> None:
    """Every seed a dot, the mean with its 95% CI as a bar, standard's seed range shaded."""
    plt = pyplot()
    scored = {k: m for k, m in results["methods"].items() if m.get("pass_at_1_stats")}
    # The causal twin is the reference, usually far above: named in the title, not plotted,
    # so that the diffusion methods' differences stay visible.
    labels = [k for k, m in scored.items() if m["test_loss_kind"] == "ELBO"] or list(scored)
    others = [f"{k}: {100 * m['pass_at_1_stats']['mean']:.1f}%" for k, m in scored.items()
              if k not in labels]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2), constrained_layout=True)
    for x, label in enumerate(labels):
        m = results["methods"][label]
        ys = np.asarray(m["pass_at_1"]) * 100
        jitter = np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else np.zeros(1)
        ax.plot(x + jitter, ys, "o", color=f"C{x % 10}", ms=5, alpha=0.75)
        ci = m.get("pass_at_1_ci")
        if ci:
            ax.errorbar(x + 0.3, 100 * ci["mean"], yerr=[[100 * (ci["mean"] - ci["lo"])],
                                                         [100 * (ci["hi"] - ci["mean"])]],
                        fmt="s", color="k", ms=4, capsize=3)
    base = results["methods"].get(BASELINE)
    if base is not None and base.get("pass_at_1_stats"):
        ax.axhspan(min(base["pass_at_1"]) * 100, max(base["pass_at_1"]) * 100, color="C7",
                   alpha=0.15, label="standard: seed range")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("pass@1 on the test split (%)")
    ax.set_title(f"compare {results['preset']}: every seed a dot; square = mean with 95% CI "
                 f"({len(results['seeds'])} paired seeds)"
                 + (f"\nnot shown: {', '.join(others)} (mean)" if others else ""), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _band(ax, x, grid, style: dict, label) -> None:
    mean = grid.mean(0)
    n = grid.shape[0]
    half = (st.t.ppf(0.975, n - 1) * grid.std(0, ddof=1) / np.sqrt(n)) if n > 1 else 0 * mean
    ax.plot(x, mean, marker="o", ms=2.5, label=label, **style)
    ax.fill_between(x, mean - half, mean + half, color=style["color"], alpha=0.12)


def _curve_methods(results: dict) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """``(label, method, line style)`` of the ELBO methods on the job's main task, and the
    labels left out because they ran another task (their losses are on another scale).
    Standard is the thick black line; the others take a 20-colour map, dashed when they spend
    several forward passes per example."""
    main = results["task"]["name"]
    cmap = pyplot().get_cmap("tab20")
    shown, others = [], []
    for label, m in results["methods"].items():
        if m["test_loss_kind"] != "ELBO":
            continue
        if m["task"] != main:
            others.append(label)
            continue
        multi = m.get("fwd_ratio_to_standard", 1.0) > 1.0
        style = ({"color": "k", "ls": "-", "lw": 2.2, "zorder": 5} if label == BASELINE else
                 {"color": cmap(len(shown) % 20), "ls": "--" if multi else "-"})
        shown.append((label, m, style))
    return shown, others


def plot_val_curves(path: Path, results: dict) -> None:
    """Best-so-far validation ELBO (mean over seeds, band = 95% CI) against steps (equal-step
    view) and against cumulative forward passes (equal-compute view), with standard's final
    value as the compute-to-target line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.0), constrained_layout=True, sharey=True)
    target = None
    shown, others = _curve_methods(results)
    for label, m, style in shown:
        runs = [r for r in results["runs"] if r["label"] == label and r["history"]]
        if not runs:
            continue
        steps, fwd, grid = curves(runs)
        _band(axes[0], steps, grid, style, label)
        _band(axes[1], fwd, grid, style, label)
        if m["method"] == BASELINE and target is None:
            target = float(grid.mean(0)[-1])
    for ax, xlabel in zip(axes, ("fine-tuning step (equal steps)",
                                 "cumulative forward passes (equal compute)")):
        if target is not None:
            ax.axhline(target, color="k", ls=":", lw=1, label="standard's final value")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation ELBO, best so far (nats / token)")
    axes[1].legend(fontsize=7, ncol=2 if len(shown) > 8 else 1)
    fig.suptitle("Validation loss: mean over seeds, band = 95% CI; dashed = two views per example"
                 + (f"; not shown (another task): {', '.join(others)}" if others else ""),
                 fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_per_bin(path: Path, results: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.0), constrained_layout=True)
    shown, others = _curve_methods(results)
    for label, m, style in shown:
        runs = [r for r in results["runs"] if r["label"] == label and r.get("loss_per_t_bin")]
        if not runs:
            continue
        table = np.array([[np.nan if v is None else v for v in r["loss_per_t_bin"]] for r in runs])
        centres = (np.arange(table.shape[1]) + 0.5) / table.shape[1]
        seen = ~np.isnan(table).all(axis=0)  # a window or clipped sampler leaves bins empty
        ax.plot(centres[seen], np.nanmean(table[:, seen], axis=0), marker="o", ms=3,
                label=label, **style)
    ax.set(xlabel="masking rate t (bin centre)", ylabel="training loss l (per eligible token)")
    ax.set_title("Training loss per t-bin (second half of training, mean over seeds)"
                 + (f"\nnot shown (another task): {', '.join(others)}" if others else ""),
                 fontsize=10)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2 if len(shown) > 8 else 1)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(out_dir: Path, results: dict) -> list[str]:
    """Every plot of the report; returns the file names."""
    names = []
    if any(m.get("pass_at_1_stats") for m in results["methods"].values()):
        plot_pass_at_1(out_dir / "pass_at_1.png", results)
        names.append("pass_at_1.png")
    plot_val_curves(out_dir / "val_loss.png", results)
    plot_loss_per_bin(out_dir / "loss_per_t_bin.png", results)
    return names + ["val_loss.png", "loss_per_t_bin.png"]
