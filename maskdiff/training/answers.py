"""Answer extraction and exact-match scoring for pass@1 (docs/method.md §8; variance paper A.7.1).

Extraction: the answer follows the last ``#### `` marker (GSM8K style; the rest of that line) or
sits inside the last complete ``\\boxed{...}`` (braces balanced, so ``\\boxed{\\frac{1}{2}}``
works). When a text has both, the marker that occurs later wins: it is the model's final word.
An unclosed ``\\boxed{`` (a generation cut off mid-answer) is not an answer.

Cleaning (:func:`clean_answer`), in order. The first five steps are the paper's A.7.1 "How Data
Cleaned" list, the rest are ours, chosen so that formatting differences that cannot change the
meaning of a GSM8K or HiTab answer do not count as errors:

1. strip surrounding whitespace;                                         (paper)
2. unwrap ``\\text{...}`` blocks (also ``\\textbf``, ``\\textit``, ``\\textrm``, ``\\mathrm``,
   ``\\mbox``: the same thing typeset differently);                    (paper, variants ours)
3. ``\\%`` -> ``%``;                                                      (paper)
4. delete backslashes (after turning LaTeX's ``{,}`` thousands separator into ``,``); (paper)
5. trim trailing periods (and the whitespace around them);               (paper)
6. remove ``$`` signs; map the Unicode minus to ``-``; collapse runs of whitespace;
7. remove thousands separators: a comma between digits followed by exactly three digits
   (``1,234,567`` -> ``1234567``; ``1,2`` is left alone);
8. canonical numbers: when the whole answer is a decimal number, optionally followed by ``%``, it
   is rewritten canonically (``3.0`` -> ``3``, ``-0`` -> ``0``, ``+5`` -> ``5``, ``.5`` -> ``0.5``,
   ``007`` -> ``7``, ``12.50%`` -> ``12.5%``).

Not done (the paper does not state it, and it could turn a wrong answer into a right one): no
lower-casing, no removal of unit words (``5 dollars`` != ``5``), no equivalence of fractions and
decimals (``1/2`` != ``0.5``), no percent/fraction conversion (``50%`` != ``0.5``).
Cleaning is idempotent: ``clean_answer(clean_answer(s)) == clean_answer(s)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

_BOXED = re.compile(r"\\boxed\s*\{")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(%?)")
_GSM_MARKER = "####"


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing the one at ``open_index``, or None if it never closes."""
    depth = 0
    for index in range(open_index, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def _unwrap(text: str, wrapper: re.Pattern[str]) -> str:
    """Replace every ``\\cmd{content}`` matched by ``wrapper`` with ``content`` (nested too)."""
    while True:
        match = wrapper.search(text)
        if match is None:
            return text
        close = _closing_brace(text, match.end() - 1)
        if close is None:  # unbalanced: drop just the command and its brace
            return text[: match.start()] + text[match.end() :]
        text = text[: match.start()] + text[match.end() : close] + text[close + 1 :]


def _canonical_number(text: str) -> str:
    match = _NUMBER.fullmatch(text)
    if match is None:
        return text
    sign, digits, percent = match.groups()
    try:
        value = Decimal(sign + digits)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return text
    if value == 0:
        return "0" + percent  # also turns -0, +0.00 into 0
    # normalize() drops trailing zeros; format "f" keeps it out of scientific notation (1E+2).
    canonical = format(value.normalize(), "f")
    return canonical + percent


def clean_answer(raw: str) -> str:
    """Normalise an answer string as the module docstring lists (A.7.1 plus our extensions)."""
    if not isinstance(raw, str):
        raise ValueError(f"answer must be a str, got {type(raw).__name__}")
    text = raw.strip()
    text = _unwrap(text, _TEXT_WRAPPER)
    text = text.replace("\\%", "%")
    text = text.replace("{,}", ",")
    text = text.replace("\\", "")
    text = re.sub(r"[\s.]+$", "", text)
    text = text.replace("$", "").replace("\u2212", "-")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"[\s.]+$", "", text)  # a period may have hidden behind a "$"
    text = _THOUSANDS.sub("", text)
    return _canonical_number(text)


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(start index, content) of the last complete ``\\boxed{...}``, or None."""
    found = None
    for match in _BOXED.finditer(text):
        close = _closing_brace(text, match.end() - 1)
        if close is not None:
            found = (match.start(), text[match.end() : close])
    return found


def _last_marker(text: str) -> tuple[int, str] | None:
    """(start index, rest of the line) after the last ``####``, or None."""
    start = text.rfind(_GSM_MARKER)
    if start < 0:
        return None
    rest = text[start + len(_GSM_MARKER) :]
    return start, rest.split("\n", 1)[0]


def extract_answer(text: str) -> str | None:
    """The cleaned final answer of a solution text, or None when it states none (docs/method.md §8)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    candidates = [c for c in (_last_boxed(text), _last_marker(text)) if c is not None]
    if not candidates:
        return None
    _, raw = max(candidates, key=lambda candidate: candidate[0])
    cleaned = clean_answer(raw)
    return cleaned if cleaned else None


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Exact match of two answers after cleaning both; a missing or empty answer never matches."""
    if pred is None or gold is None:
        return False
    pred_clean, gold_clean = clean_answer(pred), clean_answer(gold)
    return bool(pred_clean) and pred_clean == gold_clean


def gold_answer(gold: str) -> str | None:
    """A gold label's answer: extracted when it is a full solution (has a marker), else cleaned."""
    extracted = extract_answer(gold)
    if extracted is not None:
        return extracted
    cleaned = clean_answer(gold)
    return cleaned if cleaned else None


def pass_at_1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of generations whose extracted answer matches the gold answer (docs/method.md §8).

    ``predictions`` are full generated texts (an answer must be marked with ``####`` or
    ``\\boxed{}``; an unmarked text scores 0). ``golds`` are gold answers, either bare (``"72"``)
    or full solutions ending in a marker (a GSM8K ``answer`` field).
    """
    if len(predictions) != len(golds):
        raise ValueError(
            f"predictions and golds must have the same length, got {len(predictions)} "
            f"and {len(golds)}"
        )
    if len(predictions) == 0:
        raise ValueError("pass_at_1 needs at least one prediction, got 0")
    hits = sum(
        answers_match(extract_answer(prediction), gold_answer(gold))
        for prediction, gold in zip(predictions, golds)
    )
    return hits / len(predictions)
