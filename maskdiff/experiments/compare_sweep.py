"""``maskdiff compare --sweep-batch 4,8,16,32``: where estimator variance matters
(docs/method.md §11).

The same paired protocol at several batch sizes B with the same number of training examples
(steps = preset steps × preset batch / B), one starting checkpoint, one P-POTS density and one
gradient-noise measurement for all points (in the sweep's folder). Per B and method: the seed
sd of pass@1 and of the test ELBO with their intervals, the spread ratio to standard, and the
compute multiplier with its interval, next to the multiplier the measured gradient noise scale
predicts, ``(1 + B_std/B) / ((1 + B_m/B) · cost)``. Writes ``sweep.json``, ``sweep.png`` and
``sweep.md``; every point is an ordinary compare job under ``bB/`` (resumable). Run it with
the plain job's ``--out`` and the preset's own batch reuses that job's runs, starting
checkpoint, density and noise measurement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from maskdiff import jsonio
from maskdiff.core.methods import BASELINE
from maskdiff.experiments.compare import CompareJob
from maskdiff.experiments.compare_eval import predicted_multiplier
from maskdiff.experiments.compare_presets import ComparePreset, with_base
from maskdiff.experiments.compare_report import multiplier
from maskdiff.plotting import pyplot
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import load_record

SWEEP_METHODS = ("standard", "mirror", "ppots", "ppots_mirror")


def sweep_point(preset: ComparePreset, batch: int, methods: tuple[str, ...]) -> ComparePreset:
    """``preset`` at batch ``batch`` with the same number of training examples."""
    examples = preset.base.optim.max_steps * preset.base.optim.batch_size
    if batch < 1 or examples % batch:
        raise ValueError(f"batch {batch} must divide the {examples} training examples of "
                         f"preset {preset.name!r}")
    steps = examples // batch
    point = replace(preset, name=f"{preset.name}-b{batch}", methods=methods, equal_compute=False,
                    pretrain_batch=preset.start_batch)
    every = max(1, steps // 10)
    warmup = max(1, preset.base.optim.warmup_steps * steps // preset.base.optim.max_steps)
    return with_base(point, optim={"batch_size": batch, "max_steps": steps,
                                   "warmup_steps": warmup}, evaluation={"every": every})


@dataclass
class SweepJob:
    preset: ComparePreset
    out_dir: Path
    batches: tuple[int, ...]
    methods: tuple[str, ...] = SWEEP_METHODS
    seeds: tuple[int, ...] | None = None
    device: str | None = None
    workers: int = 1
    progress: bool = True
    threads: int | None = None  # as CompareJob's: per worker when workers > 1

    def run(self) -> dict:
        out, started, points = Path(self.out_dir), time.perf_counter(), {}
        own = self.preset.base.optim.batch_size
        for batch in self.batches:
            # The preset's own batch is the plain job's point: its runs (OUT/runs) are reused.
            runs = out / "runs" if batch == own else out / f"b{batch}" / "runs"
            job = CompareJob(sweep_point(self.preset, batch, self.methods), out / f"b{batch}",
                             seeds=self.seeds, device=self.device, progress=self.progress,
                             workers=self.workers, threads=self.threads, shared_dir=out,
                             runs_root=runs)
            points[str(batch)] = _point_summary(job.run(), batch)
        noise = load_record(out / "grad_noise.json")
        doc = {"preset": self.preset.name, "batches": list(self.batches),
               "methods": list(self.methods), "points": points, "grad_noise": noise,
               "examples": self.preset.base.optim.max_steps * self.preset.base.optim.batch_size,
               "seconds": time.perf_counter() - started}
        _add_predictions(doc)
        atomic_write_text(out / "sweep.json", jsonio.dumps(doc, indent=1) + "\n")
        plot_sweep(out / "sweep.png", doc)
        atomic_write_text(out / "sweep.md", "\n".join(
            [f"# compare sweep over the batch size — preset `{self.preset.name}`", ""]
            + sweep_table(doc) + ["", "![sweep](sweep.png)"]) + "\n")
        return doc


def _point_summary(results: dict, batch: int) -> dict:
    out = {"batch": batch, "seeds": results["seeds"], "steps": results["config"]["finetune_steps"],
           "seconds": results["seconds"], "methods": {}}
    for label, m in results["methods"].items():
        vs = m.get("vs_standard", {})
        out["methods"][label] = {
            key: {"ci": m.get(f"{key}_ci"), "sd": m.get(f"{key}_sd"),
                  "spread": vs.get(key, {}).get("spread"),
                  "difference": vs.get(key, {}).get("difference")}
            for key in ("pass_at_1", "test_loss")}
        out["methods"][label]["compute"] = vs.get("compute") if label != BASELINE else None
    return out


def _add_predictions(doc: dict) -> None:
    noise = (doc.get("grad_noise") or {}).get("methods") or {}
    base = noise.get(BASELINE, {}).get("b_noise")
    for point in doc["points"].values():
        for label, m in point["methods"].items():
            n = noise.get(label, {})
            m["predicted_multiplier"] = (predicted_multiplier(base, n["b_noise"], point["batch"],
                                                              n["forward_passes"])
                                         if base and n.get("b_noise") else None)


def _fmt_ci(d: dict | None, key: str, scale: float, digits: int, sign: str = "") -> str:
    if not d or d.get(key) is None:
        return "–"
    f = lambda x: f"{scale * x:{sign}.{digits}f}"  # noqa: E731
    ci = "" if d.get("lo") is None else f" [{f(d['lo'])}, {f(d['hi'])}]"
    return f"{f(d[key])}{ci}"


def sweep_table(doc: dict) -> list[str]:
    """Per batch and method: seed sd of pass@1 and test ELBO, spread ratio, compute multiplier
    measured and predicted."""
    lines = ["| batch | method | pass@1 sd, points [95% CI] | test ELBO Δ vs standard [95% CI] "
             "| test ELBO sd [95% CI] | ELBO sd ratio [95% CI] | compute multiplier [95% CI] "
             "| predicted |", "|---|---|---|---|---|---|---|---|"]
    for b, point in sorted(doc["points"].items(), key=lambda kv: int(kv[0])):
        for label, m in point["methods"].items():
            pred = m.get("predicted_multiplier")
            base = label == BASELINE
            lines.append(
                f"| {b} | {label} | {_fmt_ci(m['pass_at_1']['sd'], 'sd', 100, 1)} | "
                f"{'' if base else _fmt_ci(m['test_loss']['difference'], 'mean', 1, 4, '+')} | "
                f"{_fmt_ci(m['test_loss']['sd'], 'sd', 1, 4)} | "
                f"{'' if base else _fmt_ci(m['test_loss']['spread'], 'ratio', 1, 2)} | "
                f"{multiplier(m['compute']) if m['compute'] else '–'} | "
                f"{'–' if pred is None else f'{pred:.2f}'} |")
    return lines


def plot_sweep(path: Path, doc: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    batches = sorted(int(b) for b in doc["points"])
    for k, label in enumerate(doc["methods"]):
        colour = f"C{k % 10}"
        for ax, key, scale in ((axes[0], "pass_at_1", 100), (axes[1], "test_loss", 1)):
            sds = [doc["points"][str(b)]["methods"].get(label, {}).get(key, {}).get("sd") or {}
                   for b in batches]
            ys = [scale * s["sd"] if s else float("nan") for s in sds]
            err = [[scale * (s["sd"] - s["lo"]) if s and s.get("lo") is not None else 0 for s in sds],
                   [scale * (s["hi"] - s["sd"]) if s and s.get("hi") is not None else 0 for s in sds]]
            ax.errorbar(batches, ys, yerr=err, fmt="-o", color=colour, capsize=3, label=label)
        if label == BASELINE:
            continue
        comp = [doc["points"][str(b)]["methods"].get(label, {}).get("compute") or {} for b in batches]
        ys = [c.get("multiplier", float("nan")) for c in comp]
        err = [[c["multiplier"] - c["lo"] if c.get("lo") is not None else 0 for c in comp],
               [c["hi"] - c["multiplier"] if c.get("hi") is not None else 0 for c in comp]]
        axes[2].errorbar(batches, ys, yerr=err, fmt="-o", color=colour, capsize=3, label=label)
        pred = [doc["points"][str(b)]["methods"].get(label, {}).get("predicted_multiplier")
                for b in batches]
        if any(p is not None for p in pred):
            axes[2].plot(batches, [float("nan") if p is None else p for p in pred], "--",
                         color=colour, alpha=0.7)
    axes[2].axhline(1.0, color="k", lw=0.8, ls=":")
    titles = ("seed sd of pass@1 (points)", "seed sd of the test ELBO",
              "compute multiplier vs standard\n(0 = not reached; dashed: predicted from B_noise)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set(xlabel="batch size (same number of training examples)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
