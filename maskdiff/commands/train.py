"""``maskdiff train``: one training run from a preset and/or a JSON config, plus flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maskdiff.training.config import TrainConfig, from_dict, load_json, to_dict
from maskdiff.core.methods import DEFAULT_WINDOW, METHODS, get_method
from maskdiff.core.weighting import LOSS_CONVENTIONS
from maskdiff.training.needs import apply_method
from maskdiff.training.presets import PRESETS
from maskdiff.commands import add_threads_argument, apply_threads


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a masked diffusion model (or its causal twin)",
        description="Train one run. Settings apply in order: --preset or --config, then "
                    "--method, then the flags (an equal-compute --method such as standard@2x "
                    "then multiplies the batch size), then --set. The run directory gets "
                    "config.json (the resolved config: it reproduces the run), metrics.jsonl, "
                    "checkpoints/, best/, results.json (and tensorboard/ with --tensorboard). "
                    "An existing run directory is resumed.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named preset (default: small, unless --config is given)")
    p.add_argument("--config", type=Path, help="a JSON TrainConfig (e.g. a run's config.json)")
    p.add_argument("--method", choices=list(METHODS), metavar="METHOD",
                   help="a named method (docs/method.md §11): "
                        + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--ppots", type=Path,
                   help="ppots.json (from `maskdiff fit-pots`): the fitted density of the ppots "
                        "methods; ppots_online starts from it (else from uniform) and refits online; "
                        "the gpots methods need one fitted with --target gradient (or logits, bias)")
    p.add_argument("--mix", type=float, metavar="LAMBDA",
                   help="the importance sampler's uniform share, p <- (1-λ) p + λ u, so weights "
                        "<= 1/λ (default: the --ppots file's mix, else 0.05)")
    p.add_argument("--eps", type=float, metavar="EPS",
                   help="the importance sampler's rate floor: rates in [EPS, 1] (default: the "
                        "--ppots file's eps, else 1e-3; not below the file's)")
    p.add_argument("--window", type=float, nargs=2, metavar=("T_MIN", "T_MAX"),
                   default=DEFAULT_WINDOW, help="the window of --method window")
    p.add_argument("--loss-convention", choices=sorted(LOSS_CONVENTIONS), metavar="NAME",
                   help="a peer's loss convention (estimator.normalizer and .weighting; "
                        "docs/method.md §1): " + "; ".join(
                            f"{c.name}: {c.peer}" for c in LOSS_CONVENTIONS.values()))
    p.add_argument("--task", help="built-in task: arithmetic, table or text")
    p.add_argument("--train-file", help="JSONL training data ({prompt, response} or {text} rows)")
    p.add_argument("--val-file", help="JSONL validation data (default: hold out 10%% of train)")
    p.add_argument("--tokenizer", choices=("char", "bpe"),
                   help="data.tokenizer: char (the data's characters) or bpe (byte-level; "
                        "its vocabulary is chosen from the corpus size unless --vocab-size)")
    p.add_argument("--vocab-size", type=int, help="data.vocab_size of --tokenizer bpe")
    p.add_argument("--max-len", metavar="N|auto|pNN",
                   help="data.max_len: a row length, or derived from the training data: auto "
                        "(p99) or pNN, a percentile of the tokenised lengths (the run reports "
                        "what it chose and how many examples it truncates); default with "
                        "--train-file: auto, else the preset's")
    p.add_argument("--block-size", type=int, metavar="N",
                   help="block diffusion (docs/method.md §12): train on [x_t ; x_0] with blocks "
                        "of N tokens (train.block_size; default: plain masked diffusion)")
    p.add_argument("--block-rates", choices=("block", "sequence"),
                   help="with --block-size: one masking rate per block (BD3-LM, the default) or "
                        "one per sequence (LLaDA2.0)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="optim.max_steps")
    p.add_argument("--batch-size", type=int, help="the global batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write metrics.jsonl's scalars as TensorBoard events under "
                        "OUT/tensorboard/ (needs pip install 'maskdiff[tensorboard]')")
    p.add_argument("--out", help="run directory (default: runs/<preset>-<method>-s<seed>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field by its dotted name, e.g. data.max_len=64 "
                        "(VALUE is read as JSON when it parses, else as a string)")
    p.add_argument("--no-resume", action="store_true",
                   help="start a fresh run (refused where the directory holds another run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh run, first removing the run the directory holds")
    p.add_argument("--extend", action="store_true",
                   help="continue the run in --out to a larger --steps: the learning-rate "
                        "schedule is recomputed for the new optim.max_steps from the current step "
                        "(README, Reliability: how to extend a run)")
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _set(data: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ValueError(f"--set expects KEY=VALUE, got {dotted!r}")
    key, raw = dotted.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node, parts = data, key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ValueError(f"--set {key}: {part!r} is not a config section")
        node = node[part]
    if parts[-1] not in node:
        raise ValueError(f"--set {key}: no such field {parts[-1]!r}; fields: {sorted(node)}")
    node[parts[-1]] = value


def _max_len(text: str) -> int | str:
    """``--max-len``: a number, or a rule word (checked by DataConfig)."""
    return int(text) if str(text).strip().isdigit() else str(text).strip()


def build_config(args) -> TrainConfig:
    """The resolved config of a ``maskdiff train`` command line."""
    if args.config is not None:
        base = load_json(TrainConfig, args.config)
    else:
        base = PRESETS[args.preset or "small"]
    data = to_dict(base)
    max_len = getattr(args, "max_len", None)
    if max_len is None and args.train_file and args.config is None:
        max_len = "auto"  # the user's data: its own lengths, not the preset's 128
    flags = {("data", "task"): args.task, ("data", "train_file"): args.train_file,
             ("data", "val_file"): args.val_file, ("seed",): args.seed,
             ("data", "tokenizer"): getattr(args, "tokenizer", None),
             ("data", "vocab_size"): getattr(args, "vocab_size", None),
             ("data", "max_len"): None if max_len is None else _max_len(max_len),
             ("optim", "max_steps"): args.steps, ("optim", "batch_size"): args.batch_size,
             ("optim", "lr"): args.lr, ("device",): args.device,
             ("block_size",): getattr(args, "block_size", None),
             ("block_rates",): getattr(args, "block_rates", None)}
    for path, value in flags.items():
        if value is not None:
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
    if args.bf16:
        data["bf16"] = True
    if args.tensorboard:
        data["tensorboard"] = True
    name = f"{args.preset or 'run'}-{args.method or 'standard'}-s{data['seed']}"
    data["out_dir"] = args.out or (data["out_dir"] if args.config else f"runs/{name}")
    density = _density(args)
    if args.method:  # after the flags: an equal-compute variant scales the batch it is given
        data = to_dict(apply_method(from_dict(TrainConfig, data), args.method,
                                    density=density, window=tuple(args.window)))
    if getattr(args, "loss_convention", None):
        data["estimator"].update(LOSS_CONVENTIONS[args.loss_convention].fields())
    _sampler_flags(args, data)
    for item in args.set:
        _set(data, item)
    _note_overrides(args, data, density)
    return from_dict(TrainConfig, data)


def _density(args) -> dict | None:
    """The fitted density of ``--ppots`` for ``--method`` (checked against its target): the
    table with the file's ``mix`` and ``eps``, which the importance sampler then uses."""
    if getattr(args, "ppots", None) is None:
        return None
    takers = [m.name for m in METHODS.values() if "density" in m.needs | m.optional]
    if not args.method or "density" not in (get_method(args.method).needs
                                              | get_method(args.method).optional):
        raise ValueError(f"--ppots {args.ppots} is the density of a method that takes one "
                         f"(--method {', '.join(takers)}); "
                         + ("no --method is given" if not args.method else
                            f"method {args.method!r} takes none"))
    from maskdiff.ppots import density_for_method

    return density_for_method(args.ppots, get_method(args.method))


def _sampler_flags(args, data: dict) -> None:
    """``--mix`` / ``--eps``: the importance sampler's, checked here so a bad value is named."""
    flags = {"mix": getattr(args, "mix", None), "eps": getattr(args, "eps", None)}
    if all(value is None for value in flags.values()):
        return
    sampler = data["estimator"]["sampler"]
    if sampler["name"] != "importance":
        raise ValueError(f"--mix and --eps set the importance sampler of a P-POTS method "
                         f"(--method ppots, gpots, ...); this run samples rates with "
                         f"{sampler['name']!r}")
    if flags["mix"] is not None and not 0.0 <= flags["mix"] < 1.0:
        raise ValueError(f"--mix must lie in [0, 1) (weights <= 1/mix), got {flags['mix']}")
    if flags["eps"] is not None and not 0.0 < flags["eps"] < 1.0:
        raise ValueError(f"--eps must lie in (0, 1), got {flags['eps']}")
    sampler["params"].update({key: value for key, value in flags.items() if value is not None})


def _note_overrides(args, data: dict, density: dict | None) -> None:
    """Say once (stderr) where the importance sampler's ``mix`` / ``eps`` differ from the
    ``--ppots`` file's (an explicit ``--mix``, ``--eps`` or ``--set``); refuse an ``eps`` below
    the file's, where the fitted density is not defined."""
    sampler = data["estimator"]["sampler"]
    if density is None or sampler["name"] != "importance":
        return
    from maskdiff.core.samplers import DEFAULT_EPS

    used = {"mix": sampler["params"].get("mix", 0.05),
            "eps": sampler["params"].get("eps", DEFAULT_EPS)}
    if used["eps"] < density["eps"]:
        raise ValueError(f"eps {used['eps']:g} is below {args.ppots}'s eps {density['eps']:g}: "
                         f"its density is fitted on [{density['eps']:g}, 1] only (refit with "
                         f"`maskdiff fit-pots --eps {used['eps']:g}`)")
    changed = [f"{key}={used[key]:g} ({'--' + key if getattr(args, key, None) is not None else '--set'}"
               f"; the file has {density[key]:g})" for key in ("mix", "eps")
               if used[key] != density[key]]
    if changed:
        print(f"maskdiff train: note: the importance sampler uses {', '.join(changed)}, "
              f"overriding {args.ppots}", file=sys.stderr, flush=True)


def run(args) -> int:
    from maskdiff.training.trainer import Trainer

    config = build_config(args)
    apply_threads(args)
    from maskdiff.training.evaluate import se_text

    if args.extend and (args.no_resume or args.overwrite):
        raise ValueError("--extend continues the run in --out: it goes without --no-resume "
                         "and --overwrite")
    result = Trainer(config, quiet=args.quiet).fit(resume=not args.no_resume,
                                                   overwrite=args.overwrite, extend=args.extend)
    best = ("n/a" if result.best_val is None else f"{result.best_val:.4f} ± "
            f"{se_text(result.best_val_se, result.val_examples, 'validation example')}")
    print(f"{config.out_dir}: {result.steps} steps in {result.seconds:.1f}s, best validation "
          f"loss {best} (step {result.best_step}), variance proxy {result.variance_proxy:.4f}")
    return 0
