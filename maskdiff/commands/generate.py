"""``maskdiff generate``: decode from a trained run or a HF model (low-confidence block
decoding, docs/method.md §8; a block-diffusion run decodes in its own blocks with a KV cache)."""

from __future__ import annotations

import sys

import torch

from maskdiff.commands import (
    add_decoding_arguments, add_model_source_arguments, add_threads_argument, apply_threads,
    load_model_argument, positive,
)
from maskdiff.core.blocks import BlockLayout
from maskdiff.training.generate import generate_causal, response_text
from maskdiff.training.runs import load_run


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a response for each prompt",
                              description="Greedy generation from a run's best checkpoint or a "
                                          "Hugging Face model (plain or PEFT).")
    add_model_source_arguments(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--until", action="append", default=[],
                   help="a stop sequence: the text is cut at its first occurrence (repeatable)")
    add_decoding_arguments(p)
    p.add_argument("--block-size", type=positive, metavar="N",
                   help="block decoding (docs/method.md §8) in blocks of N tokens aligned to "
                        "absolute positions as in training, each finished block cached; "
                        "default: a block run's train.block_size, plain decoding otherwise")
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice): "
                                 "logits, hence a near-tie between tokens, can depend on it")
    p.set_defaults(func=run)


def run(args) -> int:
    apply_threads(args)
    if args.run is not None:
        loaded = load_run(args.run, args.checkpoint, args.device)
        if loaded.config.model.causal:
            if args.block_size is not None:
                raise ValueError(f"{args.run} is a causal run: it decodes left to right, "
                                 f"--block-size is for masked-diffusion runs")
            return _causal(args, loaded)
    from maskdiff.evaluation import generate

    model = load_model_argument(args)
    layout = decoding_layout(args, model)
    note_block_length(args, layout, "generate")
    texts = generate(model, args.prompt, gen_length=args.gen_length, steps=args.steps,
                     block_length=args.block_length, until=[args.until] * len(args.prompt),
                     batch_size=1, device=args.device, layout=layout)
    for text in texts:
        print(text)
    model.report_unknown()  # a native run's unseen prompt characters, said once on stderr
    return 0


def decoding_layout(args, model) -> BlockLayout | None:
    """``--block-size N`` (a layout of N, the run's rate unit kept) or the run's own layout."""
    if args.block_size is None:
        return model.layout
    if not model.native:
        raise ValueError("--block-size decodes native runs (--run) only: a Hugging Face "
                         "model's forward takes no block mask and position ids here")
    if model.layout is None:
        print(f"maskdiff generate: note: {model.name} was not trained with blocks "
              f"(train.block_size is unset); decoding in blocks of {args.block_size} as "
              f"--block-size asks", file=sys.stderr)
        return BlockLayout(args.block_size)
    return BlockLayout(args.block_size, model.layout.rates)


def note_block_length(args, layout: BlockLayout | None, command: str) -> None:
    """A block model decodes in its own blocks: say on stderr that --block-length is unused."""
    if layout is not None and args.block_length is not None \
            and args.block_length != layout.block_size:
        print(f"maskdiff {command}: note: --block-length {args.block_length} is unused: a block "
              f"model decodes in its blocks of {layout.block_size} (--block-size)",
              file=sys.stderr)


def _causal(args, loaded) -> int:
    """The causal twin of a run decodes left to right (docs/method.md §11)."""
    tok = loaded.tokenizer
    for prompt in args.prompt:
        ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=args.device)
        n_new = args.gen_length or loaded.config.data.max_len - ids.shape[1]
        if n_new < 1:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens: no room left within "
                             f"max_len={loaded.config.data.max_len}")
        out = generate_causal(loaded.model, ids, max_new_tokens=n_new, eos_id=tok.eos_id)
        print(response_text(tok, out[0, ids.shape[1]:].tolist()))
    return 0
