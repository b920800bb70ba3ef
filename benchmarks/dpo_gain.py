"""What the ELBO estimator does to DPO's pass@1 (docs/method.md §13): DPO from fine-tuned
runs, one per seed, on pairs each run samples itself (a correct and a wrong final answer to the
same training prompt; no hand labels), per estimator at equal forward passes, paired over seeds
(:mod:`maskdiff.experiments.dpo_gain`).

The fine-tuned runs are a compare job's ``standard`` runs (``runs/<task>/standard/s<seed>``):

    maskdiff compare --preset windows --methods standard --out runs/compare --workers 2
    python benchmarks/dpo_gain.py --runs runs/compare/windows/runs/arithmetic/standard \\
        --out runs/dpo_gain --workers 2

Resumable: rerun the same command and every finished step (pairs, a score, a DPO run) is kept;
one finished under other settings is refused, naming them.
Prints the table and writes ``OUT/results.json`` (the README's table comes from a copy of it
under ``docs/results/dpo-gain.json``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path

from maskdiff.experiments.dpo_gain import GainConfig, gain_setup, gain_table, run_benchmark
from maskdiff.jobs import JobRefused


def find_runs(root: Path, seeds: str | None) -> dict[int, Path]:
    """``root/s<seed>`` run directories (those with a ``config.json``), optionally only ``seeds``."""
    runs = {int(m.group(1)): p for p in sorted(root.iterdir())
            if (m := re.fullmatch(r"s(-?\d+)", p.name)) and (p / "config.json").is_file()}
    if seeds:
        wanted = [int(s) for s in seeds.split(",")]
        missing = [s for s in wanted if s not in runs]
        if missing:
            raise SystemExit(f"dpo_gain: no run for seed(s) {missing} under {root} "
                             f"(found {sorted(runs)})")
        runs = {s: runs[s] for s in wanted}
    if len(runs) < 3:
        raise SystemExit(f"dpo_gain: {root} holds {len(runs)} run(s) s<seed>/; the paired "
                         f"intervals need at least 3")
    return runs


def main(argv=None) -> int:
    defaults = {f.name: f.default for f in fields(GainConfig) if f.name != "decoding"}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, type=Path,
                   help="a directory of fine-tuned runs s<seed>/ (a compare job's standard runs)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", help="comma-separated seeds (default: every run found)")
    p.add_argument("--estimators", default=",".join(defaults["estimators"]))
    for name in ("n_prompts", "samples", "budget", "steps", "batch_size", "n_test"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name])
    for name in ("temperature", "beta", "lr"):
        p.add_argument("--" + name, type=float, default=defaults[name])
    p.add_argument("--workers", type=int, default=1, help="processes of one thread each")
    args = p.parse_args(argv)
    if not args.runs.is_dir():
        raise SystemExit(f"dpo_gain: --runs {args.runs} is not a directory")
    try:
        config = GainConfig(estimators=tuple(args.estimators.split(",")),
                            **{k: getattr(args, k) for k in defaults if k != "estimators"})
    except ValueError as err:
        raise SystemExit(f"dpo_gain: {err}") from None
    runs = find_runs(args.runs, args.seeds)
    print(f"dpo_gain: {len(runs)} seeds × {len(config.estimators)} estimators -> {args.out}",
          file=sys.stderr)
    try:
        doc = run_benchmark(runs, args.out, config, workers=args.workers,
                            progress=lambda r: print(f"  seed {r['seed']} done", file=sys.stderr))
    except JobRefused as err:  # a finished step of --out made under other settings
        raise SystemExit(f"dpo_gain: {err}") from None
    print("\n".join(gain_setup(doc) + [""] + gain_table(doc)))
    print(f"\n{args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
