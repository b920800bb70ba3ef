"""The task / budget trials behind the compare demo's task (README, "What we tried").

Trains a starting checkpoint of the compare demo's kind (the standard objective on another
sample of the arithmetic task) with a given width, depth, learning rate and difficulty, stops
after ``--stop-after`` of ``--steps`` steps (the learning-rate schedule is that of the full
``--steps``), and scores pass@1 of that checkpoint on the first ``--n`` test problems under
several greedy decoders:

- ``full``: the whole region after the prompt (max_len − P positions), one block, one token per step;
- ``g16``: 16 positions (every answer of the task fits), one block, 16 steps;
- ``g16b4``: 16 positions in blocks of 4 (semi-autoregressive), 16 steps;
- ``g16b8h``: 16 positions in blocks of 8, 8 steps (two tokens per step): the compare presets' decoder.

    python benchmarks/compare_tuning.py --out runs/tuning/c --max-value 5 --lr 3e-3 \\
        --steps 1500 --stop-after 750 --decoders g16b8h,g16
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from maskdiff.data.setup import load_task
from maskdiff.experiments.compare_eval import score_pass_at_1
from maskdiff.experiments.compare_presets import START_DATA_OFFSET, Decoding
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.trainer import Trainer

DECODERS = {"full": Decoding(), "g16": Decoding(gen_length=16, steps=16, block_length=16),
            "g16b4": Decoding(gen_length=16, steps=16, block_length=4),
            "g16b8h": Decoding(gen_length=16, steps=8, block_length=8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--max-value", type=int, default=10)
    ap.add_argument("--n-ops", type=int, default=1)
    ap.add_argument("--n", type=int, default=256, help="test problems scored")
    ap.add_argument("--decoders", default="g16b8h")
    args = ap.parse_args()
    torch.set_num_threads(1)
    difficulty = {"n_ops": args.n_ops, "max_value": args.max_value}
    config = TrainConfig(
        seed=0, model=ModelConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=4),
        data=DataConfig(task="arithmetic", n_train=2000, n_val=128, n_test=args.n, max_len=112,
                        data_seed=START_DATA_OFFSET, difficulty=difficulty),
        optim=OptimConfig(lr=args.lr, warmup_steps=50, max_steps=args.steps, batch_size=32,
                          min_lr_ratio=0.1),
        eval=EvalConfig(every=max(1, args.steps // 4), n_examples=128, patience=0),
        log_every=50, out_dir=args.out)
    t0 = time.perf_counter()
    trainer = Trainer(config, quiet=True)
    result = trainer.fit(stop_after=args.stop_after)
    test = list(load_task(replace(config.data, data_seed=0)).test)[: args.n]  # compare's test split
    out = {"config": vars(args), "steps": result.steps, "train_seconds": time.perf_counter() - t0,
           "val": [(h["step"], round(h["val_loss"], 4)) for h in result.history], "pass_at_1": {}}
    for name in args.decoders.split(","):
        t1 = time.perf_counter()
        scored = score_pass_at_1(trainer.model, test, trainer.task.tokenizer, max_len=112,
                                 causal=False, decoding=DECODERS[name], device="cpu")
        out["pass_at_1"][name] = {"pass_at_1": scored["pass_at_1"],
                                  "seconds": time.perf_counter() - t1}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
