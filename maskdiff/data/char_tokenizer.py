"""A character-level tokeniser with single-token markup tags, for the synthetic tasks.

Id layout (deterministic, so a model trained with one instance matches any rebuilt one):
``0, 1, 2`` pad, eos, mask; ``3`` bos when ``use_bos``; then the multi-character
``extra_tokens`` in the order given; then the alphabet's characters in sorted order.

A run's alphabet is built from its own data, so training never meets a character outside it
(:meth:`CharTokenizer.encode` raises, naming it). Evaluation text does (a harness task's ``:``):
:meth:`CharTokenizer.encode_with_unknowns` maps such characters to :attr:`CharTokenizer.unk_id`,
the MASK id, and returns them so the caller can count and report them. MASK is what a
masked-diffusion model reads as "a token it is not shown": the right reading of a character it
never saw, and it needs no vocabulary change, so every saved run reads it alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text
from maskdiff.data.tokenizer import BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, checked_id


class CharTokenizer:
    """One id per character of ``alphabet``, plus one id per multi-character extra token.

    Args:
        alphabet: the characters the data may contain (duplicates and order do not matter).
        extra_tokens: strings of two or more characters encoded as single ids wherever they
            occur in text (longest match first), e.g. table markup ``"<td>"``.
        use_bos: whether the vocabulary has a BOS token.
    """

    def __init__(
        self, alphabet: Iterable[str], extra_tokens: Sequence[str] = (), use_bos: bool = False
    ) -> None:
        chars = sorted(set("".join(alphabet)))
        if not chars:
            raise ValueError("alphabet is empty")
        extra = tuple(extra_tokens)
        for token in extra:
            if not isinstance(token, str) or len(token) < 2:
                raise ValueError(f"extra_tokens must be strings of >= 2 characters, got {token!r}")
        if len(set(extra)) != len(extra):
            raise ValueError(f"extra_tokens has duplicates: {extra}")
        controls = [PAD_TOKEN, EOS_TOKEN, MASK_TOKEN] + ([BOS_TOKEN] if use_bos else [])
        clash = set(controls) & set(extra)
        if clash:
            raise ValueError(f"extra_tokens may not repeat control tokens: {sorted(clash)}")
        self._alphabet = "".join(chars)
        self._extra = extra
        self._use_bos = use_bos
        self._id_to_token: list[str] = controls + list(extra) + chars
        self._char_to_id = {c: len(controls) + len(extra) + k for k, c in enumerate(chars)}
        self._extra_to_id = {t: len(controls) + k for k, t in enumerate(extra)}
        self._n_controls = len(controls)
        # Longest extra token first so "</td>" is never read as "<" + "/td>" pieces.
        pattern = "|".join(re.escape(t) for t in sorted(extra, key=len, reverse=True))
        self._extra_re = re.compile(pattern) if extra else None

    # -- the protocol -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def mask_id(self) -> int:
        return 2

    @property
    def bos_id(self) -> int | None:
        return 3 if self._use_bos else None

    @property
    def unk_id(self) -> int:
        """The id an unseen character becomes in :meth:`encode_with_unknowns`: the MASK id."""
        return self.mask_id

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        return self._extra

    @property
    def alphabet(self) -> str:
        return self._alphabet

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a character outside the alphabet raises ValueError naming it."""
        return self._encode(text, None)

    def encode_with_unknowns(self, text: str) -> tuple[list[int], list[str]]:
        """Ids of ``text`` with every character outside the alphabet as :attr:`unk_id`, and
        those characters in order (for evaluation text; training data never has any)."""
        unknown: list[str] = []
        return self._encode(text, unknown), unknown

    def _encode(self, text: str, unknown: list[str] | None) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        start = 0
        matches = self._extra_re.finditer(text) if self._extra_re is not None else ()
        for match in matches:
            self._encode_chars(text, start, match.start(), ids, unknown)
            ids.append(self._extra_to_id[match.group()])
            start = match.end()
        self._encode_chars(text, start, len(text), ids, unknown)
        return ids

    def _encode_chars(self, text: str, start: int, end: int, out: list[int],
                      unknown: list[str] | None = None) -> None:
        for position in range(start, end):
            token_id = self._char_to_id.get(text[position])
            if token_id is None and unknown is not None:
                unknown.append(text[position])
                token_id = self.unk_id
            if token_id is None:
                raise ValueError(
                    f"character {text[position]!r} at position {position} of text "
                    f"{text[max(0, position - 20):position + 20]!r} is not in the alphabet"
                )
            out.append(token_id)

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The text of ``ids``; control tokens render as ``"<eos>"`` etc. unless skipped."""
        pieces = []
        for position, token_id in enumerate(ids):
            token_id = checked_id(token_id, position, self.vocab_size)
            if skip_special and token_id < self._n_controls:
                continue
            pieces.append(self._id_to_token[token_id])
        return "".join(pieces)

    def token_to_id(self, token: str) -> int | None:
        if token in self._extra_to_id:
            return self._extra_to_id[token]
        if token in self._char_to_id:
            return self._char_to_id[token]
        controls = self._id_to_token[: self._n_controls]
        return controls.index(token) if token in controls else None

    def id_to_token(self, token_id: int) -> str:
        return self._id_to_token[token_id]

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": "char",
            "alphabet": self._alphabet,
            "extra_tokens": list(self._extra),
            "use_bos": self._use_bos,
            # Redundant with the fields above; kept so a reader can check the layout.
            "vocab": self._id_to_token,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, jsonio.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "char":
            raise ValueError(f"path {str(path)!r} holds a {data.get('type')!r} tokenizer, not char")
        tokenizer = cls(data["alphabet"], data["extra_tokens"], use_bos=data["use_bos"])
        if "vocab" in data and data["vocab"] != tokenizer._id_to_token:
            raise ValueError(f"path {str(path)!r}: stored vocab does not match its rebuilt layout")
        return tokenizer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"CharTokenizer(vocab_size={self.vocab_size}, extra_tokens={self._extra}, "
            f"use_bos={self._use_bos})"
        )
