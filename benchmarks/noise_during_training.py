"""The gradient noise scale during fine-tuning, under AdamW and SGD: does it predict the compute
multiplier of a two-view estimator (docs/method.md §11, "The gradient noise scale")?

The demo's protocol (`maskdiff compare --preset demo`: one shared starting checkpoint, 150 steps
× batch 32, paired seeds). Per optimiser and seed, standard fine-tunes in segments of
``--every`` steps; at the start and after every segment the per-example gradient noise of
standard and of MIRROR is measured on the current weights (``--draws`` per-example gradients
each; ``B_noise = tr Σ / |G|²`` against the pooled ``|G|²``) and turned into the multiplier it
predicts for MIRROR, ``(1 + B_std/B) / ((1 + B_mirror/B) · 2)``. MIRROR also fine-tunes from the
same start; the measured multiplier is the forward passes standard needs to reach its own final
validation ELBO over MIRROR's (seed bootstrap). Same data, seeds and schedule for both
optimisers; only ``optim.optimizer`` and ``optim.lr`` differ.

    python benchmarks/noise_during_training.py --shared runs/compare-demo --out runs/noise_training

``--shared``: a compare job's directory holding ``start/`` (the demo's starting checkpoint; it is
trained there when missing). Prints a table and writes ``OUT/noise_during_training.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskdiff.experiments.compare import CompareJob, RunSpec, main_task
from maskdiff.experiments.compare_eval import gradient_noise, predicted_multiplier
from maskdiff.experiments.compare_presets import PRESETS, with_base
from maskdiff.experiments.noise_training import METHOD, summarise, table
from maskdiff.training.runs import example_batch
from maskdiff.training.needs import resolve_estimator
from maskdiff.training.objective import build_objective
from maskdiff.training.trainer import Trainer



def one_seed(job: CompareJob, seed: int, every: int, draws: int) -> dict:
    """Standard in segments with the noise measured after each, then MIRROR straight through."""
    task_name = main_task(job.preset)
    task = job.task(task_name)
    init = job.start_weights(task_name, causal=False)
    configs = {m: job.run_config(RunSpec(m, seed, task_name)) for m in ("standard", METHOD)}
    built = {m: build_objective(resolve_estimator(c.estimator, task), causal=False,
                                mask_token_id=task.tokenizer.mask_id)[0]
             for m, c in configs.items()}
    pool = example_batch(job.preset.base, task, min(256, len(task.train)))
    cost = built[METHOD].forward_passes / built["standard"].forward_passes  # MIRROR: 2
    batch = job.preset.base.optim.batch_size
    points, result = [], None
    steps = job.preset.base.optim.max_steps
    for stop in [0, *range(every, steps + 1, every)]:
        trainer = Trainer(configs["standard"], task=task, quiet=True, init_weights=init)
        if stop:  # step 0: the starting checkpoint itself
            result = trainer.fit(resume=True, stop_after=stop)
        noise = gradient_noise(trainer.model, pool, built, n_draws=draws, seed=seed + stop)
        b = {m: noise["methods"][m]["b_noise"] for m in built}
        trace = {m: noise["methods"][m]["trace_cov"] for m in built}
        full = (None if None in b.values() else
                predicted_multiplier(b["standard"], b[METHOD], batch, cost))
        points.append({"step": stop, "trace_cov": trace, "g_norm_sq": noise["g_norm_sq_pooled"],
                       "b_noise": b, "predicted": full,
                       # B_noise >> B: the prediction tends to tr Σ_std / (cost · tr Σ_m)
                       "predicted_limit": trace["standard"] / (cost * trace[METHOD])})
    mirror = Trainer(configs[METHOD], task=task, quiet=True, init_weights=init).fit(resume=True)
    return {"seed": seed, "points": points,
            "standard": {"history": result.history,
                         "fwd_per_step": result.forward_passes / result.steps},
            METHOD: {"history": mirror.history,
                     "fwd_per_step": mirror.forward_passes / mirror.steps}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, required=True, help="a compare job's dir with start/")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="demo", help="the compare preset (smoke: seconds)")
    p.add_argument("--seeds", default="42,731,20231")
    p.add_argument("--every", type=int, default=30, help="steps between noise measurements")
    p.add_argument("--draws", type=int, default=64, help="per-example gradients per measurement")
    p.add_argument("--sgd-lr", type=float, default=0.01,
                   help="SGD's learning rate (a pilot: 0.01 beat 0.03 and 0.1, which left the start)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    demo = PRESETS[args.preset]
    doc = {"method": METHOD, "seeds": seeds, "every": args.every, "draws": args.draws,
           "optimizers": {}}
    for name, lr in (("adamw", demo.base.optim.lr), ("sgd", args.sgd_lr)):
        # one starting checkpoint for both: AdamW at the preset's start lr
        preset = replace(with_base(demo, optim={"optimizer": name, "lr": lr}),
                         pretrain_lr=demo.pretrain_lr or demo.base.optim.lr)
        job = CompareJob(preset, args.out / name, progress=False, shared_dir=args.shared,
                         runs_root=args.out / name / "runs")
        records = []
        for seed in seeds:
            records.append(one_seed(job, seed, args.every, args.draws))
            print(f"  {name} seed {seed} done ({(time.perf_counter() - t0) / 60:.1f} min)",
                  file=sys.stderr)
        doc["optimizers"][name] = {"lr": lr, "records": records, "summary": summarise(records)}
    doc["seconds"] = time.perf_counter() - t0
    doc["machine"] = f"{platform.machine()} {platform.system()}, torch {torch.__version__}, 1 thread"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_during_training.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(table(doc)))
    print(f"\n{args.out / 'noise_during_training.json'}  ({doc['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
