"""Turning examples into a :class:`~maskdiff.core.batch.Batch` (docs/method.md §1 "Eligibility").

Layout of one row: ``[bos] prompt response [eos] padding``.

- ``eligible`` is True on the response tokens and on the end-of-response EOS (the model must
  learn where a response stops), and under the "eos" pad policy on the EOS padding too.
  For pretraining text (empty prompt) that is every token. BOS and the prompt never are.
- ``syntax`` (only when ``syntax_ids`` is given) is True on the *prompt's* tokens whose id is a
  syntax id (SyRM, variance paper §3.2.2); responses are eligible anyway.
- ``attention_mask`` is False only on "exclude" padding.

**Pad policy** (``pad_policy``), one vocabulary for this collator and the Hugging Face one
(:class:`maskdiff.hf.collate.MaskedDiffusionCollator`); :data:`PAD_POLICY_ALIASES` maps the older
words to it (``"ignore"``, the Hugging Face path's word, is ``"exclude"``), so configurations
written with them load and give the same batches:

- ``"eos"`` (LLaDA): a row is filled up to ``max_len`` with EOS tokens that are real tokens:
  attended, eligible, in the loss. The model learns to emit EOS after the answer, and
  generation with a fixed ``gen_length`` works as in LLaDA. Rows are always ``max_len`` long,
  since a shorter pad would change how many EOS tokens an example is scored on.
- ``"exclude"``: one EOS ends the response (eligible, attended), then PAD tokens that are
  neither eligible nor attended. ``pad_to_longest`` may then shorten the batch to its longest
  row: padding carries no loss and no attention, and the masks' uniforms do not depend on L
  (:meth:`maskdiff.core.seeding.BatchRandomness.mask_uniforms`), so the losses are unchanged.

**Overflow policy** (``overflow``) for a row longer than ``max_len``: ``"error"`` raises a
ValueError naming the example index and its length; ``"truncate"`` cuts the response's end
(and its EOS) and counts it in :attr:`Collator.n_truncated`. A prompt that leaves no room for
a single response token always raises: truncating it would change the question.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from maskdiff.core.batch import Batch
from maskdiff.data.examples import Example
from maskdiff.data.tokenizer import Tokenizer, check_ids

PAD_POLICIES = ("eos", "exclude")
# Older words still accepted, each meaning one policy above (the HF collator said "ignore").
PAD_POLICY_ALIASES = {"ignore": "exclude"}
OVERFLOW_POLICIES = ("truncate", "error")


def canonical_pad_policy(pad_policy: str) -> str:
    """``pad_policy`` in the one vocabulary :data:`PAD_POLICIES` (an alias is mapped); a value
    that is neither a policy nor an alias raises ValueError."""
    canonical = PAD_POLICY_ALIASES.get(pad_policy, pad_policy)
    if canonical not in PAD_POLICIES:
        raise ValueError(f"pad_policy must be one of {PAD_POLICIES} (or an alias in "
                         f"{sorted(PAD_POLICY_ALIASES)}), got {pad_policy!r}")
    return canonical


@dataclass(frozen=True, kw_only=True)
class CollatorConfig:
    """How examples become rows. See the module docstring for the two policies.

    Attributes:
        max_len: row length L (with ``pad_to_longest``, the most a row may have).
        pad_policy: "eos" (LLaDA: EOS padding is eligible and attended) or "exclude"
            (padding neither attended nor eligible; alias "ignore").
        overflow: "truncate" (cut the response end, counted) or "error".
        append_eos: end each response with EOS. Off for chunks of running text, whose end
            is not the end of a document.
        add_bos: start each row with BOS (the tokeniser must have one).
        pad_to_longest: pad to the batch's longest row instead of max_len ("exclude" only).
    """

    max_len: int
    pad_policy: str = "eos"
    overflow: str = "error"
    append_eos: bool = True
    add_bos: bool = False
    pad_to_longest: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {self.max_len!r}")
        object.__setattr__(self, "pad_policy", canonical_pad_policy(self.pad_policy))
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {self.overflow!r}")
        if self.pad_to_longest and self.pad_policy != "exclude":
            raise ValueError(
                "pad_to_longest=True needs pad_policy='exclude' (EOS padding is scored, so its "
                f"length must not depend on the batch), got pad_policy={self.pad_policy!r}"
            )


@dataclass(frozen=True)
class EncodedExample:
    """One example's ids before padding: ``prompt_ids`` (with BOS) then ``response_ids``
    (with the end-of-response EOS, if any). ``truncated`` tells whether overflow cut it."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    truncated: bool

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


class Collator:
    """Callable on a list of ``(example_index, Example)`` returning a :class:`Batch`.

    Counts (in the process that calls it): :attr:`n_truncated` examples cut by the truncate
    policy and :attr:`n_truncated_tokens` tokens dropped; :meth:`reset_counts` zeroes them.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: CollatorConfig,
        syntax_ids: Collection[int] | None = None,
    ) -> None:
        if config.add_bos and tokenizer.bos_id is None:
            raise ValueError("add_bos=True but the tokenizer has no bos_id")
        self.tokenizer = tokenizer
        self.config = config
        self.syntax_ids = None if syntax_ids is None else frozenset(int(i) for i in syntax_ids)
        if self.syntax_ids is not None:
            check_ids(sorted(self.syntax_ids), tokenizer.vocab_size, "syntax_ids")
        self.n_truncated = 0
        self.n_truncated_tokens = 0

    def reset_counts(self) -> None:
        self.n_truncated = 0
        self.n_truncated_tokens = 0

    def encode(self, index: int, example: Example) -> EncodedExample:
        """Tokenise one example and apply the overflow policy (counting truncations)."""
        tok, cfg = self.tokenizer, self.config
        prompt = ([tok.bos_id] if cfg.add_bos else []) + tok.encode(example.prompt)
        response = tok.encode(example.response)
        if not response:
            raise ValueError(
                f"example {index}: the response has no tokens (response={example.response!r})"
            )
        if cfg.append_eos:
            response.append(tok.eos_id)
        where = f"example {index}"
        check_ids(prompt, tok.vocab_size, f"{where} prompt")
        check_ids(response, tok.vocab_size, f"{where} response")
        length = len(prompt) + len(response)
        if length <= cfg.max_len:
            return EncodedExample(tuple(prompt), tuple(response), truncated=False)
        if cfg.overflow == "error" or len(prompt) >= cfg.max_len:
            reason = (
                f"its prompt alone has {len(prompt)} tokens, leaving no room for the response"
                if len(prompt) >= cfg.max_len
                else "overflow='error'"
            )
            raise ValueError(
                f"example {index} has {length} tokens (prompt {len(prompt)} + response "
                f"{len(response)}), more than max_len={cfg.max_len}; {reason}"
            )
        keep = cfg.max_len - len(prompt)
        self.n_truncated += 1
        self.n_truncated_tokens += len(response) - keep
        return EncodedExample(tuple(prompt), tuple(response[:keep]), truncated=True)

    def __call__(self, items: Sequence[tuple[int, Example]]) -> Batch:
        if len(items) == 0:
            raise ValueError("cannot collate an empty list of examples")
        indices, encoded = [], []
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Example)):
                raise ValueError(f"items must be (example_index, Example) pairs, got {item!r:.80}")
            index = int(item[0])
            if index < 0:
                raise ValueError(f"example_index must be >= 0 (it seeds the draws), got {index}")
            indices.append(index)
            encoded.append(self.encode(index, item[1]))
        return self.pad(indices, encoded)

    def pad(self, indices: Sequence[int], encoded: Sequence[EncodedExample]) -> Batch:
        """Lay encoded examples out in rows under the pad policy."""
        cfg, tok = self.config, self.tokenizer
        length = max(len(e) for e in encoded) if cfg.pad_to_longest else cfg.max_len
        n = len(encoded)
        eos_padding = cfg.pad_policy == "eos"
        fill = tok.eos_id if eos_padding else tok.pad_id
        x0 = torch.full((n, length), fill, dtype=torch.long)
        eligible = torch.zeros((n, length), dtype=torch.bool)
        attention = torch.full((n, length), eos_padding, dtype=torch.bool)
        syntax = None if self.syntax_ids is None else torch.zeros((n, length), dtype=torch.bool)
        for row, example in enumerate(encoded):
            n_prompt, end = len(example.prompt_ids), len(example)
            x0[row, :end] = torch.tensor(example.prompt_ids + example.response_ids)
            attention[row, :end] = True
            # Response (and, under "eos", the EOS padding after it) is what the loss scores.
            eligible[row, n_prompt:] = True
            if not eos_padding:
                eligible[row, end:] = False
            if syntax is not None:
                syntax[row, :n_prompt] = torch.tensor(
                    [token_id in self.syntax_ids for token_id in example.prompt_ids],
                    dtype=torch.bool,
                )
        return Batch(
            x0=x0,
            eligible=eligible,
            attention_mask=attention,
            example_index=torch.tensor(indices, dtype=torch.long),
            syntax=syntax,
        )
