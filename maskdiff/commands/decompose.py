"""``maskdiff decompose``: the variance diagnostics of every training method on one model
(docs/method.md §2): A/B/C, batch-level and gradient variance, g(t)/v(t), cost-aware variance.

Writes OUT/decompose.json, OUT/report.md, OUT/components.png and OUT/curves.png. The model is
``--run DIR`` (a maskdiff run's best checkpoint) or ``--preset NAME`` (trained once into
OUT/model and reused on restart).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskdiff.commands import add_hf_load_arguments, add_threads_argument, apply_threads, hf_load_kwargs
from maskdiff.training.presets import PRESETS


def register(subparsers) -> None:
    from maskdiff.experiments.decompose import DEFAULT_METHODS, DESIGN_DEFAULTS

    p = subparsers.add_parser(
        "decompose", help="A/B/C variance decomposition, batch and gradient variance per method",
        description="Measure the variance of each training method's estimator on one model "
                    "(docs/method.md §2): the unbiased A/B/C decomposition of the per-example loss "
                    "(a examples × b rates × c masks), the variance of the mini-batch estimate, "
                    "tr Cov of the per-example and per-batch gradient, g(t)/v(t), and variance × "
                    "forward passes. Writes OUT/decompose.json, OUT/report.md and PNG plots.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="DIR", help="a maskdiff run directory (its best model)")
    source.add_argument("--preset", choices=sorted(PRESETS),
                        help="train this preset's model once into OUT/model, then diagnose it")
    source.add_argument("--hf", metavar="NAME_OR_PATH",
                        help="a Hugging Face masked LM / diffusion LLM (needs --data)")
    p.add_argument("--data", metavar="FILE.jsonl",
                   help='with --hf: rows {"text"}, {"prompt", "response"} or {"messages"}')
    add_hf_load_arguments(p)
    p.add_argument("--task", help="with --preset: train on this built-in task instead "
                                  "(e.g. table, which SyRM needs)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help=f"registered methods to measure (default: {' '.join(DEFAULT_METHODS)})")
    sizes = "default {default}, with --preset smoke {smoke}"
    for flag, key, text in (
            ("--a", "a", "examples"),
            ("--b", "b", "i.i.d. rates per example"),
            ("--c", "c", "masks per (example, rate)"),
            ("--batch-size", "batch_size",
             "mini-batch size n of the batch-level and per-batch gradient variance"),
            ("--n-batches", "n_batches", "repeated batches"),
            ("--grad-draws", "grad_draws", "per-example gradient draws (0 skips)"),
            ("--grad-batch-draws", "grad_batch_draws", "per-batch gradient draws (0 skips)"),
            ("--curve-rates", "curve_rates", "grid points of g(t), v(t) (0 skips)"),
            ("--ema-warmup", "ema_warmup",
             "training-like samples fed to the EMA control before measuring"),
            ("--n-boot", "n_boot", "bootstrap replicates"),
            ("--ppots-b", "ppots_b", "grid rates of the P-POTS estimate"),
            ("--ppots-c", "ppots_c", "masks per rate of the P-POTS estimate")):
        defaults = sizes.format(default=DESIGN_DEFAULTS["default"][key],
                                smoke=DESIGN_DEFAULTS["smoke"][key])
        p.add_argument(flag, type=int, default=None, dest=key, help=f"{text} ({defaults})")
    p.add_argument("--params", nargs="+", metavar="NAME",
                   help="gradient variance over these parameters (name or prefix, e.g. blocks.0)")
    p.add_argument("--ppots", metavar="FILE.json",
                   help="a ppots.json for the ppots methods (default: estimate it from the model)")
    p.add_argument("--seed", type=int, default=0, help="root seed of every draw (default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice); "
                                 "decompose.json records it (\"torch_threads\")")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maskdiff.diagnostics.estimators import DiagnosticsDesign
    from maskdiff.experiments.decompose import (
        DecomposeSettings, design_defaults, load_model_source, run_decompose,
    )

    # Flags left unset take the preset's default sizes (smoke: a seconds-long design).
    size = {key: value if (value := getattr(args, key)) is not None else default
            for key, default in design_defaults(args.preset).items()}
    design = DiagnosticsDesign(
        n_rates=size["b"], n_masks=size["c"], batch_size=size["batch_size"],
        n_batches=size["n_batches"], grad_draws=size["grad_draws"],
        grad_batch_draws=size["grad_batch_draws"], curve_rates=size["curve_rates"],
        control_warmup=size["ema_warmup"],
        parameters=None if args.params is None else tuple(args.params), n_boot=size["n_boot"],
        seed=args.seed)
    settings = DecomposeSettings(methods=tuple(args.methods), n_examples=size["a"], design=design,
                                 ppots_rates=size["ppots_b"], ppots_masks=size["ppots_c"],
                                 ppots_path=args.ppots)
    apply_threads(args)  # before a --preset model trains
    source = load_model_source(run=args.run, preset=args.preset, out=args.out,
                               device=args.device, task=args.task, quiet=args.quiet, hf=args.hf,
                               data=args.data, hf_options=hf_load_kwargs(args))
    doc = run_decompose(source, settings, args.out, progress=not args.quiet)
    out = Path(args.out)
    print(f"{'config':<14}{'passes':>7}{'A':>11}{'B':>11}{'C':>11}{'total':>11}"
          f"{'batch×n':>11}{'grad':>11}{'total×k':>11}")
    for name, r in doc["configurations"].items():
        bv = r["batch_variance"]["per_example"]
        gv = r["gradient_variance"]
        cells = [r["A"], r["B"], r["C"], r["total"], bv["value"] if bv else None,
                 gv["trace_cov"]["value"] if gv else None, r["cost_aware"]["total"]]
        print(f"{name:<14}{r['forward_passes']:>7}"
              + "".join(f"{'–':>11}" if v is None else f"{v:>11.4g}" for v in cells))
    for name, reason in doc["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {out / 'decompose.json'} and {out / 'report.md'} ({doc['seconds']:.0f} s)")
    return 0
