"""Own data with one flag: the BPE vocabulary and data.max_len derived from the data
(maskdiff.data.sizing), and a GSM8K-shaped JSONL that trains with `--tokenizer bpe` alone."""

from __future__ import annotations

import json
import random

import pytest

from maskdiff.cli import main
from maskdiff.data.bpe import BPETokenizer
from maskdiff.data.sizing import auto_vocab_size, derive_max_len, max_len_percentile
from maskdiff.training.config import DataConfig

TINY = ["--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
        "--set", "eval.every=2", "--set", "eval.n_examples=8", "--set", "eval.rates_per_example=1",
        "--set", "optim.warmup_steps=1", "--steps", "2", "--batch-size", "8", "--quiet"]


def gsm8k_like(path, n=120, seed=0):
    """Rows shaped like GSM8K's: a word problem, a worked answer with <<calc>> steps, '#### N'."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = r.randint(2, 99), r.randint(2, 30)
        name, item = r.choice(["Natalia", "Weng", "Betty"]), r.choice(["clips", "pens", "apples"])
        question = (f"{name} sold {item} to {a} of her friends in April, and then she sold {b} "
                    f"times as many {item} in May. " * r.randint(1, 3)
                    + f"How many {item} did {name} sell altogether in April and May?")
        steps = [f"{name} sold {a}*{b} = <<{a}*{b}={a * b}>>{a * b} {item} in May."]
        steps += [f"So far: {a * b}+{a} = <<{a * b}+{a}={a * b + a}>>{a * b + a}."] * r.randint(0, 4)
        rows.append({"prompt": question, "response": "\n".join(steps) + f"\n#### {a * b + a}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def test_max_len_rules():
    assert max_len_percentile(64) is None
    assert max_len_percentile("auto") == 99.0 and max_len_percentile("p95") == 95.0
    assert max_len_percentile("p100") == 100.0
    for bad in ("p0", "p101", "q9", "", 0, True, 1.5):
        with pytest.raises(ValueError, match="data.max_len must be"):
            max_len_percentile(bad)
    lengths = list(range(1, 101))  # 1..100 tokens
    assert derive_max_len(lengths, [4] * 100, 99.0) == 104  # the 99th length, 99, -> 104
    assert derive_max_len(lengths, [4] * 100, 50.0) == 56  # 50 -> 56
    assert derive_max_len(lengths, [60] * 100, 10.0) == 72  # the longest prompt + 8 room
    assert DataConfig(max_len="p90").max_len == "p90"
    with pytest.raises(ValueError, match="data.max_len must be"):
        DataConfig(max_len="long")


def test_bpe_vocabulary_follows_the_corpus_size():
    assert auto_vocab_size(140_000, 259) == 259 + 748  # 2·sqrt(140 000) = 748.3
    assert auto_vocab_size(5_000_000, 259) == 259 + 4472
    assert auto_vocab_size(100, 259) == 259 + 64 and auto_vocab_size(10**12, 259) == 259 + 16000
    texts = ["the cat sat on the mat, the cat ate the rat. "] * 40
    tok = BPETokenizer.train(texts, None)
    assert 256 + 3 < tok.vocab_size <= auto_vocab_size(sum(map(len, texts)), 259)
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_a_gsm8k_shaped_file_trains_with_one_flag(tmp_path, capfd):
    data = tmp_path / "gsm8k.jsonl"
    gsm8k_like(data)
    out = tmp_path / "run"
    assert main(["train", "--train-file", str(data), "--tokenizer", "bpe", "--out", str(out)]
                + TINY) == 0
    err = capfd.readouterr().err
    config = json.loads((out / "config.json").read_text())["data"]
    assert config["tokenizer"] == "bpe" and config["vocab_size"] is None
    assert isinstance(config["max_len"], int) and 64 <= config["max_len"] <= 400
    line = next(x for x in err.splitlines() if "data.max_len='auto'" in x)
    assert f"{config['max_len']} tokens (p99 of the 108 training examples" in line
    assert "are truncated" in line and "data.vocab_size:" in err
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2
    # a percentile that cuts: the count is reported, in the line and in results.json
    out2 = tmp_path / "run-p50"
    assert main(["train", "--train-file", str(data), "--tokenizer", "bpe", "--max-len", "p50",
                 "--out", str(out2)] + TINY) == 0
    err = capfd.readouterr().err
    cut = json.loads((out2 / "results.json").read_text())["truncated"]["train"]["examples"]
    assert cut > 0 and f"; {cut} of them are longer and are truncated" in err


def test_an_explicit_max_len_and_a_config_file_are_kept(tmp_path):
    from maskdiff.cli import build_parser
    from maskdiff.commands.train import build_config

    parse = build_parser().parse_args
    assert build_config(parse(["train", "--train-file", "x.jsonl"])).data.max_len == "auto"
    assert build_config(parse(["train", "--train-file", "x.jsonl", "--max-len", "96"])).data.max_len == 96
    assert build_config(parse(["train", "--train-file", "x.jsonl", "--set",
                               "data.max_len=p90"])).data.max_len == "p90"
    assert build_config(parse(["train"])).data.max_len == 128  # built-in task: the preset's
