"""A small pre-norm transformer: the masked-diffusion model and its causal (AR) twin.

docs/architecture.md §3 "Model": ``model(input_ids (B, L) long, attention_mask (B, L) bool) -> logits (B, L, V)``.
docs/method.md §11 asks for an autoregressive model *of the same size* as the diffusion model, trained on the
same data; so there is one class, and ``causal`` changes only the attention pattern, never a
parameter (the parameter counts are equal by construction and by test).

Architecture: token embedding (+ learned absolute positions, or rotary position embedding applied
to queries and keys), ``n_layers`` pre-norm blocks (LayerNorm -> multi-head attention through
``torch.nn.functional.scaled_dot_product_attention`` -> residual; LayerNorm -> GELU MLP ->
residual), a final LayerNorm and an output head **tied** to the token embedding (the head has no
weights of its own, which keeps the small models small and the two twins identical).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.models.cache import KVCache
from maskdiff.models.flex import block_sparse, flex, is_block_mask, use_flex

_POSITIONS = ("rotary", "learned")


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Shape of a :class:`Transformer` (validated; JSON round trip via ``to_dict``/``from_dict``).

    Attributes:
        vocab_size: number of token ids, the mask token included.
        max_len: the longest sequence the model accepts.
        d_model: residual width; must be divisible by ``n_heads``.
        n_layers: number of transformer blocks.
        n_heads: attention heads; with rotary positions the head width must be even.
        mlp_ratio: MLP hidden width is ``mlp_ratio * d_model``.
        dropout: dropout on attention weights and on each residual branch (training only).
        mask_token_id: id of the MASK token (needed by the diffusion model; None for a causal
            model that never sees one).
        causal: False for the bidirectional masked-diffusion model, True for the AR twin.
        positions: "rotary" (relative, no parameters) or "learned" (absolute embedding table).
    """

    vocab_size: int
    max_len: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    mask_token_id: int | None = None
    causal: bool = False
    positions: str = "rotary"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={self.d_model}, "
                f"n_heads={self.n_heads}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (
            0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if self.mask_token_id is not None and (
            isinstance(self.mask_token_id, bool)
            or not isinstance(self.mask_token_id, int)
            or not 0 <= self.mask_token_id < self.vocab_size
        ):
            raise ValueError(
                f"mask_token_id must be None or an int in [0, {self.vocab_size}), "
                f"got {self.mask_token_id!r}"
            )
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        if self.positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {_POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                "rotary positions need an even head width d_model // n_heads, got "
                f"{self.d_model} // {self.n_heads} = {self.d_model // self.n_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError (a stale config fails loudly)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {unknown}")
        return cls(**data)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class _Rotary(nn.Module):
    """Rotary position embedding (RoFormer) with cached cos/sin tables (buffers, not parameters)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        # Non-persistent: derived from the config, so checkpoints stay free of them.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate (B, H, L, D) queries or keys by their position's angles: positions
        ``0..L-1``, or ``position_ids`` (B, L) long."""
        if position_ids is None:
            length = x.shape[-2]
            cos, sin = self.cos[:length], self.sin[:length]
        else:
            cos, sin = self.cos[position_ids][:, None], self.sin[position_ids][:, None]
        return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class _Block(nn.Module):
    def __init__(self, config: TransformerConfig, rotary: _Rotary | None) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.rotary = rotary
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        hidden = config.mlp_ratio * config.d_model
        self.mlp_in = nn.Linear(config.d_model, hidden)
        self.mlp_out = nn.Linear(hidden, config.d_model)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(
        self, h: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
        position_ids: torch.Tensor | None = None,
        kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        batch, length, width = h.shape
        qkv = self.qkv(self.attn_norm(h))
        q, k, v = qkv.view(batch, length, 3, self.n_heads, width // self.n_heads).unbind(dim=2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
        if self.rotary is not None:
            q, k = self.rotary(q, position_ids), self.rotary(k, position_ids)
        if kv is not None:  # a KV cache: its keys/values first, then this call's (models/cache.py)
            k, v = kv(k, v)
        if is_block_mask(attn_mask):  # a block-sparse pattern (models/flex.py)
            attended = flex(q, k, v, attn_mask)
        else:
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        h = h + self.residual_dropout(self.attn_out(attended))
        mlp = self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(h))))
        return h + self.residual_dropout(mlp)


class Transformer(nn.Module):
    """Bidirectional (``causal=False``) or causal transformer returning per-position logits.

    ``forward(input_ids, attention_mask)``: ``input_ids`` (B, L) long with ids in
    ``[0, vocab_size)`` and ``L <= max_len``; ``attention_mask`` (B, L) bool, True on real tokens,
    or None (everything real). Padding positions are masked out as *keys*; their own outputs are
    finite but meaningless (each query may always attend to itself, so a fully padded row never
    produces NaN). Returns logits (B, L, vocab_size) in the compute dtype (bf16 under autocast).

    Block diffusion (docs/method.md §12) calls it with a full pattern instead: ``attention_mask``
    (B or 1, 1, L, L) bool, True where a query (row) may attend to a key (column), used as it is
    whatever ``causal`` says, and ``position_ids`` (B, L) long (the clean half of ``[xt ; x0]``
    repeats the noisy half's positions); then ``L`` may exceed ``max_len``, the positions may not.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = (
            nn.Embedding(config.max_len, config.d_model) if config.positions == "learned" else None
        )
        # One rotary module shared by every block: its tables are buffers, so sharing costs nothing.
        rotary = _Rotary(config.head_dim, config.max_len) if config.positions == "rotary" else None
        self.blocks = nn.ModuleList(_Block(config, rotary) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self._init_weights()

    @property
    def mask_token_id(self) -> int | None:
        return self.config.mask_token_id

    @property
    def causal(self) -> bool:
        return self.config.causal

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2·n_layers) so the
        # residual stream's variance does not grow with depth.
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue  # LayerNorm weights/biases and Linear biases keep their defaults
            std = residual_std if name.endswith(("attn_out.weight", "mlp_out.weight")) else 0.02
            nn.init.normal_(param, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None = None) -> None:
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(
                f"input_ids must be a (B, L) long tensor, got shape {tuple(input_ids.shape)} "
                f"dtype {input_ids.dtype}"
            )
        length = input_ids.shape[1]
        if length > self.config.max_len and position_ids is None:
            raise ValueError(f"sequence length {length} exceeds max_len={self.config.max_len}")
        if input_ids.numel() > 0:
            # Two reductions: cheap, and they turn an opaque embedding index error into a message.
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"input_ids contains token id {bad}, outside [0, {self.config.vocab_size})"
                )
        if position_ids is not None:
            self._check_positions(input_ids, position_ids)
        if attention_mask is not None and attention_mask.dim() == 4:
            self._check_pattern(input_ids, attention_mask)
        elif attention_mask is not None and (
            attention_mask.dtype != torch.bool or attention_mask.shape != input_ids.shape
        ):
            raise ValueError(
                f"attention_mask must be a bool tensor of shape {tuple(input_ids.shape)}, got "
                f"shape {tuple(attention_mask.shape)} dtype {attention_mask.dtype}"
            )

    def _check_positions(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> None:
        if position_ids.dtype != torch.long or tuple(position_ids.shape) != tuple(input_ids.shape):
            raise ValueError(f"position_ids must be a long tensor of shape "
                             f"{tuple(input_ids.shape)}, got shape {tuple(position_ids.shape)} "
                             f"dtype {position_ids.dtype}")
        if position_ids.numel() and not 0 <= int(position_ids.min()) <= int(position_ids.max()) \
                < self.config.max_len:
            raise ValueError(f"position_ids must lie in [0, max_len={self.config.max_len}), got "
                             f"[{int(position_ids.min())}, {int(position_ids.max())}]")

    @staticmethod
    def _check_pattern(input_ids: torch.Tensor, pattern: torch.Tensor) -> None:
        batch, length = input_ids.shape
        if pattern.dtype != torch.bool or pattern.shape[0] not in (1, batch) \
                or tuple(pattern.shape[1:]) != (1, length, length):
            raise ValueError(f"a 4-D attention_mask must be bool of shape ({batch} or 1, 1, "
                             f"{length}, {length}), got shape {tuple(pattern.shape)} dtype "
                             f"{pattern.dtype}")

    def _attention_pattern(
        self, attention_mask: torch.Tensor | None, length: int, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """The boolean (B, 1, L, L) mask for SDPA (True = may attend), or SDPA's own causal flag."""
        if attention_mask is not None and attention_mask.dim() == 4:
            # A full pattern (block diffusion): as given, block-sparse through flex attention
            # on a GPU (models/flex.py; SDPA keeps attention dropout in training).
            if use_flex(device) and not (self.training and self.config.dropout > 0):
                return block_sparse(attention_mask), False
            return attention_mask, False
        if attention_mask is None or bool(attention_mask.all()):
            # Nothing to hide: let SDPA pick its fastest kernel.
            return None, self.config.causal
        allowed = attention_mask[:, None, None, :]  # keys that are real tokens
        if self.config.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=device).tril()
        # A query may always see itself: a padded query whose every key is hidden would otherwise
        # produce a softmax over nothing (NaN), which would poison the whole backward pass.
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)
        return allowed, False

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, *, cache: KVCache | None = None,
        store: bool = False,
    ) -> torch.Tensor:
        """Logits (B, L, V). With a :class:`~maskdiff.models.cache.KVCache` the tokens attend to
        the cached keys and to their own (``attention_mask`` (B, L) key padding or None), at
        position ids continuing the cache's unless given; ``store=True`` appends them to it."""
        if store and cache is None:
            raise ValueError("store=True needs a cache (maskdiff.models.cache.KVCache)")
        if cache is not None and position_ids is None:
            start = cache.length
            position_ids = torch.arange(start, start + input_ids.shape[1],
                                        device=input_ids.device).expand(input_ids.shape[0], -1)
        self._check_inputs(input_ids, attention_mask, position_ids)
        length = input_ids.shape[1]
        h = self.token_embedding(input_ids)
        if self.position_embedding is not None:
            h = h + (self.position_embedding.weight[:length] if position_ids is None
                     else self.position_embedding(position_ids))
        h = self.embedding_dropout(h)
        if cache is None:
            attn_mask, is_causal = self._attention_pattern(attention_mask, length,
                                                           input_ids.device)
        else:
            attn_mask = cache.attention(attention_mask, length, self.config.causal,
                                        input_ids.device)
            is_causal = False
        for index, block in enumerate(self.blocks):
            kv = None if cache is None else cache.layer(index, store)
            h = block(h, attn_mask, is_causal, position_ids, kv)
        if cache is not None:
            cache.finish(attention_mask, length, store, input_ids.device)
        # Tied head: logits are similarities with the token embeddings.
        return F.linear(self.final_norm(h), self.token_embedding.weight)


def causal_lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Per-example next-token cross-entropy of the causal twin (docs/method.md §11), in float32.

    ``logits[:, i]`` predicts ``input_ids[:, i + 1]``. ``loss_mask`` (B, L) bool marks the *target*
    tokens that count (for SFT: the response tokens, the same ``eligible`` set the diffusion model
    is trained on); position 0 is never a target since nothing precedes it. Returns (B,) float32:
    the mean cross-entropy over each example's counted targets, and 0 for an example with none.
    """
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits must be (B, L, V) matching input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(logits.shape)}"
        )
    if loss_mask.shape != input_ids.shape or loss_mask.dtype != torch.bool:
        raise ValueError(
            f"loss_mask must be a bool tensor of shape {tuple(input_ids.shape)}, got "
            f"shape {tuple(loss_mask.shape)} dtype {loss_mask.dtype}"
        )
    batch, length, vocab = logits.shape
    if length < 2:
        return torch.zeros(batch, dtype=torch.float32, device=logits.device)
    predictions = logits[:, :-1].float().reshape(-1, vocab)
    targets = input_ids[:, 1:].reshape(-1)
    token_loss = F.cross_entropy(predictions, targets, reduction="none").view(batch, length - 1)
    counted = loss_mask[:, 1:].float()
    n_targets = counted.sum(dim=1)
    # clamp keeps an example without targets at 0/1 = 0 instead of 0/0.
    return (token_loss * counted).sum(dim=1) / n_targets.clamp(min=1.0)


def build_model(config: TransformerConfig) -> Transformer:
    """The model a config describes (docs/architecture.md §3: configs ``build()`` their objects)."""
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
    return Transformer(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once, buffers never)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
