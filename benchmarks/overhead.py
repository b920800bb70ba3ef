"""Trainer overhead and per-method throughput: time per training step of maskdiff's trainer
(every method) vs a bare PyTorch loop.

Both train the same model on the same batches (same forward and backward); the bare loop draws
its rates and masks with one batch-level generator and inlines the loss, the trainer goes through
the estimator, per-example seeding, statistics and logging bookkeeping. Variants: MIRROR (two
views fused into one forward, and unfused), the other methods (their cost relative to
standard: the P-POTS density comes from a flat table, which costs what a fitted one costs) and
bf16 autocast, and block diffusion (``--block-sizes``: standard trained on ``[x_t ; x_0]``,
2L tokens per example, docs/method.md §12). Blocks of steps alternate between the
contenders so that machine noise hits all of them alike; ratios are medians of per-block times.

    python benchmarks/overhead.py [--device cpu|cuda] [--steps 10] [--rounds 5] [--json PATH]

Each row also gets tokens/s (the examples' tokens, batch × max_len, per second of a step) and,
with ``--peak-tflops``, the model FLOPs utilisation: :func:`step_flops` per step over the time,
as a fraction of that peak. ``--bf16`` runs every contender (the bare loop too) under bf16
autocast instead of adding one bf16 contender. The GPU check (``benchmarks/gpu_check.sh``) runs

    overhead.py --device cuda --bf16 --d-model 768 --layers 14 --n-heads 12 --max-len 512
                --methods standard,mirror,ppots_online --peak-tflops 989

(~99M parameters, sequence 512).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.core.methods import method_estimator
from maskdiff.models import count_parameters
from maskdiff.training.trainer import Trainer


def bare_loop(model, batches, device, lr, grad_clip, bf16=False):
    """The same training step written directly in PyTorch (under bf16 autocast if ``bf16``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    mask_id = model.mask_token_id

    def step(i):
        batch = batches[i % len(batches)]
        x0, eligible, attention = batch.x0, batch.eligible, batch.attention_mask
        t = (1e-3 + (1 - 1e-3) * torch.rand(x0.shape[0], generator=gen)).to(device)
        masked = eligible & (torch.rand(x0.shape, generator=gen).to(device) < t[:, None])
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
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


FLOPS_FORMULA = "forward_passes × tokens × (6·N + 12·layers·d_model·max_len)"


def step_flops(n_params, n_layers, d_model, length, tokens, forward_passes=1):
    """Model FLOPs of one training step (forward + backward, no recomputation counted):
    6·N per token for the weights (the tied head included in N) plus 12·layers·d·L per token
    for attention's scores and weighted values (PaLM's count; bidirectional, so not halved),
    times the forward passes per example (MIRROR's two views: 2)."""
    return forward_passes * tokens * (6 * n_params + 12 * n_layers * d_model * length)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=DataConfig().max_len,
                        help="row length (the eos pad policy fills every row to it)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--methods", default="standard,strats,ema,isad,mirror,multisample2,ppots,"
                                              "ppots_mirror,ppots_online",
                        help="comma-separated methods to time (standard first: the ratios' base)")
    parser.add_argument("--block-sizes", default="16",
                        help="comma-separated block sizes for block-diffusion contenders "
                             "(standard with train.block_size=N); '' for none")
    parser.add_argument("--bf16", action="store_true",
                        help="every contender under bf16 autocast (else one extra bf16 contender)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak, for MFU (H200 bf16: 989)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared CPU)")
    parser.add_argument("--json", default="runs/benchmarks/overhead.json")
    return parser.parse_args(argv)


def build_contenders(args, device):
    """The bare loop and one trainer per method; returns (step functions, forward passes each,
    the reference trainer)."""
    base = TrainConfig(
        model=ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.n_heads),
        data=DataConfig(n_train=args.n_train, n_val=8, n_test=8, max_len=args.max_len),
        optim=OptimConfig(max_steps=10_000, warmup_steps=1, batch_size=args.batch_size),
        eval=EvalConfig(every=10_000, n_examples=8), device=args.device, bf16=args.bf16,
        out_dir="runs/benchmarks/overhead-run")
    flat = {"t": [0.0, 1.0], "p": [1.0, 2.0]}
    estimators = {name: method_estimator(name, density=flat) for name in args.methods.split(",")}
    if "mirror" in estimators:
        estimators["mirror (unfused)"] = replace(estimators["mirror"], fuse_views=False)
    trainers = {f"maskdiff {name}": Trainer(replace(base, estimator=est), quiet=True)
                for name, est in estimators.items()}
    if not args.bf16:
        trainers["maskdiff standard bf16"] = Trainer(replace(base, bf16=True), quiet=True)
    for size in filter(None, args.block_sizes.split(",")):
        trainers[f"maskdiff standard block b={int(size)}"] = Trainer(
            replace(base, block_size=int(size)), quiet=True)
    reference = trainers["maskdiff standard"]
    batches = [reference.collate([(i, reference.task.train[i]) for i in
                                  reference.order.global_batch(s, args.batch_size)]).to(device)
               for s in range(8)]
    bare = bare_loop(copy.deepcopy(reference.model), batches, device, base.optim.lr,
                     base.optim.grad_clip, bf16=args.bf16)

    def trainer_step(trainer):
        def step(_):
            trainer.train_step()
            trainer.step += 1
        return step

    contenders = {"bare PyTorch loop": bare, **{k: trainer_step(v) for k, v in trainers.items()}}
    # A block-diffusion forward reads [x_t ; x_0]: twice the tokens, attention over 2L keys.
    passes = {"bare PyTorch loop": (1, 1),
              **{k: (v.estimator.forward_passes, 1 if v.layout is None else 2)
                 for k, v in trainers.items()}}
    return contenders, passes, reference


def measure(contenders, args, device):
    for fn in contenders.values():  # warm-up
        if args.warmup:
            time_block(fn, args.warmup, device, 0)
    times = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(time_block(fn, args.steps, device, r * args.steps))
    return times


def report(args, times, passes, reference, device):
    """Prints the table, writes the JSON; returns its rows."""
    n_params = count_parameters(reference.model)
    length, tokens = args.max_len, args.batch_size * args.max_len
    bare_ms = statistics.median(times["bare PyTorch loop"]) * 1e3
    standard_ms = statistics.median(times["maskdiff standard"]) * 1e3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={args.device} ({name}) d_model={args.d_model} layers={args.layers} "
          f"heads={args.n_heads} params={n_params / 1e6:.1f}M batch={args.batch_size} "
          f"max_len={length} bf16={args.bf16} threads={torch.get_num_threads()}")
    mfu_head = f" {'MFU %':>7}" if args.peak_tflops else ""
    print(f"{'contender':<30} {'ms/step (median)':>17} {'ratio to bare':>14} "
          f"{'ratio to standard':>18} {'tokens/s':>10}{mfu_head}")
    rows = []
    for contender, values in times.items():
        ms = statistics.median(values) * 1e3
        views, factor = passes[contender]
        flops = step_flops(n_params, args.layers, args.d_model, factor * length, factor * tokens,
                           views)
        tflops = flops / (ms / 1e3) / 1e12
        mfu = tflops / args.peak_tflops if args.peak_tflops else None
        rows.append({"contender": contender, "ms_per_step": ms, "ratio_to_bare": ms / bare_ms,
                     "ratio_to_standard": ms / standard_ms, "blocks_ms": [v * 1e3 for v in values],
                     "tokens_per_s": tokens / (ms / 1e3), "forward_passes": views,
                     "input_factor": factor,
                     "model_tflops_per_s": tflops, "mfu": mfu})
        mfu_cell = f" {100 * mfu:>7.3g}" if mfu is not None else ""
        print(f"{contender:<30} {ms:>17.2f} {ms / bare_ms:>14.2f} {ms / standard_ms:>18.2f} "
              f"{tokens / (ms / 1e3):>10.0f}{mfu_cell}")
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    meta = {"device_name": name, "torch": torch.__version__, "n_parameters": n_params,
            "tokens_per_step": tokens, "peak_tflops": args.peak_tflops,
            "peak_memory_gib": peak_gib, "flops_formula": FLOPS_FORMULA}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), **meta, "rows": rows},
                                          indent=2) + "\n")
    print(f"written: {args.json}")
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    contenders, passes, reference = build_contenders(args, device)
    times = measure(contenders, args, device)
    report(args, times, passes, reference, device)


if __name__ == "__main__":
    main()
