"""docs/method.md §10: corpus n-gram dependency shares and the predicted signal-rich window."""

from __future__ import annotations

import argparse
import io
import json
import math
from collections import Counter
from contextlib import redirect_stdout

import numpy as np
import pytest

from maskdiff.labs import ngram
from maskdiff.commands import predict_window as predict_window_command


def _brute_entropies(tokens, max_order, min_count):
    """Independent reference: Counter over tuples, same definition as the module docstring."""
    out = {}
    for n in range(1, max_order + 1):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        kept = {g: c for g, c in grams.items() if c >= min_count}
        if not kept:
            out[n] = math.nan
            continue
        context = Counter()
        for g, c in kept.items():
            context[g[:-1]] += c
        total = sum(kept.values())
        out[n] = -sum(c / total * math.log(c / context[g[:-1]]) for g, c in kept.items())
    return out


def _binary_process(rng: np.random.Generator, size: int, lags: int, flip: float) -> str:
    """x_t = XOR of the last ``lags`` bits, flipped w.p. ``flip``: order-(lags+1) synergy."""
    bits = list(rng.integers(0, 2, size=lags))
    noise = rng.random(size) < flip
    for t in range(size - lags):
        bits.append(int(np.bitwise_xor.reduce(bits[-lags:])) ^ int(noise[t]))
    return "".join(map(str, bits))


# ---------------------------------------- tokens and counts


def test_tokenize_levels():
    assert ngram.tokenize("the  cat\nsat .") == ["the", "cat", "sat", "."]
    assert ngram.tokenize(" ab \n\tc ", level="char") == ["a", "b", " ", "c"]
    ids = ngram.token_ids("b a b c", "word")
    np.testing.assert_array_equal(ids, [0, 1, 0, 2])
    ids = ngram.token_ids("é b\n\né", "char")  # é, space, b, space, é
    np.testing.assert_array_equal(ids, [2, 0, 1, 0, 2])


@pytest.mark.parametrize("vocabulary", [3, 3000])  # direct base-V codes vs (prefix id, token) pairs
@pytest.mark.parametrize("min_count", [1, 3])
def test_entropies_match_brute_force(vocabulary, min_count):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 3, size=4000)
    if vocabulary > 3:
        rare = rng.random(ids.size) < 0.05
        ids[rare] = rng.integers(3, vocabulary, size=int(rare.sum()))
        ids[-1] = vocabulary - 1
    got = ngram.conditional_entropies(ids, max_order=6, min_count=min_count)
    want = _brute_entropies(ids.tolist(), 6, min_count)
    for order in range(1, 7):
        assert got[order] == pytest.approx(want[order], abs=1e-12)
    tables = ngram.ngram_tables(ids, 6)
    for table in tables:
        brute = Counter(tuple(ids[i : i + table.order]) for i in range(ids.size - table.order + 1))
        assert sorted(table.counts.tolist()) == sorted(brute.values())


def test_pruning_by_min_count_by_hand():
    # a b ×6 then a c ×2: unigrams a8 b6 c2; bigrams ab6 ba6 ac2 ca1;
    # trigrams aba6 bab5 bac1 aca1 cac1
    text = "a b " * 6 + "a c " * 2
    ids = ngram.token_ids(text)
    h = ngram.conditional_entropies(ids, max_order=3, min_count=1)
    assert h[1] == pytest.approx(
        -(0.5 * math.log(0.5) + 6 / 16 * math.log(6 / 16) + 2 / 16 * math.log(2 / 16))
    )
    assert h[2] == pytest.approx(-(6 / 15 * math.log(6 / 8) + 2 / 15 * math.log(2 / 8)))
    pruned = ngram.conditional_entropies(ids, max_order=3, min_count=5)
    assert pruned[1] == pytest.approx(-(8 / 14 * math.log(8 / 14) + 6 / 14 * math.log(6 / 14)))
    assert pruned[2] == 0.0 and pruned[3] == 0.0  # kept ab, ba, aba, bab are deterministic
    weights = ngram.dependency_shares(text, min_count=5, max_order=3)
    assert weights == {2: 1.0, 3: 0.0}
    types = ngram.dependency_shares(text, min_count=5, max_order=3, estimator="types")
    assert types == {2: pytest.approx(2 / 4), 3: pytest.approx(2 / 4)}  # {ab, ba} and {aba, bab}
    gone = ngram.conditional_entropies(ids, max_order=3, min_count=7)
    assert gone[1] == 0.0 and math.isnan(gone[2]) and math.isnan(gone[3])
    with pytest.raises(ValueError, match="corpus too small for min_count=7"):
        ngram.dependency_shares(text, min_count=7, max_order=3)


# ---------------------------------------- shares on known processes


def test_first_order_process_puts_the_weight_on_bigrams():
    # x_t = x_{t-1} flipped w.p. 0.1: all information is in the previous bit
    # (gain ln2 - h(0.1) = 0.368 nats).
    text = _binary_process(np.random.default_rng(0), 60_000, lags=1, flip=0.1)
    prediction = ngram.predict_window(text, level="char")
    assert prediction.weights[2] > 0.99
    assert prediction.statistics[2] == pytest.approx(math.log(2) - 0.3250829733914482, abs=0.01)
    assert prediction.t_star == pytest.approx(0.5, abs=0.01)
    assert sum(prediction.weights.values()) == pytest.approx(1.0, abs=1e-12)


def test_parity_process_puts_the_weight_on_trigrams():
    # x_t = x_{t-1} XOR x_{t-2} flipped w.p. 0.1: pairs are independent, all information is the
    # order-3 synergy the parity paper uses as the model of an order-3 dependency.
    text = _binary_process(np.random.default_rng(1), 60_000, lags=2, flip=0.1)
    prediction = ngram.predict_window(text, level="char")
    assert prediction.weights[3] > 0.99
    assert prediction.weights[2] < 0.005
    assert prediction.t_star == pytest.approx(1 / 3, abs=0.01)
    assert prediction.n_tokens == 60_000
    low, high = prediction.window(0.1)
    assert high - low == pytest.approx(0.1) and low <= prediction.t_star <= high
    curve = prediction.signal_curve
    assert curve.t.shape == curve.signal.shape == (101,)


def test_quadratic_variant_moves_t_star_toward_half():
    text = (
        ("the cat sat on the mat . " * 40)
        + ("a dog ran to a park . " * 30)
        + ("the dog sat . " * 20)
    )
    linear = ngram.predict_window(text)
    quadratic = ngram.predict_window(text, power=2)
    assert linear.weights == quadratic.weights
    assert linear.t_star < quadratic.t_star <= 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"level": "byte"}, "level must be one of"),
        ({"estimator": "mass"}, "estimator must be one of"),
        ({"min_count": 0}, "min_count must be an integer >= 1, got 0"),
        ({"max_order": 1}, "max_order must be an integer >= 2, got 1"),
    ],
)
def test_predict_window_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ngram.predict_window("a b a b a b a b a b a b", **kwargs)


def test_predict_window_rejects_empty_and_tiny_corpora():
    with pytest.raises(ValueError, match="corpus is empty"):
        ngram.predict_window("  \n ")
    with pytest.raises(ValueError, match="corpus too small"):
        ngram.predict_window("one two three four")


# ---------------------------------------- CLI


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    predict_window_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def test_cli_predict_window_json(tmp_path):
    corpus = tmp_path / "parity.txt"
    corpus.write_text(_binary_process(np.random.default_rng(2), 30_000, lags=2, flip=0.1))
    code, out = _run(["predict-window", "--corpus", str(corpus), "--level", "char", "--json"])
    assert code == 0
    report = json.loads(out)
    assert set(report["weights"]) == {"2", "3", "4", "5", "6"}
    assert report["weights"]["3"] > 0.99
    assert report["t_star"] == pytest.approx(1 / 3, abs=0.01)
    assert report["min_count"] == 5 and report["level"] == "char"
    code, table = _run(
        ["predict-window", "--corpus", str(corpus), "--level", "char", "--min-count", "3"]
    )
    assert code == 0 and "t_star 0.33" in table


def test_cli_predict_window_bad_files(tmp_path):
    with pytest.raises(ValueError, match="--corpus: no such file"):
        _run(["predict-window", "--corpus", str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    with pytest.raises(ValueError, match="--corpus: the file is empty"):
        _run(["predict-window", "--corpus", str(empty)])
    with pytest.raises(ValueError, match="--min-count must be an integer >= 1, got 0"):
        _run(["predict-window", "--corpus", str(empty), "--min-count", "0"])
