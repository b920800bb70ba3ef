"""Models satisfying the contract ``model(input_ids, attention_mask) -> logits`` (docs/architecture.md §3)."""

from maskdiff.models.cache import KVCache
from maskdiff.models.transformer import (
    Transformer,
    TransformerConfig,
    build_model,
    causal_lm_loss,
    count_parameters,
)

__all__ = [
    "KVCache",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "causal_lm_loss",
    "count_parameters",
]
