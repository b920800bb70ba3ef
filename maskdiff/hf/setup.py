"""The set-up of ``MaskedDiffusionTrainer`` (:mod:`maskdiff.hf.trainer`): the model and adapter
options it trains, its parameter counts, default collator and indexed data sets."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from maskdiff.hf.adapter import AdapterOptions, HFAdapter, _config_value
from maskdiff.hf.collate import IndexedDataset, MaskedDiffusionCollator
from maskdiff.hf.families import GENERIC, family_of
from maskdiff.hf.lora import logger, parameter_counts


def model_and_options(model, mask_token_id: int | None, processing, *,
                       logit_shift: int | None, attention: str | None,
                       pad_token_id: int | None, pad_policy: str,
                       forward_kwargs: Mapping[str, Any] | None
                       ) -> tuple[nn.Module, AdapterOptions]:
    """The model to train and how to call it: an adapter's own, else built from the arguments,
    the processing class (pad / EOS id) and the model's config."""
    if isinstance(model, HFAdapter):
        if mask_token_id is not None and mask_token_id != model.options.mask_token_id:
            raise ValueError(f"mask_token_id={mask_token_id} differs from the adapter's "
                             f"{model.options.mask_token_id}")
        return model.model, model.options
    config = getattr(model, "config", None)
    if mask_token_id is None:
        mask_token_id = _config_value(config, "mask_token_id")
    if mask_token_id is None:
        raise ValueError("mask_token_id is required (the model's config names none)")
    if pad_token_id is None and processing is not None:
        pad_token_id = processing.eos_token_id if pad_policy == "eos" else processing.pad_token_id
    if pad_token_id is None:
        pad_token_id = _config_value(
            config, "eos_token_id" if pad_policy == "eos" else "pad_token_id")
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]
    family = family_of(config)  # a raw model of a known family: its shift and attention format
    if family is not GENERIC and (logit_shift is None or attention is None):
        print(family.describe(logit_shift=logit_shift, attention=attention), file=sys.stderr)
    logit_shift = family.logit_shift if logit_shift is None else logit_shift
    attention = family.attention if attention is None else attention
    return model, AdapterOptions(
        mask_token_id=int(mask_token_id), logit_shift=logit_shift, attention=attention,
        pad_token_id=None if pad_token_id is None else int(pad_token_id),
        pad_policy=pad_policy, forward_kwargs=forward_kwargs or {})


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters, logged (INFO, ``maskdiff.hf``); none trainable → error."""
    trainable, total = parameter_counts(model)
    if trainable == 0:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (all "
                         f"{total} have requires_grad=False): nothing would train")
    logger.info("MaskedDiffusionTrainer: %d trainable of %d parameters (%.3f%%)", trainable,
                total, 100.0 * trainable / max(total, 1))
    return trainable, total


def default_collator(options: AdapterOptions) -> MaskedDiffusionCollator:
    if options.pad_token_id is None:
        raise ValueError("no pad id known for the default collator: pass pad_token_id= "
                         "or data_collator=")
    return MaskedDiffusionCollator(options.pad_token_id, pad_policy=options.pad_policy)


def indexed(dataset: Any) -> Any:
    """Rows keyed by their index (what seeds their draws)."""
    if dataset is None or isinstance(dataset, IndexedDataset):
        return dataset
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return dataset  # rows must carry their own example_index (the collator checks)
    return IndexedDataset(dataset)


def indexed_eval(dataset: Any) -> Any:
    if isinstance(dataset, Mapping):  # several evaluation sets by name
        return {name: indexed(part) for name, part in dataset.items()}
    return indexed(dataset)
