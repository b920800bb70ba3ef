"""Checks run once after a Hugging Face model is loaded: nothing it gets wrong stays silent.

- :func:`check_buffers`: non-persistent buffers (rotary ``inv_freq`` and the like) are not in
  the checkpoint; ``from_pretrained`` rebuilds them, and under transformers 5.x with 4.x remote
  code it may leave them uninitialised (values up to 1e34: NaN logits at random). Each such
  buffer is recomputed from the module's own recipe and compared; a wrong one is replaced (the
  caller says so), one that cannot be recomputed and holds non-finite values is a ValueError
  naming it.
- :func:`probe_bidirectional`: does an early position's output change when a late token
  changes? Asked on an unpadded and on a padded batch; a causal answer is a
  :class:`~maskdiff.hf.checks.CausalAttentionWarning` with the fix in one line.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from maskdiff.hf.adapter import reset_first_batch_check
from maskdiff.hf.checks import CausalAttentionWarning

__all__ = ["check_buffers", "recompute_buffer", "probe_bidirectional"]


def recompute_buffer(module: nn.Module, name: str) -> torch.Tensor | None:
    """What ``module``'s non-persistent buffer ``name`` should hold, from the module's recipe
    (Hugging Face's rotary pattern: ``rope_init_fn(config, device, **rope_kwargs)``; or plain RoPE
    from ``dim`` and ``base``), else None when no recipe is known."""
    current = getattr(module, name)
    if name.endswith("inv_freq"):
        init = getattr(module, "rope_init_fn", None)
        config = getattr(module, "config", None)
        if callable(init) and (config is not None or getattr(module, "rope_kwargs", None)):
            value = init(config, current.device, **(getattr(module, "rope_kwargs", None) or {}))
            return value[0] if isinstance(value, tuple) else value
        dim, base = getattr(module, "dim", None), getattr(module, "base", None)
        if isinstance(dim, int) and isinstance(base, (int, float)):
            return 1.0 / (float(base) ** (torch.arange(0, dim, 2, device=current.device).float() / dim))
    return None


def check_buffers(model: nn.Module) -> list[str]:
    """Recompute every non-persistent buffer that has a known recipe and fix the wrong ones in
    place; return the names fixed. A non-finite buffer with no recipe is a ValueError."""
    fixed = []
    for module_name, module in model.named_modules():
        for name in list(getattr(module, "_non_persistent_buffers_set", ())):
            buffer = module._buffers.get(name)
            if buffer is None or buffer.device.type == "meta":
                continue
            full = f"{module_name}.{name}" if module_name else name
            expected = recompute_buffer(module, name)
            if expected is None:
                if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                    raise ValueError(f"{type(model).__name__}: non-persistent buffer {full} holds "
                                     f"non-finite values after loading and has no known recipe: "
                                     f"recompute it after from_pretrained")
                continue
            expected = expected.to(device=buffer.device, dtype=buffer.dtype)
            if expected.shape == buffer.shape and torch.allclose(buffer, expected, rtol=1e-4, atol=0):
                continue
            module._buffers[name] = expected
            if isinstance(getattr(module, "original_" + name, None), torch.Tensor):
                setattr(module, "original_" + name, expected)
            fixed.append(full)
    return fixed


def _changes(adapter: Any, ids: torch.Tensor, attend: torch.Tensor | None, row: int,
             late: int, early: int, vocab: int) -> bool:
    """Does position ``early`` of ``row`` change when the token at ``late`` changes?"""
    with torch.no_grad():
        before = adapter(ids, attend)[row, early].float()
        other = ids.clone()
        other[row, late] = (int(ids[row, late]) + 1 + vocab // 2) % vocab
        after = adapter(other, attend)[row, early].float()
    return not torch.allclose(before, after, rtol=0, atol=1e-6)


def probe_bidirectional(adapter: Any, *, name: str = "the model", family: Any = None,
                        forced: bool = False, length: int = 10) -> dict[str, bool]:
    """Ask the loaded model whether position 1 depends on a token 3 places from the end, on an
    unpadded batch and on a batch whose second row ends in padding. Returns ``{"unpadded": bool,
    "padded": bool}`` (True: bidirectional) and warns once for a causal answer."""
    model = adapter.model
    options = adapter.options
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 32
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    top = max(i for i in (options.mask_token_id, options.pad_token_id, -1) if i is not None)
    low = top + 1 if top + 8 < vocab else 0  # ordinary tokens above the special ids
    ids = torch.randint(low, vocab, (2, length), generator=generator).to(device)
    late, early = length - 3, 1 + options.logit_shift
    was_training = model.training
    model.eval()
    try:
        result = {"unpadded": _changes(adapter, ids, None, 0, late, early, vocab)}
        if options.attention != "none":
            attend = torch.ones(ids.shape, dtype=torch.bool, device=device)
            attend[1, -2:] = False
            if options.pad_token_id is not None:
                ids[1, -2:] = options.pad_token_id
            result["padded"] = _changes(adapter, ids, attend, 1, late, early, vocab)
    finally:
        model.train(was_training)
        reset_first_batch_check(model)  # the first real batch is checked again
    causal = [k for k, v in result.items() if not v]
    if causal:
        fix = ("pass attention='4d' (--attention 4d): the 4-D key-padding mask keeps it "
               "bidirectional" if causal == ["padded"] and options.attention == "2d"
               else "load it with bidirectional attention (a masked-diffusion checkpoint)")
        default = getattr(family, "attention", None)
        note = (f" (its family's default is {default!r})"
                if forced and default and default != options.attention else "")
        warnings.warn(f"{name}: attends causally on a {' and '.join(causal)} batch under "
                      f"attention={options.attention!r}{note}: {fix}",
                      CausalAttentionWarning, stacklevel=3)
    return result
