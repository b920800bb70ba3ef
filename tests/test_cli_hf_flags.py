"""The command line speaks Hugging Face: every ``--hf`` command (and the HF training example)
takes ``--auto-class``, ``--trust-remote-code``, ``--logit-shift``, ``--attention`` and
``--mask-token-id`` from one shared argument group, and they reach ``load_hf_model``."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import maskdiff.hf  # noqa: E402
import maskdiff.hf.loading  # noqa: E402
import maskdiff.hf.source  # noqa: E402
from maskdiff.cli import build_parser, main  # noqa: E402
from test_evaluation import MASK_ID, bert_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--auto-class", "AutoModelForMaskedLM", "--trust-remote-code", "--logit-shift", "1",
         "--attention", "none", "--mask-token-id", str(MASK_ID)]
EXPECTED = {"auto_class": "AutoModelForMaskedLM", "trust_remote_code": True, "logit_shift": 1,
            "attention": "none", "mask_token_id": MASK_ID}


class _Loaded(Exception):
    """Raised by the spy once load_hf_model has been called: the test has what it needs."""


@pytest.fixture
def spy(monkeypatch):
    """load_hf_model at every place that imports it: records its keywords, loads for real
    (the options must be valid), then stops the command."""
    calls = []
    real = maskdiff.hf.loading.load_hf_model

    def fake(name, **kwargs):
        calls.append(kwargs)
        real(name, **kwargs)
        raise _Loaded

    for module in (maskdiff.hf.loading, maskdiff.hf.source, maskdiff.hf):
        monkeypatch.setattr(module, "load_hf_model", fake)
    return calls


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "bert"
    bert_dir(path)
    rows = tmp_path_factory.mktemp("data") / "rows.jsonl"
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    rows.write_text("".join(json.dumps({"prompt": f"what is {a} plus two", "response": b}) + "\n"
                            for a, b in zip(words, words[2:] + words[:2])))  # distinct rows
    return path, rows


def _commands(path, rows, out):
    return {
        "generate": ["generate", "--hf", str(path), "--prompt", "hello"],
        "evaluate": ["evaluate", "--hf", str(path), "--data", str(rows)],
        "fit-pots": ["fit-pots", "--hf", str(path), "--data", str(rows), "--out", str(out / "f")],
        "decompose": ["decompose", "--hf", str(path), "--data", str(rows), "--out", str(out / "d")],
        "compare": ["compare", "--hf", str(path), "--train-file", str(rows), "--out",
                    str(out / "c"), "--seeds", "0"],
    }


@pytest.mark.parametrize("command", ["generate", "evaluate", "fit-pots", "decompose", "compare"])
def test_every_hf_command_passes_the_loading_flags(command, bert, spy, tmp_path):
    path, rows = bert
    argv = _commands(path, rows, tmp_path)[command] + FLAGS
    with pytest.raises(_Loaded):
        main(argv)
    assert len(spy) == 1
    assert {k: spy[0].get(k) for k in EXPECTED} == EXPECTED


def test_the_flags_are_one_shared_group_with_defaults_left_to_load_hf_model(bert, tmp_path):
    """Every --hf command has the same flags (one group); a flag not given is not passed, so
    load_hf_model's own default applies."""
    from maskdiff.commands import hf_load_kwargs

    path, rows = bert
    parser = build_parser()
    for argv in _commands(path, rows, tmp_path).values():
        args = parser.parse_args(argv)
        assert hf_load_kwargs(args) == {"trust_remote_code": False}
        args = parser.parse_args(argv + FLAGS)
        assert hf_load_kwargs(args) == EXPECTED
    with pytest.raises(SystemExit):
        parser.parse_args(_commands(path, rows, tmp_path)["generate"] + ["--attention", "3d"])


def test_the_hf_training_example_takes_the_flags(bert, spy, tmp_path):
    path, rows = bert
    script = runpy.run_path(str(ROOT / "examples" / "sft_llada_8b.py"))
    args = script["parse_args"](["--model", str(path), "--data", str(rows),
                                 "--output-dir", str(tmp_path / "o")])
    assert args.trust_remote_code is True and args.loss_convention == "llada-sft"
    with pytest.raises(_Loaded):
        script["main"](["--model", str(path), "--data", str(rows), "--output-dir",
                        str(tmp_path / "o"), "--device", "cpu", "--no-bf16"] + FLAGS)
    assert {k: spy[0].get(k) for k in EXPECTED} == EXPECTED
