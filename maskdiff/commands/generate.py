"""``maskdiff generate``: decode from a trained run or a HF model (low-confidence block
decoding, docs/method.md §8)."""

from __future__ import annotations

import torch

from maskdiff.commands import (
    add_decoding_arguments, add_model_source_arguments, add_threads_argument, apply_threads,
    load_model_argument,
)
from maskdiff.training.generate import generate_causal
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
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice): "
                                 "logits, hence a near-tie between tokens, can depend on it")
    p.set_defaults(func=run)


def run(args) -> int:
    apply_threads(args)
    if args.run is not None:
        loaded = load_run(args.run, args.checkpoint, args.device)
        if loaded.config.model.causal:
            return _causal(args, loaded)
    from maskdiff.evaluation import generate

    model = load_model_argument(args)
    texts = generate(model, args.prompt, gen_length=args.gen_length, steps=args.steps,
                     block_length=args.block_length, until=[args.until] * len(args.prompt),
                     batch_size=1, device=args.device)
    for text in texts:
        print(text)
    model.report_unknown()  # a native run's unseen prompt characters, said once on stderr
    return 0


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
        generated = out[0, ids.shape[1]:].tolist()
        if tok.eos_id in generated:
            generated = generated[:generated.index(tok.eos_id)]
        print(tok.decode(generated, skip_special=True))
    return 0
