"""A byte-level BPE tokeniser trained with Hugging Face ``tokenizers``, behind our protocol.

Byte-level BPE (GPT-2's pre-tokenisation) encodes any string, so ``decode(encode(s)) == s``
for every ``s``. Markup ``extra_tokens`` are ``tokenizers`` added tokens: matched in raw text
as single ids, like :class:`~maskdiff.data.char_tokenizer.CharTokenizer`'s. The control tokens
(pad, eos, mask, bos) are *not* given to ``tokenizers``: they take the ids just past its
vocabulary, so no text -- not even a literal ``"<eos>"`` -- can encode to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text
from maskdiff.data.sizing import auto_vocab_size
from maskdiff.data.tokenizer import BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, checked_id

_N_BYTES = 256


class BPETokenizer:
    """Wraps a trained ``tokenizers.Tokenizer``; build one with :meth:`train` or :meth:`load`."""

    def __init__(self, hf: HFTokenizer, extra_tokens: Sequence[str] = (), use_bos: bool = False):
        self._hf = hf
        self._extra = tuple(extra_tokens)
        self._use_bos = use_bos
        for token in self._extra:
            if hf.token_to_id(token) is None:
                raise ValueError(f"extra token {token!r} is not in the wrapped tokenizer")
        base = hf.get_vocab_size(with_added_tokens=True)
        self._base = base
        self._controls = [PAD_TOKEN, EOS_TOKEN, MASK_TOKEN] + ([BOS_TOKEN] if use_bos else [])

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int | None,
        extra_tokens: Sequence[str] = (),
        use_bos: bool = False,
        min_frequency: int = 2,
    ) -> "BPETokenizer":
        """Train on ``texts``. ``vocab_size`` counts everything: the 256 byte tokens, the merges,
        the extra tokens and the control tokens; so it must exceed 256 + those. ``None``: chosen
        from the corpus size (:func:`maskdiff.data.sizing.auto_vocab_size`)."""
        n_fixed = _N_BYTES + len(extra_tokens) + 3 + int(use_bos)
        if vocab_size is None:
            texts = list(texts)
            vocab_size = auto_vocab_size(sum(len(t) for t in texts), n_fixed)
        if vocab_size <= n_fixed:
            raise ValueError(
                f"vocab_size must exceed {n_fixed} (256 bytes + extra + control tokens), "
                f"got {vocab_size}"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 3 - int(use_bos),
            min_frequency=min_frequency,
            # normalized=False: match the markup exactly as written in the raw text.
            special_tokens=[AddedToken(t, normalized=False, special=True) for t in extra_tokens],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, extra_tokens, use_bos)

    # -- the protocol -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._base + len(self._controls)

    @property
    def pad_id(self) -> int:
        return self._base

    @property
    def eos_id(self) -> int:
        return self._base + 1

    @property
    def mask_id(self) -> int:
        return self._base + 2

    @property
    def bos_id(self) -> int | None:
        return self._base + 3 if self._use_bos else None

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        return self._extra

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The text of ``ids``; control tokens render as ``"<eos>"`` etc. unless skipped."""
        pieces: list[str] = []
        run: list[int] = []
        for position, token_id in enumerate(ids):
            token_id = checked_id(token_id, position, self.vocab_size)
            if token_id < self._base:
                run.append(token_id)
                continue
            # A control token ends a run of byte-level ids, which decode together.
            pieces.append(self._hf.decode(run, skip_special_tokens=False))
            run = []
            if not skip_special:
                pieces.append(self._controls[token_id - self._base])
        pieces.append(self._hf.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def token_to_id(self, token: str) -> int | None:
        if token in self._controls:
            return self._base + self._controls.index(token)
        return self._hf.token_to_id(token)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        data = {
            "type": "bpe",
            "extra_tokens": list(self._extra),
            "use_bos": self._use_bos,
            "hf_tokenizer": self._hf.to_str(),
        }
        atomic_write_text(path, jsonio.dumps(data, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "bpe":
            raise ValueError(f"path {str(path)!r} holds a {data.get('type')!r} tokenizer, not bpe")
        hf = HFTokenizer.from_str(data["hf_tokenizer"])
        return cls(hf, data["extra_tokens"], data["use_bos"])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BPETokenizer)
            and self._extra == other._extra
            and self._use_bos == other._use_bos
            and self._hf.to_str() == other._hf.to_str()
        )

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, extra_tokens={self._extra})"
