"""The k-parity comparison of the parity paper (§4.5, Fig. 2, F.2; docs/method.md §9).

The same network is trained on the same finite training set with the supervised objective and
with the MD objective under U[0, 0.1], U[0, t1*] (``t1* = ps_optimal_t1(k)``, the window
``U[0, t1]`` maximising ``P_S``), U[0, 0.4], U[0, 1] and the signal-optimal fixed rate
``1/(k+1)`` (Cor. 4.8), over several seeds. Outputs in the output directory: ``report.md``,
``results.json``, ``accuracy_curves.png`` (one panel per setting: train dashed, validation solid,
mean over seeds with a min-max band), ``val_accuracy_all.png`` (every setting's validation
accuracy on one axis) and ``loss_curves.png`` (label cross-entropy). Each (setting, seed) run is
saved as ``runs/<setting>-s<seed>.json``; a restart skips the runs already saved.

A run stops once train and validation accuracy both reach ``stop_at`` (default 0.99) to spare
the CPU; for the mean curves its last logged values are carried forward to the common horizon.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.experiments.report_md import write_report_md
from maskdiff.labs.parity import ParityModelConfig, ParityRunConfig, steps_to_accuracy, train_parity
from maskdiff.labs.theory import ps_optimal_t1, signal_optimal_rate, signal_probability
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run

__all__ = [
    "PRESETS", "ParitySetting", "ParitySweepPreset", "curves_on_grid", "paper_settings",
    "run_parity_sweep", "summarise_setting", "write_plots", "write_report",
]

THRESHOLD = 0.95
RECORD_FIELDS = ("history", "seconds")


def _check_record(record: dict) -> None:
    """A run record the summary can read: a non-empty history of accuracy rows."""
    history = record["history"]
    if not isinstance(history, list) or not history:
        raise ValueError("field 'history' is not a non-empty list")
    for row in history:
        float(row["step"]), float(row["train_acc"]), float(row["val_acc"])


@dataclass(frozen=True)
class ParitySetting:
    """One training objective: ``supervised``, or MD on U[t0, t1] (t0 == t1: a fixed rate)."""

    label: str
    objective: str
    t0: float = 0.0
    t1: float = 1.0

    @property
    def slug(self) -> str:
        if self.objective == "supervised":
            return "supervised"
        if self.t0 == self.t1:
            return f"fixed-{self.t0:.4f}"
        return f"md-{self.t0:.4f}-{self.t1:.4f}"

    def run_config(self, base: ParityRunConfig, seed: int) -> ParityRunConfig:
        return replace(base, objective=self.objective, t0=self.t0, t1=self.t1, seed=seed)

    def signal_share(self, k: int) -> float | None:
        if self.objective == "supervised":
            return None
        return signal_probability(k, self.t0, self.t1)


def paper_settings(k: int) -> list[ParitySetting]:
    """Supervised, U[0,0.1], U[0,t1*], U[0,0.4], U[0,1] and the fixed rate 1/(k+1) (§4.5)."""
    t1 = ps_optimal_t1(k)
    rate = signal_optimal_rate(k)
    return [
        ParitySetting("supervised", "supervised"),
        ParitySetting("MD U[0,0.1]", "md", 0.0, 0.1),
        ParitySetting(f"MD U[0,{t1:.3f}] (P_S-opt)", "md", 0.0, t1),
        ParitySetting("MD U[0,0.4]", "md", 0.0, 0.4),
        ParitySetting("MD U[0,1]", "md", 0.0, 1.0),
        ParitySetting(f"MD t={rate:.3f} (1/(k+1))", "md", rate, rate),
    ]


@dataclass(frozen=True, kw_only=True)
class ParitySweepPreset:
    """Sizes of one sweep: the shared run config (objective and window are set per setting),
    the seeds, and what changed from the paper's setup (for the report)."""

    name: str
    base: ParityRunConfig
    seeds: tuple[int, ...]
    deviations: str = ""


PRESETS: dict[str, ParitySweepPreset] = {
    # The test suite's preset: every setting for a few steps on a tiny instance.
    "smoke": ParitySweepPreset(
        name="smoke",
        base=ParityRunConfig(n=6, k=2, n_train=48, n_val=16, model=ParityModelConfig(
            d_model=16, n_layers=1, n_heads=2), batch_size=16, max_steps=20, eval_every=5,
            lr=3e-3, stop_at_accuracy=None),
        seeds=(0, 1), deviations="plumbing only: (n,k)=(6,2), 20 steps"),
    # What a shared 2-core CPU runs in ~17 minutes (the numbers in the report).
    "cpu": ParitySweepPreset(
        name="cpu",
        base=ParityRunConfig(n=10, k=3, n_train=400, n_val=400, model=ParityModelConfig(
            d_model=32, n_layers=2, n_heads=2), batch_size=64, max_steps=1500, eval_every=50,
            lr=1e-3, weight_decay=0.1, stop_at_accuracy=0.99),
        seeds=(0, 1, 2),
        deviations="(n,k)=(10,3) instead of (20,6) and 400 training examples (of 1024 inputs); "
                   "d_model=32, 2 layers, 2 heads; minibatch 64 instead of full batch; at most "
                   "1500 steps (runs stop once train and validation accuracy reach 99%)"),
    # The paper's task size (not run here: far more compute than a shared CPU; a GPU job).
    "paper": ParitySweepPreset(
        name="paper",
        base=ParityRunConfig(n=20, k=6, n_train=5000, n_val=1000, model=ParityModelConfig(
            d_model=128, n_layers=2, n_heads=4), batch_size=0, max_steps=20000, eval_every=100,
            lr=1e-3, weight_decay=0.1, stop_at_accuracy=0.99),
        seeds=(0, 1, 2), deviations="none beyond the paper's unstated details (depth, width, "
                                    "training-set size 5000 from App. F.1's full batch)"),
}


def curves_on_grid(histories: list[list[dict]], key: str) -> tuple[list[int], list[list[float]]]:
    """Every run's ``key`` on the union of logged steps, the last value carried forward (a run
    stopped at its target accuracy keeps it)."""
    steps = sorted({int(row["step"]) for h in histories for row in h})
    out = []
    for h in histories:
        values, j = [], 0
        for s in steps:
            while j + 1 < len(h) and h[j + 1]["step"] <= s:
                j += 1
            values.append(float(h[j][key]))
        out.append(values)
    return steps, out


def _stats(values: list[int | None]) -> dict[str, Any]:
    reached = [v for v in values if v is not None]
    return {
        "per_seed": values, "n_reached": len(reached),
        "mean": sum(reached) / len(reached) if len(reached) == len(values) and reached else None,
        "median": sorted(reached)[len(reached) // 2] if len(reached) * 2 > len(values) else None,
        "min": min(reached) if reached else None, "max": max(reached) if reached else None,
    }


def summarise_setting(setting: ParitySetting, runs: list[dict], k: int,
                      threshold: float = THRESHOLD) -> dict[str, Any]:
    """Steps to ``threshold`` validation and train accuracy per seed, the grokking gap
    (validation minus train steps, per seed), P_S and final accuracies."""
    val = [steps_to_accuracy(r["history"], "val_acc", threshold) for r in runs]
    train = [steps_to_accuracy(r["history"], "train_acc", threshold) for r in runs]
    gaps = [v - t if v is not None and t is not None else None for v, t in zip(val, train)]
    # Validation accuracy at the first step where training accuracy reached the threshold:
    # near 0.5 is memorisation without generalisation.
    val_at_train = []
    for r, t in zip(runs, train):
        val_at_train.append(None if t is None else
                            next(row["val_acc"] for row in r["history"] if row["step"] == t))
    return {
        "label": setting.label, "objective": setting.objective, "t0": setting.t0,
        "t1": setting.t1, "signal_share": setting.signal_share(k),
        "steps_to_val": _stats(val), "steps_to_train": _stats(train),
        "grokking_gap": gaps, "val_acc_when_train_reached": val_at_train,
        "final_train_acc": [r["history"][-1]["train_acc"] for r in runs],
        "final_val_acc": [r["history"][-1]["val_acc"] for r in runs],
        "seconds": [r["seconds"] for r in runs],
    }


def run_parity_sweep(preset: ParitySweepPreset, out_dir: str | Path, *,
                     seeds: tuple[int, ...] | None = None,
                     settings: list[ParitySetting] | None = None,
                     base: ParityRunConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or finish) the sweep into ``out_dir``; returns what ``results.json`` holds."""
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    base = preset.base if base is None else base
    seeds = tuple(preset.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    settings = paper_settings(base.k) if settings is None else settings
    data = base.make_data()  # one instance for every setting and seed (data_seed fixed)
    start = time.perf_counter()
    jobs = [(s, seed) for seed in seeds for s in settings]
    bar = tqdm(total=len(jobs) * base.max_steps, desc="parity-sweep", disable=not progress,
               dynamic_ncols=True, unit="step")
    runs: dict[str, list[dict]] = {s.label: [] for s in settings}
    with bar:
        for setting, seed in jobs:
            path = out_dir / "runs" / f"{setting.slug}-s{seed}.json"
            config = setting.run_config(base, seed)
            done = [0]

            def advance(steps: int) -> None:
                done[0] += steps
                bar.update(steps)

            def compute(setting=setting, seed=seed, config=config, advance=advance) -> dict:
                bar.set_postfix_str(f"{setting.label} seed {seed}")
                return train_parity(config, data, progress=advance).to_dict()

            record = reuse_or_run(path, asdict(config), compute, what="run",
                                  required=RECORD_FIELDS, check=_check_record,
                                  legacy=lambda r: r.get("config"))
            bar.update(base.max_steps - done[0])  # skipped or stopped early: the rest at once
            runs[setting.label].append(record)
    summary = {s.label: summarise_setting(s, runs[s.label], base.k) for s in settings}
    results = {
        "format": "maskdiff.parity_sweep", "version": 1, "preset": preset.name,
        "n": base.n, "k": base.k, "secret": data.secret.tolist(), "seeds": list(seeds),
        "threshold": THRESHOLD, "ps_optimal_t1": ps_optimal_t1(base.k),
        "signal_optimal_rate": signal_optimal_rate(base.k),
        "base_config": json.loads(jsonio.dumps(asdict(base))),
        "deviations": preset.deviations,
        "settings": [asdict(s) for s in settings],
        "summary": summary,
        "curves": {label: {"history": [r["history"] for r in rs]} for label, rs in runs.items()},
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
    }
    atomic_write_text(out_dir / "results.json", jsonio.dumps(results) + "\n")
    write_plots(results, out_dir)
    write_report(results, out_dir)
    return results


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def _band(ax, steps, runs, color, ls, label):
    t = torch.tensor(runs, dtype=torch.float64)
    mean = t.mean(dim=0)
    ax.plot(steps, mean.tolist(), color=color, ls=ls, label=label)
    if len(runs) > 1:
        ax.fill_between(steps, t.min(dim=0).values.tolist(), t.max(dim=0).values.tolist(),
                        color=color, alpha=0.15)


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    from maskdiff.plotting import pyplot

    plt = pyplot()

    labels = list(results["summary"])
    colors = plt.get_cmap("tab10")
    n_seeds = len(results["seeds"])
    title = f"(n,k)=({results['n']},{results['k']}), {n_seeds} seed(s), mean and min-max band"
    paths = []
    for key, fname, ylabel in (("acc", "accuracy_curves.png", "accuracy"),
                               ("loss", "loss_curves.png", "label cross-entropy (nats)")):
        cols = 3
        rows = math.ceil(len(labels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharex=True,
                                 sharey=True, squeeze=False)
        for i, label in enumerate(labels):
            ax = axes[i // cols][i % cols]
            histories = results["curves"][label]["history"]
            for split, ls in (("train", "--"), ("val", "-")):
                steps, runs = curves_on_grid(histories, f"{split}_{key}")
                _band(ax, steps, runs, colors(i), ls, f"{split}")
            if key == "acc":
                ax.axhline(THRESHOLD, color="grey", lw=0.6, ls=":")
                ax.set_ylim(0.4, 1.02)
            s = results["summary"][label]
            ps = "" if s["signal_share"] is None else f"  P_S={s['signal_share']:.3f}"
            ax.set_title(f"{label}{ps}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right" if key == "acc" else "upper right")
        for j in range(len(labels), rows * cols):
            axes[j // cols][j % cols].axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("step")
        for row in axes:
            row[0].set_ylabel(ylabel)
        fig.suptitle(f"k-parity: train (dashed) and validation (solid) {ylabel}; {title}",
                     fontsize=10)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, label in enumerate(labels):
        histories = results["curves"][label]["history"]
        steps, runs = curves_on_grid(histories, "val_acc")
        _band(ax, steps, runs, colors(i), "-", label)
        steps, runs = curves_on_grid(histories, "train_acc")
        ax.plot(steps, torch.tensor(runs).mean(0).tolist(), color=colors(i), ls="--", lw=0.8)
    ax.axhline(THRESHOLD, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (validation solid, train dashed)")
    ax.set_title(f"k-parity, all settings; {title}", fontsize=9)
    ax.set_ylim(0.4, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "val_accuracy_all.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_report(results: dict, out_dir: Path) -> Path:
    base = results["base_config"]
    model = base["model"]
    max_steps = base["max_steps"]
    lines = [
        f"# k-parity laboratory ({results['preset']} preset)",
        "",
        "Parity paper §4.5 / Fig. 2 / F.2 (docs/method.md §9): the same transformer trained with the "
        "supervised objective or the masked-diffusion objective on one finite training set.",
        "",
        f"- task: (n,k)=({results['n']},{results['k']}), secret {results['secret']}, "
        f"{base['n_train']} training / {base['n_val']} validation examples (disjoint), "
        f"data seed {base['data_seed']}",
        f"- model: maskdiff transformer, d_model={model['d_model']}, n_layers={model['n_layers']}, "
        f"n_heads={model['n_heads']}, {model['positions']} positions",
        f"- AdamW lr {base['lr']}, betas {base['betas']}, weight decay {base['weight_decay']}, "
        f"grad clip {base['grad_clip']}, batch {base['batch_size'] or 'full'}, "
        f"at most {max_steps} steps (stop when train and val ≥ {base['stop_at_accuracy']}), "
        f"eval every {base['eval_every']} steps",
        f"- P_S-optimal U[0,t1]: t1* = {results['ps_optimal_t1']:.4f}; signal-optimal fixed rate "
        f"1/(k+1) = {results['signal_optimal_rate']:.4f}",
        f"- seeds {results['seeds']} (model init, batch order, masks); training time summed "
        f"over the runs {sum(sum(s['seconds']) for s in results['summary'].values()) / 60:.1f} "
        f"min (this invocation {results['seconds'] / 60:.1f} min, finished runs are reused) "
        f"on {results['machine']}",
        f"- deviations from the paper: {results['deviations'] or 'none'}",
        "",
        f"Steps to {100 * results['threshold']:.0f}% accuracy (first evaluation at or above; "
        f"— = not within {max_steps} steps):",
        "",
        "| setting | P_S | val steps per seed | val median | train steps per seed | "
        "grokking gap (val − train) | val acc when train reached | final val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, s in results["summary"].items():
        lines.append(
            f"| {label} | {_fmt(s['signal_share'])} | "
            f"{', '.join(_fmt(v) for v in s['steps_to_val']['per_seed'])} | "
            f"{_fmt(s['steps_to_val']['median'])} | "
            f"{', '.join(_fmt(v) for v in s['steps_to_train']['per_seed'])} | "
            f"{', '.join(_fmt(v) for v in s['grokking_gap'])} | "
            f"{', '.join(_fmt(v) for v in s['val_acc_when_train_reached'])} | "
            f"{', '.join(_fmt(v) for v in s['final_val_acc'])} |")
    lines += ["", "![accuracy curves](accuracy_curves.png)", "",
              "![validation accuracy, all settings](val_accuracy_all.png)", "",
              "![label cross-entropy](loss_curves.png)", ""]
    return write_report_md(out_dir, lines)
