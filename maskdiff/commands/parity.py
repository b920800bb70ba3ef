"""``maskdiff parity`` and ``maskdiff parity-sweep``: the k-parity laboratory (docs/method.md §9).

    maskdiff parity --objective md --t0 0 --t1 0.246 [--n 20 --k 6 ...] [--out DIR]
    maskdiff parity --objective md --rate 0.142857          # the fixed rate 1/(k+1)
    maskdiff parity --objective supervised
    maskdiff parity-sweep --preset cpu --out runs/parity     # the paper's §4.5 comparison

``parity`` trains one model and prints (and optionally writes) train/validation accuracy and
loss against steps; ``parity-sweep`` runs supervised, U[0,0.1], U[0,t1*], U[0,0.4], U[0,1] and
1/(k+1) over several seeds and writes report.md, results.json and PNG plots.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from maskdiff import jsonio
from maskdiff.commands import add_threads_argument, apply_threads, parse_ints
from maskdiff.fileio import atomic_write_text

_RUN_FIELDS = ("n", "k", "n_train", "n_val", "data_seed", "lr", "weight_decay", "batch_size",
               "max_steps", "eval_every", "grad_clip")


def _add_run_arguments(p: argparse.ArgumentParser, defaults_note: str) -> None:
    p.add_argument("--n", type=int, help=f"input bits {defaults_note}")
    p.add_argument("--k", type=int, help="secret size")
    p.add_argument("--n-train", type=int, help="training-set size")
    p.add_argument("--n-val", type=int, help="validation-set size (disjoint from training)")
    p.add_argument("--data-seed", type=int, help="seed of the instance (secret and splits)")
    p.add_argument("--d-model", type=int, help="transformer width")
    p.add_argument("--n-layers", type=int, help="transformer depth")
    p.add_argument("--n-heads", type=int, help="attention heads")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (paper: 0.1)")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (0 disables)")
    p.add_argument("--batch-size", type=int, help="minibatch size (0: full batch)")
    p.add_argument("--max-steps", type=int, help="optimisation steps at most")
    p.add_argument("--eval-every", type=int, help="steps between accuracy evaluations")
    p.add_argument("--stop-at", type=float,
                   help="stop once train and validation accuracy reach this (e.g. 0.99)")
    add_threads_argument(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parity", help="train one model on k-parity (MD under a window or fixed rate, or "
                       "supervised) and log train/validation accuracy (docs/method.md §9)",
        description="k-parity laboratory: x ~ U{-1,1}^n, y = product of the k secret bits; "
                    "the same transformer trained with the masked-diffusion objective "
                    "(t ~ U[t0,t1] or a fixed --rate) or supervised on the label.")
    p.add_argument("--objective", choices=("md", "supervised"), default="md")
    p.add_argument("--t0", type=float, default=0.0, help="window low end (default 0)")
    p.add_argument("--t1", type=float, help="window high end (default: ps_optimal_t1(k))")
    p.add_argument("--rate", type=float, help="a fixed masking rate instead of a window")
    p.add_argument("--preset", choices=("smoke", "cpu", "paper"), default="cpu",
                   help="sizes to start from (default cpu; see maskdiff.experiments.parity_sweep)")
    p.add_argument("--seed", type=int, default=0, help="training seed (init, batches, masks)")
    _add_run_arguments(p, "(default: the preset's)")
    p.add_argument("--out", help="write the run's history as JSON to this file")
    p.set_defaults(func=run)

    s = subparsers.add_parser(
        "parity-sweep", help="the parity paper's comparison (supervised vs MD windows) over "
                             "seeds; writes report.md, results.json and plots",
        description="Supervised, MD U[0,0.1], U[0,t1*] (P_S-optimal), U[0,0.4], U[0,1] and the "
                    "fixed rate 1/(k+1) on one k-parity instance over several seeds; steps to "
                    "95% validation accuracy per setting and accuracy-vs-step curves. "
                    "Finished runs in OUT/runs/ are reused on restart.")
    s.add_argument("--preset", choices=("smoke", "cpu", "paper"), default="cpu",
                   help="smoke (tests, seconds), cpu (default, ~20 min on a shared 2-core CPU, "
                        "(n,k)=(10,3)), paper ((20,6), hours)")
    s.add_argument("--seeds", help="comma-separated training seeds (default: the preset's)")
    _add_run_arguments(s, "(default: the preset's)")
    s.add_argument("--out", help="output directory (default runs/parity-<preset>)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_sweep)


def _base_config(args):
    from maskdiff.experiments.parity_sweep import PRESETS

    preset = PRESETS[args.preset]
    base = preset.base
    changes = {f: getattr(args, f) for f in _RUN_FIELDS if getattr(args, f) is not None}
    if args.stop_at is not None:
        changes["stop_at_accuracy"] = args.stop_at
    model_changes = {f: getattr(args, f) for f in ("d_model", "n_layers", "n_heads")
                     if getattr(args, f) is not None}
    if model_changes:
        changes["model"] = replace(base.model, **model_changes)
    return preset, replace(base, **changes)


def run(args) -> int:
    from maskdiff.labs.parity import train_parity
    from maskdiff.labs.theory import ps_optimal_t1

    _, base = _base_config(args)
    if args.objective == "supervised":
        config = replace(base, objective="supervised", seed=args.seed)
    elif args.rate is not None:
        if args.t1 is not None:
            raise ValueError("give either --rate or --t1, not both")
        config = replace(base, objective="md", t0=args.rate, t1=args.rate, seed=args.seed)
    else:
        t1 = ps_optimal_t1(base.k) if args.t1 is None else args.t1
        config = replace(base, objective="md", t0=args.t0, t1=t1, seed=args.seed)
    threads = apply_threads(args)
    result = train_parity(config)
    print(f"k-parity (n,k)=({config.n},{config.k}) secret {result.secret}; objective "
          f"{config.objective}" + ("" if config.objective == "supervised"
                                   else f" t~U[{config.t0:.4f},{config.t1:.4f}]"))
    print(f"{'step':>7} {'train acc':>9} {'val acc':>8} {'train CE':>9} {'val CE':>8} "
          f"{'objective':>10}")
    for row in result.history:
        print(f"{row['step']:>7d} {row['train_acc']:>9.3f} {row['val_acc']:>8.3f} "
              f"{row['train_loss']:>9.4f} {row['val_loss']:>8.4f} "
              + ("         —" if row["objective"] is None else f"{row['objective']:>10.4f}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, jsonio.dumps({**result.to_dict(), "threads": threads},
                                             indent=1) + "\n")
        print(f"history written to {args.out}")
    return 0


def run_sweep(args) -> int:
    from maskdiff.experiments.parity_sweep import run_parity_sweep

    preset, base = _base_config(args)
    seeds = parse_ints(args.seeds, "--seeds") if args.seeds else None
    out = Path(args.out or f"runs/parity-{preset.name}")
    apply_threads(args)
    results = run_parity_sweep(preset, out, seeds=seeds, base=base, progress=not args.quiet)
    print(f"\n(n,k)=({results['n']},{results['k']}), seeds {results['seeds']}: steps to "
          f"{100 * results['threshold']:.0f}% validation accuracy")
    for label, s in results["summary"].items():
        per_seed = ", ".join("—" if v is None else str(v) for v in s["steps_to_val"]["per_seed"])
        print(f"  {label:<28} {per_seed}")
    print(f"report: {out / 'report.md'}")
    return 0
