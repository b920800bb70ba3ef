"""Text-to-image on discrete image tokens: scikit-learn's 8×8 handwritten digits (issue 10).

Each of the 1,797 digits (pixel intensities 0..16) becomes one :class:`Example`:

- the **prompt** is the class in words, ``"a handwritten seven"``, right-padded with spaces to
  :data:`PROMPT_WIDTH` characters so every image starts at the same column (all classes then batch
  together in the decoder, and pixel ``k`` always sits at position ``PROMPT_WIDTH + k``);
- the **response** is the image, row-major: 64 characters, one per pixel, each the grey level
  ``0 .. levels-1`` of :func:`quantise` written as a digit character.

Only the 64 image tokens are eligible (docs/method.md §1 "Eligibility"): collate with
:func:`image_collator` (no end-of-response EOS, "exclude" padding; rows are exactly
``PROMPT_WIDTH + 64`` tokens, so there is no padding at all).

Splits come from one seeded interleaving of the classes (every prefix is balanced to within one
image per class): the **test** split is taken first -- the held-out real images the evaluator's
classifier trains and is scored on, never seen by the diffusion model -- then validation, then
train. The test split therefore does not depend on ``n_train`` or ``n_val``.

The registry entry (``make_task("digits", ...)``) is :func:`make_splits` + :func:`alphabet` +
:class:`DigitsConfig` under task code :data:`DIGITS_CODE`; :func:`digits_task` builds the same
:class:`TaskData` without the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from maskdiff.data.char_tokenizer import CharTokenizer
from maskdiff.data.collate import Collator, CollatorConfig
from maskdiff.data.examples import Example, TaskData
from maskdiff.core.seeding import derive_seed

DIGITS_CODE = 10  # the task's seed code (issue 10); never change it: it changes every split
IMAGE_SIDE = 8
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
MAX_PIXEL = 16  # sklearn's digits are 4-bit-ish: 0..16 inclusive
N_IMAGES = 1797
CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_PREFIX = "a handwritten "
PROMPT_WIDTH = len(PROMPT_PREFIX) + max(len(w) for w in CLASS_WORDS)  # 19
MAX_LEVELS = 10  # one digit character per level


@dataclass(frozen=True, kw_only=True)
class DigitsConfig:
    """The digits task's one knob: ``levels`` grey levels per pixel (2..10)."""

    levels: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) \
                or not 2 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be an int in [2, {MAX_LEVELS}], got {self.levels!r}")


def _check_levels(levels: int) -> int:
    return DigitsConfig(levels=levels).levels


# ----------------------------------------------------------------------------- quantisation
def quantise(pixels: np.ndarray, levels: int) -> np.ndarray:
    """Intensities in [0, 16] to grey levels ``round(x / 16 · (levels - 1))`` in [0, levels).

    The levels are evenly spaced on [0, 16], so :func:`dequantise` of level ``k`` quantises back
    to ``k`` exactly, and ``|dequantise(quantise(x)) - x| <= 8 / (levels - 1)``.
    """
    levels = _check_levels(levels)
    values = np.asarray(pixels, dtype=np.float64)
    if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > MAX_PIXEL
                        or not np.all(np.isfinite(values))):
        raise ValueError(f"pixels must be finite and lie in [0, {MAX_PIXEL}], got range "
                         f"[{np.min(values)}, {np.max(values)}]")
    # floor(v + 0.5), not np.round: banker's rounding would send 0.5 and 2.5 in opposite ways.
    return np.floor(values / MAX_PIXEL * (levels - 1) + 0.5).astype(np.int64)


def dequantise(image_levels: np.ndarray, levels: int) -> np.ndarray:
    """Grey levels back to intensities on [0, 16] (level ``k`` -> ``16 k / (levels - 1)``)."""
    levels = _check_levels(levels)
    values = np.asarray(image_levels)
    if values.size and (values.min() < 0 or values.max() >= levels):
        raise ValueError(f"image levels must lie in [0, {levels}), got range "
                         f"[{values.min()}, {values.max()}]")
    return values.astype(np.float64) * MAX_PIXEL / (levels - 1)


def level_chars(levels: int) -> str:
    """The image tokens' characters: ``"0123"`` for 4 levels."""
    return "".join(str(k) for k in range(_check_levels(levels)))


def image_to_text(image_levels: np.ndarray, levels: int) -> str:
    """An (8, 8) or (64,) array of levels as the 64-character response, row-major."""
    values = np.asarray(image_levels)
    if values.size != N_PIXELS:
        raise ValueError(f"an image has {N_PIXELS} pixels, got shape {values.shape}")
    chars = level_chars(levels)
    flat = values.reshape(-1)
    if flat.min() < 0 or flat.max() >= levels:
        raise ValueError(f"image levels must lie in [0, {levels}), got range "
                         f"[{flat.min()}, {flat.max()}]")
    return "".join(chars[int(v)] for v in flat)


def text_to_image(text: str, levels: int) -> np.ndarray:
    """The response text back to an (8, 8) int64 array of levels."""
    chars = level_chars(levels)
    if not isinstance(text, str) or len(text) != N_PIXELS:
        raise ValueError(f"an image is {N_PIXELS} characters, got {text!r:.80}")
    bad = sorted(set(text) - set(chars))
    if bad:
        raise ValueError(f"characters {bad} are not grey levels of a {levels}-level image")
    return np.array([chars.index(c) for c in text], dtype=np.int64).reshape(IMAGE_SIDE, IMAGE_SIDE)


# ----------------------------------------------------------------------------- prompts
def class_prompt(label: int) -> str:
    """``"a handwritten seven"`` padded with spaces to :data:`PROMPT_WIDTH` characters."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= 9:
        raise ValueError(f"label must be an int in [0, 9], got {label!r}")
    return (PROMPT_PREFIX + CLASS_WORDS[int(label)]).ljust(PROMPT_WIDTH)


def label_of(example: Example) -> int:
    """The class an example's prompt asks for."""
    words = example.prompt.strip()
    if not words.startswith(PROMPT_PREFIX) or words[len(PROMPT_PREFIX):] not in CLASS_WORDS:
        raise ValueError(f"prompt {example.prompt!r} is not a digits class prompt")
    return CLASS_WORDS.index(words[len(PROMPT_PREFIX):])


def alphabet(config: DigitsConfig) -> str:
    """Every character of every prompt and every image (the char tokeniser's alphabet)."""
    prompt_chars = set(PROMPT_PREFIX + "".join(CLASS_WORDS) + " ")
    return "".join(sorted(prompt_chars | set(level_chars(config.levels))))


def make_tokenizer(levels: int = 4) -> CharTokenizer:
    return CharTokenizer(alphabet(DigitsConfig(levels=levels)))


def level_token_ids(tokenizer, levels: int) -> list[int]:
    """Token id of each grey level, in level order (id of ``"0"``, of ``"1"``, ...)."""
    ids = [tokenizer.token_to_id(c) for c in level_chars(levels)]
    if any(i is None for i in ids):
        raise ValueError(
            f"the tokenizer lacks some of the level characters {level_chars(levels)!r}")
    return ids


def ids_to_images(ids, tokenizer, levels: int) -> np.ndarray:
    """(B, 64) token ids of generated images to (B, 8, 8) levels; a non-level id raises."""
    table = {token_id: k for k, token_id in enumerate(level_token_ids(tokenizer, levels))}
    rows = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids)
    if rows.ndim != 2 or rows.shape[1] != N_PIXELS:
        raise ValueError(f"ids must have shape (B, {N_PIXELS}), got {rows.shape}")
    bad = sorted(set(rows.reshape(-1).tolist()) - set(table))
    if bad:
        raise ValueError(f"ids {bad[:8]} are not grey-level tokens")
    lookup = np.vectorize(table.__getitem__, otypes=[np.int64])
    return lookup(rows).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


# ----------------------------------------------------------------------------- data
@lru_cache(maxsize=1)
def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images (int64, (N, 8, 8), 0..16) and labels, from scikit-learn's copy."""
    from sklearn.datasets import load_digits  # imported here: a slow import, needed once

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    if images.shape != (N_IMAGES, IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"unexpected digits data shape {images.shape}")
    images = images.astype(np.int64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of all indices in which every prefix is balanced over classes (±1).

    Round r takes each class's r-th image (after a seeded shuffle within the class), classes in
    a freshly shuffled order each round.
    """
    rng = np.random.default_rng(derive_seed(seed, DIGITS_CODE))
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = []
    for r in range(max(len(p) for p in pools)):
        for c in rng.permutation(len(classes)):
            if r < len(pools[c]):
                order.append(int(pools[c][r]))
    return np.asarray(order, dtype=np.int64)


def make_splits(config: DigitsConfig, sizes: tuple[int, int, int], seed: int
                ) -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """``(train, val, test)`` of ``sizes = (n_train, n_val, n_test)`` disjoint images.

    Test first, then validation, then train, along :func:`balanced_order`; their sum may not
    exceed the 1,797 images.
    """
    n_train, n_val, n_test = sizes
    if n_train + n_val + n_test > N_IMAGES:
        raise ValueError(f"n_train + n_val + n_test = {n_train + n_val + n_test} exceeds the "
                         f"{N_IMAGES} digits images")
    images, labels = load_digit_arrays()
    order = balanced_order(labels, seed)
    levels = quantise(images, config.levels)

    def take(start: int, n: int) -> tuple[Example, ...]:
        return tuple(Example(class_prompt(int(labels[i])), image_to_text(levels[i], config.levels))
                     for i in order[start:start + n])

    test = take(0, n_test)
    val = take(n_test, n_val)
    train = take(n_test + n_val, n_train)
    return train, val, test


def digits_task(*, n_train: int = 997, n_val: int = 100, n_test: int = 700, seed: int = 0,
                levels: int = 4) -> TaskData:
    """The digits :class:`TaskData` (what ``make_task("digits", ...)`` gives once registered)."""
    config = DigitsConfig(levels=levels)
    for arg, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} must be a non-negative int, got {value!r}")
    train, val, test = make_splits(config, (n_train, n_val, n_test), seed)
    tokenizer = make_tokenizer(levels)
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test,
              "difficulty": asdict(config), "tokenizer": "char", "vocab_size": tokenizer.vocab_size}
    return TaskData(name="digits", train=train, val=val, test=test, tokenizer=tokenizer,
                    params=params)


def image_collator(tokenizer, max_len: int = PROMPT_WIDTH + N_PIXELS) -> Collator:
    """The collator under which exactly the 64 image tokens are eligible (no EOS appended)."""
    return Collator(tokenizer, CollatorConfig(max_len=max_len, pad_policy="exclude",
                                              overflow="error", append_eos=False))


def examples_to_arrays(examples: Sequence[Example], levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) of levels and labels (N,) of a list of digits examples."""
    images = np.stack([text_to_image(e.response, levels) for e in examples]) if examples else \
        np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), dtype=np.int64)
    labels = np.array([label_of(e) for e in examples], dtype=np.int64)
    return images, labels
