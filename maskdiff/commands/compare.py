"""``maskdiff compare``: the paired multi-seed stability benchmark (the README's main job)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from maskdiff.commands import (
    add_hf_load_arguments, add_threads_argument, hf_load_kwargs, parse_ints, parse_names, parse_seeds,
    positive,
)
from maskdiff.experiments.compare_presets import PRESETS, Decoding
from maskdiff.experiments.pretrain_presets import PRETRAIN_PRESETS

REGIMES = ("finetune", "pretrain")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="train every method from one starting checkpoint over paired seeds; "
                        "pass@1 and test ELBO with confidence intervals",
        description="Paired multi-seed stability benchmark (docs/method.md §11): each method "
                    "fine-tunes the same starting checkpoint; seed s gives every method the same "
                    "data order, rates and masks streams. Per method: mean with 95%% CI, the "
                    "paired difference to standard (CI, p), the seed sd and spread ratio (CIs, "
                    "Brown-Forsythe / Pitman-Morgan), the evaluation floor, and the compute "
                    "multiplier to standard's final validation ELBO. Writes OUT/report.md, "
                    "OUT/results.json and plots. Finished runs are reused when the job is "
                    "restarted; a killed job resumes.")
    p.add_argument("--regime", choices=REGIMES, default="finetune",
                   help="finetune (default): every method fine-tunes one starting checkpoint; "
                        "pretrain: every method trains from scratch on the World English Bible "
                        "(or --train-file {text} rows), scored by the test ELBO along training "
                        "and compute to target (OUT/pretrain/; docs/method.md §11)")
    p.add_argument("--preset", choices=sorted(PRESETS) + sorted(PRETRAIN_PRESETS), default=None,
                   help="finetune: demo (default: 5 methods × 5 seeds, ~900 CPU-seconds), full "
                        "(every registered method, 12 seeds), gpu (a larger model, 10 seeds, "
                        "--device cuda), smoke (tests); pretrain: pretrain (default), "
                        "pretrain-smoke (tests)")
    p.add_argument("--methods", help="comma-separated subset of the preset's methods, or others "
                                     "(e.g. standard,mirror,standard@2x)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the preset's)")
    p.add_argument("--out", help="output directory (default: runs/compare-<preset>)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained in parallel processes of --threads threads each (default: "
                        "the number of CPU cores, at most 4, on CPU; 1 on a GPU)")
    add_threads_argument(p, help="intra-op CPU threads of each training process: per worker "
                                 "with --workers > 1 (default 1), else of this process (default: "
                                 "PyTorch's choice); results.json records it (\"threads\")")
    p.add_argument("--train-file", help="your data (JSONL, {prompt, response} or {text} rows): "
                                        "the same protocol on it; pass@1 where responses end in "
                                        "'#### answer', test ELBO always")
    p.add_argument("--max-len", type=positive, help="row length for --train-file data")
    p.add_argument("--hf", help="a Hugging Face masked-diffusion model (local path or hub name): "
                                "it is the starting checkpoint; its data: --train-file, else "
                                "the preset's task as text")
    add_hf_load_arguments(p)
    p.add_argument("--sweep-batch", help="comma-separated batch sizes: the protocol at each, "
                                         "same number of training examples (sweep.json/png)")
    p.add_argument("--block-size", type=positive,
                   help="block diffusion: every diffusion method trains on [xt ; x0] with blocks "
                        "of N tokens (test loss: the block ELBO; pass@1: block decoding; "
                        "P-POTS fitted per (example, block)), fine-tuning the plain starting "
                        "checkpoint of OUT (default OUT: runs/compare-<preset>); report and runs "
                        "in OUT/bN/ (preset `block`: N = 8 by default)")
    p.add_argument("--sweep-block", help="comma-separated block sizes: standard at each, and "
                                         "the plain standard (b = L) and causal twin as "
                                         "references, on paired seeds (OUT/block-sweep.json/md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _chosen(args, presets: dict, regime: str):
    """The preset ``--preset`` names among ``presets`` (the regime's), with ``--methods``; the
    ``--train-file`` / ``--max-len`` checks of both regimes."""
    name = args.preset or ("demo" if regime == "finetune" else "pretrain")
    if name not in presets:
        raise ValueError(f"--regime {regime}: --preset must be one of "
                         f"{', '.join(sorted(presets))}, got {name}")
    preset = presets[name]
    if args.methods:
        preset = replace(preset, methods=parse_names(args.methods))
    if args.train_file and not Path(args.train_file).exists():
        raise ValueError(f"--train-file {args.train_file}: no such file")
    if args.max_len and not args.train_file:
        raise ValueError("--max-len applies to --train-file data only")
    return name, preset


def _preset(args):
    _, preset = _chosen(args, PRESETS, "finetune")
    if args.train_file:
        data = replace(preset.base.data, train_file=str(args.train_file),
                       max_len=args.max_len or preset.base.data.max_len)
        # User responses have their own lengths: decode the whole region after the prompt.
        preset = replace(preset, base=replace(preset.base, data=data), decoding=Decoding())
    return preset


def run(args) -> int:
    from maskdiff.experiments.compare import CompareJob

    if args.regime == "pretrain":
        return _pretrain(args)
    preset = _preset(args)
    seeds = parse_seeds(args.seeds)
    device = args.device or preset.base.device
    workers = args.workers or (min(4, os.cpu_count() or 1) if device == "cpu" else 1)
    block = args.block_size or preset.base.block_size
    if (block or args.sweep_block) and (args.hf or args.sweep_batch):
        raise ValueError("--block-size / --sweep-block run the built-in model's protocol: not "
                         "with --hf or --sweep-batch")
    if args.sweep_block:
        return _sweep_block(args, preset, seeds, workers)
    if args.hf:
        from maskdiff.commands import apply_threads
        from maskdiff.experiments.compare_hf import HFCompareJob

        apply_threads(args)
        out = Path(args.out or f"runs/compare-hf-{preset.name}")
        results = HFCompareJob(preset, out, args.hf, train_file=args.train_file, seeds=seeds,
                               hf_options=hf_load_kwargs(args), device=device,
                               progress=not args.quiet).run()
    elif args.sweep_batch:
        from maskdiff.experiments.compare_sweep import SWEEP_METHODS, SweepJob

        out = Path(args.out or f"runs/compare-sweep-{preset.name}")
        methods = parse_names(args.methods) if args.methods else SWEEP_METHODS
        doc = SweepJob(preset, out, parse_ints(args.sweep_batch, "--sweep-batch"), methods,
                       seeds=seeds, device=args.device, workers=workers,
                       progress=not args.quiet, threads=args.threads).run()
        print(f"\n{doc['seconds'] / 60:.1f} min; report: {out / 'sweep.md'}")
        return 0
    elif block:
        from maskdiff.experiments.compare_blocks import block_job

        job = block_job(preset, Path(args.out or f"runs/compare-{preset.name}"), block,
                        seeds=seeds, device=args.device, progress=not args.quiet,
                        workers=workers, threads=args.threads)
        results, out = job.run(), job.out_dir
    else:
        out = Path(args.out or f"runs/compare-{preset.name}")
        results = CompareJob(preset, out, seeds=seeds, device=args.device,
                             progress=not args.quiet, workers=workers, threads=args.threads).run()
    print_summary(results)
    print(f"\n{results['seconds'] / 60:.1f} min; report: {out / 'report.md'}")
    return 0


def _pretrain(args) -> int:
    from maskdiff.experiments.pretrain import PretrainJob
    from maskdiff.experiments.pretrain_presets import with_train_file
    from maskdiff.experiments.pretrain_report import tables

    for flag in ("hf", "sweep_batch", "block_size", "sweep_block"):
        if getattr(args, flag):
            raise ValueError(f"--regime pretrain: --{flag.replace('_', '-')} is a finetune option")
    name, preset = _chosen(args, PRETRAIN_PRESETS, "pretrain")
    if args.train_file:
        preset = with_train_file(preset, args.train_file, args.max_len)
    device = args.device or preset.base.device
    workers = args.workers or (min(4, os.cpu_count() or 1) if device == "cpu" else 1)
    out = Path(args.out or f"runs/compare-{name}") / "pretrain"
    results = PretrainJob(preset, out, seeds=parse_seeds(args.seeds), device=args.device,
                          progress=not args.quiet, workers=workers, threads=args.threads).run()
    print("\n".join(["", *tables(results)]))
    print(f"\n{results['seconds'] / 60:.1f} min; report: {out / 'report.md'}")
    return 0


def _sweep_block(args, preset, seeds, workers) -> int:
    from maskdiff.experiments.compare_blocks import BlockSweepJob, block_sweep_table

    out = Path(args.out or f"runs/compare-{preset.name}")
    doc = BlockSweepJob(preset, out, parse_ints(args.sweep_block, "--sweep-block"), seeds=seeds,
                        device=args.device, workers=workers, progress=not args.quiet,
                        threads=args.threads).run()
    print("\n".join(["", *block_sweep_table(doc)]))
    print(f"\n{doc['seconds'] / 60:.1f} min; report: {out / 'block-sweep.md'}")
    return 0


def print_summary(results: dict) -> None:
    """The headline numbers: per method the mean with its 95% CI and the paired difference."""
    print(f"\n{'method':<20} {'pass@1 % [95% CI]':>22} {'Δ vs std [95% CI] (p)':>30} "
          f"{'test loss':>9} {'fwd/std':>7}")
    for label, m in results["methods"].items():
        ci = m.get("pass_at_1_ci")
        cell = f"{100 * ci['mean']:.1f} [{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]" if ci else "-"
        diff = m.get("vs_standard", {}).get("pass_at_1", {}).get("difference")
        delta = (f"{100 * diff['mean']:+.1f} [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}] "
                 f"({diff['p']:.2g})" if diff and m["method"] != "standard" else "")
        print(f"{label:<20} {cell:>22} {delta:>30} {m['test_loss_stats']['mean']:>9.4f} "
              f"{m.get('fwd_ratio_to_standard', 1.0):>7.2f}")
