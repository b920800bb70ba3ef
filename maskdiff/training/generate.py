"""Greedy decoding for the diffusion model and its causal twin (docs/method.md §8).

Diffusion: LLaDA's low-confidence remasking under semi-autoregressive block decoding (Nie et al.,
"Large Language Diffusion Models", and the variance paper's A.7.1 inference settings,
``gen_length-steps-block_length``), at temperature 0. The generated region starts fully masked and
is cut into ``gen_length / block_length`` blocks filled left to right; each block gets
``steps / n_blocks`` steps; at every step the model predicts every still-masked position of the
current block (argmax), its confidence is the softmax probability of that argmax, and the most
confident predictions are committed. How many per step follows LLaDA's ``get_num_transfer_tokens``
(:func:`transfer_schedule`). Positions of later blocks stay masked until their block comes.

Two deliberate details, both no-ops for a trained model:

- the MASK token is never predicted (its logit is set to -inf before the argmax and the softmax):
  LLaDA's loop would otherwise "commit" a MASK, which stays masked and breaks the per-step counts;
- ties in confidence are broken towards the leftmost position (a stable sort), so decoding is
  deterministic on every device.

Batches: all prompts share one length ``P`` and generation starts at column ``P`` for every row.
Prompts of different lengths must be **left-padded** to a common length, with ``prompt_attention``
marking the real tokens (the padding is hidden from attention; with learned absolute positions a
left-padded row sees its tokens at shifted positions, with rotary positions nothing changes).

Both decoders run under ``torch.no_grad()`` with the model in eval mode, and restore the model's
previous training mode afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from maskdiff.core.checks import int_at_least


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens unmasked at each of ``steps`` steps when ``n_masked`` are to be filled.

    LLaDA's ``get_num_transfer_tokens``: the linear schedule unmasks the same expected number per
    step, so ``base = n_masked // steps`` each, and the first ``n_masked % steps`` steps one more.
    """
    int_at_least(n_masked, "n_masked", minimum=0)
    int_at_least(steps, "steps")
    base, remainder = divmod(n_masked, steps)
    return [base + 1 if step < remainder else base for step in range(steps)]


@contextmanager
def _inference_mode(model: nn.Module) -> Iterator[None]:
    """eval() and no_grad for the duration; the previous training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _check_prompt(
    prompt_ids: torch.Tensor, prompt_attention: torch.Tensor | None
) -> tuple[int, int]:
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        raise ValueError(
            f"prompt_ids must be a (B, P) tensor, got {getattr(prompt_ids, 'shape', prompt_ids)}"
        )
    if prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be a long tensor, got dtype {prompt_ids.dtype}")
    if prompt_attention is not None and (
        prompt_attention.dtype != torch.bool or prompt_attention.shape != prompt_ids.shape
    ):
        raise ValueError(
            f"prompt_attention must be a bool tensor of shape {tuple(prompt_ids.shape)}, got "
            f"shape {tuple(prompt_attention.shape)} dtype {prompt_attention.dtype}"
        )
    return int(prompt_ids.shape[0]), int(prompt_ids.shape[1])


def _extend_attention(attention: torch.Tensor | None, n_new: int) -> torch.Tensor | None:
    """Append ``n_new`` real (True) columns to a (B, P) attention mask; None stays None."""
    if attention is None:
        return None
    ones = torch.ones(attention.shape[0], n_new, dtype=torch.bool, device=attention.device)
    return torch.cat((attention, ones), dim=1)


def generate_diffusion(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    mask_token_id: int,
    prompt_attention: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy low-confidence remasking with semi-autoregressive blocks (docs/method.md §8).

    Args:
        model: ``model(input_ids, attention_mask) -> logits (B, L, V)``, bidirectional.
        prompt_ids: (B, P) long; rows of different lengths left-padded (see the module docstring).
        gen_length: number of generated positions; a multiple of ``block_length``.
        steps: total denoising steps; a multiple of the number of blocks.
        block_length: width of a semi-autoregressive block.
        mask_token_id: the MASK id filling the generated region at the start.
        prompt_attention: optional (B, P) bool, True on real prompt tokens.

    Returns:
        (B, P + gen_length) long: the prompt followed by the generated tokens (none left masked).
    """
    batch, prompt_length = _check_prompt(prompt_ids, prompt_attention)
    gen_length = int_at_least(gen_length, "gen_length")
    steps = int_at_least(steps, "steps")
    block_length = int_at_least(block_length, "block_length")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"mask_token_id must be a non-negative integer, got {mask_token_id!r}")
    if gen_length % block_length != 0:
        raise ValueError(
            f"gen_length must be a multiple of block_length, got gen_length={gen_length}, "
            f"block_length={block_length}"
        )
    n_blocks = gen_length // block_length
    if steps % n_blocks != 0:
        raise ValueError(
            f"steps must be divisible by the number of blocks, got steps={steps}, "
            f"n_blocks={n_blocks} (gen_length={gen_length} / block_length={block_length})"
        )
    schedule = transfer_schedule(block_length, steps // n_blocks)

    ids = torch.full(
        (batch, prompt_length + gen_length),
        mask_token_id,
        dtype=torch.long,
        device=prompt_ids.device,
    )
    ids[:, :prompt_length] = prompt_ids
    attention = _extend_attention(prompt_attention, gen_length)

    with _inference_mode(model):
        for block in range(n_blocks):
            start = prompt_length + block * block_length
            end = start + block_length
            for count in schedule:
                if count == 0:
                    # More steps than tokens: greedy decoding is deterministic, so a step that
                    # commits nothing would leave the state unchanged; skip its forward pass.
                    continue
                logits = model(ids, attention)
                if logits.shape[-1] <= mask_token_id:
                    raise ValueError(
                        f"mask_token_id={mask_token_id} is outside the model's vocabulary of "
                        f"{logits.shape[-1]} logits"
                    )
                block_logits = logits[:, start:end].float()
                block_logits[..., mask_token_id] = float("-inf")
                confidence, prediction = block_logits.softmax(dim=-1).max(dim=-1)
                still_masked = ids[:, start:end] == mask_token_id
                confidence = confidence.masked_fill(~still_masked, float("-inf"))
                # Stable descending sort: equal confidences resolve to the leftmost position.
                order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
                chosen = torch.zeros_like(still_masked)
                chosen.scatter_(1, order[:, :count], True)
                ids[:, start:end] = torch.where(chosen, prediction, ids[:, start:end])
    return ids


def generate_causal(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    prompt_attention: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy next-token decoding for the causal twin (docs/method.md §8, §11).

    Each step appends the argmax of the last position's logits. A row stops at its first
    ``eos_id`` (which is kept) and is padded with ``eos_id`` from then on; decoding ends early when
    every row has stopped. Without ``eos_id`` exactly ``max_new_tokens`` tokens are generated.
    The full sequence is re-encoded each step (no KV cache: the models here are small).

    Returns:
        (B, P + max_new_tokens) long.
    """
    batch, prompt_length = _check_prompt(prompt_ids, prompt_attention)
    if prompt_length < 1:
        raise ValueError("prompt_ids must hold at least one token per row for causal decoding")
    max_new_tokens = int_at_least(max_new_tokens, "max_new_tokens")
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int) or eos_id < 0):
        raise ValueError(f"eos_id must be None or a non-negative integer, got {eos_id!r}")

    ids = prompt_ids
    attention = prompt_attention
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    with _inference_mode(model):
        for _ in range(max_new_tokens):
            next_token = model(ids, attention)[:, -1].argmax(dim=-1)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)
                finished = finished | (next_token == eos_id)
            ids = torch.cat((ids, next_token[:, None]), dim=1)
            attention = _extend_attention(attention, 1)
            if eos_id is not None and bool(finished.all()):
                break
    remaining = prompt_length + max_new_tokens - ids.shape[1]
    if remaining > 0:  # only reached when every row stopped at eos
        padding = torch.full((batch, remaining), eos_id, dtype=torch.long, device=ids.device)
        ids = torch.cat((ids, padding), dim=1)
    return ids
