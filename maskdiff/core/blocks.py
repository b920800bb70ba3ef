"""The block layout of block diffusion (docs/method.md §12; BD3-LM, LLaDA2.0, SDAR).

A layout is one more input to the objective, never a second objective (docs/architecture.md
"Block layout"). It maps a clean batch ``x0`` (B, L) and a noisy view ``xt`` to the model's input
``[xt ; x0]`` (B, 2L), its position ids (the clean copy repeats the noisy one's) and one boolean
attention mask of three parts, for a query in block ``i``:

- in the noisy half: the noisy tokens of block ``i`` (block-diagonal) and the clean tokens of
  the blocks ``j < i`` (offset block-causal);
- in the clean half: the clean tokens of the blocks ``j <= i`` (block-causal).

The loss reads the noisy half only. Blocks are the rate sampler's unit when ``rates="block"``
(BD3-LM: one rate per block, block ``i``'s masked tokens weighted ``1/t_i``) and the example is
(``rates="sequence"``: LLaDA2.0 / dFactory, one rate for every block). With ``b >= L`` there is
one block: the noisy half sees all of ``xt`` and nothing of ``x0``, which is the plain
masked-diffusion model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_RATES = ("block", "sequence")


def block_attention_mask(length: int, block_size: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The three-part mask of ``[xt ; x0]`` for ``length`` positions, (2L, 2L) bool, True where
    query (row) may attend to key (column). Positions ``0..L-1`` are the noisy half."""
    if length < 1 or block_size < 1:
        raise ValueError(f"length and block_size must be >= 1, got {length}, {block_size}")
    index = torch.arange(2 * length, device=device)
    clean = index >= length
    block = torch.where(clean, index - length, index) // block_size
    q_clean, k_clean = clean[:, None], clean[None, :]
    q_block, k_block = block[:, None], block[None, :]
    diagonal = (q_block == k_block) & (q_clean == k_clean)
    offset_causal = (q_block > k_block) & k_clean & ~q_clean
    causal = (q_block >= k_block) & k_clean & q_clean
    return diagonal | offset_causal | causal


@dataclass(frozen=True)
class BlockInputs:
    """What the model is called with under a block layout.

    Attributes:
        input_ids: (B, 2L) long, ``[xt ; x0]``.
        attention_mask: (B, 1, 2L, 2L) bool, the three-part mask with padding keys hidden (a
            query always sees itself, so a padded row never takes a softmax over nothing).
        position_ids: (B, 2L) long, ``[0..L-1, 0..L-1]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


@dataclass(frozen=True)
class BlockLayout:
    """Block size ``b`` and the rate unit (``"block"`` or ``"sequence"``)."""

    block_size: int
    rates: str = "block"

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) \
                or self.block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        if self.rates not in BLOCK_RATES:
            raise ValueError(f"block rates must be one of {BLOCK_RATES}, got {self.rates!r}")

    def n_blocks(self, length: int) -> int:
        """Blocks over ``length`` positions (the last may be shorter)."""
        return -(-int(length) // self.block_size)

    def units(self, length: int) -> int:
        """Rate draws per example: one per block, or one per sequence."""
        return self.n_blocks(length) if self.rates == "block" else 1

    def token_blocks(self, length: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Each position's block index, (L,) long."""
        return torch.arange(length, device=device) // self.block_size

    def token_rates(self, t: torch.Tensor, length: int) -> torch.Tensor:
        """Per-token rates (B, L) from one rate per unit, ``t`` of shape (B, units)."""
        if self.rates == "sequence":
            return t[:, :1].expand(t.shape[0], length)
        return t[:, self.token_blocks(length, t.device)]

    def unit_sums(self, token_values: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token values summed per unit: (B, units)."""
        batch, length = token_values.shape
        if self.rates == "sequence":
            return token_values.sum(dim=1, keepdim=True)
        out = token_values.new_zeros(batch, self.n_blocks(length))
        return out.index_add_(1, self.token_blocks(length, token_values.device), token_values)

    def inputs(self, xt: torch.Tensor, x0: torch.Tensor,
               attention_mask: torch.Tensor | None) -> BlockInputs:
        """The model's input for noisy ``xt`` and clean ``x0`` (B, L); ``attention_mask`` (B, L)
        bool marks real tokens (None: all real)."""
        if tuple(xt.shape) != tuple(x0.shape) or x0.dim() != 2:
            raise ValueError(f"xt {tuple(xt.shape)} and x0 {tuple(x0.shape)} must be equal (B, L)")
        batch, length = x0.shape
        device = x0.device
        allowed = block_attention_mask(length, self.block_size, device)[None, None]
        if attention_mask is not None and not bool(attention_mask.all()):
            keys = torch.cat([attention_mask, attention_mask], dim=1).bool()
            allowed = allowed & keys[:, None, None, :]
            allowed = allowed | torch.eye(2 * length, dtype=torch.bool, device=device)
        positions = torch.arange(length, device=device).repeat(2)
        return BlockInputs(
            input_ids=torch.cat([xt, x0], dim=1),
            attention_mask=allowed.expand(batch, 1, 2 * length, 2 * length),
            position_ids=positions[None].expand(batch, 2 * length))

    @staticmethod
    def noisy(logits: torch.Tensor, length: int) -> torch.Tensor:
        """The noisy half of the model's (B, 2L, V) logits: what the loss reads."""
        return logits[:, :length]

    def to_dict(self) -> dict:
        return {"block_size": self.block_size, "rates": self.rates}
