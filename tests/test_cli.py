"""The command line end to end: train, evaluate, generate, and clean errors on bad input."""

import json

import pytest

from maskdiff.cli import main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "smoke", "--method", "mirror", "--seed", "3",
                 "--set", "optim.max_steps=6", "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_a_run_that_reproduces_from_its_config(smoke_run, tmp_path):
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["seed"] == 3 and config["optim"]["max_steps"] == 6
    assert config["estimator"]["masker"]["name"] == "mirror"
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["steps"] == 6 and results["forward_passes"] == 6 * 8 * 2  # batch 8, 2 views
    # The config.json alone reproduces the run bit for bit.
    again = tmp_path / "again"
    assert main(["train", "--config", str(smoke_run / "config.json"), "--out", str(again),
                 "--quiet"]) == 0
    assert json.loads((again / "results.json").read_text())["best_val"] == results["best_val"]


def test_evaluate_and_generate_use_the_runs_best_checkpoint(smoke_run, capsys):
    assert main(["evaluate", "--run", str(smoke_run), "--split", "test", "--n", "8",
                 "--pass-at-1"]) == 0
    doc = json.loads((smoke_run / "eval.json").read_text())
    assert doc["split"] == "test" and doc["loss"]["n"] == 8 and doc["loss"]["se"] > 0
    assert 0.0 <= doc["pass_at_1"] <= 1.0 and doc["checkpoint"].startswith(str(smoke_run / "best"))
    capsys.readouterr()
    assert main(["generate", "--run", str(smoke_run), "--prompt", "Tom has 3 pens.",
                 "--gen-length", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and 0 < len(lines[0]) <= 6  # one completion of at most 6 characters


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "smoke", "--set", "optim.nope=1"], "no such field 'nope'"),
    (["train", "--preset", "smoke", "--set", "optim.lr=-1"], "optim.lr must be positive"),
    (["train", "--preset", "smoke", "--method", "ppots"], "needs a fitted P-POTS density"),
    (["compare", "--preset", "smoke", "--seeds", "1,x"], "--seeds must be comma-separated"),
])
def test_bad_input_is_a_one_line_error_not_a_traceback(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_malformed_jsonl_line_is_reported_with_file_and_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"\n')
    assert main(["train", "--preset", "smoke", "--train-file", str(data), "--out",
                 str(tmp_path / "run"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert f"{data}:2" in err or ("data.jsonl" in err and "line 2" in err)
