"""The CLI's sub-commands (one module each, listed in ``maskdiff.cli.COMMAND_MODULES``) and the
few argument parsers they share."""


def positive(text: str) -> int:
    """argparse ``type`` of a count that must be >= 1 (0 would silently mean the default)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """``"42,731"`` -> ``(42, 731)``; a ValueError naming the flag otherwise."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from err


def parse_seeds(text: str | None, name: str = "--seeds") -> tuple[int, ...] | None:
    """Distinct seeds, or None when the flag is absent; empty or repeated seeds are an error
    (a repeated seed would count one run twice)."""
    if text is None:
        return None
    seeds = parse_ints(text, name)
    if not seeds:
        raise ValueError(f"{name} names no seed, got {text!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{name} repeats seed(s) {repeated}: each seed is one run, counted once")
    if min(seeds) < 0:
        raise ValueError(f"{name} must be integers >= 0, got {text!r}")
    return seeds


THREADS_HELP = ("PyTorch's intra-op CPU threads (default: PyTorch's choice, usually one per "
                "core); float results depend on it, so the output records the number used")


def add_threads_argument(parser, help: str = THREADS_HELP) -> None:
    """``--threads`` on every command whose numbers come from torch (results depend on the
    thread count; each command's output records it)."""
    parser.add_argument("--threads", type=positive, default=None, help=help)


def apply_threads(args) -> int:
    """Set ``--threads`` (when given) for this process; return the threads now in effect."""
    import torch

    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def parse_names(text: str) -> tuple[str, ...]:
    """``"standard, mirror"`` -> ``("standard", "mirror")``."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_model_source_arguments(parser) -> None:
    """``--run DIR`` or ``--hf NAME_OR_PATH`` (a HF model or a PEFT adapter directory) and the
    HF loading flags: the model an evaluation or decoding command works on (docs/evaluation.md)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="a run directory written by maskdiff train")
    group.add_argument("--hf", metavar="NAME_OR_PATH",
                       help="a Hugging Face masked LM / diffusion LLM, or a PEFT (LoRA) adapter "
                            "directory (pip install -e '.[hf]')")
    add_hf_load_arguments(parser)


HF_LOAD_FLAGS = ("mask_token_id", "trust_remote_code", "logit_shift", "attention", "auto_class")


def add_hf_load_arguments(parser) -> None:
    """How a ``--hf`` model is loaded, the same flags on every command that takes ``--hf``
    (they are :func:`maskdiff.hf.load_hf_model`'s keywords; :func:`hf_load_kwargs` reads them)."""
    from maskdiff.hf.adapter import ATTENTION_FORMATS

    group = parser.add_argument_group("loading a --hf model (maskdiff.hf.load_hf_model)")
    group.add_argument("--mask-token-id", type=int,
                       help="with --hf: the mask token id if the tokenizer has none")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="with --hf: allow the model's own code (LLaDA, Dream, LLaDA2)")
    group.add_argument("--logit-shift", type=int, default=None,
                       help="with --hf: 1 for Dream (token i predicted at position i-1); "
                            "default: the model family's (maskdiff.hf.families)")
    group.add_argument("--attention", choices=ATTENTION_FORMATS, default=None,
                       help="with --hf: how the attention mask is passed: 2d (B, L), 4d "
                            "(B, 1, L, L) key-padding, none; default: the model family's")
    group.add_argument("--auto-class", metavar="CLASS",
                       help="with --hf: the transformers class to load with, e.g. "
                            "AutoModelForCausalLM or AutoModelForMaskedLM (default: the "
                            "config's auto_map / a masked-LM head)")


def hf_load_kwargs(args) -> dict:
    """The ``--hf`` loading flags that were given, as :func:`maskdiff.hf.load_hf_model`
    keywords (a flag left out keeps that function's default)."""
    out = {name: getattr(args, name, None) for name in HF_LOAD_FLAGS}
    out["trust_remote_code"] = bool(out["trust_remote_code"])
    return {k: v for k, v in out.items() if v is not None}


def load_model_argument(args):
    """The :class:`maskdiff.evaluation.EvalModel` of ``--run`` / ``--hf``."""
    from maskdiff.evaluation import load_eval_model

    if args.run is not None:
        return load_eval_model(run=args.run, checkpoint=args.checkpoint, device=args.device)
    return load_eval_model(hf=args.hf, device=args.device, **hf_load_kwargs(args))


def add_decoding_arguments(parser) -> None:
    """The low-confidence decoder's flags (docs/method.md §8) and the run's checkpoint and device."""
    parser.add_argument("--gen-length", type=positive,
                        help="default: max_len minus the prompt's length (--hf: 64)")
    parser.add_argument("--steps", type=positive, help="default: one token per step")
    parser.add_argument("--block-length", type=positive, help="default: one block")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--device", default="cpu")
