"""``maskdiff compare --block-size N`` and ``--sweep-block 16,8,4``: the paired protocol under
block diffusion (docs/method.md §12, issue 25).

A **block job** trains every diffusion method of the preset on ``[xt ; x0]`` with blocks of
``N`` tokens (``TrainConfig.block_size``), fine-tuning the *plain* masked-diffusion starting
checkpoint of the same preset (the plain job's own ``start/``: starting a block model from an
MDM, as LLaDA2.0 starts one from an autoregressive model). Its test loss is the block ELBO,
pass@1 decodes under the block layout, P-POTS's density is fitted on per-(example, block) unit
losses (``ppots-bN/``), and the compute counters count the 2L input positions (``tokens``). Its
runs live under ``OUT/bN/runs`` and its report in ``OUT/bN/``; the causal twin, having no block
layout, is the plain job's run (``OUT/runs``).

The **block sweep** runs standard at each block size and, as references, the plain job's
standard (b = L: one block, the plain MDM) and causal twin on the same seeds; every point is an
ordinary compare job (resumable, runs shared with the block jobs of the same ``OUT``). Writes
``OUT/block-sweep.json`` and ``OUT/block-sweep.md``. Per point: pass@1 with its interval and
the paired difference to b = L; the test loss, which is a *different quantity* per point (the
block ELBO of that block size, the plain ELBO, the causal NLL: not compared); and the compute
(forward passes, model input tokens with the 2L input, wall seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskdiff import jsonio
from maskdiff.experiments import stats
from maskdiff.experiments.compare import CompareJob
from maskdiff.experiments.compare_presets import ComparePreset
from maskdiff.experiments.report_md import interval
from maskdiff.fileio import atomic_write_text

REFERENCE_METHODS = ("standard", "ar")  # the plain point: b = L and the causal twin
SWEEP_METHOD = "standard"


def block_preset(preset: ComparePreset, block_size: int | None,
                 methods: tuple[str, ...] | None = None) -> ComparePreset:
    """``preset`` with every diffusion run at ``block_size`` (None: plain masked diffusion)."""
    tag = "plain" if block_size is None else f"b{block_size}"
    base = replace(preset.base, block_size=block_size)
    name = preset.name.split("@")[0]
    return replace(preset, name=f"{name}@{tag}", base=base,
                   **({} if methods is None else {"methods": methods, "equal_compute": False}))


def block_job(preset: ComparePreset, out: Path, block_size: int, **options) -> CompareJob:
    """The compare job of ``preset`` at ``block_size`` in the plain job's folder ``out``:
    the starting checkpoint shared, the runs and the report under ``out/bN/``."""
    out = Path(out)
    return CompareJob(block_preset(preset, block_size), out / f"b{block_size}", shared_dir=out,
                      runs_root=out / f"b{block_size}" / "runs", **options)


@dataclass
class BlockSweepJob:
    preset: ComparePreset
    out_dir: Path
    sizes: tuple[int, ...]
    seeds: tuple[int, ...] | None = None
    device: str | None = None
    workers: int = 1
    progress: bool = True
    threads: int | None = None

    def run(self) -> dict:
        out, started = Path(self.out_dir), time.perf_counter()
        options = dict(seeds=self.seeds, device=self.device, progress=self.progress,
                       workers=self.workers, threads=self.threads, shared_dir=out)
        plain = CompareJob(block_preset(self.preset, None, REFERENCE_METHODS),
                           out / "sweep-block" / "plain", runs_root=out / "runs", **options).run()
        points = {}
        for size in self.sizes:
            job = CompareJob(block_preset(self.preset, size, (SWEEP_METHOD,)),
                             out / "sweep-block" / f"b{size}",
                             runs_root=out / f"b{size}" / "runs", **options)
            points[str(size)] = job.run()["methods"][SWEEP_METHOD]
        reference = plain["methods"][SWEEP_METHOD]
        rows = [point_row(f"b={size}", size, points[str(size)], reference)
                for size in self.sizes]
        rows.append(point_row("b=L (plain standard)", plain["config"]["max_len"], reference,
                              None))
        if "ar" in plain["methods"]:
            rows.append(point_row("causal twin (ar)", None, plain["methods"]["ar"], reference))
        doc = {"preset": self.preset.name, "sizes": list(self.sizes), "seeds": plain["seeds"],
               "max_len": plain["config"]["max_len"], "config": plain["config"],
               "machine": plain["machine"], "rows": rows,
               "seconds": time.perf_counter() - started}
        atomic_write_text(out / "block-sweep.json", jsonio.dumps(doc, indent=1) + "\n")
        plot_block_sweep(doc, out / "block-sweep.png")
        atomic_write_text(out / "block-sweep.md", "\n".join(
            [f"# compare sweep over the block size — preset `{self.preset.name}`", ""]
            + block_sweep_setup(doc) + [""] + block_sweep_table(doc)
            + ["", "![pass@1 and cost per model](block-sweep.png)"]) + "\n")
        return doc


def plot_block_sweep(doc: dict, path: Path) -> None:
    """pass@1 of the diffusion models (each seed a dot, the mean with its 95% CI; the causal
    twin's in the title, far above) and each block size's paired difference to b = L."""
    from maskdiff.plotting import pyplot

    plt = pyplot()
    rows = [r for r in doc["rows"] if r.get("pass_at_1_ci") and r["block_size"] is not None]
    twin = next((r for r in doc["rows"] if r["block_size"] is None and r.get("pass_at_1_ci")),
                None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(rows):
        ci = r["pass_at_1_ci"]
        left.plot([i] * len(r["pass_at_1"]), [100 * p for p in r["pass_at_1"]], ".",
                  color="grey", alpha=0.6)
        left.errorbar([i], [100 * ci["mean"]], yerr=[[100 * (ci["mean"] - ci["lo"])],
                                                      [100 * (ci["hi"] - ci["mean"])]],
                      fmt="o", color="C0", capsize=4)
    left.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=15, fontsize=8)
    left.set_ylabel("pass@1 (%)")
    left.set_title(f"pass@1, {len(doc['seeds'])} paired seeds (95% CI)"
                   + (f"; causal twin {100 * twin['pass_at_1_ci']['mean']:.1f}%" if twin else ""),
                   fontsize=9)
    paired = [r for r in rows if (r.get("vs_plain") or {}).get("pass_at_1")]
    for i, r in enumerate(paired):
        d = r["vs_plain"]["pass_at_1"]
        right.errorbar([i], [100 * d["mean"]], yerr=[[100 * (d["mean"] - d["lo"])],
                                                     [100 * (d["hi"] - d["mean"])]],
                       fmt="o", color="C1", capsize=4)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(range(len(paired)), [r["label"] for r in paired], fontsize=8)
    right.set_ylabel("Δ pass@1 vs b = L (points)")
    right.set_title("paired by seed, 95% CI", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def point_row(label: str, block_size: int | None, m: dict, reference: dict | None) -> dict:
    """One sweep row from a method's summary in ``results.json``, with the paired pass@1
    difference to the plain standard runs of the same seeds (``reference``)."""
    kind = m["test_loss_kind"]
    if kind == "ELBO" and m.get("block_size"):
        kind = f"block ELBO (b={m['block_size']})"
    row = {"label": label, "block_size": block_size, "seeds": m["seeds"],
           "pass_at_1": m["pass_at_1"], "pass_at_1_ci": m.get("pass_at_1_ci"),
           "pass_at_1_sd": m.get("pass_at_1_sd"), "test_loss": m["test_loss"],
           "test_loss_ci": m.get("test_loss_ci"), "test_loss_kind": kind,
           "forward_passes": _mean(m["forward_passes"]), "tokens": _mean(m.get("tokens", [])),
           "tokens_per_step": _mean(m.get("tokens_per_step", [])),
           "train_seconds": _mean(m["train_seconds"]),
           "eval_seconds": _mean(m.get("eval_seconds", [])), "vs_plain": None}
    if reference is None:
        return row
    ref_tokens, ref_seconds = _mean(reference.get("tokens", [])), _mean(reference["train_seconds"])
    row["token_ratio"] = row["tokens"] / ref_tokens if row["tokens"] and ref_tokens else None
    row["seconds_ratio"] = (row["train_seconds"] / ref_seconds
                            if row["train_seconds"] and ref_seconds else None)
    if m.get("has_pass_at_1") and reference.get("has_pass_at_1"):
        base = dict(zip(reference["seeds"], reference["pass_at_1"]))
        pairs = [(p, base[s]) for s, p in zip(m["seeds"], m["pass_at_1"]) if s in base]
        if len(pairs) >= 2:
            a, b = zip(*pairs)
            row["vs_plain"] = {"pass_at_1": stats.paired_difference(list(a), list(b)),
                               "paired_seeds": len(pairs)}
    return row


def _ci(d: dict | None, scale: float, digits: int, sign: str = "") -> str:
    return interval(d, scale=scale, digits=digits, sign=sign, p=True)


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def block_sweep_setup(doc: dict) -> list[str]:
    cfg = doc["config"]
    return [f"Preset `{doc['preset']}`: {len(doc['seeds'])} paired seeds {doc['seeds']}, "
            f"{cfg['finetune_steps']} steps × batch {cfg['batch_size']}, max_len "
            f"{doc['max_len']}; every model fine-tunes the same plain masked-diffusion starting "
            f"checkpoint (the causal twin: its causal one). pass@1 on {cfg['n_test']} problems; "
            f"test loss on {cfg['n_test_elbo']} examples × {cfg['elbo_rates']} rates. b = L is "
            "the plain job's standard runs (one block = the plain MDM). The test losses are "
            "**different quantities** (a block ELBO per block size, the plain ELBO, the causal "
            "NLL; a block ELBO conditions on the clean earlier blocks and is in general a "
            "tighter bound): compare pass@1 across rows, not the losses. Tokens count the model's "
            f"input positions (2L per block example). {doc['machine']}."]


def block_sweep_table(doc: dict) -> list[str]:
    lines = ["| model | pass@1 % [95% CI] | Δ pass@1 vs b=L, points [95% CI] (p) | pass@1 sd "
             "| test loss [95% CI] | loss | forward passes / run | input tokens / step "
             "| tokens × b=L | train s / run | s × b=L |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        sd = r.get("pass_at_1_sd") or {}
        vs = (r.get("vs_plain") or {}).get("pass_at_1")
        lines.append(
            f"| {r['label']} | {_ci(r['pass_at_1_ci'], 100, 1)} | {_ci(vs, 100, 1, '+')} | "
            f"{_num(100 * sd['sd'] if sd.get('sd') is not None else None, '.1f')} | "
            f"{_ci(r['test_loss_ci'], 1, 4)} | {r['test_loss_kind']} | "
            f"{_num(r['forward_passes'], '.0f')} | {_num(r['tokens_per_step'], '.0f')} | "
            f"{_num(r.get('token_ratio'), '.2f')} | {_num(r['train_seconds'], '.1f')} | "
            f"{_num(r.get('seconds_ratio'), '.2f')} |")
    return lines
