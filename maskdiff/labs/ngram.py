"""Corpus n-gram dependency shares and the predicted signal-rich window (docs/method.md §10).

Parity paper (arXiv 2601.22450) App. F.4 treats a corpus as a mixture in which "a fraction
``w_i`` of the predictive structure is carried by order-i dependencies" (i = 2..6), estimates
``w_i`` "from the actual n-gram frequency distribution ... discarding n-grams occurring fewer than
five times", and maximises ``Signal(t) ∝ Σ_i w_i t (1-t)^{i-1}``. It does not say how a share of
predictive structure is computed from the counts. Our reading (``estimator="information"``,
the default) measures predictive structure in nats:

    H_n  = plug-in conditional entropy H(X_t | previous n-1 tokens), computed over the n-grams
           seen at least ``min_count`` times (the others are discarded; each context's
           continuation distribution is renormalised over its kept continuations);
    g_n  = max(H_{n-1} - H_n, 0)  -- the information the n-th token of context adds, i.e. what
           an order-n dependency explains beyond every lower order (F.4's "synergistic
           information absent from every lower-order sub-context");
    w_n  = g_n / Σ_{m=2..max_order} g_m      (max_order = 6 in the paper).

``H_1`` is the entropy of the kept unigrams. An order with no kept n-gram gets ``g_n = 0`` (then
so do all higher orders: a kept n-gram's prefix is kept too). Negative increments, possible
because pruning (and the end of the stream) change the population between orders, are clipped
to 0. On a synthetic order-3 parity stream this puts > 99% of the weight on w_3 (tests).

``estimator="types"`` is the literal count reading kept for comparison: ``w_n`` ∝ the number of
distinct n-grams seen at least ``min_count`` times.

Tokens: the paper does not name its tokenisation; WikiText ships space-tokenised words
(punctuation split off) and the min-count-5 rule is word2vec's word rule, so ``level="word"``
(split on whitespace, no lower-casing) is the default. ``level="char"`` uses characters with
every whitespace run collapsed to one space. The text is one stream: n-grams may cross line ends.
Counting is numpy, one sort of the token stream per order (see :func:`ngram_tables`): a few MB
of text take a few seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from maskdiff.core.checks import int_at_least
from maskdiff.labs.theory import window_signal_curve, window_t_star

__all__ = [
    "LEVELS",
    "ESTIMATORS",
    "NGramTable",
    "SignalCurve",
    "WindowPrediction",
    "tokenize",
    "token_ids",
    "ngram_tables",
    "conditional_entropies",
    "dependency_shares",
    "predict_window",
]

LEVELS: tuple[str, ...] = ("word", "char")
ESTIMATORS: tuple[str, ...] = ("information", "types")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def tokenize(text: str, level: str = "word") -> list[str]:
    """Split ``text`` into word tokens (whitespace) or characters (whitespace runs -> one space)."""
    _check_choice("level", level, LEVELS)
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if level == "word":
        return text.split()
    return list(" ".join(text.split()))


def token_ids(text: str, level: str = "word") -> np.ndarray:
    """Dense int64 ids (0..V-1) of the tokens of ``text`` (see :func:`tokenize`)."""
    _check_choice("level", level, LEVELS)
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if level == "char":
        # Code points straight from the buffer: no per-character Python objects.
        stream = " ".join(text.split())
        code_points = np.frombuffer(stream.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if code_points.size == 0:
            return code_points
        present = np.zeros(int(code_points.max()) + 1, dtype=np.int64)
        present[code_points] = 1
        return (np.cumsum(present) - 1)[code_points]
    words = text.split()
    vocabulary: dict[str, int] = {}
    # ids in order of first appearance: dense by construction
    return np.fromiter(
        (vocabulary.setdefault(word, len(vocabulary)) for word in words),
        dtype=np.int64,
        count=len(words),
    )


@dataclass(frozen=True)
class NGramTable:
    """The distinct n-grams of one order: ``counts[g]`` occurrences of n-gram ``g``, whose first
    ``n-1`` tokens are identified by ``prefix[g]`` (equal keys <=> equal prefixes; all 0 for
    order 1)."""

    order: int
    counts: np.ndarray
    prefix: np.ndarray


def _count_sorted(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts, by one sort (no inverse needed)."""
    ordered = np.sort(codes)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, ordered.size))


def ngram_tables(ids: np.ndarray, max_order: int = 6) -> list[NGramTable]:
    """Counts of every n-gram of orders 1..max_order of the id stream (index ``n-1`` -> order n).

    When ``V^max_order`` fits in 62 bits (characters, small vocabularies) an n-gram is its base-V
    number and each order costs one plain sort. Otherwise (word vocabularies) an n-gram is the
    pair (dense id of its (n-1)-gram prefix, last token): codes stay below ``N·V``, at the price of
    the inverse index ``np.unique`` builds to give the next order its prefix ids.
    """
    max_order = int_at_least(max_order, "max_order", minimum=1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and ids.min() < 0:
        raise ValueError(f"ids must be non-negative, got minimum {int(ids.min())}")
    vocabulary_size = int(ids.max()) + 1 if ids.size else 1
    direct = max_order * math.log2(max(vocabulary_size, 2)) < 62
    tables: list[NGramTable] = []
    gram_at = ids  # code (direct) or dense id (pairs) of the (n-1)-gram starting at each position
    for order in range(1, max_order + 1):
        starts = ids.size - order + 1
        if starts <= 0:
            empty = np.zeros(0, dtype=np.int64)
            tables.append(NGramTable(order=order, counts=empty, prefix=empty))
            continue
        if order == 1:
            codes = ids
        else:
            codes = gram_at[:starts] * vocabulary_size + ids[order - 1 : order - 1 + starts]
        if direct:
            unique_codes, counts = _count_sorted(codes)
            gram_at = codes
        else:
            unique_codes, inverse, counts = np.unique(
                codes, return_inverse=True, return_counts=True
            )
            gram_at = inverse.astype(np.int64).reshape(-1)
        prefix = unique_codes // vocabulary_size if order > 1 else np.zeros_like(unique_codes)
        tables.append(
            NGramTable(order=order, counts=counts.astype(np.int64), prefix=prefix.astype(np.int64))
        )
    return tables


def _conditional_entropy(table: NGramTable, min_count: int) -> float:
    """Plug-in H(last token | first n-1 tokens) over the kept n-grams, in nats; NaN if none kept."""
    kept = table.counts >= min_count
    if not kept.any():
        return math.nan
    counts = table.counts[kept].astype(np.float64)
    prefix = table.prefix[kept]
    _, context = np.unique(prefix, return_inverse=True)
    context_totals = np.bincount(context, weights=counts)
    total = counts.sum()
    return float(-np.sum(counts / total * np.log(counts / context_totals[context])))


def conditional_entropies(
    ids: np.ndarray, *, max_order: int = 6, min_count: int = 5
) -> dict[int, float]:
    """``{n: H_n}`` for n = 1..max_order (see the module docstring); NaN where nothing is kept."""
    min_count = int_at_least(min_count, "min_count", minimum=1)
    return {
        table.order: _conditional_entropy(table, min_count)
        for table in ngram_tables(ids, max_order)
    }


def _statistics(
    ids: np.ndarray, max_order: int, min_count: int, estimator: str
) -> dict[int, float]:
    """The unnormalised per-order statistic: information gain (nats) or kept type count."""
    if estimator == "types":
        tables = ngram_tables(ids, max_order)
        return {
            t.order: float(np.count_nonzero(t.counts >= min_count)) for t in tables if t.order >= 2
        }
    entropy = conditional_entropies(ids, max_order=max_order, min_count=min_count)
    gains: dict[int, float] = {}
    for order in range(2, max_order + 1):
        gain = entropy[order - 1] - entropy[order]
        gains[order] = 0.0 if math.isnan(gain) else max(gain, 0.0)
    return gains


def dependency_shares(
    text: str,
    *,
    level: str = "word",
    min_count: int = 5,
    max_order: int = 6,
    estimator: str = "information",
) -> dict[int, float]:
    """``{i: w_i}`` for orders 2..max_order, summing to 1 (docs/method.md §10; parity paper App. F.4)."""
    return _shares(
        text, level=level, min_count=min_count, max_order=max_order, estimator=estimator
    )[0]


def _shares(text: str, *, level: str, min_count: int, max_order: int, estimator: str):
    _check_choice("level", level, LEVELS)
    _check_choice("estimator", estimator, ESTIMATORS)
    min_count = int_at_least(min_count, "min_count", minimum=1)
    max_order = int_at_least(max_order, "max_order", minimum=2)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string (the corpus is empty)")
    ids = token_ids(text, level)
    statistics = _statistics(ids, max_order, min_count, estimator)
    total = sum(statistics.values())
    if total <= 0:
        raise ValueError(
            f"corpus too small for min_count={min_count}: no dependency structure among "
            f"{ids.size} {level} tokens (no 2-gram seen >= {min_count} times, "
            "or no information gain)"
        )
    return {order: value / total for order, value in statistics.items()}, statistics, ids.size


@dataclass(frozen=True)
class SignalCurve:
    """``Signal(t)`` on a grid of masking rates."""

    t: np.ndarray
    signal: np.ndarray


@dataclass(frozen=True)
class WindowPrediction:
    """A corpus' dependency shares, ``t* = argmax Signal`` and the curve (docs/method.md §10).

    ``statistics`` holds the unnormalised per-order values behind ``weights`` (information gain
    in nats, or kept type counts); ``n_tokens`` the length of the token stream.
    """

    weights: dict[int, float]
    t_star: float
    signal_curve: SignalCurve
    level: str
    min_count: int
    estimator: str
    power: int
    n_tokens: int
    statistics: dict[int, float] = field(default_factory=dict)

    def window(self, width: float = 0.1) -> tuple[float, float]:
        """The interval of ``width`` centred on ``t*``, shifted to stay inside [0, 1]."""
        if not (isinstance(width, (int, float)) and 0.0 < width <= 1.0):
            raise ValueError(f"width must be in (0, 1], got {width!r}")
        low = min(max(self.t_star - width / 2, 0.0), 1.0 - width)
        return low, low + width


def predict_window(
    text: str,
    *,
    level: str = "word",
    min_count: int = 5,
    max_order: int = 6,
    estimator: str = "information",
    power: int = 1,
    num_points: int = 101,
) -> WindowPrediction:
    """Estimate ``w_2..w_max_order`` from ``text`` and locate the signal-rich rate ``t*``.

    docs/method.md §10 / parity paper App. F.4 (``power=2`` is its quadratic variant); see the module
    docstring for the estimator. Raises ``ValueError`` on an empty or too small corpus.
    """
    weights, statistics, n_tokens = _shares(
        text, level=level, min_count=min_count, max_order=max_order, estimator=estimator
    )
    t_star = window_t_star(weights, power=power)
    t, signal = window_signal_curve(weights, num=num_points, power=power)
    return WindowPrediction(
        weights=weights,
        t_star=t_star,
        signal_curve=SignalCurve(t=t, signal=signal),
        level=level,
        min_count=int(min_count),
        estimator=estimator,
        power=int(power),
        n_tokens=int(n_tokens),
        statistics=statistics,
    )
