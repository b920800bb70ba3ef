"""Guard rails for a Hugging Face model about to be trained or scored as a masked diffusion model.

Two checks, run once where a model is set up (:func:`maskdiff.hf.load_hf_model` and
:class:`maskdiff.hf.MaskedDiffusionTrainer`), never per step:

- the mask (and pad) id must index the model's input embeddings: an id past the vocabulary is
  otherwise a raw ``IndexError`` deep inside the embedding lookup (docs/method.md §1: the mask
  token is configuration, not a constant, so a wrong one is a configuration error);
- a model whose attention is causal gets a warning: the objective of docs/method.md §1 predicts a
  masked token from both sides, and a causal model sees only its left context (docs/method.md
  §11 trains the causal twin with its own next-token loss instead).
"""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["CausalAttentionWarning", "causal_attention_reason", "check_model", "vocabulary_size"]


class CausalAttentionWarning(UserWarning):
    """The model's attention looks causal: masked diffusion training needs it bidirectional."""


def vocabulary_size(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (what a token id may index), else ``config.vocab_size``."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = None
    if callable(get):
        try:
            embedding = get()
        except (NotImplementedError, AttributeError):
            embedding = None
    rows = getattr(embedding, "num_embeddings", None)
    if isinstance(rows, int):
        return rows
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def causal_attention_reason(model: nn.Module) -> str | None:
    """Why ``model``'s attention looks causal (``config.is_decoder``, or an attention module with
    ``is_causal = True``, as transformers' GPT-2, Llama, Qwen and decoder BERTs set), else None."""
    config = getattr(model, "config", None)
    if getattr(config, "is_decoder", False) is True:
        return f"{type(config).__name__}.is_decoder is True"
    for name, module in model.named_modules():
        if getattr(module, "is_causal", None) is True:
            return f"{name or type(model).__name__} ({type(module).__name__}) has is_causal=True"
    return None


def check_model(model: nn.Module, *, mask_token_id: int, pad_token_id: int | None = None,
                vocab_size: int | None = None) -> None:
    """Raise ValueError if the mask or pad id does not index the vocabulary; warn
    (:class:`CausalAttentionWarning`) if the attention is causal. ``vocab_size`` defaults to
    :func:`vocabulary_size` of the model (skipped when unknown)."""
    size = vocab_size if vocab_size is not None else vocabulary_size(model)
    if size is not None:
        for name, value in (("mask_token_id", mask_token_id), ("pad_token_id", pad_token_id)):
            if value is not None and not 0 <= int(value) < size:
                raise ValueError(
                    f"{name}={value} is outside the model's vocabulary ({size} input embeddings, "
                    f"ids 0..{size - 1}): pass the model's own id (the tokenizer's "
                    f"mask_token_id / the config's; LLaDA's 126336 is LLaDA's only)")
    reason = causal_attention_reason(model)
    if reason is not None:
        warnings.warn(
            f"{type(model).__name__}'s attention is causal ({reason}): masked diffusion training "
            f"predicts each masked token from both sides (docs/method.md §1), and a causal model "
            f"only sees the tokens left of it. Use a bidirectional model (a masked LM, LLaDA, "
            f"Dream) or load this one with bidirectional attention.",
            CausalAttentionWarning, stacklevel=3)

