"""Collators and encoders: rows, chat turns and SyRM syntax masks into maskdiff batches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from maskdiff.core.batch import Batch
from maskdiff.data.collate import canonical_pad_policy
from maskdiff.hf.adapter import CHAT_METHODS


# ----------------------------------------------------------------------------- collators
class IndexedDataset(torch.utils.data.Dataset):
    """A map-style data set whose rows gain ``"example_index"``: their index, which seeds their
    rates and masks (maskdiff.core.seeding). The trainer wraps its data sets in it."""

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

    ``eligible`` defaults to every token (pretraining, docs/method.md §1). Padding to the longest row (a
    multiple of ``pad_to_multiple_of``) follows ``pad_policy``, in the native collator's
    vocabulary (:mod:`maskdiff.data.collate`): ``"exclude"`` pads with ``pad_token_id``,
    unattended and not eligible; ``"eos"`` pads with the EOS id given as ``pad_token_id``,
    attended and eligible (LLaDA SFT). The older word ``"ignore"`` means ``"exclude"``. Rows longer than
    ``max_length`` are cut on the right (what was eligible there is lost; an example left with
    nothing eligible is skipped and counted by the estimator).
    """

    def __init__(self, pad_token_id: int, *, pad_policy: str = "exclude", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None) -> None:
        if not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r}")
        pad_policy = canonical_pad_policy(pad_policy)
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
        """The same rows as a :class:`~maskdiff.core.batch.Batch` (for maskdiff's own tools)."""
        return batch_from_inputs(self(rows))


def batch_from_inputs(inputs: Mapping[str, torch.Tensor]) -> Batch:
    """The trainer's input dict (a collator's output) as a :class:`~maskdiff.core.batch.Batch`."""
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


def render_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *,
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
    """One conversation → ``{"input_ids", "eligible", ["syntax"]}`` (docs/method.md §1: SFT eligibility).

    ``eligible`` marks exactly the tokens of the assistant turns (with the turn's closing tokens
    the template emits, so the model learns to end a turn). ``method="template"`` uses
    ``apply_chat_template(..., return_assistant_tokens_mask=True)``, which needs a template
    with ``{% generation %}`` markers; ``"diff"`` renders, for each assistant message ``i``,
    the conversation up to ``i`` with the generation prompt and up to ``i`` inclusive, and
    marks the tokens in between (it checks the renders are prefixes of each other); ``"auto"``
    picks ``"template"`` when the template has generation markers, else ``"diff"``.
    ``syntax`` (when ``syntax_ids`` is given) marks the non-eligible tokens whose id is a
    syntax token: SyRM makes the prompt's syntax tokens eligible too (docs/method.md §1).
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
        ids = render_ids(tokenizer, messages, **extra)
        eligible = [0] * len(ids)
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = render_ids(tokenizer, messages[:i], add_generation_prompt=True, **extra)
            upto = render_ids(tokenizer, messages[:i + 1], **extra)
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
    A tokenizer without a chat template encodes ``{"prompt", "response"}`` rows as
    :func:`encode_row` does (prompt, then response + EOS eligible); ``messages`` rows need one.
    """

    def __init__(self, tokenizer: Any, *, pad_policy: str = "exclude", pad_token_id: int | None = None,
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
        if not (self.chat_template_kwargs.get("chat_template")
                or getattr(self.tokenizer, "chat_template", None)):
            if "messages" in row:
                raise ValueError("a 'messages' row needs a chat template, and the tokenizer has "
                                 "none: set tokenizer.chat_template, or give {prompt, response} "
                                 "rows (encoded as prompt + response + EOS)")
            # No template (a base or masked LM): prompt, then response and EOS, as encode_row.
            return encode_row(self.tokenizer, row, syntax_ids=self.syntax_ids)
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
        out = encode_prompt_response(tokenizer, row["prompt"], row["response"])
    else:
        raise ValueError(f"a row needs 'input_ids', 'text', 'messages' or 'prompt'+'response' "
                         f"(chat rows need a tokenizer with a chat template for 'messages'), "
                         f"got keys {sorted(row)}")
    if syntax_ids is not None:
        wanted = frozenset(int(i) for i in syntax_ids)
        out["syntax"] = [int(t in wanted and not e) for t, e in zip(out["input_ids"], out["eligible"])]
    return out


def encode_prompt_response(tokenizer: Any, prompt: str, response: str) -> dict[str, list[int]]:
    """Plain text, no chat template: the prompt with the tokenizer's special tokens, then the
    response and the EOS token (when the tokenizer has one), the response and EOS eligible."""
    prompt_ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
    response_ids = [int(i) for i in tokenizer(response, add_special_tokens=False)["input_ids"]]
    eos = getattr(tokenizer, "eos_token_id", None)
    response_ids += [] if eos is None else [int(eos)]
    return {"input_ids": prompt_ids + response_ids,
            "eligible": [0] * len(prompt_ids) + [1] * len(response_ids)}


def hf_batch(tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, pad_policy: str = "exclude",
             pad_token_id: int | None = None, max_length: int | None = None,
             syntax_tokens: Iterable[str | int] | None = None, method: str = "auto",
             first_index: int = 0) -> Batch:
    """Rows (see :func:`encode_row`) → a :class:`~maskdiff.core.batch.Batch` for maskdiff's tools
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
