"""``maskdiff evaluate``: full-range ELBO with a standard error, and pass@1 by generation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maskdiff.commands import add_decoding_arguments, add_threads_argument, apply_threads, positive
from maskdiff.fileio import atomic_write_text
from maskdiff.data import Collator, CollatorConfig
from maskdiff.data.setup import load_task
from maskdiff.training.evaluate import causal_nll, elbo, pass_at_1
from maskdiff.training.runs import load_run


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="ELBO and pass@1 of a trained run",
                              description="Evaluate a run's best checkpoint on a data split; "
                                          "writes eval.json into the run directory.")
    p.add_argument("--run", required=True)
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--n", type=positive, default=128, help="examples to evaluate")
    p.add_argument("--rates", type=positive, default=8, help="stratified rates per example (ELBO)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the ELBO's common random numbers")
    p.add_argument("--pass-at-1", action="store_true", help="also generate and score answers")
    add_decoding_arguments(p)
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice); "
                                 "eval.json records it")
    p.set_defaults(func=run)


def run(args) -> int:
    threads = apply_threads(args)
    loaded = load_run(args.run, args.checkpoint, args.device)
    config, tok = loaded.config, loaded.tokenizer
    examples = list(load_task(config.data).split(args.split))[: args.n]
    if config.data.train_file is not None and args.split == "test":
        print("maskdiff evaluate: note: with a train_file the test split is the validation "
              "split (early stopping chose the checkpoint on it), not held-out data",
              file=sys.stderr)
    collate = Collator(tok, CollatorConfig(max_len=config.data.max_len,
                                           pad_policy=config.data.pad_policy,
                                           overflow=config.data.overflow))
    if config.model.causal:
        loss = causal_nll(loaded.model, examples, collate, device=args.device)
    else:
        loss = elbo(loaded.model, examples, collate, mask_token_id=tok.mask_id,
                    rates_per_example=args.rates, seed=args.seed,
                    normalizer=config.estimator.normalizer, device=args.device)
    report = {"checkpoint": str(loaded.checkpoint), "split": args.split, "loss": loss.to_dict(),
              "threads": threads}
    print(f"{args.split} loss {loss.mean:.4f} ± {loss.se:.4f} nats/token "
          f"({loss.bits:.4f} bits) over {loss.n} examples")
    if args.pass_at_1:
        gen = pass_at_1(loaded.model, examples, tok, max_len=config.data.max_len,
                        gen_length=args.gen_length, steps=args.steps,
                        block_length=args.block_length, causal=config.model.causal,
                        device=args.device)
        report["pass_at_1"] = gen.pass_at_1
        print(f"pass@1 {gen.pass_at_1:.3f} over {gen.n} examples")
    atomic_write_text(Path(args.run) / "eval.json", json.dumps(report, indent=2) + "\n")
    return 0
