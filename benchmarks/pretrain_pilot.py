"""The pilot behind the ``pretrain`` preset of ``maskdiff compare --regime pretrain`` (README,
"Pretraining from scratch"): how fast the test ELBO falls, what a step and a curve point cost,
and the seed sd of a paired final-ELBO difference (the power calculation's input).

- part ``A``: standard, seed 42, the preset's model on a 1,200-step schedule, the test ELBO
  (256 chunks × 8 rates, CRN) every 150 steps — is the curve flat, and where?
- part ``B``: standard and ``window_0.45_0.55`` on 3 paired seeds, 200 steps, the test ELBO at
  100 and 200 steps — the sd of the paired final difference.
- part ``bench``: CPU seconds of one training step and of one test-ELBO point of the preset's
  model (one thread; process CPU time, which other jobs on the machine barely change).
- ``--collect``: writes ``--json`` from the runs' files (a part stopped early, e.g. at the
  pilot's wall-time budget, contributes the points it logged).

    python benchmarks/pretrain_pilot.py --part A --out runs/pretrain-pilot   # and --part B
    python benchmarks/pretrain_pilot.py --collect --out runs/pretrain-pilot \\
        --json benchmarks/results/pretrain_pilot.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

from maskdiff.experiments import stats
from maskdiff.experiments.pretrain import PretrainJob
from maskdiff.experiments.pretrain_presets import PRETRAIN_PRESETS, pretrain_config

PARTS = {
    "A": dict(methods=("standard",), seeds=(42,), curve_points=8,
              base=pretrain_config(steps=1200, curve_points=8)),
    "B": dict(methods=("standard", "window_0.45_0.55"), seeds=(42, 731, 20231), curve_points=2,
              targets=(0.5, 1.0), base=pretrain_config(steps=200, curve_points=2)),
}


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def bench(out: Path, steps: int = 20) -> None:
    import torch

    from maskdiff.data.setup import load_task
    from maskdiff.experiments.pretrain import CurveTrainer

    torch.set_num_threads(1)
    preset = PRETRAIN_PRESETS["pretrain"]
    config = replace(preset.base, out_dir=str(out / "bench"))
    task = load_task(config.data)
    trainer = CurveTrainer(config, task=task, quiet=True, test_examples=list(task.test)[:256],
                           test_rates=preset.test_rates, test_seed=preset.test_seed)
    c0 = _cpu()
    trainer.test_loss()
    c1 = _cpu()
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    (out / "bench.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"test_point_cpu_seconds": c1 - c0,
                                                "step_cpu_seconds": (_cpu() - c1) / steps}))


def run(part: str, out: Path) -> None:
    if part == "bench":
        return bench(out)
    preset = replace(PRETRAIN_PRESETS["pretrain"], name=f"pilot-{part}", **PARTS[part])
    t0 = time.perf_counter()
    PretrainJob(preset, out / part, workers=1, threads=1, progress=False).run()
    (out / part / "cost.json").write_text(json.dumps(
        {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": _cpu()}))


def curve(metrics: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "val_loss": r["val_loss"], "test_loss": r["test_loss"]}
            for r in rows if "test_loss" in r]


def collect(out: Path) -> dict:
    doc = {"parts": {k: {"methods": v["methods"], "seeds": v["seeds"],
                         "max_steps": v["base"].optim.max_steps} for k, v in PARTS.items()},
           "curves": {}, "bench": (json.loads((out / "bench.json").read_text())
                                   if (out / "bench.json").exists() else None)}
    for metrics in sorted(out.glob("*/runs/*/s*/metrics.jsonl")):
        part, method, seed = metrics.parts[-5], metrics.parts[-3], metrics.parts[-2]
        doc["curves"][f"{part}/{method}/{seed}"] = curve(metrics)
    for part in PARTS:
        cost = out / part / "cost.json"
        doc["parts"][part]["cost"] = json.loads(cost.read_text()) if cost.exists() else None
    finals = {}
    for key, points in doc["curves"].items():
        part, method, seed = key.split("/")
        if part == "B" and points and points[-1]["step"] == PARTS["B"]["base"].optim.max_steps:
            finals.setdefault(method, {})[seed] = points[-1]["test_loss"]
    if len(finals) == 2:
        seeds = sorted(set(finals["standard"]) & set(finals["window_0.45_0.55"]))
        a = [finals["window_0.45_0.55"][s] for s in seeds]
        b = [finals["standard"][s] for s in seeds]
        d = stats.paired_difference(a, b)
        doc["power"] = {"paired_seeds": seeds, "differences": [x - y for x, y in zip(a, b)],
                        "sd_diff": d["sd"], "standard_sd": stats.mean_ci(b)["sd"],
                        "detectable_80": {n: stats.detectable_difference(d["sd"], n)
                                          for n in (6, 8, 10)}}
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS) + ["bench"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/pretrain_pilot.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.part:
        run(args.part, out)
    if args.collect:
        Path(args.json).write_text(json.dumps(collect(out), indent=1) + "\n")


if __name__ == "__main__":
    main()
