"""``report.md`` and PNGs of ``maskdiff image``: sample grids per method, the score table."""

from __future__ import annotations

from pathlib import Path

import math

import numpy as np

from maskdiff.core.methods import BASELINE
from maskdiff.data.digits import CLASS_WORDS, examples_to_arrays, image_to_text, text_to_image
from maskdiff.fileio import atomic_write_text

BASELINES = (BASELINE, "standard@2x")  # the accuracy differences are taken against each

SCORE_LABELS = {"accuracy": "class accuracy", "mean_prob": "mean p(requested class)",
                "frechet": "Fréchet distance (lower is better)",
                "best_val": "best val ELBO (nats/token)"}


def _grid_images(samples: list[str], labels: list[int], levels: int, columns: int) -> np.ndarray:
    """(10, columns, 8, 8): the first ``columns`` samples of each class (blank if fewer)."""
    grid = np.full((10, columns, 8, 8), np.nan)
    for c in range(10):
        mine = [s for s, label in zip(samples, labels) if label == c][:columns]
        for j, text in enumerate(mine):
            grid[c, j] = text_to_image(text, levels)
    return grid


def plot_grid(path: Path, grid: np.ndarray, levels: int, title: str) -> None:
    """Rows: classes 0–9; columns: samples. Ink is dark on white (``gray_r``)."""
    from maskdiff.plotting import pyplot

    plt = pyplot()

    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 0.75 * cols + 0.9), 0.75 * rows + 0.6),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            if not np.all(np.isnan(grid[r, c])):
                ax.imshow(grid[r, c], cmap="gray_r", vmin=0, vmax=levels - 1,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(CLASS_WORDS[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_scores(path: Path, results: dict) -> None:
    """One panel per score: each seed a dot, the mean a bar, per method."""
    from maskdiff.plotting import pyplot

    plt = pyplot()

    methods = list(results["methods"])
    keys = ("accuracy", "mean_prob", "frechet")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        for x, method in enumerate(methods):
            m = results["methods"][method]
            vals = [r[key] for r in m["per_seed"]]
            ax.bar(x, m[f"{key}_stats"]["mean"], color="#cfd8e3", width=0.6)
            ax.scatter([x] * len(vals), vals, color="#1f4e79", zorder=3, s=18)
        if key == "frechet" and results["evaluator"].get("real_frechet_floor") is not None:
            ax.axhline(results["evaluator"]["real_frechet_floor"], color="#a33", ls="--", lw=1,
                       label="real images (floor)")
            ax.legend(fontsize=7)
        if key == "accuracy":
            ax.axhline(results["evaluator"]["real_test_accuracy"], color="#a33", ls="--", lw=1,
                       label="real held-out images")
            ax.legend(fontsize=7)
        if key in ("accuracy", "mean_prob"):  # zoom: the differences are a few points
            lowest = min(r[key] for m in results["methods"].values() for r in m["per_seed"])
            ax.set_ylim(max(0.0, lowest - 0.1), 1.0)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=20, fontsize=8)
        ax.set_title(SCORE_LABELS[key], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _grid_name(method: str) -> str:
    return f"samples_{method.replace('@', '_at_')}.png"


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def differences(results: dict, baseline: str) -> list[dict]:
    """Each method's mean class accuracy minus ``baseline``'s, with the standard error of that
    difference from the seed-to-seed spreads (``sqrt(sd_a²/n_a + sd_b²/n_b)``)."""
    methods = results["methods"]
    if baseline not in methods:
        return []
    base = methods[baseline]["accuracy_stats"]
    out = []
    for method, m in methods.items():
        st = m["accuracy_stats"]
        if method == baseline or st["sd"] is None or base["sd"] is None:
            continue
        se = math.sqrt(st["sd"] ** 2 / st["n"] + base["sd"] ** 2 / base["n"])
        diff = st["mean"] - base["mean"]
        out.append({"method": method, "baseline": baseline, "diff": diff, "se": se,
                    "z": diff / se if se > 0 else float("nan")})
    return out


def _fmt(st: dict, digits: int = 3, scale: float = 1.0) -> str:
    if st["mean"] is None:
        return "–"
    sd = "–" if st["sd"] is None else f"{scale * st['sd']:.{digits}f}"
    return f"{scale * st['mean']:.{digits}f} ± {sd}"


def write_report(out_dir: Path, results: dict, records: list[dict], task) -> None:
    """``report.md`` plus ``samples_<method>.png`` (first seed; ``@`` written ``_at_``), ``real.png``,
    ``scores.png``."""
    out_dir = Path(out_dir)
    write_pictures(out_dir, results, records, task)
    lines = _setup_lines(results) + _score_tables(results) + _picture_lines(results)
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def write_pictures(out_dir: Path, results: dict, records: list[dict], task) -> None:
    """The sample grid of every method (first seed), the real images' grid and ``scores.png``."""
    setup, ev = results["setup"], results["evaluator"]
    levels, cols = setup["levels"], results["grid_columns"]
    first = results["seeds"][0]
    for method in results["methods"]:
        rec = next(r for r in records if r["method"] == method and r["seed"] == first)
        m = results["methods"][method]
        own = next(r for r in m["per_seed"] if r["seed"] == first)
        plot_grid(out_dir / _grid_name(method),
                  _grid_images(rec["samples"], rec["labels"], levels, cols), levels,
                  f"{method}, seed {first}: accuracy {own['accuracy']:.2f}, "
                  f"Fréchet {own['frechet']:.1f} (T={setup['temperature']})")
    real_images, real_labels = examples_to_arrays(task.test[ev["classifier_train_images"]:], levels)
    plot_grid(out_dir / "real.png",
              _grid_images([image_to_text(im, levels) for im in real_images], real_labels.tolist(),
                           levels, cols), levels, "real held-out images (the Fréchet reference)")
    plot_scores(out_dir / "scores.png", results)


def _setup_lines(results: dict) -> list[str]:
    """The report's title and the description of the data, model, generation and evaluator."""
    setup, ev = results["setup"], results["evaluator"]
    levels = setup["levels"]
    return [
        f"# maskdiff image — preset `{results['preset']}`", "",
        "Class-to-image masked diffusion on scikit-learn's 8×8 handwritten digits: the prompt is "
        "the class in words (\"a handwritten seven\"), the response the 64 pixels quantised to "
        f"{levels} grey levels, one token each; only the 64 image tokens are eligible.", "",
        f"- Data: {setup['n_train']} training / {setup['n_val']} validation images for the "
        f"diffusion model; {setup['n_test']} held-out real images for the evaluator "
        f"(data seed {setup['data_seed']}).",
        f"- Model: {setup['model']['n_layers']} transformer layer(s), "
        f"d_model {setup['model']['d_model']}, "
        f"{setup['model']['positions']} positions. Init: {setup['init']}. Start: "
        f"{setup['pretrain_steps']} standard steps (lr {setup['pretrain_lr']}); each run "
        f"{setup['optim']['max_steps']} steps × batch {setup['optim']['batch_size']} "
        f"(lr {setup['optim']['lr']}), best validation-ELBO checkpoint.",
        f"- Generation: low-confidence decoder (`maskdiff.training.generate.generate_diffusion`), "
        f"{setup['gen_steps']} steps, block length {setup['block_length']}, Gumbel-max sampling "
        f"at temperature {setup['temperature']} restricted to grey-level tokens; "
        f"{setup['samples_per_class']} images per class per run.",
        f"- Evaluator: an MLP {ev['classifier']['hidden']} trained on "
        f"{ev['classifier_train_images']} held-out real images; on the other {ev['reference_images']} real held-out images its "
        f"accuracy is **{ev['real_test_accuracy']:.3f}** (mean p(class) "
        f"{ev['real_test_mean_prob']:.3f}). Fréchet distance on its "
        f"{ev['classifier']['hidden'][-1]} penultimate features against those {ev['reference_images']} images; a real sample of "
        f"the same size as a run's (from the diffusion training data) scores "
        f"**{_num(ev['real_frechet_floor'], 2)}** (the floor).",
        f"- Seeds {results['seeds']}; training + generation of every run, the start and P-POTS: "
        f"{results['compute_seconds'] / 60:.1f} min (this invocation: "
        f"{results['seconds'] / 60:.1f} min; finished runs are reused), "
        f"{results.get('threads', '?')} torch thread(s).", "",
    ]


def _score_tables(results: dict) -> list[str]:
    """The score tables: per method, per seed, accuracy differences, per-class accuracy."""
    setup = results["setup"]
    lines = [
        "## Scores (mean ± sd over seeds)", "",
        "| method | class accuracy | mean p(class) | Fréchet ↓ | best val ELBO | fwd passes |",
        "|---|---|---|---|---|---|",
    ]
    for method, m in results["methods"].items():
        lines.append(f"| {method} | {_fmt(m['accuracy_stats'])} | {_fmt(m['mean_prob_stats'])} | "
                     f"{_fmt(m['frechet_stats'], 2)} | {_fmt(m['best_val_stats'], 4)} | "
                     f"{m['forward_passes']:.0f} |")
    lines += ["", "## Per seed", "", "| method | seed | accuracy | mean p | Fréchet | best val | "
              "best step | train s |", "|---|---|---|---|---|---|---|---|"]
    for method, m in results["methods"].items():
        for r in m["per_seed"]:
            lines.append(f"| {method} | {r['seed']} | {r['accuracy']:.3f} | {r['mean_prob']:.3f} | "
                         f"{r['frechet']:.2f} | {r['best_val']:.4f} | {r['best_step']} | "
                         f"{r['train_seconds']:.0f} |")
    n_gen = 10 * setup["samples_per_class"]
    typical = np.mean([m["accuracy_stats"]["mean"] for m in results["methods"].values()])
    lines += ["", "## Class accuracy: differences between methods", "",
              "Mean over seeds minus the baseline's, ± the standard error of the difference from "
              "the seed-to-seed spreads (z = difference / SE). For scale: one run's accuracy on "
              f"{n_gen} generated images has a sampling SE of about "
              f"{math.sqrt(typical * (1 - typical) / n_gen):.3f} by itself (binomial).", "",
              "| method | baseline | difference | SE | z |", "|---|---|---|---|---|"]
    for k, baseline in enumerate(BASELINES):
        for d in differences(results, baseline):
            if d["method"] in BASELINES[:k]:
                continue  # already shown as the earlier baseline's row against this one
            lines.append(f"| {d['method']} | {d['baseline']} | {d['diff']:+.3f} | {d['se']:.3f} | "
                         f"{d['z']:+.1f} |")
    lines += ["", "## Class accuracy per class (mean over seeds)", "",
              "| method | " + " | ".join(str(c) for c in range(10)) + " |",
              "|---|" + "---|" * 10]
    for method, m in results["methods"].items():
        cells = " | ".join(f"{v:.2f}" for v in m["per_class_accuracy"])
        lines.append(f"| {method} | {cells} |")
    return lines


def readme_table(results: dict) -> list[str]:
    """The README's table (``readme-tables``, table ``image``): per method the class accuracy,
    mean p(class) and Fréchet distance (mean ± sd over seeds), the forward passes, and the class
    accuracy's difference from standard and from standard@2x (± SE, z), in points."""
    diffs = {(d["method"], d["baseline"]): d for b in BASELINES for d in differences(results, b)}

    def diff(method: str, baseline: str) -> str:
        d = diffs.get((method, baseline))
        return "" if d is None else (f"{100 * d['diff']:+.1f} ± {100 * d['se']:.1f} "
                                     f"(z = {d['z']:+.1f})")

    lines = ["| method | class accuracy | mean p(class) | Fréchet ↓ | forward passes | "
             "accuracy Δ vs standard, points | vs standard@2x |", "|---|---|---|---|---|---|---|"]
    for method, m in results["methods"].items():
        lines.append(f"| {method} | {_fmt(m['accuracy_stats'])} | {_fmt(m['mean_prob_stats'])} | "
                     f"{_fmt(m['frechet_stats'], 2)} | {m['forward_passes']:,.0f} | "
                     f"{diff(method, BASELINES[0])} | {diff(method, BASELINES[1])} |")
    return lines


def _picture_lines(results: dict) -> list[str]:
    """The pictures section and the notes on the P-POTS density and the starting checkpoint."""
    first = results["seeds"][0]
    lines = ["", "## Pictures", "", "Real held-out images:", "", "![real](real.png)", ""]
    for method in results["methods"]:
        lines += [f"`{method}` (seed {first}):", "", f"![{method}]({_grid_name(method)})", ""]
    lines += ["Scores per seed (dots) and their mean (bars):", "", "![scores](scores.png)", ""]
    if results.get("ppots"):
        pp = results["ppots"]
        lines += [f"P-POTS density: EPR fit on the starting checkpoint, {pp.get('forward_passes')} "
                  f"forward passes, {pp.get('seconds') or 0:.1f} s (`ppots/ppots.png`).", ""]
    if results.get("start"):
        st = results["start"]
        lines += [f"Starting checkpoint: {st['steps']} steps, {st['seconds']:.0f} s, final val "
                  f"ELBO {st['final_val']:.4f}.", ""]
    return lines
