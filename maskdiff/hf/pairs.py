"""Preference rows for the Hugging Face DPO trainer (docs/method.md §13), in TRL's format.

A row is ``{"prompt", "chosen", "rejected"}``: three strings (prompt, then the answer and EOS,
as :func:`~maskdiff.hf.collate.encode_prompt_response`; no chat template, as TRL's standard
format), or TRL's conversational form: ``prompt`` a list of ``{"role", "content"}`` messages,
``chosen`` and ``rejected`` the answer's messages, rendered with the tokenizer's chat template.
Only the answer's tokens are eligible (the ELBO is over them; the prompt is never masked),
whatever earlier assistant turns the prompt holds. Pair ``i`` becomes two examples: the chosen
answer with example index ``2i``, the rejected one ``2i + 1`` (the indices key their draws, as
:mod:`maskdiff.preference.pairs` keys the native trainer's). Every problem with a row is one
``ValueError`` naming the row and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from maskdiff.core.batch import Batch
from maskdiff.hf.collate import (
    MaskedDiffusionCollator, batch_from_inputs, encode_chat, encode_prompt_response, render_ids,
)
from maskdiff.preference.pairs import FIELDS

ROLES = ("chosen", "rejected")


def _is_messages(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value))


def _check_row(row: Any, where: str) -> bool:
    """Whether the row is conversational; a ValueError naming ``where`` and the field if the
    row is neither form."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: a preference row must be a mapping, got {type(row).__name__}")
    missing = [key for key in FIELDS if key not in row]
    if missing:
        raise ValueError(f"{where}: missing {missing} (a row is {{\"prompt\", \"chosen\", "
                         f"\"rejected\"}}: strings, or lists of {{\"role\", \"content\"}} "
                         f"messages; got keys {sorted(row)})")
    if all(isinstance(row[key], str) for key in FIELDS):
        for key in ROLES:
            if not row[key].strip():
                raise ValueError(f"{where}: {key!r} is empty")
        return False
    for key in FIELDS:
        if not _is_messages(row[key]):
            raise ValueError(f"{where}: {key!r} must be a string (all three strings) or a "
                             f"non-empty list of {{\"role\", \"content\"}} messages (all three "
                             f"lists), got {type(row[key]).__name__}")
    return True


def _encode_messages(tokenizer: Any, prompt: list, answer: list, where: str,
                     chat_template_kwargs: Mapping[str, Any]) -> dict[str, list[int]]:
    extra = dict(chat_template_kwargs)
    if not (extra.get("chat_template") or getattr(tokenizer, "chat_template", None)):
        raise ValueError(f"{where}: conversational rows need a chat template and the tokenizer "
                         f"has none: set tokenizer.chat_template, or give string rows")
    row = encode_chat(tokenizer, prompt + answer, chat_template_kwargs=extra)
    before = render_ids(tokenizer, prompt, add_generation_prompt=True, **extra)
    if row["input_ids"][:len(before)] != before:
        raise ValueError(f"{where}: the chat template's render of the prompt (with the "
                         f"generation prompt) is not a prefix of prompt + answer, so the answer "
                         f"cannot be located")
    eligible = [0] * len(before) + row["eligible"][len(before):]
    if not any(eligible):
        raise ValueError(f"{where}: the answer has no assistant token (no assistant message?)")
    return {"input_ids": row["input_ids"], "eligible": eligible}


def encode_pair(tokenizer: Any, row: Mapping[str, Any], index: int, *,
                max_length: int | None = None,
                chat_template_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Row ``index`` → ``{"chosen": {"input_ids", "eligible"}, "rejected": {...},
    "example_index": index}``; an answer that does not fit ``max_length`` is refused (DPO never
    trains on a silently truncated answer)."""
    where = f"preference row {index}"
    conversational = _check_row(row, where)
    out: dict[str, Any] = {"example_index": int(index)}
    for role in ROLES:
        if conversational:
            encoded = _encode_messages(tokenizer, list(row["prompt"]), list(row[role]),
                                       f"{where} ({role})", chat_template_kwargs or {})
        else:
            encoded = encode_prompt_response(tokenizer, row["prompt"], row[role])
        if max_length is not None and len(encoded["input_ids"]) > max_length:
            raise ValueError(f"{where}: {role}: prompt + answer have "
                             f"{len(encoded['input_ids'])} tokens, more than max_length="
                             f"{max_length}")
        out[role] = encoded
    return out


def encode_pairs(tokenizer: Any, dataset: Any, *, max_length: int | None = None,
                 chat_template_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of a map-style data set (a list, a ``datasets.Dataset``) encoded."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ValueError(f"the preference data set must be map-style (__getitem__ and __len__), "
                         f"got {type(dataset).__name__}")
    return [encode_pair(tokenizer, dataset[i], i, max_length=max_length,
                        chat_template_kwargs=chat_template_kwargs) for i in range(len(dataset))]


class PreferenceCollator:
    """Encoded pairs (:func:`encode_pair`) → one padded batch of ``2B`` rows, the ``B`` chosen
    answers first (example indices ``2i``), then the ``B`` rejected ones (``2i + 1``), as
    :class:`~maskdiff.hf.collate.MaskedDiffusionCollator` pads them; a pair's precomputed
    reference ELBOs (``"reference": [chosen, rejected]``) become ``"reference_elbos"`` (2B,).
    Under ``pad_policy="eos"`` the EOS padding is eligible, so every row is padded to
    ``max_length`` (required): an answer's ELBO must not depend on its batch."""

    def __init__(self, pad_token_id: int, *, pad_policy: str = "exclude",
                 max_length: int | None = None) -> None:
        self.pad = MaskedDiffusionCollator(pad_token_id, pad_policy=pad_policy)
        if self.pad.pad_policy == "eos":
            if max_length is None:
                raise ValueError("pad_policy='eos' pads answers with eligible EOS tokens: give "
                                 "max_length= so every answer is padded to the same length")
            self.pad.pad_to_multiple_of = max_length

    def __call__(self, pairs: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        out = self.pad(_answers(pairs, 0) + _answers(pairs, 1))
        if all("reference" in pair for pair in pairs):
            reference = torch.tensor([pair["reference"] for pair in pairs], dtype=torch.float64)
            out["reference_elbos"] = reference.t().reshape(-1)
        return out

    def pair_batches(self, pairs: Sequence[Mapping[str, Any]],
                     indices: Sequence[int]) -> tuple[Batch, Batch]:
        """The chosen and the rejected answers of ``pairs[indices]`` as two batches."""
        chosen = [pairs[i] for i in indices]
        return tuple(batch_from_inputs(self.pad(_answers(chosen, k))) for k in range(2))


def _answers(pairs: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
    """The pairs' chosen (``k = 0``) or rejected (``k = 1``) answers, example index ``2i + k``."""
    return [{**pair[ROLES[k]], "example_index": 2 * int(pair["example_index"]) + k}
            for pair in pairs]
