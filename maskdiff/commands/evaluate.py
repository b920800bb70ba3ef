"""``maskdiff evaluate``: full-range ELBO with a standard error, and pass@1 by generation, of a
run or of a Hugging Face model on a JSONL file (docs/method.md §8, docs/evaluation.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from maskdiff import jsonio
from maskdiff.commands import (
    add_decoding_arguments, add_model_source_arguments, add_threads_argument, apply_threads, positive,
)
from maskdiff.commands.generate import note_block_length
from maskdiff.commands.generation import add_judge_arguments, run_judge
from maskdiff.data import Collator, CollatorConfig
from maskdiff.data.setup import load_task
from maskdiff.fileio import atomic_write_text
from maskdiff.training.evaluate import (
    BLOCK_EVAL_SCHEME, ELBO_SCHEMES, EVAL_SCHEME, FIT_EXAMPLES, causal_nll, default_scheme, elbo,
    elbo_scheme, pass_at_1, rates_for, se_text,
)
from maskdiff.training.config import block_layout
from maskdiff.training.judge import load_judge
from maskdiff.training.runs import load_run


EVAL_PASSES = 8  # forward passes per example unless --rates is given


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="ELBO and pass@1 of a run or a HF model",
                              description="Evaluate a run's best checkpoint on a data split "
                                          "(writes eval.json into the run directory), or a "
                                          "Hugging Face model on --data FILE.jsonl.")
    add_model_source_arguments(p)
    p.add_argument("--data", help='with --hf: rows {"prompt", "response"}, {"messages"} or '
                                  '{"text"} (JSONL)')
    p.add_argument("--out", help="with --hf: write the report (JSON) here")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--n", type=positive, default=128, help="examples to evaluate")
    p.add_argument("--scheme", choices=sorted(ELBO_SCHEMES), default=None,
                   help=f"how the ELBO spends its forward passes (docs/evaluation.md; default "
                        f"{EVAL_SCHEME}, {BLOCK_EVAL_SCHEME} for a block-diffusion run)")
    p.add_argument("--rates", type=positive, default=None,
                   help=f"draws per example (a *-mirror scheme: 2 forward passes each; "
                        f"default: {EVAL_PASSES} forward passes)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the ELBO's common random numbers")
    p.add_argument("--pass-at-1", action="store_true", help="also generate and score answers")
    add_judge_arguments(p)
    add_decoding_arguments(p)
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice); "
                                 "eval.json records it")
    p.set_defaults(func=run)


def run(args) -> int:
    threads = apply_threads(args)
    if args.hf is not None:
        return _run_hf(args, threads)
    if args.data is not None:
        raise ValueError("--data goes with --hf; a run evaluates on its own task's --split")
    loaded = load_run(args.run, args.checkpoint, args.device)
    if args.judge is not None:  # refused before any work: a causal --run, a mismatched judge
        args.judge_run = load_judge(args.judge, loaded, args.run, args.checkpoint, args.device)
    config, tok = loaded.config, loaded.tokenizer
    split = list(load_task(config.data).split(args.split))
    examples = split[: args.n]
    if config.data.train_file is not None and args.split == "test":
        print("maskdiff evaluate: note: with a train_file the test split is the validation "
              "split (early stopping chose the checkpoint on it), not held-out data",
              file=sys.stderr)
    collate = Collator(tok, CollatorConfig(max_len=config.data.max_len,
                                           pad_policy=config.data.pad_policy,
                                           overflow=config.data.overflow))
    layout = block_layout(config)  # a block run: the block ELBO and block decoding (§12, §8)
    _resolve(args, layout)
    if config.model.causal:
        loss = causal_nll(loaded.model, examples, collate, device=args.device)
    else:
        loss = elbo(loaded.model, examples, collate, mask_token_id=tok.mask_id,
                    rates_per_example=args.rates, seed=args.seed, scheme=args.scheme,
                    normalizer=config.estimator.normalizer, device=args.device, layout=layout,
                    **_fitted(args, config, loaded.checkpoint))
    report = {"checkpoint": str(loaded.checkpoint), "split": args.split, "loss": loss.to_dict(),
              **_scheme_keys(args, config.model.causal), "threads": threads}
    if layout is not None:
        report["block_layout"] = layout.to_dict()
    _print_loss(args.split, loss, layout)
    if args.pass_at_1:
        note_block_length(args, layout, "evaluate")
        gen = pass_at_1(loaded.model, examples, tok, max_len=config.data.max_len,
                        gen_length=args.gen_length, steps=args.steps,
                        block_length=args.block_length, causal=config.model.causal,
                        device=args.device, layout=layout)
        report["pass_at_1"] = gen.pass_at_1
        print(f"pass@1 {gen.pass_at_1:.3f} over {gen.n} examples")
    if args.judge is not None:
        report["generation"] = run_judge(args, loaded, split, collate, layout)  # its own --samples
    atomic_write_text(Path(args.run) / "eval.json", jsonio.dumps(report, indent=2) + "\n")
    return 0


def _resolve(args, layout) -> None:
    """The default scheme (of the run's layout) and the rates that buy EVAL_PASSES passes."""
    args.scheme = args.scheme or default_scheme(layout)
    args.rates = args.rates or rates_for(args.scheme, EVAL_PASSES)


def _fitted(args, config, checkpoint) -> dict:
    """A fitted scheme's density: fitted on the first examples of the *other* split (held out
    from the evaluated ones), cached in RUN/elbo_density/elbo_density.json per checkpoint."""
    if not elbo_scheme(args.scheme).fitted:
        return {}
    other = "val" if args.split == "test" else "test"
    path = Path(checkpoint)
    return {"fit_examples": list(load_task(config.data).split(other))[:FIT_EXAMPLES],
            "density_cache": Path(args.run) / "elbo_density",
            "density_key": {"checkpoint": str(path), "split": other,
                            "mtime_ns": path.stat().st_mtime_ns if path.exists() else None}}


def _scheme_keys(args, causal: bool) -> dict:
    if causal:
        return {"scheme": "exact"}
    return {"scheme": args.scheme, "rates": args.rates, "seed": args.seed,
            "forward_passes_per_example": elbo_scheme(args.scheme).passes(args.rates)}


def _print_loss(name: str, loss, layout=None) -> None:
    what = "" if layout is None else f" (block ELBO, blocks of {layout.block_size})"
    print(f"{name} loss{what} {loss.mean:.4f} ± {se_text(loss.se, loss.n)} nats/token "
          f"({loss.bits:.4f} bits) over {loss.n} examples")


def _run_hf(args, threads: int) -> int:
    """A HF model (plain or PEFT) on the rows of ``--data``: the same ELBO evaluator and decoder."""
    from maskdiff.commands import load_model_argument
    from maskdiff.evaluation.rows import evaluate_rows

    if args.data is None:
        raise ValueError("--hf needs --data FILE.jsonl (the rows to evaluate on)")
    if args.judge is not None:
        raise ValueError("--judge scores a native masked-diffusion run's samples: use it with "
                         "--run, not --hf")
    model = load_model_argument(args)
    _resolve(args, None)
    report = evaluate_rows(model, args.data, n=args.n, scheme=args.scheme, rates=args.rates,
                           seed=args.seed, pass_at_1=args.pass_at_1, gen_length=args.gen_length,
                           steps=args.steps, block_length=args.block_length, device=args.device)
    _print_loss("data", report["loss_result"])
    report["loss"] = report.pop("loss_result").to_dict()
    if args.pass_at_1:
        print(f"pass@1 {report['pass_at_1']:.3f} over {report['loss']['n']} examples")
    report.update(_scheme_keys(args, False), model=args.hf, data=str(args.data), threads=threads)
    if args.out:
        atomic_write_text(Path(args.out), jsonio.dumps(report, indent=2) + "\n")
    return 0
