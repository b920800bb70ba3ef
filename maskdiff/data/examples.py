"""The unit of data: a prompt and a response (docs/method.md §1 eligibility follows this split).

SFT examples have a prompt the model always sees and a response it learns to produce;
pretraining text is an example with an empty prompt, so every token is eligible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maskdiff.data.tokenizer import single_token_ids


@dataclass(frozen=True)
class Example:
    """One prompt/response pair. ``prompt == ""`` means pretraining text."""

    prompt: str
    response: str

    def __post_init__(self) -> None:
        for name in ("prompt", "response"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"Example.{name} must be a str, got {type(value).__name__}")

    @property
    def is_pretraining(self) -> bool:
        return self.prompt == ""


@dataclass(frozen=True)
class TaskData:
    """The splits of one task, the tokeniser made for it, and what SyRM / ISAD need.

    Attributes:
        name: the registry name of the task.
        train, val, test: the splits.
        tokenizer: a tokeniser that encodes every example of every split.
        syntax_tokens: the markup strings SyRM treats as syntax (empty if the task has none);
            ``single_token_ids(tokenizer, syntax_tokens)`` gives their ids.
        answer_delimiters: strings that announce the answer (ISAD's ids), e.g. ``("####",)``
            -- tokenised, these may be several tokens (one per ``#`` for a char tokeniser).
        params: the resolved generation parameters (seed, sizes, difficulty), for run configs.
    """

    name: str
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    tokenizer: Any
    syntax_tokens: tuple[str, ...] = ()
    answer_delimiters: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)

    def syntax_ids(self) -> frozenset[int] | None:
        """SyRM's syntax ids for :class:`~maskdiff.data.collate.Collator`; None if the task
        has no markup (so the batch carries no syntax mask)."""
        return single_token_ids(self.tokenizer, self.syntax_tokens) if self.syntax_tokens else None

    def delimiter_ids(self) -> frozenset[int]:
        """ISAD's token ids: every token of every answer delimiter as this tokeniser encodes it
        (for a char tokeniser, ``"####"`` gives the one id of ``"#"``)."""
        return frozenset(i for d in self.answer_delimiters for i in self.tokenizer.encode(d))

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)
