"""Trainer overhead and per-method throughput: time per training step of maskdiff's trainer
(every method) vs a bare PyTorch loop.

Both train the same model on the same batches (same forward and backward); the bare loop draws
its rates and masks with one batch-level generator and inlines the loss, the trainer goes through
the estimator, per-example seeding, statistics and logging bookkeeping. Variants: MIRROR (two
views fused into one forward, and unfused), the other methods (their cost relative to
standard: the P-POTS density comes from a flat table, which costs what a fitted one costs) and
bf16 autocast. Blocks of steps alternate between the
contenders so that machine noise hits all of them alike; ratios are medians of per-block times.

    python benchmarks/overhead.py [--device cpu|cuda] [--steps 10] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.core.methods import method_estimator
from maskdiff.training.trainer import Trainer


def bare_loop(model, batches, device, lr, grad_clip):
    """The same training step written directly in PyTorch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    mask_id = model.mask_token_id

    def step(i):
        batch = batches[i % len(batches)]
        x0, eligible, attention = batch.x0, batch.eligible, batch.attention_mask
        t = (1e-3 + (1 - 1e-3) * torch.rand(x0.shape[0], generator=gen)).to(device)
        masked = eligible & (torch.rand(x0.shape, generator=gen).to(device) < t[:, None])
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        logits = model(xt, attention)
        ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")
        per_token = torch.zeros(x0.shape, device=device).masked_scatter(masked, ce)
        loss = (per_token.sum(1) / t / eligible.sum(1).clamp(min=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_block(step_fn, steps, device, start):
    sync(device)
    begin = time.perf_counter()
    for i in range(steps):
        step_fn(start + i)
    sync(device)
    return (time.perf_counter() - begin) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", default="standard,strats,ema,isad,mirror,multisample2,ppots,"
                                              "ppots_mirror,ppots_online",
                        help="comma-separated methods to time (standard first: the ratios' base)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared CPU)")
    parser.add_argument("--json", default="runs/benchmarks/overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = TrainConfig(
        model=ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=4),
        data=DataConfig(n_train=512, n_val=8, n_test=8),
        optim=OptimConfig(max_steps=10_000, warmup_steps=1, batch_size=args.batch_size),
        eval=EvalConfig(every=10_000, n_examples=8), device=args.device,
        out_dir="runs/benchmarks/overhead-run")
    flat = {"t": [0.0, 1.0], "p": [1.0, 2.0]}
    estimators = {name: method_estimator(name, density=flat) for name in args.methods.split(",")}
    if "mirror" in estimators:
        estimators["mirror (unfused)"] = replace(estimators["mirror"], fuse_views=False)
    trainers = {f"maskdiff {name}": Trainer(replace(base, estimator=est), quiet=True)
                for name, est in estimators.items()}
    trainers["maskdiff standard bf16"] = Trainer(replace(base, bf16=True), quiet=True)
    reference = trainers["maskdiff standard"]
    batches = [reference.collate([(i, reference.task.train[i]) for i in
                                  reference.order.global_batch(s, args.batch_size)]).to(device)
               for s in range(8)]
    bare = bare_loop(copy.deepcopy(reference.model), batches, device, base.optim.lr,
                     base.optim.grad_clip)

    def trainer_step(trainer):
        def step(_):
            trainer.train_step()
            trainer.step += 1
        return step

    contenders = {"bare PyTorch loop": bare, **{k: trainer_step(v) for k, v in trainers.items()}}
    for fn in contenders.values():  # warm-up
        time_block(fn, 2, device, 0)
    times = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(time_block(fn, args.steps, device, r * args.steps))
    bare_ms = statistics.median(times["bare PyTorch loop"]) * 1e3
    rows = []
    print(f"device={args.device} d_model={args.d_model} layers={args.layers} "
          f"batch={args.batch_size} max_len={base.data.max_len} threads={torch.get_num_threads()}")
    standard_ms = statistics.median(times["maskdiff standard"]) * 1e3
    print(f"{'contender':<30} {'ms/step (median)':>17} {'ratio to bare':>14} {'ratio to standard':>18}")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        rows.append({"contender": name, "ms_per_step": ms, "ratio_to_bare": ms / bare_ms,
                     "ratio_to_standard": ms / standard_ms, "blocks_ms": [v * 1e3 for v in values]})
        print(f"{name:<30} {ms:>17.2f} {ms / bare_ms:>14.2f} {ms / standard_ms:>18.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
