"""The tokeniser protocol every data path uses and the control-token strings.

A tokeniser maps text to ids and back and names four control ids: ``pad_id`` (padding the model
never attends to under the "exclude" pad policy), ``eos_id`` (end of a response; LLaDA pads with
it), ``mask_id`` (the diffusion MASK token, docs/method.md §1) and an optional ``bos_id``. Control tokens
are never produced by :meth:`Tokenizer.encode` from plain text -- a literal ``"<eos>"`` in the
data stays text -- so data can never forge a MASK or an EOS. Markup tokens such as ``"<td>"``
(``extra_tokens``) *are* matched in text, as single ids: they are SyRM's syntax tokens.

Two implementations: :class:`maskdiff.data.char_tokenizer.CharTokenizer` (synthetic tasks) and
:class:`maskdiff.data.bpe.BPETokenizer` (Hugging Face ``tokenizers``). Both import this module;
loading a saved one (:func:`maskdiff.data.tokenizer_files.load_tokenizer`) imports both, so it
lives in its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

# The strings of the control tokens; shared by both tokenisers so a saved file reads the same.
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
MASK_TOKEN = "<mask>"
BOS_TOKEN = "<bos>"


@runtime_checkable
class Tokenizer(Protocol):
    """What the collator, the tasks and generation need from a tokeniser."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def mask_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def extra_tokens(self) -> tuple[str, ...]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def save(self, path: str | Path) -> None: ...


def checked_id(token_id: int, position: int, vocab_size: int) -> int:
    """``token_id`` as an int, or ValueError naming its position when it is not a vocabulary id
    (a decoder must not turn a bad id into text silently)."""
    token_id = int(token_id)
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"token id {token_id} at position {position} is outside "
                         f"[0, vocab_size={vocab_size})")
    return token_id


def control_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids of pad, eos, mask and (if any) bos."""
    ids = {tokenizer.pad_id, tokenizer.eos_id, tokenizer.mask_id}
    if tokenizer.bos_id is not None:
        ids.add(tokenizer.bos_id)
    return frozenset(ids)


def single_token_ids(tokenizer: Tokenizer, tokens: Sequence[str]) -> frozenset[int]:
    """The ids of ``tokens``, each of which must be one token of ``tokenizer``.

    Used for SyRM syntax ids and ISAD delimiter ids: a markup tag split into several pieces
    would give a ragged, tokeniser-dependent syntax mask, so that is an error, not a fallback.
    """
    ids = set()
    for token in tokens:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"token {token!r} is not a single token of this tokenizer "
                f"(its extra_tokens are {tokenizer.extra_tokens})"
            )
        ids.add(token_id)
    return frozenset(ids)


def check_ids(ids: Sequence[int], vocab_size: int, where: str) -> None:
    """Raise ValueError if any id lies outside ``[0, vocab_size)``."""
    for position, token_id in enumerate(ids):
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"{where}: token id {token_id} at position {position} is outside "
                f"[0, vocab_size={vocab_size})"
            )
