"""The task registry: ``make_task(name, n_train, n_val, n_test, seed, **difficulty)``.

Built-in tasks, all generated or read locally (no download):

- ``"arithmetic"``: GSM8K-format word problems (:mod:`maskdiff.data.arithmetic`);
- ``"table"``: table QA with markup syntax tokens (:mod:`maskdiff.data.tables`);
- ``"text"``: chunks of the World English Bible for pretraining-style runs
  (:mod:`maskdiff.data.corpus`); prompts are empty, so every token is eligible.

Determinism: each split draws from its own numpy generator seeded by
``derive_seed(seed, task code, split code)``. Synthetic splits are drawn test first, then
validation, then train, each skipping prompts already taken, so the splits share no prompt and
the test set does not depend on ``n_train`` or ``n_val`` (the validation set not on ``n_train``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from maskdiff.data import arithmetic, corpus, digits, tables
from maskdiff.data.bpe import BPETokenizer
from maskdiff.data.char_tokenizer import CharTokenizer
from maskdiff.data.examples import Example, TaskData
from maskdiff.core.seeding import derive_seed

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
TEXT_CODE = 3
Splits = tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """The text task: examples are non-overlapping chunks of ``chunk_chars`` characters."""

    chunk_chars: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_chars, int) or self.chunk_chars < 1:
            raise ValueError(f"chunk_chars must be a positive int, got {self.chunk_chars!r}")


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task.

    Attributes:
        name: the registry name.
        code: a fixed integer mixed into the task's seeds (never change it: it would change
            every generated data set).
        config_cls: the frozen dataclass of the task's difficulty keywords.
        make_splits: ``(config, (n_train, n_val, n_test), seed) -> (train, val, test)``.
        alphabet: ``config -> str``, the characters of the task's char tokeniser.
        syntax_tokens: markup strings that are SyRM syntax tokens (single tokens).
        answer_delimiters: strings announcing the answer (ISAD).
    """

    name: str
    code: int
    config_cls: type
    make_splits: Callable[[object, tuple[int, int, int], int], Splits]
    alphabet: Callable[[object], str]
    syntax_tokens: tuple[str, ...] = ()
    answer_delimiters: tuple[str, ...] = ()


def split_rng(seed: int, code: int, split: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, code, SPLIT_CODES[split]))


def synthetic_splits(
    make_example: Callable[[np.random.Generator, object], Example], code: int
) -> Callable[[object, tuple[int, int, int], int], Splits]:
    """``make_splits`` for a generator of single examples: disjoint prompts across splits."""

    def make_splits(config: object, sizes: tuple[int, int, int], seed: int) -> Splits:
        taken: set[str] = set()
        drawn: dict[str, tuple[Example, ...]] = {}
        for split in ("test", "val", "train"):
            n = sizes[SPLIT_CODES[split]]
            rng = split_rng(seed, code, split)
            out: list[Example] = []
            budget = 50 * n + 1000
            while len(out) < n:
                if budget == 0:
                    raise ValueError(
                        f"could only draw {len(out)} of {n} distinct {split} prompts with "
                        f"{config}: the difficulty leaves too few distinct problems"
                    )
                budget -= 1
                example = make_example(rng, config)
                if example.prompt not in taken:
                    taken.add(example.prompt)
                    out.append(example)
            drawn[split] = tuple(out)
        return drawn["train"], drawn["val"], drawn["test"]

    return make_splits


def _text_splits(config: TextConfig, sizes: tuple[int, int, int], seed: int) -> Splits:
    out = []
    for split in ("train", "val", "test"):
        text = corpus.load_corpus(split)
        size = config.chunk_chars
        n_chunks = len(text) // size
        n = sizes[SPLIT_CODES[split]]
        if n > n_chunks:
            raise ValueError(
                f"n_{split}={n} exceeds the {n_chunks} chunks of {size} characters in the "
                f"{split} split ({len(text)} characters)"
            )
        # A seeded choice of chunk positions, not a prefix: a small run still sees the whole
        # split's variety. Chunks do not overlap, so no text is in two examples.
        starts = split_rng(seed, TEXT_CODE, split).permutation(n_chunks)[:n] * size
        out.append(tuple(Example("", text[s:s + size]) for s in starts.tolist()))
    return out[0], out[1], out[2]


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add a task to the registry; a name or a code may be registered once."""
    if spec.name in TASKS:
        raise ValueError(f"task name {spec.name!r} is already registered")
    if any(t.code == spec.code for t in TASKS.values()):
        raise ValueError(f"task code {spec.code} is already used")
    TASKS[spec.name] = spec


register_task(TaskSpec(
    name="arithmetic", code=1, config_cls=arithmetic.ArithmeticConfig,
    make_splits=synthetic_splits(arithmetic.make_example, 1),
    alphabet=lambda config: arithmetic.ALPHABET, answer_delimiters=("####",),
))
register_task(TaskSpec(
    name="table", code=2, config_cls=tables.TableConfig,
    make_splits=synthetic_splits(tables.make_example, 2),
    alphabet=lambda config: tables.ALPHABET, syntax_tokens=tables.MARKUP_TAGS,
    answer_delimiters=("####",),
))
register_task(TaskSpec(
    name="text", code=TEXT_CODE, config_cls=TextConfig, make_splits=_text_splits,
    alphabet=lambda config: corpus.corpus_alphabet(),
))
register_task(TaskSpec(  # class-conditional 8x8 digit images (maskdiff image)
    name="digits", code=digits.DIGITS_CODE, config_cls=digits.DigitsConfig,
    make_splits=digits.make_splits, alphabet=digits.alphabet,
))


def task_names() -> list[str]:
    return sorted(TASKS)


def make_tokenizer(
    name: str,
    train: tuple[Example, ...] = (),
    kind: str = "char",
    vocab_size: int | None = None,
    use_bos: bool = False,
    config: object | None = None,
) -> CharTokenizer | BPETokenizer:
    """The tokeniser factory of task ``name``.

    ``kind="char"``: the task's fixed alphabet (all splits encode) plus its syntax tokens as
    single tokens. ``kind="bpe"``: byte-level BPE of ``vocab_size`` trained on ``train``'s
    prompts and responses, with the syntax tokens as added tokens (``vocab_size=None``: chosen
    from the corpus size, :mod:`maskdiff.data.sizing`).
    """
    spec = _spec(name)
    config = spec.config_cls() if config is None else config
    if kind == "char":
        if vocab_size is not None:
            raise ValueError(f"vocab_size is set by the alphabet for kind='char', got {vocab_size}")
        return CharTokenizer(spec.alphabet(config), extra_tokens=spec.syntax_tokens,
                             use_bos=use_bos)
    if kind == "bpe":
        if not train:
            raise ValueError("kind='bpe' needs training examples to learn merges from")
        texts = [e.prompt + e.response for e in train]
        return BPETokenizer.train(texts, vocab_size, extra_tokens=spec.syntax_tokens,
                                  use_bos=use_bos)
    raise ValueError(f"tokenizer kind must be 'char' or 'bpe', got {kind!r}")


def _spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {task_names()}")
    return TASKS[name]


def make_task(
    name: str,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    *,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    use_bos: bool = False,
    **difficulty: object,
) -> TaskData:
    """Generate (or read) task ``name``'s splits and build its tokeniser.

    ``difficulty`` are the keywords of the task's config class (``ArithmeticConfig``,
    ``TableConfig``, ``TextConfig``); an unknown keyword raises ValueError naming it.
    """
    spec = _spec(name)
    for arg, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{arg} must be a non-negative int, got {value!r}")
    try:
        config = spec.config_cls(**difficulty)
    except TypeError as err:
        raise ValueError(
            f"task {name!r}: bad difficulty keywords {sorted(difficulty)}: {err}"
        ) from err
    train, val, test = spec.make_splits(config, (n_train, n_val, n_test), seed)
    tok = make_tokenizer(name, train, kind=tokenizer, vocab_size=vocab_size, use_bos=use_bos,
                         config=config)
    params = {
        "seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "difficulty": asdict(config), "tokenizer": tokenizer, "vocab_size": tok.vocab_size,
    }
    return TaskData(name=name, train=train, val=val, test=test, tokenizer=tok,
                    syntax_tokens=spec.syntax_tokens, answer_delimiters=spec.answer_delimiters,
                    params=params)
