"""``maskdiff generate``: decode from a trained run (low-confidence block decoding, docs/method.md §8)."""

from __future__ import annotations

import torch

from maskdiff.commands import add_decoding_arguments, add_threads_argument, apply_threads
from maskdiff.training.generate import generate_causal, generate_diffusion
from maskdiff.training.runs import load_run


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a response for each prompt",
                              description="Greedy generation from a run's best checkpoint.")
    p.add_argument("--run", required=True, help="a run directory written by maskdiff train")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    add_decoding_arguments(p)
    add_threads_argument(p, help="PyTorch's intra-op CPU threads (default: PyTorch's choice): "
                                 "logits, hence a near-tie between tokens, can depend on it")
    p.set_defaults(func=run)


def run(args) -> int:
    apply_threads(args)
    loaded = load_run(args.run, args.checkpoint, args.device)
    tok = loaded.tokenizer
    for prompt in args.prompt:
        ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=args.device)
        n_new = args.gen_length or loaded.config.data.max_len - ids.shape[1]
        if n_new < 1:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens: no room left within "
                             f"max_len={loaded.config.data.max_len}")
        if loaded.config.model.causal:
            out = generate_causal(loaded.model, ids, max_new_tokens=n_new, eos_id=tok.eos_id)
        else:
            out = generate_diffusion(loaded.model, ids, gen_length=n_new, steps=args.steps or n_new,
                                     block_length=args.block_length or n_new,
                                     mask_token_id=tok.mask_id)
        generated = out[0, ids.shape[1]:].tolist()
        if tok.eos_id in generated:
            generated = generated[:generated.index(tok.eos_id)]
        print(tok.decode(generated, skip_special=True))
    return 0
