"""The adapter: a Hugging Face model behind maskdiff's model contract (docs/method.md §1)."""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from maskdiff.data.collate import canonical_pad_policy

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
               attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Call ``model`` (a HF model, a PEFT model or a DDP wrapper of one): (B, N, V) logits.

        ``attention_mask=None`` means every position is a real token (the model contract of
        docs/architecture.md §3: the decoders pass None for unpadded prompts). A 4-D boolean
        ``attention_mask`` (B, 1, N, N) is an attention pattern (block diffusion's ``[xt ; x0]``,
        docs/method.md §12): it is passed as it is, with ``position_ids`` (B, N), and needs
        ``attention="4d"`` and no logit shift (:func:`maskdiff.hf.blocks.check_block_model`)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        kwargs = dict(self.forward_kwargs)
        kwargs["input_ids"] = input_ids
        if attention_mask is not None and attention_mask.dim() == 4:
            attend = self._pattern(kwargs, input_ids, attention_mask, model)
        else:
            attend = self._key_mask(kwargs, input_ids, attention_mask)
        if position_ids is not None:
            if tuple(position_ids.shape) != tuple(input_ids.shape):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, "
                                 f"input_ids has {tuple(input_ids.shape)}")
            kwargs["position_ids"] = position_ids
        out = model(**kwargs)
        logits = _logits_of(out)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for input "
                             f"{tuple(input_ids.shape)}; expected (B, L, V): load an LM head model")
        _check_first_logits(model, logits, attend)
        k = self.logit_shift
        if k:
            if k >= logits.shape[1]:
                raise ValueError(f"logit_shift={k} needs sequences longer than {k}, got L={logits.shape[1]}")
            logits = torch.cat([logits[:, :1].expand(-1, k, -1), logits[:, :-k]], dim=1)
        return logits

    def _key_mask(self, kwargs: dict, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The (B, L) mask of real tokens, put in ``kwargs`` in this adapter's format."""
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"input_ids has {tuple(input_ids.shape)}")
        attend = attention_mask.to(torch.bool)
        if self.attention == "2d":
            kwargs["attention_mask"] = attend.long()
        elif self.attention == "4d":
            batch, length = input_ids.shape
            kwargs["attention_mask"] = attend[:, None, None, :].expand(batch, 1, length, length)
        return attend

    def _pattern(self, kwargs: dict, input_ids: torch.Tensor, pattern: torch.Tensor,
                 model: nn.Module) -> torch.Tensor:
        """A (B, 1, N, N) boolean attention pattern, passed as it is (the families that take
        one read a boolean: maskdiff.hf.families ``block_mask``), or as a flex ``BlockMask``
        of the same pattern for a model loaded with ``attn_implementation="flex_attention"``;
        every position is scored."""
        batch, length = input_ids.shape
        if pattern.dtype != torch.bool or tuple(pattern.shape) != (batch, 1, length, length):
            raise ValueError(f"a 4-D attention pattern must be bool of shape "
                             f"{(batch, 1, length, length)}, got {pattern.dtype} "
                             f"{tuple(pattern.shape)}")
        if self.attention != "4d" or self.logit_shift:
            raise ValueError(f"a 4-D attention pattern (block diffusion) needs attention='4d' "
                             f"and logit_shift=0, this adapter has attention={self.attention!r}, "
                             f"logit_shift={self.logit_shift}")
        flex = getattr(model_config(model), "_attn_implementation", None) == "flex_attention"
        kwargs["attention_mask"] = _flex_block_mask(pattern) if flex else pattern
        return torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)

    def eligible(self, eligible: torch.Tensor) -> torch.Tensor:
        """``eligible`` with the first ``logit_shift`` positions removed: under a shift their
        logits are copies of position ``k``'s (said once on stderr when it removes any)."""
        k = self.logit_shift
        if not k or not bool(eligible[:, :k].any()):
            return eligible
        if "shift" not in _SAID:
            _SAID.add("shift")
            print(f"maskdiff: logit_shift={k}: positions 0..{k - 1} are never eligible (their "
                  f"logits copy position {k}'s; dllm prepends a BOS instead)", file=sys.stderr)
        out = eligible.clone()
        out[:, :k] = False
        return out


def model_config(model: nn.Module) -> Any:
    """The config of ``model`` under DDP / FSDP wrappers (PEFT forwards ``config`` itself)."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return getattr(model, "config", None)


def _flex_block_mask(pattern: torch.Tensor) -> Any:
    """The flex-attention ``BlockMask`` of a (B, 1, N, N) boolean pattern (what dllm's
    ``BD3LMTrainer`` builds with ``create_block_mask`` for a flex model)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, _, length, _ = pattern.shape

    def allowed(b, h, q, k):
        return pattern[b, 0, q, k]

    return create_block_mask(allowed, B=batch, H=None, Q_LEN=length, KV_LEN=length,
                             device=pattern.device)


_SAID: set[str] = set()
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, set[bool]]" = weakref.WeakKeyDictionary()


def reset_first_batch_check(model: nn.Module) -> None:
    """Check ``model``'s next batch again (in training and in eval mode)."""
    _CHECKED.pop(model, None)


def _check_first_logits(model: nn.Module, logits: torch.Tensor, attend: torch.Tensor) -> None:
    """The first batch a model scores in training and in eval mode must give finite logits at
    its real positions: else one line naming the model and the likely cause (never a silent
    ``loss nan``)."""
    modes = _CHECKED.setdefault(model, set())
    if model.training in modes:
        return
    modes.add(model.training)
    real = logits.detach()[attend.to(logits.device)]
    bad = int((~torch.isfinite(real)).any(dim=-1).sum())
    if bad:
        config = getattr(model, "config", None)
        name = getattr(config, "_name_or_path", None) or type(model).__name__
        raise ValueError(f"{name}: the first batch gave NaN/inf logits at {bad} of {real.shape[0]} "
                         f"real positions: likely an uninitialised weight or buffer (a rotary "
                         f"inv_freq from_pretrained left empty) or a float16 overflow (try "
                         f"dtype=float32/bfloat16)")


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.options.logits(self.model, input_ids, attention_mask, position_ids)


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None
