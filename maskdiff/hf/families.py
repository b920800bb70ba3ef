"""Model families, declared once: what maskdiff needs to know about a diffusion LLM's own code.

A :class:`Family` is keyed by the config's ``model_type`` (compared case-insensitively: Dream's
is ``"Dream"``) and declares the defaults :func:`maskdiff.hf.load_hf_model` uses when the caller
does not pass them: the mask id, the logit shift, the attention-mask format, the ``auto_map``
class to load (a causal-LM head, never a headless ``AutoModel``) and what happens at position 0
under a shift. The adapter asks :func:`family_of`; nothing else branches on ``model_type``.

Each entry also knows how to size a tiny random model of its architecture
(:meth:`Family.sized_config`), which :func:`maskdiff.hf.remote.save_random_model`, the tests and
``benchmarks/hf_steps.py`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Family", "FAMILIES", "family_of", "register_family", "GENERIC"]

SizedConfig = Callable[..., dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Family:
    """One model family's defaults (each overridable by ``load_hf_model``'s keyword arguments).

    Attributes:
        name: the family's display name.
        model_types: the config ``model_type`` values it covers (lower case).
        mask_token_id: the fallback mask id when neither tokenizer nor config names one.
        logit_shift: position ``i - k`` carries token ``i``'s logits (Dream: 1).
        attention: the :class:`~maskdiff.hf.adapter.AdapterOptions` attention format that keeps
            the model bidirectional with padding ("4d" where a 2-D mask becomes a causal one).
        auto_classes: ``auto_map`` keys tried in order: the first one the map names is loaded.
        bos: what keeps position 0 out of a shifted loss: ``"never-eligible"`` (position 0, whose
            logits copy position 1's, is removed from the eligible set) or ``None`` (no shift).
        block_mask: whether the family's code takes block diffusion's inputs (docs/method.md
            §12): a (B, 1, 2L, 2L) boolean attention pattern and (B, 2L) ``position_ids``
            (LLaDA2: its SDPA and eager paths turn the boolean pattern into an additive mask;
            Dream: it casts any 3-/4-D mask to bool, so an additive float mask would be read
            inverted). False: a 2-D mask only (LLaDA); None: not known (the adapter's
            ``attention="4d"`` decides).
        sized_config: ``(vocab_size, hidden, layers, heads, mask_id, pad_id, eos_id, bos_id,
            max_len) -> config dict`` of a random model of this architecture (None: unknown).
    """

    name: str
    model_types: tuple[str, ...]
    mask_token_id: int | None = None
    logit_shift: int = 0
    attention: str = "2d"
    auto_classes: tuple[str, ...] = ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM")
    bos: str | None = None
    block_mask: bool | None = None
    sized_config: SizedConfig | None = field(default=None, repr=False, compare=False)

    def describe(self, **chosen: Any) -> str:
        """One line: the family and the values in force (``chosen`` overrides its defaults)."""
        values = {"mask_token_id": self.mask_token_id, "logit_shift": self.logit_shift,
                  "attention": self.attention, "auto_class": self.auto_classes[0]}
        values.update({k: v for k, v in chosen.items() if v is not None})
        items = ", ".join(f"{k}={v}" for k, v in values.items())
        return f"maskdiff: {self.name} family detected: {items}"


def _llada_config(*, vocab_size, hidden, layers, heads, mask_id, pad_id, eos_id, bos_id, max_len):
    return {"model_type": "llada", "d_model": hidden, "n_heads": heads, "n_kv_heads": heads,
            "n_layers": layers, "mlp_hidden_size": 2 * hidden, "mlp_ratio": 2,
            "vocab_size": vocab_size, "embedding_size": vocab_size, "max_sequence_length": max_len,
            "block_type": "llama", "rope": True, "rope_theta": 10000.0, "rope_full_precision": True,
            "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "activation_type": "silu",
            "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
            "alibi": False, "flash_attention": False, "attention_layer_norm": False,
            "init_fn": "mitchell", "init_std": 0.02, "init_device": "meta",
            "mask_token_id": mask_id, "pad_token_id": pad_id, "eos_token_id": eos_id,
            "architectures": ["LLaDAModelLM"],
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                         "AutoModel": "modeling_llada.LLaDAModelLM",
                         "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}}


def _dream_config(*, vocab_size, hidden, layers, heads, mask_id, pad_id, eos_id, bos_id, max_len):
    return {"model_type": "Dream", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "vocab_size": vocab_size,
            "max_position_embeddings": max_len, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "mask_token_id": mask_id, "pad_token_id": pad_id,
            "eos_token_id": eos_id, "bos_token_id": bos_id, "architectures": ["DreamModel"],
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                         "AutoModel": "modeling_dream.DreamModel"}}


def _llada2_config(*, vocab_size, hidden, layers, heads, mask_id, pad_id, eos_id, bos_id, max_len):
    return {"model_type": "llada2_moe", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "moe_intermediate_size": hidden // 2, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": heads,
            "head_dim": hidden // heads, "vocab_size": vocab_size,
            "max_position_embeddings": max_len, "num_experts": 4, "num_shared_experts": 1,
            "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
            "embedding_dropout": 0.0, "attention_dropout": 0.0, "output_dropout": 0.0,
            "partial_rotary_factor": 0.5, "use_qk_norm": True, "tie_word_embeddings": False,
            "mask_token_id": mask_id, "pad_token_id": pad_id, "eos_token_id": eos_id,
            "architectures": ["LLaDA2MoeModelLM"],
            "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                         "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                         "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}}


GENERIC = Family(name="generic", model_types=())

FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry under each of its ``model_types`` (lower case)."""
    for model_type in family.model_types:
        if model_type != model_type.lower():
            raise ValueError(f"model_types are lower case, got {model_type!r}")
        FAMILIES[model_type] = family
    return family


register_family(Family(
    name="LLaDA", model_types=("llada",), mask_token_id=126336, attention="2d", block_mask=False,
    auto_classes=("AutoModelForCausalLM", "AutoModel"), sized_config=_llada_config))
register_family(Family(
    name="Dream", model_types=("dream",), mask_token_id=151666, logit_shift=1, attention="4d",
    auto_classes=("AutoModelForCausalLM", "AutoModel"), bos="never-eligible", block_mask=True,
    sized_config=_dream_config))
register_family(Family(
    name="LLaDA2", model_types=("llada2_moe",), mask_token_id=156895, attention="4d",
    auto_classes=("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModel"), block_mask=True,
    sized_config=_llada2_config))


def family_of(config: Any) -> Family:
    """The registered family of ``config`` (a ``PretrainedConfig``, a dict or a ``model_type``),
    else :data:`GENERIC` (the adapter's historical defaults)."""
    if isinstance(config, str):
        model_type = config
    elif isinstance(config, Mapping):
        model_type = config.get("model_type")
    else:
        model_type = getattr(config, "model_type", None)
    return FAMILIES.get(str(model_type or "").lower(), GENERIC)
