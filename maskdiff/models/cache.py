"""A key/value cache for the native transformer: a clean prefix encoded once, attended to later.

Block decoding (docs/method.md §8 "Block decoding") encodes each finished block once as clean
tokens; later calls attend to the cached keys and values of every layer plus their own, at
position ids that continue the cache's. A call with ``store=True`` appends its own keys and
values (and its key padding) to the cache after attending, so a block sees the cached prefix and
itself in full: the clean half's block-causal attention when blocks are stored one at a time.

Keys are cached *after* the rotary rotation (each at its absolute position), so nothing is
recomputed. The outputs equal those of the full input under the equivalent mask up to the
summation order of the attention (float rounding, ~1e-6), never in what is attended to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Per-layer keys and values (B, H, Lc, D) of ``length`` cached positions.

    Attributes:
        keys, values: one tensor per layer (empty until the first stored call).
        key_mask: (B, Lc) bool, True on real tokens, or None when every cached token is real.
        length: Lc, the number of cached positions; a call's default position ids start here.
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    key_mask: torch.Tensor | None = None
    length: int = 0

    def layer(self, index: int, store: bool) -> "_LayerView":
        return _LayerView(self, index, store)

    def attention(self, attention_mask: torch.Tensor | None, length: int, causal: bool,
                  device: torch.device) -> torch.Tensor | None:
        """The (B, 1, L, Lc + L) bool pattern of ``length`` new queries over the cached and the
        new keys (None: every key visible). ``attention_mask`` (B, L) marks the new real tokens;
        padding keys are hidden, a query always sees itself, and ``causal`` hides later keys."""
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"with a KV cache attention_mask must be (B, L) bool key padding, "
                             f"got shape {tuple(attention_mask.shape)}")
        keys = _join(self.key_mask, attention_mask, self.length, length, device)
        if keys is None and not causal:
            return None
        query = torch.arange(length, device=device)[:, None] + self.length
        key = torch.arange(self.length + length, device=device)[None, :]
        allowed = torch.ones(length, self.length + length, dtype=torch.bool, device=device)
        if causal:
            allowed = key <= query
        if keys is not None:
            allowed = allowed[None, None] & keys[:, None, None, :]
        return allowed | (key == query)

    def finish(self, attention_mask: torch.Tensor | None, length: int, store: bool,
               device: torch.device) -> None:
        """After a call: count its ``length`` positions and their key padding if it stored."""
        if store:
            self.key_mask = _join(self.key_mask, attention_mask, self.length, length, device)
            self.length += length


def _join(cached: torch.Tensor | None, new: torch.Tensor | None, n_cached: int, n_new: int,
          device: torch.device) -> torch.Tensor | None:
    """The (B, Lc + L) key mask, or None when every key is real."""
    if new is not None and bool(new.all()):
        new = None
    if cached is None and new is None:
        return None
    batch = (cached if cached is not None else new).shape[0]
    if cached is None:
        cached = torch.ones(batch, n_cached, dtype=torch.bool, device=device)
    if new is None:
        new = torch.ones(batch, n_new, dtype=torch.bool, device=device)
    return torch.cat((cached.bool(), new.bool()), dim=1)


@dataclass
class _LayerView:
    cache: KVCache
    index: int
    store: bool

    def __call__(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys/values of this layer followed by the call's own (stored if asked)."""
        cache = self.cache
        if self.index < len(cache.keys):
            k = torch.cat((cache.keys[self.index], k), dim=2)
            v = torch.cat((cache.values[self.index], v), dim=2)
        elif cache.length:
            raise ValueError(f"the KV cache holds {cache.length} positions but no layer "
                             f"{self.index}: it was filled by another model")
        if self.store:
            if self.index < len(cache.keys):
                cache.keys[self.index], cache.values[self.index] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        return k, v
