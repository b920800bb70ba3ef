"""The batch every estimator consumes (docs/architecture.md §1: ``batch(x0, eligible, syntax, pad)``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Batch:
    """A padded batch of clean sequences.

    Attributes:
        x0: (B, L) long, the clean token ids.
        eligible: (B, L) bool, positions that may be masked (docs/method.md §1: every token when
            pretraining, response tokens for SFT, plus the prompt's syntax tokens for SyRM).
        attention_mask: (B, L) bool, True on real tokens, False on padding the model must ignore.
            Under LLaDA's pad policy, EOS padding of responses is real (True) and eligible.
        example_index: (B,) long, each example's global index in its data set: it seeds the
            example's rates and masks (see :mod:`maskdiff.core.seeding`).
        syntax: optional (B, L) bool, the prompt's syntax tokens (SyRM's extra eligibility).
    """

    x0: torch.Tensor
    eligible: torch.Tensor
    attention_mask: torch.Tensor
    example_index: torch.Tensor
    syntax: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x0.dim() != 2:
            raise ValueError(f"x0 must be (B, L), got shape {tuple(self.x0.shape)}")
        for name in ("eligible", "attention_mask", "syntax"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != tuple(self.x0.shape):
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, x0 has {tuple(self.x0.shape)}"
                )
        if tuple(self.example_index.shape) != (self.x0.shape[0],):
            raise ValueError(
                f"example_index has shape {tuple(self.example_index.shape)}, "
                f"expected ({self.x0.shape[0]},)"
            )

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return replace(
            self,
            x0=move(self.x0),
            eligible=move(self.eligible),
            attention_mask=move(self.attention_mask),
            syntax=move(self.syntax),
        )
