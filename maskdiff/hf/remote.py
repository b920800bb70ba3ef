"""Tiny random models built from a model family's own code (tests, benchmarks, trying things out).

:func:`save_random_model` copies a directory of Hugging Face remote code (``modeling_*.py``,
``configuration_*.py`` and what they import) next to a ``config.json`` carrying the real
``auto_map``, instantiates the model with random weights through ``transformers`` (with the
compatibility layer of :mod:`maskdiff.hf.compat` where the code needs it) and saves weights and a
small byte-level BPE tokenizer: a directory :func:`maskdiff.hf.load_hf_model` loads like a Hub
checkpoint. The code files are copied, never modified.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text
from maskdiff.hf.families import family_of

__all__ = ["SPECIAL_TOKENS", "small_tokenizer", "sized_config", "save_random_model"]

# pad, eos, bos, mask: ids 0..3 of every small tokenizer.
SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|startoftext|>", "<|mask|>")


def small_tokenizer(vocab_size: int = 320, texts: Iterable[str] | None = None) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` of ``vocab_size`` ids (the four
    :data:`SPECIAL_TOKENS` first), trained on ``texts`` (default: maskdiff's built-in corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        from maskdiff.data.corpus import corpus_documents

        texts = corpus_documents("train")[:40]
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(texts, trainer=trainer)
    pad, eos, bos, mask = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=hf, pad_token=pad, eos_token=eos,
                                   bos_token=bos, mask_token=mask)


def sized_config(model_type: str, *, vocab_size: int = 320, hidden: int = 64, layers: int = 2,
                 heads: int = 4, max_len: int = 256, mask_id: int = 3, pad_id: int = 0,
                 eos_id: int = 1, bos_id: int = 2) -> dict[str, Any]:
    """The ``config.json`` of a random model of a registered family (see
    :mod:`maskdiff.hf.families`), with the family's real ``auto_map``."""
    family = family_of(model_type)
    if family.sized_config is None:
        raise ValueError(f"model_type={model_type!r} is not a registered family with a sized "
                         f"config; pass config= to save_random_model")
    return family.sized_config(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                               mask_id=mask_id, pad_id=pad_id, eos_id=eos_id, bos_id=bos_id,
                               max_len=max_len)


def save_random_model(code_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                      config: Mapping[str, Any], tokenizer: Any = None, seed: int = 0,
                      dtype: torch.dtype | None = None) -> Path:
    """Write a random model of ``code_dir``'s architecture to ``out_dir`` and return it.

    ``config`` is the ``config.json`` content (with its ``auto_map``; e.g. :func:`sized_config`).
    ``tokenizer`` (default :func:`small_tokenizer` of ``config["vocab_size"]`` ids) is saved
    alongside. The class instantiated is the one :func:`maskdiff.hf.load_hf_model` would load.
    """
    import transformers

    from maskdiff.hf import compat

    code_dir, out_dir = Path(code_dir), Path(out_dir)
    if not code_dir.is_dir():
        raise ValueError(f"code_dir {code_dir} is not a directory")
    auto_map = dict(config.get("auto_map") or {})
    if "AutoConfig" not in auto_map:
        raise ValueError(f"config has no auto_map['AutoConfig'] (got {sorted(auto_map)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in code_dir.glob("*.py"):
        shutil.copyfile(path, out_dir / path.name)
    atomic_write_text(out_dir / "config.json", jsonio.dumps(dict(config), indent=2))
    hf_config = transformers.AutoConfig.from_pretrained(out_dir, trust_remote_code=True)
    auto_class = compat.choose_auto_class(hf_config, None)
    torch.manual_seed(seed)
    with compat.loading(hf_config, trust_remote_code=True):
        model_cls = compat.resolve_class(hf_config, auto_class, str(out_dir))
        model = model_cls(hf_config)
        compat.init_random_weights(model)
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(out_dir)
    if tokenizer is None:
        tokenizer = small_tokenizer(int(config.get("vocab_size", 320)))
    tokenizer.save_pretrained(out_dir)
    return out_dir
