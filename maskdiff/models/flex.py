"""Block-sparse attention for full attention patterns: block diffusion's three-part mask on a GPU.

A block-diffusion forward runs over ``[x_t ; x_0]`` under a boolean (2L, 2L) pattern that is
mostly empty for small blocks (docs/method.md §12). PyTorch's SDPA computes every score of a
dense mask; flex attention (``torch.nn.attention.flex_attention``) skips the tiles the mask
empties. The choice, by the environment variable ``MASKDIFF_ATTENTION``:

- ``auto`` (default): flex attention on CUDA when this torch has it, SDPA elsewhere (on a CPU
  flex attention runs unfused, slower than SDPA);
- ``sdpa``: always SDPA; ``flex``: always flex attention (an error where torch lacks it).

Both compute the same attention (to float rounding; tested on the CPU with the unfused kernel).
Dropout on attention weights is SDPA's only: a training forward with ``dropout > 0`` takes SDPA.
"""

from __future__ import annotations

import os
import warnings

import torch

ENV = "MASKDIFF_ATTENTION"
CHOICES = ("auto", "sdpa", "flex")

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = create_block_mask = flex_attention = None

_COMPILED = {}


def use_flex(device: torch.device) -> bool:
    """Whether a full pattern on ``device`` goes through flex attention (``MASKDIFF_ATTENTION``)."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r} is not one of {CHOICES}")
    if choice == "sdpa":
        return False
    if choice == "flex" and flex_attention is None:
        raise ValueError(f"{ENV}=flex, but torch {torch.__version__} has no "
                         f"torch.nn.attention.flex_attention (torch >= 2.5 has)")
    return flex_attention is not None and (choice == "flex" or device.type == "cuda")


def block_sparse(pattern: torch.Tensor):
    """A flex ``BlockMask`` of a boolean (B or 1, 1, Q, K) pattern (True = may attend)."""
    dense = pattern[:, 0]
    batch, queries, keys = dense.shape
    if batch == 1:
        def mask_mod(b, h, q, k):
            return dense[0, q, k]
    else:
        def mask_mod(b, h, q, k):
            return dense[b, q, k]
    return create_block_mask(mask_mod, B=batch if batch > 1 else None, H=None, Q_LEN=queries,
                             KV_LEN=keys, device=pattern.device)


def is_block_mask(mask) -> bool:
    return BlockMask is not None and isinstance(mask, BlockMask)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """Flex attention of (B, H, L, D) tensors: compiled once per process on CUDA (its fused
    kernel), eager elsewhere."""
    if q.device.type == "cuda":
        if "cuda" not in _COMPILED:
            _COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
        return _COMPILED["cuda"](q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # the unfused kernel's note that it is meant for debugging
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask)
