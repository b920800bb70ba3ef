"""Filling the masked positions of whole sequences: the decoder of the generation judge
(docs/evaluation.md "Generation: a judge that is not the model", docs/method.md §8).

:func:`~maskdiff.training.generate.generate_diffusion` decodes a generated region after a
prompt; :func:`fill_masked` decodes *any* set of masked positions of a row — all of it (an
unconditional sample), the tail of a test example (a continuation), or a scattered share of
its tokens (the partial-mask probe). The rule is the same low-confidence remasking: at each step
every still-masked position proposes a token, and the ``count`` most confident proposals are
committed (ties to the leftmost position); MASK is never proposed. Each row has its own
schedule (:func:`~maskdiff.training.generate.transfer_schedule` of its own masked count).

``temperature=0`` proposes the argmax (greedy: LLaDA's decoder). ``temperature > 0`` samples
the proposal from ``softmax(logits / temperature)`` by the Gumbel-max trick, its confidence the
model's probability of the sampled token (LLaDA's sampler with Gumbel noise); the noise of row
``b`` comes from its own generator (``seeds[b]``), so a row's sample does not depend on which
rows share its batch. A block-diffusion model (``layout=``, docs/method.md §12) is decoded block
by block from the left, each block's noisy tokens seeing themselves and the decoded blocks
before it (the training input ``[x_t ; x_0]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskdiff.core.blocks import BlockLayout
from maskdiff.core.checks import int_at_least
from maskdiff.training.generate import inference_mode, transfer_schedule


def fill_masked(model: nn.Module, ids: torch.Tensor, *, mask_token_id: int,
                attention: torch.Tensor | None = None, steps: int | None = None,
                temperature: float = 0.0, seeds: Sequence[int] | None = None,
                layout: BlockLayout | None = None) -> torch.Tensor:
    """``ids`` (B, L) long with every ``mask_token_id`` position decoded (a new tensor).

    Args:
        model: ``model(input_ids, attention_mask) -> logits (B, L, V)``, bidirectional.
        attention: optional (B, L) bool, True on real tokens.
        steps: denoising steps per region (the whole row, or each block of ``layout``); None:
            one token per step (as many steps as the most masked positions a row holds there).
        temperature: 0 decodes greedily; > 0 samples each proposal (needs ``seeds``).
        seeds: one integer seed per row, for the sampling noise.
        layout: a block-diffusion model's layout: decode its blocks left to right.
    """
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(f"ids must be a (B, L) long tensor, got shape {tuple(ids.shape)} "
                         f"dtype {ids.dtype}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    generators = None
    if temperature > 0:
        if seeds is None or len(seeds) != ids.shape[0]:
            raise ValueError(f"sampling (temperature {temperature}) needs one seed per row: "
                             f"{ids.shape[0]} rows, got {None if seeds is None else len(seeds)}")
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    if steps is not None:
        steps = int_at_least(steps, "steps")
    ids = ids.clone()
    length = ids.shape[1]
    size = length if layout is None else layout.block_size
    with inference_mode(model):
        for start in range(0, length, size):
            _fill_region(model, ids, attention, start, min(start + size, length), steps=steps,
                         temperature=temperature, generators=generators,
                         mask_token_id=mask_token_id, layout=layout)
    return ids


def _fill_region(model, ids, attention, start: int, end: int, *, steps, temperature,
                 generators, mask_token_id: int, layout) -> None:
    """Decode the masked positions of columns ``start:end`` in place."""
    n_masked = (ids[:, start:end] == mask_token_id).sum(dim=1).tolist()
    if max(n_masked) == 0:
        return
    n_steps = max(n_masked) if steps is None else steps
    schedules = torch.tensor([transfer_schedule(n, n_steps) for n in n_masked],
                             dtype=torch.long, device=ids.device)
    for step in range(n_steps):
        counts = schedules[:, step]
        if int(counts.max()) == 0:
            continue
        if layout is None:
            logits = model(ids, attention)[:, start:end]
        else:
            inputs = layout.inputs(ids, ids, attention)
            logits = model(inputs.input_ids, inputs.attention_mask,
                           inputs.position_ids)[:, start:end]
        _commit_counts(ids, logits, start, end, counts, mask_token_id, temperature, generators)


def _commit_counts(ids: torch.Tensor, logits: torch.Tensor, start: int, end: int,
                   counts: torch.Tensor, mask_token_id: int, temperature: float,
                   generators) -> None:
    """Commit the ``counts[b]`` most confident proposals among row ``b``'s masked positions."""
    if logits.shape[-1] <= mask_token_id:
        raise ValueError(f"mask_token_id={mask_token_id} is outside the model's vocabulary of "
                         f"{logits.shape[-1]} logits")
    logits = logits.float()
    logits[..., mask_token_id] = float("-inf")
    probs = logits.softmax(dim=-1)
    if temperature > 0:
        noise = torch.stack([_gumbel(logits.shape[1:], g) for g in generators]).to(logits.device)
        proposal = (logits / temperature + noise).argmax(dim=-1)
        confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)
    else:
        confidence, proposal = probs.max(dim=-1)
    still_masked = ids[:, start:end] == mask_token_id
    confidence = confidence.masked_fill(~still_masked, float("-inf"))
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    chosen = (ranks < counts[:, None]) & still_masked
    ids[:, start:end] = torch.where(chosen, proposal, ids[:, start:end])


def _gumbel(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise drawn on the CPU from ``generator`` (device-independent draws)."""
    uniform = torch.rand(shape, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(uniform))
