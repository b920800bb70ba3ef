"""How much of the block-size sweep's pass@1 gain is the decoder? Rescores finished compare runs
with other decoders, on the same 1000 test problems, paired by seed.

The sweep (``maskdiff compare --preset block --sweep-block 16,8,4``) decodes each model its own
way: a block model in its blocks (aligned to position 0, steps rounded up to a multiple of the
decoded blocks), the plain model semi-autoregressively with the preset's decoder (16 positions,
8 steps, blocks of 8 after the prompt). This script scores the plain model under smaller decoder
blocks and one token per step, and the b = 4 model with one token per step, so that a training
effect can be told from a decoding one.

    python benchmarks/block_decoding_control.py --out /work/runs-block/out [--seeds 5,7,...]
        [--json runs/benchmarks/block_decoding_control.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maskdiff.data.setup import load_task
from maskdiff.experiments import stats
from maskdiff.experiments.compare_presets import PRESETS
from maskdiff.training.config import block_layout
from maskdiff.training.evaluate import pass_at_1
from maskdiff.training.generate import block_decoding_steps
from maskdiff.training.runs import load_run

# (label, run folder under OUT, steps, decoder block length): None keeps the preset's.
DECODERS = (
    ("plain, 8 steps, blocks of 8 (the sweep's)", "runs", 8, 8),
    ("plain, 16 steps, blocks of 8", "runs", 16, 8),
    ("plain, 16 steps, blocks of 4", "runs", 16, 4),
    ("b=4, its blocks, 16 steps", "b4/runs", 16, None),
)


def score(run: Path, steps: int, block_length: int | None, n_test: int) -> float:
    loaded = load_run(run)
    task = load_task(loaded.config.data)
    problems = list(task.test)[:n_test]
    layout = block_layout(loaded.config)
    gen = PRESETS["block"].decoding.gen_length
    if layout is not None:
        longest = max(len(loaded.tokenizer.encode(ex.prompt)) for ex in problems)
        steps = block_decoding_steps(longest, gen, layout, steps)  # divisible for every prompt
    result = pass_at_1(loaded.model, problems, loaded.tokenizer, max_len=loaded.config.data.max_len,
                       gen_length=gen, steps=steps, block_length=block_length, layout=layout)
    return result.pass_at_1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the compare job's --out")
    parser.add_argument("--seeds", default=",".join(str(s) for s in PRESETS["block"].seeds))
    parser.add_argument("--n-test", type=int, default=PRESETS["block"].n_test)
    parser.add_argument("--json", default="runs/benchmarks/block_decoding_control.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    scores, start = {}, time.perf_counter()
    for label, folder, steps, block_length in DECODERS:
        scores[label] = [score(Path(args.out) / folder / "arithmetic" / "standard" / f"s{s}",
                               steps, block_length, args.n_test) for s in seeds]
        print(f"{label}: {[round(100 * p, 1) for p in scores[label]]}", flush=True)
    base = scores[DECODERS[0][0]]
    rows = [{"decoder": label, "pass_at_1": stats.mean_ci(values),
             "vs_sweep_plain": None if label == DECODERS[0][0]
             else stats.paired_difference(values, base), "per_seed": values}
            for label, values in scores.items()]
    print(f"\n{'decoder':<44} {'pass@1 %':>20} {'Δ vs the sweep plain, points':>32}")
    for r in rows:
        ci, d = r["pass_at_1"], r["vs_sweep_plain"]
        diff = "–" if d is None else (f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, "
                                      f"{100 * d['hi']:+.1f}] p={d['p']:.2g}")
        print(f"{r['decoder']:<44} {100 * ci['mean']:>6.1f} [{100 * ci['lo']:.1f}, "
              f"{100 * ci['hi']:.1f}] {diff:>32}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"seeds": seeds, "n_test": args.n_test, "rows": rows,
                                           "seconds": time.perf_counter() - start}, indent=1))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
