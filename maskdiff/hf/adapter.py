"""The adapter: a Hugging Face model behind maskdiff's model contract (docs/method.md §1)."""

from __future__ import annotations

import json
import os
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskdiff.data.collate import canonical_pad_policy
from maskdiff.hf.checks import check_model

ATTENTION_FORMATS = ("2d", "4d", "none")
CHAT_METHODS = ("auto", "template", "diff")
STATE_FILE = "maskdiff_state.pt"


# ----------------------------------------------------------------------------- adapter
@dataclass(frozen=True, kw_only=True)
class AdapterOptions:
    """How a Hugging Face model is called and how its batches are padded.

    Attributes:
        mask_token_id: the model's mask token (LLaDA: 126336; BERT: ``tokenizer.mask_token_id``).
        logit_shift: ``k >= 0``: the logits for token ``i`` sit at position ``i - k`` of the
            model's output (Dream: ``k = 1``, its ``logits = cat([l[:, :1], l[:, :-1]])``). The
            adapter shifts them back, repeating position 0 for the first ``k`` positions as
            Dream does; those positions cannot be predicted and should not be eligible (they
            are BOS / prompt tokens in practice).
        attention: how the (B, L) bool mask is passed: ``"2d"`` as a (B, L) long tensor (BERT,
            LLaDA), ``"4d"`` as a (B, 1, L, L) bool key-padding mask (Dream-style SDPA masks;
            every query row keeps its real keys, so padded rows never give NaN), or ``"none"``
            (the model sees no mask: right for the EOS pad policy, where nothing is padding).
        pad_token_id: the id padding is filled with (under ``pad_policy="eos"``, the EOS id).
        pad_policy: the native collator's vocabulary (:mod:`maskdiff.data.collate`):
            ``"exclude"``: padding is masked out of attention and never eligible;
            ``"eos"`` (LLaDA SFT): rows are padded with EOS tokens that are real tokens,
            attended and eligible, so the model learns to end its answer. The older word
            ``"ignore"`` is accepted and stored as ``"exclude"``.
        forward_kwargs: constant keyword arguments added to every forward call.
    """

    mask_token_id: int
    logit_shift: int = 0
    attention: str = "2d"
    pad_token_id: int | None = None
    pad_policy: str = "exclude"
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative int, got {self.mask_token_id!r}")
        if not isinstance(self.logit_shift, int) or self.logit_shift < 0:
            raise ValueError(f"logit_shift must be a non-negative int, got {self.logit_shift!r}")
        if self.attention not in ATTENTION_FORMATS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMATS}, got {self.attention!r}")
        object.__setattr__(self, "pad_policy", canonical_pad_policy(self.pad_policy))
        if self.pad_token_id is not None and (not isinstance(self.pad_token_id, int)
                                              or self.pad_token_id < 0):
            raise ValueError(f"pad_token_id must be a non-negative int or None, got {self.pad_token_id!r}")
        object.__setattr__(self, "forward_kwargs", types.MappingProxyType(dict(self.forward_kwargs)))

    def logits(self, model: nn.Module, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Call ``model`` (a HF model, a PEFT model or a DDP wrapper of one): (B, L, V) logits.

        ``attention_mask=None`` means every position is a real token (the model contract of
        docs/architecture.md §3: the decoders pass None for unpadded prompts)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"input_ids has {tuple(input_ids.shape)}")
        kwargs = dict(self.forward_kwargs)
        kwargs["input_ids"] = input_ids
        attend = attention_mask.to(torch.bool)
        if self.attention == "2d":
            kwargs["attention_mask"] = attend.long()
        elif self.attention == "4d":
            batch, length = input_ids.shape
            kwargs["attention_mask"] = attend[:, None, None, :].expand(batch, 1, length, length)
        out = model(**kwargs)
        logits = _logits_of(out)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for input "
                             f"{tuple(input_ids.shape)}; expected (B, L, V): load an LM head model")
        k = self.logit_shift
        if k:
            if k >= logits.shape[1]:
                raise ValueError(f"logit_shift={k} needs sequences longer than {k}, got L={logits.shape[1]}")
            logits = torch.cat([logits[:, :1].expand(-1, k, -1), logits[:, :-k]], dim=1)
        return logits


def _logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"cannot find logits in the model output of type {type(out).__name__}")


class HFAdapter(nn.Module):
    """A Hugging Face model behind maskdiff's model contract (see :class:`AdapterOptions`).

    ``HFAdapter(model, mask_token_id=126336, pad_policy="eos", pad_token_id=eos)`` or
    ``HFAdapter(model, options)``. ``adapter.model`` is the wrapped model, so ``state_dict``
    keys carry a ``model.`` prefix; save the wrapped model itself with ``save_pretrained``.
    """

    def __init__(self, model: nn.Module, options: AdapterOptions | None = None, **option_kwargs: Any) -> None:
        super().__init__()
        if options is not None and option_kwargs:
            raise ValueError(f"pass either options or keyword options, not both: {sorted(option_kwargs)}")
        self.model = model
        self.options = options if options is not None else AdapterOptions(**option_kwargs)

    @property
    def mask_token_id(self) -> int:
        return self.options.mask_token_id

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.options.logits(self.model, input_ids, attention_mask)


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def load_hf_model(name_or_path: str | os.PathLike, *, mask_token_id: int | None = None,
                  trust_remote_code: bool = False, logit_shift: int = 0, device: str = "cpu",
                  dtype: torch.dtype | str | None = None, attention: str = "2d",
                  pad_policy: str = "exclude", auto_class: str | None = None,
                  tokenizer_name_or_path: str | os.PathLike | None = None,
                  ) -> tuple[HFAdapter, Any, int]:
    """Load a HF model and its tokenizer behind the maskdiff contract, in eval mode.

    The model class: ``auto_class`` when given (e.g. ``"AutoModel"``); otherwise a model with an
    ``auto_map`` (remote code) is loaded by the first of ``AutoModelForMaskedLM``, ``AutoModel``,
    ``AutoModelForCausalLM`` its map names (LLaDA and Dream map ``AutoModel`` to their LM), and a
    built-in architecture by ``AutoModelForMaskedLM``. The mask token id: ``mask_token_id``, else
    the tokenizer's, else ``config.mask_token_id``; none of them → ValueError. The pad id: the
    tokenizer's pad token (``eos`` under ``pad_policy="eos"``), else the config's.

    Both ids must index the model's vocabulary (ValueError otherwise) and a model whose attention
    is causal warns (:func:`maskdiff.hf.checks.check_model`).

    A PEFT adapter directory (one with ``adapter_config.json``, as ``save_pretrained`` of a
    LoRA model writes it) is loaded on top of its ``base_model_name_or_path``; its tokenizer is
    the adapter directory's when it holds one, else the base model's.

    Returns ``(adapter, tokenizer, mask_token_id)``. Loading needs the files locally or a
    reachable hub; ``trust_remote_code=True`` runs the repository's Python code.
    """
    import transformers

    peft_base = _peft_base(name_or_path)
    if peft_base is not None:
        return _load_peft(name_or_path, peft_base, mask_token_id=mask_token_id,
                          trust_remote_code=trust_remote_code, logit_shift=logit_shift,
                          device=device, dtype=dtype, attention=attention, pad_policy=pad_policy,
                          auto_class=auto_class, tokenizer_name_or_path=tokenizer_name_or_path)
    if auto_class is not None and not hasattr(transformers, auto_class):
        raise ValueError(f"auto_class={auto_class!r} is not a transformers class")
    config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if auto_class is None:
        auto_map = getattr(config, "auto_map", None) or {}
        if auto_map:
            choices = [c for c in ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM")
                       if c in auto_map]
            if not choices:
                raise ValueError(f"{name_or_path}: auto_map names none of the LM classes, got "
                                 f"{sorted(auto_map)}; pass auto_class=")
            auto_class = choices[0]
        else:
            auto_class = "AutoModelForMaskedLM"
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    model = getattr(transformers, auto_class).from_pretrained(name_or_path, **kwargs)
    model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        tokenizer_name_or_path or name_or_path, trust_remote_code=trust_remote_code)
    if mask_token_id is None:
        mask_token_id = getattr(tokenizer, "mask_token_id", None)
    if mask_token_id is None:
        mask_token_id = _config_value(config, "mask_token_id")
    if mask_token_id is None:
        raise ValueError(f"{name_or_path}: neither the tokenizer nor the config names a mask "
                         f"token; pass mask_token_id= (LLaDA: 126336)")
    if (getattr(config, "model_type", "") or "").lower() == "dream" and logit_shift == 0:
        warnings.warn("Dream models predict token i at position i-1: pass logit_shift=1",
                      stacklevel=2)
    if pad_policy == "eos":
        pad = getattr(tokenizer, "eos_token_id", None)
        pad = pad if pad is not None else _config_value(config, "eos_token_id")
    else:
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else _config_value(config, "pad_token_id")
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    check_model(model, mask_token_id=int(mask_token_id), pad_token_id=None if pad is None else int(pad))
    options = AdapterOptions(mask_token_id=int(mask_token_id), logit_shift=logit_shift,
                             attention=attention, pad_policy=pad_policy,
                             pad_token_id=None if pad is None else int(pad))
    return HFAdapter(model, options), tokenizer, int(mask_token_id)


def _peft_base(name_or_path: str | os.PathLike) -> str | None:
    """The base model of a local PEFT adapter directory, or None when it is not one."""
    config = Path(name_or_path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path: cannot load the adapter")
    return str(base)


def _load_peft(path: str | os.PathLike, base: str, *, tokenizer_name_or_path, **kwargs: Any,
               ) -> tuple[HFAdapter, Any, int]:
    """A PEFT (e.g. LoRA) adapter on its base model, behind the same contract (eval mode)."""
    try:
        import peft
    except ImportError as err:
        raise ValueError(f"{path} is a PEFT adapter: pip install -e '.[hf]' (peft)") from err
    if tokenizer_name_or_path is None:
        has_tokenizer = any((Path(path) / name).is_file()
                            for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_name_or_path = path if has_tokenizer else base
    adapter, tokenizer, mask_id = load_hf_model(base, tokenizer_name_or_path=tokenizer_name_or_path,
                                                **kwargs)
    model = peft.PeftModel.from_pretrained(adapter.model, str(path))
    model.to(kwargs.get("device", "cpu")).eval()
    return HFAdapter(model, adapter.options), tokenizer, mask_id
