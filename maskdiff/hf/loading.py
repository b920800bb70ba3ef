"""``load_hf_model``: a Hugging Face checkpoint (or a PEFT adapter on one) behind the adapter.

The family registry (:mod:`maskdiff.hf.families`) supplies the defaults a caller leaves as None;
remote code written for transformers 4.x is loaded under 5.x through :mod:`maskdiff.hf.compat`;
after loading, :mod:`maskdiff.hf.probes` recomputes what ``from_pretrained`` may have left
uninitialised and checks that the attention is bidirectional with and without padding.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from maskdiff.hf import compat
from maskdiff.hf.adapter import AdapterOptions, HFAdapter, _config_value
from maskdiff.hf.checks import check_model
from maskdiff.hf.families import family_of
from maskdiff.hf.probes import check_buffers, probe_bidirectional

__all__ = ["load_hf_model"]

_SAID: set[str] = set()


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr)


def load_hf_model(name_or_path: str | os.PathLike, *, mask_token_id: int | None = None,
                  trust_remote_code: bool = False, logit_shift: int | None = None,
                  device: str = "cpu", dtype: torch.dtype | str | None = None,
                  attention: str | None = None, pad_policy: str = "exclude",
                  auto_class: str | None = None,
                  tokenizer_name_or_path: str | os.PathLike | None = None,
                  probe: bool = True) -> tuple[HFAdapter, Any, int]:
    """Load a HF model and its tokenizer behind the maskdiff contract, in eval mode.

    Defaults left as None come from the model's family (:mod:`maskdiff.hf.families`, keyed by the
    config's ``model_type``; printed once on stderr): ``logit_shift`` (Dream: 1), ``attention``
    (LLaDA2, Dream: ``"4d"``), ``auto_class`` (the first ``auto_map`` entry of the family's
    list: a causal-LM head before a headless ``AutoModel``); unknown families get ``0``, ``"2d"``
    and the first of ``AutoModelForMaskedLM``, ``AutoModel``, ``AutoModelForCausalLM``.
    The mask token id: ``mask_token_id``, else the tokenizer's, else ``config.mask_token_id``,
    else the family's. The pad id: the tokenizer's pad token (``eos`` under
    ``pad_policy="eos"``), else the config's.

    Remote code written for transformers 4.x loads under 5.x through the shims of
    :mod:`maskdiff.hf.compat` (said once, by name). After loading (``probe=True``), non-persistent
    buffers are recomputed where ``from_pretrained`` left them wrong (said once), and a
    bidirectionality probe on an unpadded and a padded batch warns
    (:class:`~maskdiff.hf.checks.CausalAttentionWarning`) with the fix when the model attends
    causally. Both ids must index the vocabulary (ValueError otherwise).

    A PEFT adapter directory (with ``adapter_config.json``) is loaded on top of its
    ``base_model_name_or_path``; its tokenizer is the adapter directory's when it holds one.
    Returns ``(adapter, tokenizer, mask_token_id)``.
    """
    import transformers

    peft_base = _peft_base(name_or_path)
    if peft_base is not None:
        return _load_peft(name_or_path, peft_base, mask_token_id=mask_token_id,
                          trust_remote_code=trust_remote_code, logit_shift=logit_shift,
                          device=device, dtype=dtype, attention=attention, pad_policy=pad_policy,
                          auto_class=auto_class, tokenizer_name_or_path=tokenizer_name_or_path,
                          probe=probe)
    if auto_class is not None and not hasattr(transformers, auto_class):
        raise ValueError(f"auto_class={auto_class!r} is not a transformers class")
    config = _load_config(name_or_path, trust_remote_code)
    family = family_of(config)
    auto_class = compat.choose_auto_class(config, auto_class)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    remote = trust_remote_code and auto_class in (getattr(config, "auto_map", None) or {})
    with compat.loading(config, trust_remote_code=trust_remote_code):
        if remote:
            model_cls = compat.resolve_class(config, auto_class, str(name_or_path))
            kwargs.pop("trust_remote_code")
            model = model_cls.from_pretrained(name_or_path, config=config, **kwargs)
        else:
            model = getattr(transformers, auto_class).from_pretrained(name_or_path, **kwargs)
    if compat.applied_shims():
        _say_once(f"maskdiff: transformers {transformers.__version__} compatibility shims for "
                  f"4.x model code: {', '.join(compat.applied_shims())} (docs/huggingface.md)")
    model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        tokenizer_name_or_path or name_or_path, trust_remote_code=trust_remote_code)
    mask_token_id = _mask_id(name_or_path, mask_token_id, tokenizer, config, family)
    shift = family.logit_shift if logit_shift is None else logit_shift
    attention_format = family.attention if attention is None else attention
    if family.name != "generic":
        _say_once(family.describe(mask_token_id=mask_token_id, logit_shift=shift,
                                  attention=attention_format, auto_class=auto_class))
    pad = _pad_id(tokenizer, config, pad_policy)
    check_model(model, mask_token_id=mask_token_id, pad_token_id=pad)
    options = AdapterOptions(mask_token_id=mask_token_id, logit_shift=shift,
                             attention=attention_format, pad_policy=pad_policy, pad_token_id=pad)
    adapter = HFAdapter(model, options)
    if probe:
        fixed = check_buffers(model)
        if fixed:
            _say_once(f"maskdiff: {type(model).__name__}: recomputed {len(fixed)} non-persistent "
                      f"buffer(s) from_pretrained left wrong ({', '.join(fixed[:3])}"
                      f"{', ...' if len(fixed) > 3 else ''})")
        probe_bidirectional(adapter, name=str(name_or_path), family=family,
                            forced=attention is not None)
    return adapter, tokenizer, mask_token_id


def _load_config(name_or_path: str | os.PathLike, trust_remote_code: bool) -> Any:
    """The model's config; a remote config class is resolved (and shimmed) first under 5.x."""
    import transformers

    if trust_remote_code:
        raw = _raw_config(name_or_path)
        auto_map = (raw or {}).get("auto_map") or {}
        if auto_map.get("AutoConfig"):
            with compat.loading(None, trust_remote_code=True):
                cls = compat.resolve_config_class(auto_map, str(name_or_path))
                if cls is not None:
                    return cls.from_pretrained(name_or_path)
    return transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def _raw_config(name_or_path: str | os.PathLike) -> dict | None:
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from transformers import PretrainedConfig

        return PretrainedConfig.get_config_dict(str(name_or_path))[0]
    except (OSError, ValueError):
        return None


def _mask_id(name_or_path, mask_token_id, tokenizer, config, family) -> int:
    for value in (mask_token_id, getattr(tokenizer, "mask_token_id", None),
                  _config_value(config, "mask_token_id"), family.mask_token_id):
        if value is not None:
            return int(value)
    raise ValueError(f"{name_or_path}: neither the tokenizer nor the config names a mask "
                     f"token; pass mask_token_id= (LLaDA: 126336)")


def _pad_id(tokenizer: Any, config: Any, pad_policy: str) -> int | None:
    if pad_policy == "eos":
        pad = getattr(tokenizer, "eos_token_id", None)
        pad = pad if pad is not None else _config_value(config, "eos_token_id")
    else:
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else _config_value(config, "pad_token_id")
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    return None if pad is None else int(pad)


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
