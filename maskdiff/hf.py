"""Hugging Face integration: adapter, collators and a ``transformers.Trainer`` (SPEC §1).

Three pieces, each usable alone:

- :class:`HFAdapter` makes a Hugging Face model satisfy maskdiff's model contract
  ``model(input_ids (B, L) long, attention_mask (B, L) bool) -> logits (B, L, V)``: a
  bidirectional masked LM (``AutoModelForMaskedLM``) or a diffusion LLM loaded with
  ``trust_remote_code`` (LLaDA, Dream). The mask token id, the pad/EOS policy, the attention-mask
  format and any logit shift (Dream predicts token ``i`` at position ``i - 1``) are explicit
  :class:`AdapterOptions`, never guessed.
- :class:`MaskedDiffusionCollator` (rows ``{"input_ids", "eligible", ["syntax"]}``) and
  :class:`ChatCollator` (prompt/response or chat ``messages``: the eligible mask is the
  assistant turns, the SyRM syntax mask comes from a list of syntax tokens).
- :class:`MaskedDiffusionTrainer`, a ``transformers.Trainer`` whose loss is maskdiff's own
  :class:`~maskdiff.objective.Estimator`, with rates and masks from
  :class:`~maskdiff.seeding.BatchRandomness` keyed on (seed, global step, example index): the
  same numbers maskdiff's trainer computes, on any number of ranks, with gradient accumulation,
  and after a resume. It logs the per-t-bin statistics of :mod:`maskdiff.train` and can refit
  a P-POTS importance density online (SPEC §4 [beyond]).

``transformers`` is imported lazily by the functions that need it, so ``import maskdiff.hf``
costs nothing until a model is loaded or a trainer is built.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import types
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskdiff.batch import Batch
from maskdiff.masking import Bernoulli, Masker
from maskdiff.objective import NORMALIZERS, Estimator
from maskdiff.samplers import DEFAULT_EPS, RateSampler, Window
from maskdiff.seeding import BatchRandomness

PAD_POLICIES = ("ignore", "eos")
ATTENTION_FORMATS = ("2d", "4d", "none")
CHAT_METHODS = ("auto", "template", "diff")
T_BINS = 10  # the bins of maskdiff.train's loss_per_t_bin
STATE_FILE = "maskdiff_state.pt"

__all__ = [
    "AdapterOptions", "HFAdapter", "load_hf_model", "MaskedDiffusionCollator", "IndexedDataset",
    "batch_from_inputs", "syntax_token_ids", "encode_chat", "ChatCollator", "encode_row", "hf_batch",
    "MaskedDiffusionTrainer",  # noqa: F822 -- built on first access by the module __getattr__
]


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
        pad_policy: ``"ignore"``: padding is masked out of attention and never eligible;
            ``"eos"`` (LLaDA SFT): rows are padded with EOS tokens that are real tokens,
            attended and eligible, so the model learns to end its answer.
        forward_kwargs: constant keyword arguments added to every forward call.
    """

    mask_token_id: int
    logit_shift: int = 0
    attention: str = "2d"
    pad_token_id: int | None = None
    pad_policy: str = "ignore"
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative int, got {self.mask_token_id!r}")
        if not isinstance(self.logit_shift, int) or self.logit_shift < 0:
            raise ValueError(f"logit_shift must be a non-negative int, got {self.logit_shift!r}")
        if self.attention not in ATTENTION_FORMATS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMATS}, got {self.attention!r}")
        if self.pad_policy not in PAD_POLICIES:
            raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, got {self.pad_policy!r}")
        if self.pad_token_id is not None and (not isinstance(self.pad_token_id, int)
                                              or self.pad_token_id < 0):
            raise ValueError(f"pad_token_id must be a non-negative int or None, got {self.pad_token_id!r}")
        object.__setattr__(self, "forward_kwargs", types.MappingProxyType(dict(self.forward_kwargs)))

    def logits(self, model: nn.Module, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
        """Call ``model`` (a HF model, a PEFT model or a DDP wrapper of one): (B, L, V) logits."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
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
                  pad_policy: str = "ignore", auto_class: str | None = None,
                  tokenizer_name_or_path: str | os.PathLike | None = None,
                  ) -> tuple[HFAdapter, Any, int]:
    """Load a HF model and its tokenizer behind the maskdiff contract, in eval mode.

    The model class: ``auto_class`` when given (e.g. ``"AutoModel"``); otherwise a model with an
    ``auto_map`` (remote code) is loaded by the first of ``AutoModelForMaskedLM``, ``AutoModel``,
    ``AutoModelForCausalLM`` its map names (LLaDA and Dream map ``AutoModel`` to their LM), and a
    built-in architecture by ``AutoModelForMaskedLM``. The mask token id: ``mask_token_id``, else
    the tokenizer's, else ``config.mask_token_id``; none of them → ValueError. The pad id: the
    tokenizer's pad token (``eos`` under ``pad_policy="eos"``), else the config's.

    Returns ``(adapter, tokenizer, mask_token_id)``. Loading needs the files locally or a
    reachable hub; ``trust_remote_code=True`` runs the repository's Python code.
    """
    import transformers

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
    options = AdapterOptions(mask_token_id=int(mask_token_id), logit_shift=logit_shift,
                             attention=attention, pad_policy=pad_policy,
                             pad_token_id=None if pad is None else int(pad))
    return HFAdapter(model, options), tokenizer, int(mask_token_id)


# ----------------------------------------------------------------------------- collators
class IndexedDataset(torch.utils.data.Dataset):
    """A map-style data set whose rows gain ``"example_index"``: their index, which seeds their
    rates and masks (maskdiff.seeding). The trainer wraps its data sets in it."""

    def __init__(self, dataset: Any) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise ValueError(f"dataset must be map-style (__getitem__ and __len__), got "
                             f"{type(dataset).__name__}; for iterable data put an 'example_index' "
                             f"in every row")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index} must be a mapping, got {type(row).__name__}")
        return {**row, "example_index": int(index)}


def _as_list(value: Any, name: str, index: int) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        return [int(v) for v in value]
    except TypeError as err:
        raise ValueError(
            f"row {index}: {name} must be a sequence of ints, got {type(value).__name__}") from err


class MaskedDiffusionCollator:
    """Rows ``{"input_ids": [...], "eligible": [0/1...], "syntax": [0/1...] (optional),
    "example_index": i}`` → padded tensors (the trainer's inputs).

    ``eligible`` defaults to every token (pretraining, SPEC §1). Padding to the longest row (a
    multiple of ``pad_to_multiple_of``) follows ``pad_policy`` (see :class:`AdapterOptions`):
    ``"ignore"`` pads with ``pad_token_id``, unattended and not eligible; ``"eos"`` pads with the
    EOS id given as ``pad_token_id``, attended and eligible (LLaDA SFT). Rows longer than
    ``max_length`` are cut on the right (what was eligible there is lost; an example left with
    nothing eligible is skipped and counted by the estimator).
    """

    def __init__(self, pad_token_id: int, *, pad_policy: str = "ignore", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None) -> None:
        if not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r}")
        if pad_policy not in PAD_POLICIES:
            raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, got {pad_policy!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id, self.pad_policy = pad_token_id, pad_policy
        self.max_length, self.pad_to_multiple_of = max_length, pad_to_multiple_of

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        ids, eligible, syntax, index = [], [], [], []
        for k, row in enumerate(rows):
            if "input_ids" not in row:
                raise ValueError(f"row {k} has no 'input_ids' (keys {sorted(row)})")
            if "example_index" not in row:
                raise ValueError(f"row {k} has no 'example_index': wrap the data set in "
                                 f"IndexedDataset so rates and masks are seeded per example")
            x = _as_list(row["input_ids"], "input_ids", k)
            e = _as_list(row["eligible"], "eligible", k) if row.get("eligible") is not None else [1] * len(x)
            s = _as_list(row["syntax"], "syntax", k) if row.get("syntax") is not None else None
            for name, v in (("eligible", e), ("syntax", s)):
                if v is not None and len(v) != len(x):
                    raise ValueError(f"row {k}: {name} has {len(v)} entries, input_ids has {len(x)}")
            if not x:
                raise ValueError(f"row {k} has no tokens")
            if self.max_length is not None:
                x, e, s = x[:self.max_length], e[:self.max_length], None if s is None else s[:self.max_length]
            ids.append(x)
            eligible.append(e)
            syntax.append(s)
            index.append(int(row["example_index"]))
        length = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        pad_real = self.pad_policy == "eos"
        out_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        out_att = torch.full((n, length), pad_real, dtype=torch.bool)
        out_eli = torch.full((n, length), pad_real, dtype=torch.bool)
        out_syn = torch.zeros((n, length), dtype=torch.bool)
        for r, (x, e, s) in enumerate(zip(ids, eligible, syntax)):
            out_ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
            out_att[r, :len(x)] = True
            out_eli[r, :len(x)] = torch.tensor(e, dtype=torch.long) != 0
            if s is not None:
                out_syn[r, :len(x)] = torch.tensor(s, dtype=torch.long) != 0
        out = {"input_ids": out_ids, "attention_mask": out_att, "eligible": out_eli,
               "example_index": torch.tensor(index, dtype=torch.long)}
        if any(s is not None for s in syntax):
            out["syntax"] = out_syn
        return out

    def batch(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        """The same rows as a :class:`~maskdiff.batch.Batch` (for maskdiff's own tools)."""
        return batch_from_inputs(self(rows))


def batch_from_inputs(inputs: Mapping[str, torch.Tensor]) -> Batch:
    """The trainer's input dict (a collator's output) as a :class:`~maskdiff.batch.Batch`."""
    missing = [k for k in ("input_ids", "attention_mask", "eligible", "example_index") if k not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}: use MaskedDiffusionCollator or ChatCollator")
    syntax = inputs.get("syntax")
    return Batch(x0=inputs["input_ids"].long(), eligible=inputs["eligible"].to(torch.bool),
                 attention_mask=inputs["attention_mask"].to(torch.bool),
                 example_index=inputs["example_index"].long().cpu(),
                 syntax=None if syntax is None else syntax.to(torch.bool))


def syntax_token_ids(tokenizer: Any, tokens: Iterable[str | int]) -> frozenset[int]:
    """Token ids of SyRM's syntax tokens (variance paper §3.2.2).

    An int is taken as an id; a string is looked up in the vocabulary, else encoded without
    special tokens, and must then be exactly one token (a multi-token string is ambiguous:
    list its pieces instead).
    """
    ids: set[int] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in tokens:
        if isinstance(token, int):
            ids.add(token)
            continue
        found = tokenizer.convert_tokens_to_ids(token)
        if found is not None and found != unk:
            ids.add(int(found))
            continue
        pieces = tokenizer.encode(token, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"syntax token {token!r} encodes to {len(pieces)} tokens {pieces}; "
                             f"give single tokens (or their ids)")
        ids.add(int(pieces[0]))
    return frozenset(ids)


def _has_generation_markers(template: str | None) -> bool:
    return bool(template) and re.search(r"{%-?\s*generation\s*-?%}", template) is not None


def _render_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *,
                add_generation_prompt: bool = False, **kwargs: Any) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    ids = out["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, method: str = "auto",
                syntax_ids: Iterable[int] | None = None,
                chat_template_kwargs: Mapping[str, Any] | None = None) -> dict[str, list[int]]:
    """One conversation → ``{"input_ids", "eligible", ["syntax"]}`` (SPEC §1: SFT eligibility).

    ``eligible`` marks exactly the tokens of the assistant turns (with the turn's closing tokens
    the template emits, so the model learns to end a turn). ``method="template"`` uses
    ``apply_chat_template(..., return_assistant_tokens_mask=True)``, which needs a template
    with ``{% generation %}`` markers; ``"diff"`` renders, for each assistant message ``i``,
    the conversation up to ``i`` with the generation prompt and up to ``i`` inclusive, and
    marks the tokens in between (it checks the renders are prefixes of each other); ``"auto"``
    picks ``"template"`` when the template has generation markers, else ``"diff"``.
    ``syntax`` (when ``syntax_ids`` is given) marks the non-eligible tokens whose id is a
    syntax token: SyRM makes the prompt's syntax tokens eligible too (SPEC §1).
    """
    if method not in CHAT_METHODS:
        raise ValueError(f"method must be one of {CHAT_METHODS}, got {method!r}")
    messages = list(messages)
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant message: nothing would be eligible")
    extra = dict(chat_template_kwargs or {})
    if method == "auto":
        template = extra.get("chat_template") or getattr(tokenizer, "chat_template", None)
        method = "template" if _has_generation_markers(template) else "diff"
    if method == "template":
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, **extra)
        ids = [int(i) for i in out["input_ids"]]
        eligible = [int(bool(v)) for v in out["assistant_masks"]]
        if not any(eligible):
            raise ValueError("the chat template marked no assistant tokens (no {% generation %} "
                             "markers?): use method='diff'")
    else:
        ids = _render_ids(tokenizer, messages, **extra)
        eligible = [0] * len(ids)
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = _render_ids(tokenizer, messages[:i], add_generation_prompt=True, **extra)
            upto = _render_ids(tokenizer, messages[:i + 1], **extra)
            if upto[:len(before)] != before or ids[:len(upto)] != upto:
                raise ValueError(f"assistant message {i}: the chat template's renders are not "
                                 f"prefixes of each other, so the turn cannot be located by "
                                 f"diffing; use a template with {{% generation %}} markers")
            for p in range(len(before), len(upto)):
                eligible[p] = 1
    row: dict[str, list[int]] = {"input_ids": ids, "eligible": eligible}
    if syntax_ids is not None:
        wanted = frozenset(int(i) for i in syntax_ids)
        row["syntax"] = [int(tok in wanted and not e) for tok, e in zip(ids, eligible)]
    return row


class ChatCollator:
    """Chat rows → the trainer's inputs: :func:`encode_chat` then :class:`MaskedDiffusionCollator`.

    A row is ``{"messages": [{"role", "content"}, ...]}`` or ``{"prompt": str, "response": str}``
    (optionally ``"system"``), plus the ``"example_index"`` that :class:`IndexedDataset` adds.
    ``syntax_tokens`` (strings or ids, see :func:`syntax_token_ids`) adds SyRM's syntax mask.
    ``pad_token_id`` defaults to the tokenizer's pad token (its EOS under ``pad_policy="eos"``).
    """

    def __init__(self, tokenizer: Any, *, pad_policy: str = "ignore", pad_token_id: int | None = None,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 syntax_tokens: Iterable[str | int] | None = None, method: str = "auto",
                 chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        if method not in CHAT_METHODS:
            raise ValueError(f"method must be one of {CHAT_METHODS}, got {method!r}")
        if pad_token_id is None:
            pad_token_id = (tokenizer.eos_token_id if pad_policy == "eos" else tokenizer.pad_token_id)
        if pad_token_id is None:
            raise ValueError(f"the tokenizer has no {'eos' if pad_policy == 'eos' else 'pad'} "
                             f"token: pass pad_token_id=")
        self.tokenizer, self.method = tokenizer, method
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.syntax_ids = None if syntax_tokens is None else syntax_token_ids(tokenizer, syntax_tokens)
        self.pad = MaskedDiffusionCollator(int(pad_token_id), pad_policy=pad_policy,
                                           max_length=max_length, pad_to_multiple_of=pad_to_multiple_of)

    @staticmethod
    def messages(row: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "messages" in row:
            return list(row["messages"])
        if "prompt" in row and "response" in row:
            out = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            return out + [{"role": "user", "content": row["prompt"]},
                          {"role": "assistant", "content": row["response"]}]
        raise ValueError(f"a chat row needs 'messages' or 'prompt' and 'response', got keys {sorted(row)}")

    def encode(self, row: Mapping[str, Any]) -> dict[str, list[int]]:
        return encode_chat(self.tokenizer, self.messages(row), method=self.method,
                           syntax_ids=self.syntax_ids, chat_template_kwargs=self.chat_template_kwargs)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = []
        for k, row in enumerate(rows):
            if "example_index" not in row:
                raise ValueError(f"row {k} has no 'example_index': wrap the data set in IndexedDataset")
            encoded.append({**self.encode(row), "example_index": row["example_index"]})
        return self.pad(encoded)


def encode_row(tokenizer: Any, row: Mapping[str, Any], *, method: str = "auto",
               syntax_ids: Iterable[int] | None = None) -> dict[str, list[int]]:
    """One data row → ``{"input_ids", "eligible", ["syntax"]}`` with a HF tokenizer.

    Accepted rows: ``{"input_ids", ["eligible"], ["syntax"]}`` (passed through);
    ``{"text"}`` (pretraining: every token eligible, special tokens included);
    ``{"messages"}`` or ``{"prompt", "response"}``: with a chat template, :func:`encode_chat`;
    without one (e.g. BERT), the prompt with the tokenizer's special tokens, then the response
    and the EOS token (when the tokenizer has one), the response and EOS eligible.
    """
    if "input_ids" in row:
        return {k: _as_list(row[k], k, 0) for k in ("input_ids", "eligible", "syntax")
                if row.get(k) is not None}
    if "text" in row:
        ids = [int(i) for i in tokenizer(row["text"])["input_ids"]]
        out = {"input_ids": ids, "eligible": [1] * len(ids)}
    elif getattr(tokenizer, "chat_template", None):
        return encode_chat(tokenizer, ChatCollator.messages(row), method=method, syntax_ids=syntax_ids)
    elif "prompt" in row and "response" in row:
        prompt = [int(i) for i in tokenizer(row["prompt"])["input_ids"]]
        response = [int(i) for i in tokenizer(row["response"], add_special_tokens=False)["input_ids"]]
        eos = getattr(tokenizer, "eos_token_id", None)
        response += [] if eos is None else [int(eos)]
        out = {"input_ids": prompt + response, "eligible": [0] * len(prompt) + [1] * len(response)}
    else:
        raise ValueError(f"a row needs 'input_ids', 'text', 'messages' or 'prompt'+'response' "
                         f"(chat rows need a tokenizer with a chat template for 'messages'), "
                         f"got keys {sorted(row)}")
    if syntax_ids is not None:
        wanted = frozenset(int(i) for i in syntax_ids)
        out["syntax"] = [int(t in wanted and not e) for t, e in zip(out["input_ids"], out["eligible"])]
    return out


def hf_batch(tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, pad_policy: str = "ignore",
             pad_token_id: int | None = None, max_length: int | None = None,
             syntax_tokens: Iterable[str | int] | None = None, method: str = "auto",
             first_index: int = 0) -> Batch:
    """Rows (see :func:`encode_row`) → a :class:`~maskdiff.batch.Batch` for maskdiff's tools
    (``model_p_hat``/``estimate_ppots``, ``variance.decompose``) on a HF model. Example indices
    are ``first_index, first_index + 1, ...`` (they seed the draws)."""
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if pad_policy == "eos" else tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "eos_token_id", None)  # GPT-style tokenizers: no pad
    if pad_token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: pass pad_token_id=")
    syntax_ids = None if syntax_tokens is None else syntax_token_ids(tokenizer, syntax_tokens)
    encoded = [{**encode_row(tokenizer, row, method=method, syntax_ids=syntax_ids),
                "example_index": first_index + k} for k, row in enumerate(rows)]
    return MaskedDiffusionCollator(int(pad_token_id), pad_policy=pad_policy,
                                   max_length=max_length).batch(encoded)


# ----------------------------------------------------------------------------- trainer
class _Window:
    """The statistics maskdiff.train logs between two log lines (loss_per_t_bin, masked_ce)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.raw, self.bins, self.ce_sum, self.ce_count, self.tokens = [], [], 0.0, 0.0, 0.0
        self.start = time.perf_counter()

    def add(self, t: torch.Tensor, raw: torch.Tensor, ce_sum: float, ce_count: float, tokens: float) -> None:
        self.raw.append(raw.double())
        self.bins.append((torch.ceil(t.double() * T_BINS) - 1).long().clamp(0, T_BINS - 1))
        self.ce_sum += ce_sum
        self.ce_count += ce_count
        self.tokens += tokens

    def flush(self) -> dict[str, float]:
        if not self.raw:
            return {}
        raw, bins = torch.cat(self.raw), torch.cat(self.bins)
        sums = torch.zeros(T_BINS, dtype=torch.float64).index_add_(0, bins, raw)
        counts = torch.bincount(bins, minlength=T_BINS)
        out = {f"loss_per_t_bin_{j}": float(sums[j] / counts[j]) for j in range(T_BINS) if counts[j]}
        if self.ce_count:
            out["masked_ce"] = self.ce_sum / self.ce_count
        out["tokens_per_s"] = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return out


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D CPU tensor over ranks in rank order (lengths may differ)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.stack(parts).sum(0)


def _make_trainer_class():
    import transformers

    class _StepEnd(transformers.TrainerCallback):
        """Marks step starts; runs after every optimiser step, before Trainer logs, evaluates
        or saves."""

        def __init__(self, owner) -> None:
            self.owner = owner

        def on_step_begin(self, args, state, control, **kwargs):
            self.owner._micro = (-1, 0)  # the step's first micro-batch has position block 0
            return control

        def on_step_end(self, args, state, control, **kwargs):
            self.owner._finish_step()
            return control

    class MaskedDiffusionTrainer(transformers.Trainer):
        """A ``transformers.Trainer`` whose loss is maskdiff's :class:`Estimator` (SPEC §1).

        Args (besides ``transformers.Trainer``'s own):
            model: a HF model or PEFT model (wrapped in :class:`HFAdapter` with the options
                below), or an :class:`HFAdapter` (its options are used, its ``.model`` trained).
            rate_sampler, masker: the estimator's sampler and masker (maskdiff.samplers,
                maskdiff.masking); P-POTS+MIRROR is ``Importance(density)`` + ``Mirror()``.
            mask_token_id: the mask id (default: the adapter's, else ``model.config``'s).
            control: optional control variate (:class:`maskdiff.control.BinEMA`), updated once
                per optimiser step from the whole global batch, as maskdiff's trainer does.
            normalizer: ``"eligible"``, ``"sequence"`` or ``"none"``; ``syntax_eligible``: SyRM.
            seed: keys the rates and masks with (global step, example index); default
                ``args.seed``.
            ppots_tracker, refit_every: online P-POTS (SPEC §4 [beyond]): the tracker is fed
                every step's ``(t, l, w)`` and every ``refit_every`` steps EPR is refitted and
                handed to ``rate_sampler.set_density``; ``refit_min_count`` and
                ``refit_restarts`` as in :class:`maskdiff.config.RefitConfig`.
            logit_shift, attention, pad_token_id, pad_policy, forward_kwargs: adapter options
                (:class:`AdapterOptions`) when ``model`` is not an adapter.
            eval_rates_per_example, eval_seed: evaluation is the full-range objective over
                U[eps, 1] with stratified rates and common random numbers, exactly
                :func:`maskdiff.evaluate.elbo`; it never uses the training sampler's weights.

        Data: map-style data sets of rows ``{"input_ids", "eligible", ["syntax"]}`` (or chat
        rows with ``data_collator=ChatCollator(...)``); they are wrapped in
        :class:`IndexedDataset` so each row's index seeds its draws. Logged every
        ``logging_steps``: ``loss`` (the mean of the estimator's values), ``loss_per_t_bin_j``
        (mean raw loss of the examples with ``t`` in ``(j/10, (j+1)/10]``), ``masked_ce``,
        ``variance_proxy`` (SPEC §7) and ``tokens_per_s``, as maskdiff.train logs them; at a
        refit step ``ppots_refit`` and ``ppots_kl``. Sampler density, control variate, proxy
        and tracker are saved with every checkpoint (``maskdiff_state.pt``) and restored on
        resume, so a resumed run computes what the uninterrupted one does.
        """

        def __init__(self, model=None, args=None, data_collator=None, train_dataset=None,
                     eval_dataset=None, *, rate_sampler: RateSampler, masker: Masker,
                     mask_token_id: int | None = None, control=None, normalizer: str = "eligible",
                     seed: int | None = None, syntax_eligible: bool = False,
                     ppots_tracker=None, refit_every: int | None = None,
                     refit_min_count: float = 8.0, refit_restarts: int = 4,
                     logit_shift: int = 0, attention: str = "2d", pad_token_id: int | None = None,
                     pad_policy: str = "ignore", forward_kwargs: Mapping[str, Any] | None = None,
                     eval_rates_per_example: int = 4, eval_seed: int = 1234, **kwargs) -> None:
            from maskdiff.control import VarianceProxy

            if model is None:
                raise ValueError("model is required (model_init is not supported)")
            if normalizer not in NORMALIZERS:
                raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
            if isinstance(model, HFAdapter):
                options, model = model.options, model.model
                if mask_token_id is not None and mask_token_id != options.mask_token_id:
                    raise ValueError(f"mask_token_id={mask_token_id} differs from the adapter's "
                                     f"{options.mask_token_id}")
            else:
                if mask_token_id is None:
                    mask_token_id = _config_value(getattr(model, "config", None), "mask_token_id")
                if mask_token_id is None:
                    raise ValueError("mask_token_id is required (the model's config names none)")
                processing = kwargs.get("processing_class")
                if pad_token_id is None and processing is not None:
                    pad_token_id = (processing.eos_token_id if pad_policy == "eos"
                                    else processing.pad_token_id)
                if pad_token_id is None:
                    pad_token_id = _config_value(getattr(model, "config", None),
                                                 "eos_token_id" if pad_policy == "eos" else "pad_token_id")
                if isinstance(pad_token_id, (list, tuple)):
                    pad_token_id = pad_token_id[0]
                options = AdapterOptions(
                    mask_token_id=int(mask_token_id), logit_shift=logit_shift, attention=attention,
                    pad_token_id=None if pad_token_id is None else int(pad_token_id),
                    pad_policy=pad_policy, forward_kwargs=forward_kwargs or {})
            if data_collator is None:
                if options.pad_token_id is None:
                    raise ValueError("no pad id known for the default collator: pass pad_token_id= "
                                     "or data_collator=")
                data_collator = MaskedDiffusionCollator(options.pad_token_id,
                                                        pad_policy=options.pad_policy)
            if ppots_tracker is not None:
                if refit_every is None or int(refit_every) < 1:
                    raise ValueError(f"ppots_tracker needs refit_every >= 1, got {refit_every!r}")
                if not hasattr(rate_sampler, "set_density"):
                    raise ValueError(f"online P-POTS needs an importance sampler, got {rate_sampler!r}")
            elif refit_every is not None:
                raise ValueError("refit_every needs a ppots_tracker (maskdiff.ppots.SecondMomentTracker)")
            if eval_rates_per_example < 1:
                raise ValueError(f"eval_rates_per_example must be >= 1, got {eval_rates_per_example}")
            train_dataset = _indexed(train_dataset)
            if isinstance(eval_dataset, Mapping):
                eval_dataset = {k: _indexed(v) for k, v in eval_dataset.items()}
            else:
                eval_dataset = _indexed(eval_dataset)
            super().__init__(model=model, args=args, data_collator=data_collator,
                             train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
            # compute_loss returns a per-micro-batch mean: Trainer divides it by the number of
            # accumulation steps, which makes the step's gradient that of the global batch mean.
            self.loss_is_scaled_for_ga = False
            self.options = options
            self.estimator = Estimator(rate_sampler=rate_sampler, masker=masker,
                                       mask_token_id=options.mask_token_id, control=control,
                                       normalizer=normalizer, syntax_eligible=syntax_eligible)
            self.seed = int(self.args.seed if seed is None else seed)
            self.proxy = VarianceProxy()
            self.ppots_tracker, self.refit_every = ppots_tracker, refit_every
            self.refit_min_count, self.refit_restarts = float(refit_min_count), int(refit_restarts)
            self.refit_params: dict[str, float] | None = None
            self.refits, self.refit_history = 0, []
            eps = getattr(rate_sampler, "eps", DEFAULT_EPS)
            edges = [eps + (1 - eps) * j / eval_rates_per_example
                     for j in range(eval_rates_per_example + 1)]
            self.eval_estimators = [
                Estimator(rate_sampler=Window(edges[j], edges[j + 1], eps=eps), masker=Bernoulli(),
                          mask_token_id=options.mask_token_id, normalizer=normalizer,
                          syntax_eligible=syntax_eligible)
                for j in range(eval_rates_per_example)]
            self.eval_seed = int(eval_seed)
            self._pending: list[dict] = []
            self._micro = (-1, 0)
            self._window = _Window()
            self.add_callback(_StepEnd(self))

        # -- data: keep every column (eligible, example_index are not forward arguments) -----
        def _remove_unused_columns(self, dataset, description=None):
            return dataset

        def _get_collator_with_removed_columns(self, data_collator, description=None):
            return data_collator

        # -- the loss -------------------------------------------------------------------------
        def adapter(self, model: nn.Module) -> HFAdapter:
            """``model`` (as Trainer hands it: maybe DDP- or PEFT-wrapped) behind the contract."""
            return HFAdapter(model, self.options)

        def randomness(self, example_index: Sequence[int], step: int | None = None) -> BatchRandomness:
            """The draws of a training micro-batch: keyed on (seed, step, example index), with
            positions in the global batch for batch-level layouts (StraTS)."""
            step = self.state.global_step if step is None else step
            args = self.args
            micro_size, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
            last_step, count = self._micro
            count = count + 1 if last_step == step else 0
            self._micro = (step, count)
            base = ((count % accum) * args.world_size + args.process_index) * micro_size
            positions = [base + k for k in range(len(example_index))]
            total = micro_size * accum * args.world_size
            return BatchRandomness.for_batch(self.seed, step, example_index, positions,
                                             max(total, positions[-1] + 1))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            batch = batch_from_inputs(inputs)
            randomness = self.randomness(batch.example_index.tolist())
            adapter, logits = self.adapter(model), []

            def forward(input_ids, attention_mask):
                logits.append(adapter(input_ids, attention_mask))
                return logits[-1]

            out = self.estimator(forward, batch, randomness, update_control=False)
            loss = out.loss
            if torch.is_grad_enabled() and not loss.requires_grad and logits:
                # Nothing was masked in this micro-batch: the loss is a constant 0. Tie it to
                # the graph (zero gradient) so backward() and DDP's reducer still work.
                loss = loss + 0.0 * logits[0].flatten()[0]
            if model.training:
                self._pending.append({
                    "t": out.t.detach().float().cpu(), "w": out.w.detach().float().cpu(),
                    "raw": out.raw_loss.float().cpu(), "ce_sum": out.masked_ce_sum,
                    "ce_count": out.masked_count,
                    "tokens": int(batch.attention_mask.sum()) * out.forward_passes})
            if return_outputs:
                return loss, {"values": out.values, "raw_loss": out.raw_loss, "t": out.t, "w": out.w}
            return loss

        def _finish_step(self) -> None:
            """After an optimiser step: tracker and refit, control, proxy, log window."""
            pending, self._pending = self._pending, []
            if not pending:
                return
            t, w, raw = (torch.cat([p[k] for p in pending]) for k in ("t", "w", "raw"))
            finite = torch.isfinite(raw)  # Trainer may skip a non-finite loss: keep stats clean
            t, w, raw = t[finite], w[finite], raw[finite]
            if self.ppots_tracker is not None:  # local values: the tracker all-reduces itself
                self.ppots_tracker.update(t, raw, w)  # (an empty update still counts: ranks agree)
                self.ppots_tracker.all_reduce_()
                if self.state.global_step % self.refit_every == 0:
                    self._refit()
            scalars = torch.tensor([sum(p["ce_sum"] for p in pending),
                                    sum(p["ce_count"] for p in pending),
                                    sum(p["tokens"] for p in pending)], dtype=torch.float64)
            t, w, raw = _gather(t), _gather(w), _gather(raw)
            scalars = _all_reduce(scalars)
            if self.estimator.control is not None:
                self.estimator.control.update(w * raw, t)
            self.proxy.update(raw, w)
            self._window.add(t, raw, float(scalars[0]), float(scalars[1]), float(scalars[2]))

        def _refit(self) -> None:
            step = self.state.global_step
            try:
                refit = self.ppots_tracker.refit(min_count=self.refit_min_count,
                                                 restarts=self.refit_restarts, seed=step,
                                                 init=self.refit_params)
            except ValueError as err:  # too few filled bins yet: keep the current density
                self.refit_history.append({"step": step, "refit": None, "reason": str(err)})
                return
            self.estimator.rate_sampler.set_density(refit.density.as_tuple())
            self.refit_params, self.refits = dict(refit.epr.params), self.refits + 1
            self.refit_history.append({"step": step, "refit": self.refits, "kl": refit.epr.kl,
                                       "params": self.refit_params,
                                       "bins_used": int(refit.table.t.size)})

        def log(self, logs, start_time=None):
            if "loss" in logs and not any(k.startswith("eval_") for k in logs):
                logs.update(self._window.flush())
                variance = self.proxy.variance()
                if not math.isnan(variance):
                    logs["variance_proxy"] = variance
                if self.refit_history and self.refit_history[-1]["step"] == self.state.global_step:
                    last = self.refit_history[-1]
                    if last["refit"] is not None:
                        logs["ppots_refit"], logs["ppots_kl"] = last["refit"], last["kl"]
            super().log(logs, start_time)

        # -- evaluation: the full-range objective (maskdiff.evaluate.elbo) ------------------
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            batch = batch_from_inputs(inputs)
            adapter, indices = self.adapter(model), batch.example_index.tolist()
            total = torch.zeros(len(batch), dtype=torch.float64, device=batch.x0.device)
            with torch.no_grad():
                for stratum, estimator in enumerate(self.eval_estimators):
                    randomness = BatchRandomness.for_batch(self.eval_seed, stratum, indices)
                    total += estimator(adapter, batch, randomness).values.double()
            loss = (total / len(self.eval_estimators)).mean().float()
            return loss.detach(), None, None

        # -- checkpoints ----------------------------------------------------------------------
        def maskdiff_state(self) -> dict:
            """Sampler density, control variate, proxy and tracker (plain tensors / strings)."""
            sampler = self.estimator.rate_sampler
            return {
                "sampler": getattr(sampler, "state_dict", dict)(),
                "control": self.estimator.control.state_dict() if self.estimator.control else {},
                "proxy": self.proxy.state_dict(),
                "tracker": self.ppots_tracker.state_dict() if self.ppots_tracker else {},
                "refit": json.dumps({"params": self.refit_params, "refits": self.refits,
                                     "history": self.refit_history}),
            }

        def load_maskdiff_state(self, state: Mapping[str, Any]) -> None:
            sampler = self.estimator.rate_sampler
            if hasattr(sampler, "load_state_dict"):
                sampler.load_state_dict(state["sampler"])
            if self.estimator.control is not None:
                self.estimator.control.load_state_dict(state["control"])
            self.proxy.load_state_dict(state["proxy"])
            if self.ppots_tracker is not None:
                self.ppots_tracker.load_state_dict(state["tracker"])
            refit = json.loads(state["refit"])
            self.refit_params, self.refits = refit["params"], int(refit["refits"])
            self.refit_history = list(refit["history"])

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                folder = f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
                torch.save(self.maskdiff_state(), path)

        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None:
                return
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{checkpoint} has no {STATE_FILE}: it was not written by "
                                 f"MaskedDiffusionTrainer, so the sampler, control variate and "
                                 f"tracker cannot be restored")
            self.load_maskdiff_state(torch.load(path, weights_only=True))

    return MaskedDiffusionTrainer


def _indexed(dataset: Any) -> Any:
    if dataset is None or isinstance(dataset, IndexedDataset):
        return dataset
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return dataset  # rows must carry their own example_index (the collator checks)
    return IndexedDataset(dataset)


_TRAINER_CLASS = None


def __getattr__(name: str):
    # The Trainer subclass needs transformers at class-creation time: build it on first use.
    global _TRAINER_CLASS
    if name == "MaskedDiffusionTrainer":
        if _TRAINER_CLASS is None:
            _TRAINER_CLASS = _make_trainer_class()
        return _TRAINER_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- CLI model source
@dataclass
class HFSource:
    """A HF model and the rows it is probed on, for ``maskdiff fit-pots`` / ``decompose``."""

    model: HFAdapter
    tokenizer: Any
    mask_token_id: int
    rows: list[dict]
    name: str

    def batch(self, n: int) -> Batch:
        if not 1 <= n:
            raise ValueError(f"need at least one example, got n={n}")
        return hf_batch(self.tokenizer, self.rows[:n])


def load_hf_source(name_or_path: str, data: str | os.PathLike, *, mask_token_id: int | None = None,
                   trust_remote_code: bool = False, logit_shift: int = 0,
                   device: str = "cpu") -> HFSource:
    """A HF model plus the rows of a JSONL file (``{"text"}``, ``{"prompt", "response"}`` or
    ``{"messages"}`` per line; see :func:`encode_row`). A malformed line names file and line."""
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    model, tokenizer, mask_id = load_hf_model(name_or_path, mask_token_id=mask_token_id,
                                              trust_remote_code=trust_remote_code,
                                              logit_shift=logit_shift, device=device)
    return HFSource(model=model, tokenizer=tokenizer, mask_token_id=mask_id, rows=rows,
                    name=str(name_or_path))
