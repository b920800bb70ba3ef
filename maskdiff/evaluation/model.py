"""One model interface for evaluation: a native run or a Hugging Face model (plain or PEFT).

:class:`EvalModel` holds what scoring and decoding need and nothing else: a model under the
contract ``model(input_ids (B, L), attention_mask (B, L) | None) -> logits (B, L, V)``
(docs/architecture.md §3), its mask and EOS ids, a length limit, and text <-> ids. A context is
encoded as the model saw prompts in training (a native run: its tokenizer; a HF model: with the
tokenizer's special tokens, as :func:`maskdiff.hf.collate.encode_row` does), a continuation
without special tokens.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from maskdiff.core.blocks import BlockLayout


@dataclass
class EvalModel:
    """A model with its tokenizer, behind one interface for the ELBO evaluator and the decoder.

    Attributes:
        model: the model contract (native transformer or :class:`~maskdiff.hf.HFAdapter`).
        tokenizer: the native tokenizer or the HF tokenizer.
        mask_token_id, eos_token_id: the ids the ELBO and the decoder use.
        max_length: the longest sequence the model takes (None: no known limit).
        native: True for a maskdiff run, False for a HF model.
        name: where it came from (a run directory or a HF name/path).
        normalizer: what :mod:`maskdiff.evaluation.scoring` divides per-example losses by when
            it reports per-token numbers (the run's; ``"eligible"`` for HF models).
        unknown: the characters a native run's char tokenizer never saw, counted over all the
            text encoded so far: each was read as the tokenizer's ``unk_id`` (its MASK id), never
            a crash; :meth:`report_unknown` says so once.
    """

    model: nn.Module
    tokenizer: Any
    mask_token_id: int
    eos_token_id: int | None
    max_length: int | None
    native: bool
    name: str
    normalizer: str = "eligible"
    layout: BlockLayout | None = None
    unknown: Counter = field(default_factory=Counter)
    _reported: bool = False

    def _native_encode(self, text: str) -> list[int]:
        lenient = getattr(self.tokenizer, "encode_with_unknowns", None)
        if lenient is None:  # byte-level BPE: nothing is unknown
            return list(self.tokenizer.encode(text))
        ids, unknown = lenient(text)
        self.unknown.update(unknown)
        return list(ids)

    def encode_context(self, text: str) -> list[int]:
        if self.native:
            return self._native_encode(text)
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def encode_continuation(self, text: str) -> list[int]:
        if self.native:
            return self._native_encode(text)
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())

    def unknown_summary(self) -> str | None:
        """One line naming the count and the characters, or None when there were none."""
        if not self.unknown:
            return None
        chars = "".join(sorted(self.unknown))
        return (f"{self.name}: {self.unknown_count} occurrence(s) of {len(self.unknown)} "
                f"character(s) outside the run's alphabet ({chars!r}) were read as the unknown "
                f"id {self.tokenizer.unk_id} (MASK)")

    def report_unknown(self) -> int:
        """Print :meth:`unknown_summary` to stderr, the first time only; the count."""
        line = self.unknown_summary()
        if line is not None and not self._reported:
            print(f"maskdiff: {line}", file=sys.stderr)
            self._reported = True
        return self.unknown_count

    def decode(self, ids: list[int]) -> str:
        """Generated ids to text: cut at the first EOS, special tokens dropped."""
        if self.eos_token_id is not None and self.eos_token_id in ids:
            ids = ids[:ids.index(self.eos_token_id)]
        if self.native:
            return self.tokenizer.decode(ids, skip_special=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return None if self.native else getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation as one prompt string (HF tokenizers with a chat template only)."""
        if not self.chat_template:
            raise ValueError(f"{self.name} has no chat template: evaluate without "
                             f"--apply_chat_template")
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)


def load_eval_model(*, run: str | os.PathLike | None = None, hf: str | os.PathLike | None = None,
                    checkpoint: str = "best", device: str = "cpu", mask_token_id: int | None = None,
                    trust_remote_code: bool = False, logit_shift: int | None = None,
                    dtype: str | None = None, attention: str | None = None, auto_class: str | None = None,
                    max_length: int | None = None) -> EvalModel:
    """A native run directory (``run=``, its ``best`` or ``latest`` checkpoint) or a HF model
    (``hf=``: a name or a local directory; a PEFT adapter directory loads on its base model,
    see :func:`maskdiff.hf.load_hf_model`). Exactly one of the two."""
    if (run is None) == (hf is None):
        raise ValueError(f"give exactly one of run= (a maskdiff run directory) and hf= (a Hugging "
                         f"Face model), got run={run!r}, hf={hf!r}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if run is not None:
        from maskdiff.training.config import block_layout
        from maskdiff.training.runs import load_run

        loaded = load_run(run, checkpoint, device)
        if loaded.config.model.causal:
            raise ValueError(f"{run} is a causal (autoregressive) run: the masked-diffusion "
                             f"evaluator needs a bidirectional model")
        tok = loaded.tokenizer
        limit = loaded.config.data.max_len
        return EvalModel(model=loaded.model, tokenizer=tok, mask_token_id=tok.mask_id,
                         eos_token_id=tok.eos_id, native=True, name=str(run),
                         max_length=min(limit, max_length or limit),
                         normalizer=loaded.config.estimator.normalizer,
                         layout=block_layout(loaded.config))
    from maskdiff.hf.loading import load_hf_model

    adapter, tok, mask_id = load_hf_model(hf, mask_token_id=mask_token_id,
                                          trust_remote_code=trust_remote_code,
                                          logit_shift=logit_shift, device=device, dtype=dtype,
                                          attention=attention, auto_class=auto_class)
    config = getattr(adapter.model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    limit = limit if isinstance(limit, int) and limit > 0 else None
    if max_length is not None:
        limit = max_length if limit is None else min(limit, max_length)
    eos = getattr(tok, "eos_token_id", None)
    if eos is None:
        eos = getattr(tok, "sep_token_id", None)  # BERT-style: [SEP] ends a sequence
    return EvalModel(model=adapter, tokenizer=tok, mask_token_id=mask_id,
                     eos_token_id=None if eos is None else int(eos), max_length=limit,
                     native=False, name=str(hf))
