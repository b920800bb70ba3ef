"""``maskdiff compare``: the multi-seed stability benchmark (the README's main job)."""

from __future__ import annotations

import os
from pathlib import Path

from maskdiff.commands import add_threads_argument, parse_names, parse_seeds
from maskdiff.experiments.compare import PRESETS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="train every method from one starting checkpoint over several seeds "
                        "and compare pass@1 and its spread",
        description="Multi-seed stability benchmark (docs/method.md §11): each method fine-tunes the same "
                    "starting checkpoint with seeds driving data order, rates and masks; pass@1 "
                    "and the test ELBO per seed; mean, sd, min, max per method. Writes "
                    "OUT/report.md, OUT/results.json and plots. Finished runs are reused when "
                    "the job is restarted.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="demo (default, ~10 min on 2 CPU cores), full (every registered method), "
                        "gpu (a larger model, --device cuda), smoke (tests)")
    p.add_argument("--methods", help="comma-separated subset of the preset's methods, or others "
                                     "(e.g. standard,mirror,standard@2x)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 42,731,20231)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the preset's)")
    p.add_argument("--out", help="output directory (default: runs/compare-<preset>)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained in parallel processes of --threads threads each (default: "
                        "the number of CPU cores, at most 4, on CPU; 1 on a GPU)")
    add_threads_argument(p, help="intra-op CPU threads of each training process: per worker "
                                 "with --workers > 1 (default 1), else of this process (default: "
                                 "PyTorch's choice); results.json records it (\"threads\")")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from maskdiff.experiments.compare import CompareJob

    preset = PRESETS[args.preset]
    if args.methods:
        preset = replace(preset, methods=parse_names(args.methods))
    seeds = parse_seeds(args.seeds)
    out = Path(args.out or f"runs/compare-{preset.name}")
    device = args.device or preset.base.device
    workers = args.workers or (min(4, os.cpu_count() or 1) if device == "cpu" else 1)
    results = CompareJob(preset, out, seeds=seeds, device=args.device, progress=not args.quiet,
                         workers=workers, threads=args.threads).run()
    print(f"\n{'method':<22} {'pass@1 mean±sd (%)':>20} {'min':>6} {'max':>6} {'fwd/std':>8}")
    for label, m in results["methods"].items():
        st = m["pass_at_1_stats"]
        print(f"{label:<22} {100 * st['mean']:>12.1f} ± {100 * st['sd']:<5.1f} {100 * st['min']:>6.1f} "
              f"{100 * st['max']:>6.1f} {m.get('fwd_ratio_to_standard', float('nan')):>8.2f}")
    print(f"\n{results['seconds'] / 60:.1f} min; report: {out / 'report.md'}")
    return 0
