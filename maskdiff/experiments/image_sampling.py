"""Drawing digit images from a masked diffusion model: Gumbel-max noise on the logits turns the
greedy low-confidence decoder into a sampler (docs/method.md §8)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from maskdiff.core.seeding import STREAM_IMAGE_SAMPLING, generator_for
from maskdiff.data.digits import N_PIXELS, PROMPT_WIDTH, class_prompt, ids_to_images, level_token_ids
from maskdiff.training.generate import generate_diffusion


class GumbelSampling(nn.Module):
    """Wraps a model so the greedy decoder draws samples (:mod:`maskdiff.experiments.image`, step 4).

    ``forward`` returns the logits restricted to ``allowed_ids`` (others ``-inf``), divided by
    ``temperature`` plus standard Gumbel noise from ``generator`` -- fresh noise at every call,
    i.e. at every decoding step. ``temperature = 0`` returns the restricted logits unchanged.
    """

    def __init__(self, model: nn.Module, *, temperature: float, allowed_ids: Sequence[int],
                 generator: torch.Generator) -> None:
        super().__init__()
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if not allowed_ids:
            raise ValueError("allowed_ids must name at least one token")
        self.model, self.temperature, self.generator = model, float(temperature), generator
        self.register_buffer("allowed", torch.tensor(sorted(set(allowed_ids)), dtype=torch.long),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = self.model(input_ids, attention_mask).float()
        out = torch.full_like(logits, float("-inf"))
        kept = logits[..., self.allowed]
        if self.temperature > 0:
            uniform = torch.rand(kept.shape, generator=self.generator, device="cpu")
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
            kept = kept / self.temperature + gumbel.to(kept.device)
        out[..., self.allowed] = kept
        return out


def sample_images(model: nn.Module, tokenizer, labels: Sequence[int], *, levels: int,
                  temperature: float, gen_steps: int, block_length: int, seed: int,
                  batch_size: int = 140, device="cpu") -> np.ndarray:
    """(N, 8, 8) images, one per requested label, by low-confidence decoding (docs/method.md §8)."""
    sampler = GumbelSampling(model, temperature=temperature,
                             allowed_ids=level_token_ids(tokenizer, levels),
                             generator=generator_for(seed, STREAM_IMAGE_SAMPLING)).to(device)
    out = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        prompts = torch.tensor([tokenizer.encode(class_prompt(int(c))) for c in chunk],
                               dtype=torch.long, device=device)
        ids = generate_diffusion(sampler, prompts, gen_length=N_PIXELS, steps=gen_steps,
                                 block_length=block_length, mask_token_id=tokenizer.mask_id)
        out.append(ids_to_images(ids[:, PROMPT_WIDTH:].cpu(), tokenizer, levels))
    return np.concatenate(out)
