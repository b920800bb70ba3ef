"""``maskdiff fit-pots``: fit the P-POTS rate density (docs/method.md §4) and write ppots.json + ppots.png.

The p̂ table comes from one *source*: ``--from-table FILE.json`` (``{"t": [...], "p_hat": [...]}``,
optionally ``p_hat_paper``, ``p_hat_direct``, ``estimator``, ``eps``, ``forward_passes``,
``seconds``), or a model — ``--run DIR`` (a maskdiff run's best checkpoint, on its own data) or
``--preset NAME`` (that preset's model, trained once into ``OUT/model`` and reused) — whose
nested losses (a examples × b grid rates × c masks, docs/method.md §4) give p̂.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskdiff import jsonio
from maskdiff.commands import add_hf_load_arguments, add_threads_argument, apply_threads, hf_load_kwargs
from maskdiff.ppots import ESTIMATORS, TARGETS, check_table, fit_ppots, plot_ppots
from maskdiff.ppots.io import density_table, ppots_doc
from maskdiff.ppots.schema import check_ppots_doc
from maskdiff.fileio import atomic_write_text


@dataclass(frozen=True, eq=False)
class TableInput:
    """A p̂ table and what is known about how it was estimated."""

    t: np.ndarray
    p_hat: np.ndarray
    estimator: str = "direct"
    eps: float = 1e-3
    p_hat_paper: np.ndarray | None = None
    p_hat_direct: np.ndarray | None = None
    forward_passes: int | None = None
    seconds: float | None = None
    source: dict | None = None  # the model it came from (run dir, training seconds, ...)
    target: str = "loss"  # what p̂ is the root second moment of (docs/method.md §4)


def table_from_file(args: argparse.Namespace) -> TableInput | None:
    """Source ``--from-table``: a JSON file with at least ``t`` and ``p_hat``."""
    if args.from_table is None:
        return None
    path = Path(args.from_table)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: not JSON, not UTF-8
        raise ValueError(f"--from-table {path}: cannot read JSON ({err})") from None
    if not isinstance(doc, dict) or "t" not in doc or "p_hat" not in doc:
        raise ValueError(f"--from-table {path}: needs an object with keys 't' and 'p_hat'")

    def optional(key: str) -> np.ndarray | None:
        return None if doc.get(key) is None else np.asarray(doc[key], dtype=np.float64)

    try:
        table = TableInput(
            t=np.asarray(doc["t"], dtype=np.float64), p_hat=np.asarray(doc["p_hat"], dtype=np.float64),
            estimator=doc.get("estimator", "direct"), eps=_eps(doc.get("eps", 1e-3), "eps"),
            p_hat_paper=optional("p_hat_paper"), p_hat_direct=optional("p_hat_direct"),
            forward_passes=doc.get("forward_passes"), seconds=doc.get("seconds"),
            target=doc.get("target", args.target))
        check_table(table.t, table.p_hat)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--from-table {path}: {err}") from None
    return table


def _eps(value, name: str) -> float:
    """A rate floor in (0, 1), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1) (the rate floor), got {value!r}")
    return float(value)


def table_from_model(args: argparse.Namespace) -> TableInput | None:
    """Sources ``--run`` / ``--preset`` / ``--hf``: p̂ from the model's nested losses (docs/method.md §4).

    The model is loaded as ``maskdiff decompose`` loads it (:func:`maskdiff.experiments.sources.load_model_source`:
    a preset is trained once into ``OUT/model`` and reused)."""
    if args.run is None and args.preset is None and args.hf is None:
        return None
    from maskdiff.ppots import model_p_hat
    from maskdiff.experiments.sources import load_model_source

    source = load_model_source(run=args.run, preset=args.preset, hf=args.hf, data=args.data,
                               hf_options=hf_load_kwargs(args), out=args.out,
                               device=args.device, quiet=args.quiet)
    measured = model_p_hat(source.model, source.examples(args.a), mask_token_id=source.mask_token_id,
                           n_rates=args.b, n_masks=args.c, eps=args.eps or 1e-3,
                           estimator=args.estimator, normalizer=source.config.estimator.normalizer,
                           seed=args.seed, device=args.device, progress=not args.quiet,
                           target=args.target)
    phat = measured.phat
    return TableInput(t=phat.t, p_hat=phat.p_hat, estimator=phat.estimator, eps=args.eps or 1e-3,
                      p_hat_paper=phat.p_hat_paper, p_hat_direct=phat.p_hat_direct,
                      forward_passes=measured.forward_passes, seconds=measured.seconds,
                      source=source.description, target=args.target)


# Tried in order; exactly one must produce a table.
TABLE_SOURCES: list[Callable[[argparse.Namespace], TableInput | None]] = [table_from_file, table_from_model]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-pots", help="fit the P-POTS rate density (EPR + degree-7 polynomial) to a p̂ table",
        description="Fit EPR, p(t) = sqrt(a t^r + b (1-t)^q + A^2 exp(2 kappa t^m)), and a clamped "
                    "degree-7 polynomial to p̂ by minimising KL over the grid (docs/method.md §4); write "
                    "OUT/ppots.json and OUT/ppots.png.")
    p.add_argument("--from-table", metavar="FILE.json",
                   help='JSON with {"t": [...], "p_hat": [...]} (optionally p_hat_paper, eps, ...)')
    p.add_argument("--run", metavar="DIR", help="a maskdiff run directory: estimate p̂ for its best model")
    p.add_argument("--preset", help="a training preset: train its model once into OUT/model, "
                                    "then estimate p̂ for it")
    p.add_argument("--hf", metavar="NAME_OR_PATH",
                   help="a Hugging Face masked LM / diffusion LLM (needs --data; pip install -e '.[hf]')")
    p.add_argument("--data", metavar="FILE.jsonl",
                   help='with --hf: rows {"text"}, {"prompt", "response"} or {"messages"}')
    add_hf_load_arguments(p)
    p.add_argument("--a", type=int, default=15, help="examples of the nested design (default 15)")
    p.add_argument("--b", type=int, default=70, help="rates on the midpoint grid (default 70)")
    p.add_argument("--c", type=int, default=15, help="masks per (example, rate) (default 15)")
    p.add_argument("--estimator", choices=("direct", "paper"), default="direct",
                   help="p̂ ∝ sqrt(mean l²) (direct, docs/method.md §4 [fix]) or sqrt(ĝ² + v̂) (paper)")
    p.add_argument("--target", choices=TARGETS, default="loss",
                   help="p̂ ∝ sqrt(E[s² | t]) of: the loss (P-POTS, default); the exact per-example "
                        "parameter gradient norm (gradient, one backward pass per loss: the "
                        "density of the gpots methods); or a free logit-gradient proxy of it "
                        "(logits, bias) (docs/method.md §4 [beyond])")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--mix", type=float, default=0.05,
                   help="uniform mixing λ for the sampler, p <- (1-λ) p + λ u, so w <= 1/λ (default 0.05)")
    p.add_argument("--restarts", type=int, default=16, help="EPR fit restarts (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the restart draws (default 0)")
    p.add_argument("--eps", type=float, default=None,
                   help="rate floor: density on [eps, 1] (default: the table's eps, else 1e-3)")
    add_threads_argument(p, help="PyTorch's intra-op CPU threads for --run/--preset/--hf "
                                 "(default: PyTorch's choice); ppots.json records it")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """``--mix`` and ``--eps`` before any work: the values the sampler will train with."""
    if not (0.0 <= args.mix < 1.0):  # also refuses NaN
        raise ValueError(f"--mix must lie in [0, 1) (the sampler's weights are <= 1/mix), "
                         f"got {args.mix}")
    if args.eps is not None:
        _eps(args.eps, "--eps")


def run(args: argparse.Namespace) -> int:
    given = [args.from_table, args.run, args.preset, args.hf]
    if sum(x is not None for x in given) != 1:
        raise ValueError("give exactly one table source: --from-table FILE.json, --run DIR, --preset NAME or --hf NAME")
    _check_args(args)
    threads = apply_threads(args)
    tables = [table for source in TABLE_SOURCES if (table := source(args)) is not None]
    if len(tables) != 1:
        raise ValueError("give exactly one table source: --from-table FILE.json, --run DIR, --preset NAME or --hf NAME")
    table = tables[0]
    if table.estimator not in ESTIMATORS:
        raise ValueError(f"table estimator must be one of {ESTIMATORS}, got {table.estimator!r}")
    eps = table.eps if args.eps is None else args.eps
    if table.t[0] < eps:
        raise ValueError(f"--eps {eps:g} is above the table's first rate t = {table.t[0]:g}: the "
                         f"density lives on [eps, 1] (give --eps <= {table.t[0]:g})")
    fit_start = time.perf_counter()
    result = fit_ppots(table.t, table.p_hat, eps=eps,
                       mix=args.mix, restarts=args.restarts, seed=args.seed,
                       estimator=table.estimator, p_hat_paper=table.p_hat_paper,
                       p_hat_direct=table.p_hat_direct, forward_passes=table.forward_passes,
                       seconds=table.seconds, target=table.target)
    if table.seconds is not None and table.source is not None:  # measured: cost includes the fits
        result = replace(result, seconds=table.seconds + time.perf_counter() - fit_start)
    out = Path(args.out)
    path = out / "ppots.json"
    doc = ppots_doc(result)
    if table.source is not None:
        doc["source"] = table.source
        doc["threads"] = threads  # p̂ came from the model's losses: float results depend on it
        trained = table.source.get("seconds")  # the model's training time, when its run recorded it
        if trained:
            doc["cost_fraction"] = result.seconds / trained
            print(f"estimation + fit: {result.seconds:.1f}s = {100 * doc['cost_fraction']:.1f}% of "
                  f"the {trained:.1f}s training run; {result.forward_passes} forward passes")
    # Never write a file `train --ppots` cannot read: the checks train runs, first.
    text = jsonio.dumps(doc, indent=1) + "\n"
    check_ppots_doc(json.loads(text), str(path))
    density_table(result, source=path)  # refuses an unusable fit; notes extrapolation
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    plot_ppots(out / "ppots.png", result)
    params = "  ".join(f"{key}={value:.6g}" for key, value in result.epr.params.items())
    print(f"EPR params: {params}")
    print(f"KL(p_hat || EPR)   = {result.epr.kl:.4e}")
    print(f"KL(p_hat || poly7) = {result.poly7.kl:.4e}")
    print(f"wrote {path} and {out / 'ppots.png'} (the sampler: mix {result.mix:g}, so weights "
          f"<= {1 / result.mix if result.mix else float('inf'):.3g}; rates in [{result.eps:g}, 1])")
    return 0
