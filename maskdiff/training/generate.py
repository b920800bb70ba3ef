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

Block diffusion (``layout=``, docs/method.md §8 "Block decoding", §12): blocks of the layout's
size aligned to absolute positions as in training; inside each block the rule above; the block's
noisy tokens see themselves and the clean blocks before it; each finished block is encoded once
into a :class:`~maskdiff.models.cache.KVCache` (``use_cache=False`` recomputes the training
input ``[x_t ; x_0]`` at every step instead: the same tokens). Left padding shifts a row's
tokens against the block boundaries, so batch prompts of one length there.

Both decoders run under ``torch.no_grad()`` with the model in eval mode, and restore the model's
previous training mode afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from maskdiff.core.blocks import BlockLayout
from maskdiff.core.checks import int_at_least
from maskdiff.models.cache import KVCache


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
def inference_mode(model: nn.Module) -> Iterator[None]:
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


def by_prompt_length(encoded: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """The indices of ``encoded`` prompts grouped by length, shortest first (the decoders take
    batches of equal-length prompts)."""
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    return dict(sorted(groups.items()))


def response_text(tokenizer, generated: Sequence[int]) -> str:
    """The text of generated token ids up to the first EOS, special tokens dropped."""
    generated = list(generated)
    if tokenizer.eos_id in generated:
        generated = generated[:generated.index(tokenizer.eos_id)]
    return tokenizer.decode(generated, skip_special=True)


def generate_diffusion(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    mask_token_id: int,
    prompt_attention: torch.Tensor | None = None,
    layout: BlockLayout | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Greedy low-confidence remasking with semi-autoregressive blocks (docs/method.md §8).

    Args:
        model: ``model(input_ids, attention_mask) -> logits (B, L, V)``, bidirectional.
        prompt_ids: (B, P) long; rows of different lengths left-padded (see the module docstring).
        gen_length: number of generated positions; a multiple of ``block_length``.
        steps: total denoising steps; a multiple of the number of blocks.
        block_length: width of a semi-autoregressive block (None: one block of ``gen_length``).
        mask_token_id: the MASK id filling the generated region at the start.
        prompt_attention: optional (B, P) bool, True on real prompt tokens.
        layout: a block-diffusion model's :class:`BlockLayout` (docs/method.md §8 "Block
            decoding"): blocks of ``layout.block_size`` aligned to absolute positions as in
            training, decoded from the block holding position ``P``; ``block_length`` must then
            be None or the block size, and ``steps`` a multiple of the decoded blocks
            (:func:`block_decoding_steps`). The native :class:`~maskdiff.models.Transformer` only.
        use_cache: with a layout, encode each finished block once into a KV cache (False:
            every step runs the training-style input ``[x_t ; x_0]``; the same tokens).

    Returns:
        (B, P + gen_length) long: the prompt followed by the generated tokens (none left masked).
    """
    batch, prompt_length = _check_prompt(prompt_ids, prompt_attention)
    gen_length = int_at_least(gen_length, "gen_length")
    steps = int_at_least(steps, "steps")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"mask_token_id must be a non-negative integer, got {mask_token_id!r}")
    ids = torch.full((batch, prompt_length + gen_length), mask_token_id, dtype=torch.long,
                     device=prompt_ids.device)
    ids[:, :prompt_length] = prompt_ids
    attention = _extend_attention(prompt_attention, gen_length)
    if layout is not None:
        if block_length is not None and block_length != layout.block_size:
            raise ValueError(f"block_length={block_length} conflicts with the block layout's "
                             f"block_size={layout.block_size}: a block model decodes in the "
                             f"blocks it was trained on")
        with inference_mode(model):
            return _decode_blocks(model, ids, attention, prompt_length=prompt_length,
                                  steps=steps, layout=layout, mask_token_id=mask_token_id,
                                  use_cache=use_cache)
    block_length = int_at_least(gen_length if block_length is None else block_length,
                                "block_length")
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
    with inference_mode(model):
        for block in range(n_blocks):
            start = prompt_length + block * block_length
            end = start + block_length
            for count in schedule:
                if count == 0:
                    # More steps than tokens: greedy decoding is deterministic, so a step that
                    # commits nothing would leave the state unchanged; skip its forward pass.
                    continue
                logits = model(ids, attention)
                _commit(ids, logits[:, start:end], start, end, count, mask_token_id)
    return ids


def _commit(ids: torch.Tensor, block_logits: torch.Tensor, start: int, end: int, count: int,
            mask_token_id: int) -> None:
    """One low-confidence remasking step: commit the ``count`` most confident argmax
    predictions among the still-masked positions ``start:end`` of ``ids`` (in place)."""
    if block_logits.shape[-1] <= mask_token_id:
        raise ValueError(
            f"mask_token_id={mask_token_id} is outside the model's vocabulary of "
            f"{block_logits.shape[-1]} logits"
        )
    block_logits = block_logits.float()
    block_logits[..., mask_token_id] = float("-inf")
    confidence, prediction = block_logits.softmax(dim=-1).max(dim=-1)
    still_masked = ids[:, start:end] == mask_token_id
    confidence = confidence.masked_fill(~still_masked, float("-inf"))
    # Stable descending sort: equal confidences resolve to the leftmost position.
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    chosen = torch.zeros_like(still_masked)
    chosen.scatter_(1, order[:, :count], True)
    ids[:, start:end] = torch.where(chosen, prediction, ids[:, start:end])


def decoding_blocks(prompt_length: int, gen_length: int, block_size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` columns of the blocks a block model decodes: blocks of
    ``block_size`` from position 0 (the last may be shorter), from the one holding position
    ``prompt_length`` (the first generated) to the end of ``prompt_length + gen_length``."""
    total = prompt_length + gen_length
    return [(j * block_size, min((j + 1) * block_size, total))
            for j in range(prompt_length // block_size, -(-total // block_size))]


def block_decoding_steps(prompt_length: int, gen_length: int, layout: BlockLayout,
                         steps: int | None = None) -> int:
    """``steps`` rounded up to a multiple of the decoded blocks; None: one token per step (each
    block gets as many steps as the most masked positions any block holds)."""
    blocks = decoding_blocks(prompt_length, gen_length, layout.block_size)
    if steps is None:
        return len(blocks) * max(end - max(start, prompt_length) for start, end in blocks)
    return -(-int(steps) // len(blocks)) * len(blocks)


def _decode_blocks(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor | None, *,
                   prompt_length: int, steps: int, layout: BlockLayout, mask_token_id: int,
                   use_cache: bool) -> torch.Tensor:
    """Block decoding (docs/method.md §8 "Block decoding"): inside each block the plain
    decoder's greedy remasking; the block's noisy tokens see themselves and the clean blocks
    before it; a finished block is encoded once, clean, into the cache."""
    size = layout.block_size
    blocks = decoding_blocks(prompt_length, ids.shape[1] - prompt_length, size)
    if steps % len(blocks) != 0:
        raise ValueError(f"steps must be divisible by the {len(blocks)} decoded blocks of "
                         f"{size} (columns {blocks[0][0]}..{blocks[-1][1] - 1}), got "
                         f"steps={steps}")
    cache = KVCache() if use_cache else None
    if cache is not None:
        for start in range(0, blocks[0][0], size):  # the prompt's whole blocks, clean, once
            _encode_clean(model, ids, attention, start, start + size, cache)
    for index, (start, end) in enumerate(blocks):
        n_masked = end - max(start, prompt_length)
        for count in transfer_schedule(n_masked, steps // len(blocks)):
            if count == 0:
                continue
            if cache is None:
                inputs = layout.inputs(ids, ids, attention)
                logits = model(inputs.input_ids, inputs.attention_mask,
                               inputs.position_ids)[:, start:end]
            else:
                logits = model(ids[:, start:end], _columns(attention, start, end), cache=cache)
            _commit(ids, logits, start, end, count, mask_token_id)
        if cache is not None and index + 1 < len(blocks):
            _encode_clean(model, ids, attention, start, end, cache)
    return ids


def _columns(attention: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    return None if attention is None else attention[:, start:end]


def _encode_clean(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor | None,
                  start: int, end: int, cache: KVCache) -> None:
    """Append block ``start:end`` as clean tokens: it sees the cached blocks and itself."""
    if cache.length != start:
        raise ValueError(f"the KV cache holds {cache.length} positions, block starts at {start}")
    model(ids[:, start:end], _columns(attention, start, end), cache=cache, store=True)


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
    with inference_mode(model):
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
