"""Answer extraction, cleaning and pass@1 (maskdiff/answers.py; docs/method.md §8, variance paper A.7.1)."""

from __future__ import annotations

import pytest

from maskdiff.training.answers import answers_match, clean_answer, extract_answer, gold_answer, pass_at_1

CLEANING = [
    # (raw, cleaned)                                   what it checks
    ("  42  ", "42"),                                  # surrounding whitespace (paper)
    ("\\text{Male}", "Male"),                          # \text{} unwrapped (paper)
    ("12 \\text{ apples}", "12 apples"),
    ("\\textbf{\\text{yes}}", "yes"),                  # nested wrappers
    ("\\mathrm{kg}", "kg"),
    ("45\\%", "45%"),                                  # \% -> % (paper)
    ("\\frac{1}{2}", "frac{1}{2}"),                    # backslashes deleted (paper)
    ("Paris.", "Paris"),                               # trailing period (paper)
    ("Paris. . ", "Paris"),
    ("$18", "18"),                                     # dollar signs
    ("\\$1,234.50", "1234.5"),
    ("1,234,567", "1234567"),                          # thousands separators
    ("1{,}000", "1000"),                               # LaTeX thousands separator
    ("1,2", "1,2"),                                    # not a thousands separator: kept
    ("12,5000", "12,5000"),
    ("3, 4", "3, 4"),
    ("3.0", "3"),                                      # canonical numbers
    ("3.", "3"),
    ("-0", "0"),
    ("-0.00", "0"),
    ("+5", "5"),
    (".5", "0.5"),
    ("0.50", "0.5"),
    ("007", "7"),
    ("100", "100"),                                    # no scientific notation (1E+2)
    ("1200.000", "1200"),
    ("\u22127", "-7"),                                 # Unicode minus
    ("-12.50%", "-12.5%"),
    ("12.5 %", "12.5 %"),                              # only number + % directly attached
    ("5 dollars", "5 dollars"),                        # units are not removed
    ("1/2", "1/2"),
    ("a   b\n c", "a b c"),                            # whitespace runs collapsed
    ("Male", "Male"),                                  # case kept
    ("", ""),
    ("  .  ", ""),
]


@pytest.mark.parametrize("raw, cleaned", CLEANING)
def test_clean_answer_table(raw, cleaned):
    assert clean_answer(raw) == cleaned


@pytest.mark.parametrize("raw", [raw for raw, _ in CLEANING])
def test_clean_answer_is_idempotent(raw):
    once = clean_answer(raw)
    assert clean_answer(once) == once


EXTRACTION = [
    # GSM8K style
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("first #### 3\nthen more\n#### 5", "5"),           # the last marker
    ("#### 42\nsome trailing garbage", "42"),          # rest of the line only
    ("####72", "72"),
    ("#### $18.00.", "18"),
    ("####   ", None),                                 # marker with nothing after it
    # boxed
    ("So the answer is \\boxed{72}.", "72"),
    ("\\boxed{\\frac{1}{2}}", "frac{1}{2}"),           # balanced braces
    ("\\boxed{1} then \\boxed{2}", "2"),               # the last box
    ("\\boxed {7}", "7"),
    ("\\boxed{\\text{Male}}", "Male"),
    ("\\boxed{45\\%}", "45%"),
    ("\\boxed{3} and then \\boxed{4", "3"),            # unclosed last box is skipped
    ("\\boxed{", None),
    ("\\boxed{}", None),                               # empty answer
    ("\\boxed{{a}{b}}", "{a}{b}"),
    # both markers: the later one wins
    ("#### 5\nactually \\boxed{6}", "6"),
    ("\\boxed{6} so\n#### 5", "5"),
    # none
    ("The answer is 72.", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTION)
def test_extract_answer_table(text, expected):
    assert extract_answer(text) == expected


MATCHES = [
    ("72", "72", True),
    ("72.0", "72", True),
    ("$72", "72", True),
    ("72.", "72", True),
    ("7,200", "7200", True),
    ("-0", "0", True),
    ("0.5", ".5", True),
    ("\\text{Male}", "Male", True),
    ("45\\%", "45%", True),
    ("72", "73", False),
    ("0.5", "1/2", False),
    ("50%", "0.5", False),
    ("male", "Male", False),
    ("5 dollars", "5", False),
    ("72", "72.01", False),
    (None, "72", False),
    ("72", None, False),
    ("", "", False),                                   # nothing never matches nothing
    (" . ", "", False),
]


@pytest.mark.parametrize("pred, gold, expected", MATCHES)
def test_answers_match_table(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_gold_answer_bare_or_full_solution():
    assert gold_answer("72") == "72"
    assert gold_answer("She pays 3 * 4 = 12.\n#### 1,200") == "1200"
    assert gold_answer("\\boxed{0.50}") == "0.5"
    assert gold_answer(" ") is None


def test_pass_at_1_counts_exact_matches():
    predictions = [
        "3 + 4 = 7\n#### 7",            # right
        "so \\boxed{7.0}",              # right after cleaning
        "#### 8",                       # wrong
        "the answer is 7",              # no marker: wrong
        "#### $1,200.",                 # right against a full-solution gold
    ]
    golds = ["7", "7", "7", "7", "Total 600 * 2 = 1200\n#### 1200"]
    assert pass_at_1(predictions, golds) == pytest.approx(3 / 5)
    assert pass_at_1(["#### 1"], ["1"]) == 1.0
    assert pass_at_1(["#### 1"], ["2"]) == 0.0


def test_pass_at_1_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        pass_at_1(["#### 1"], ["1", "2"])
    with pytest.raises(ValueError, match="at least one"):
        pass_at_1([], [])


def test_non_string_inputs_raise():
    with pytest.raises(ValueError, match="str"):
        extract_answer(72)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str"):
        clean_answer(None)  # type: ignore[arg-type]
