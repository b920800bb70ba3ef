"""LoRA for masked diffusion fine-tuning: target names checked against the model, counts logged.

PEFT matches ``target_modules`` by module name: a string is a regex matched against the whole
name, a list entry matches a module whose name is the entry or ends with ``"." + entry``. A
name the model does not have is the most common LoRA mistake (BERT calls its projections
``query``/``value``, Llama-style models ``q_proj``/``v_proj``, LLaDA also ``attn_out``/
``ff_out``); PEFT reports only that nothing matched, and a list with one valid name among wrong
ones trains silently fewer adapters than asked. :func:`check_lora_targets` raises a ValueError
naming every entry that matches nothing and listing the names the model does have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["apply_lora", "check_lora_targets", "lora_candidates", "parameter_counts"]

logger = logging.getLogger("maskdiff.hf")

# Layer types LoRA can adapt (PEFT's own list; transformers' GPT-2 style Conv1D by name).
_ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, _ADAPTABLE) or type(module).__name__ == "Conv1D"


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and _adaptable(module)]


def lora_candidates(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's LoRA-adaptable layers (what a
    ``target_modules`` list entry may be), sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name in _module_names(model)})


def check_lora_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """The names of the adaptable modules ``targets`` selects (PEFT's matching rules); a
    ValueError naming the entries that match nothing (or the regex, if it matches nothing) and
    listing :func:`lora_candidates` otherwise."""
    names = _module_names(model)
    candidates = ", ".join(lora_candidates(model)) or "none"
    if isinstance(targets, str):
        matched = [name for name in names if re.fullmatch(targets, name)]
        if not matched:
            raise ValueError(f"LoRA target_modules regex {targets!r} matches no layer of "
                             f"{type(model).__name__} (it must match the whole module name, e.g. "
                             f"{names[0] if names else '...'!r}); its layer names end in: {candidates}")
        return matched
    targets = list(targets)
    if not targets:
        raise ValueError("LoRA target_modules is empty")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"LoRA target_modules {missing} match no layer of {type(model).__name__}; "
                         f"its LoRA-adaptable layer names end in: {candidates}")
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (each shared tensor counted once; a DeepSpeed
    ZeRO-3 partitioned parameter by its full size, ``ds_numel``)."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = int(getattr(param, "ds_numel", param.numel()))
        total += size
        trainable += size if param.requires_grad else 0
    return trainable, total


def apply_lora(model: nn.Module, targets: str | Sequence[str], *, r: int = 16, alpha: int = 32,
               dropout: float = 0.0, **lora_kwargs: Any) -> nn.Module:
    """``peft.get_peft_model`` with ``LoraConfig(r, lora_alpha=alpha, lora_dropout=dropout,
    target_modules=targets, **lora_kwargs)``, after :func:`check_lora_targets`; logs (INFO,
    logger ``maskdiff.hf``) how many layers were adapted and the trainable parameter count."""
    import peft

    matched = check_lora_targets(model, targets)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, **lora_kwargs))
    trainable, total = parameter_counts(wrapped)
    logger.info("LoRA r=%d on %d layers: %d trainable of %d parameters (%.3f%%)", r,
                len(matched), trainable, total, 100.0 * trainable / max(total, 1))
    return wrapped
