"""Faults and bad input, part two (issue 24, items 7, 8, 12, 13, 15, 16): repeated rows, an
undefined standard error, a checkpoint that disagrees with itself, rows longer than a HF model's
context and bytes that are not UTF-8, a full disk, and extending a finished run."""

import errno
import io
import builtins
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from maskdiff import jsonio
from maskdiff.cli import main
from maskdiff.data.holdout import holdout
from maskdiff.data.setup import load_task
from maskdiff.training.checkpoint import CheckpointError
from maskdiff.training.config import DataConfig, OptimConfig
from maskdiff.training.trainer import Trainer

from test_reliability import _smoke, _two_checkpoints
from test_train import _metrics, _weights, tiny


def _strict(text: str):
    """Parse as strict JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- 7. repeated rows: counted, said once, and never on both sides of the split -------------------
def _repeating_file(tmp_path) -> Path:
    distinct = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(30)]
    # the last 3 distinct rows (the held-out 10%) were also pasted in early, twice over
    return _rows(tmp_path / "dup.jsonl", distinct[27:] * 2 + distinct)


def test_repeated_rows_are_counted_and_the_validation_split_holds_no_training_row(tmp_path):
    task = load_task(DataConfig(train_file=str(_repeating_file(tmp_path))))
    assert not set(task.val) & set(task.train)  # on main: all 3 validation rows are trained on
    # the last 10% of the distinct rows in order of first appearance; all other rows are
    # trained on, copies included
    assert [e.prompt for e in task.val] == ["q24", "q25", "q26"] and len(task.train) == 33
    assert task.params["duplicates"] == {"train_rows": 36, "train_repeats": 6, "val_repeats": 0,
                                         "val_in_train": 0}
    # a separate validation file: its rows also trained on are dropped, its repeats kept once
    val = _rows(tmp_path / "val.jsonl", [{"prompt": "q1", "response": "answer 1"},
                                         {"prompt": "new", "response": "x"},
                                         {"prompt": "new", "response": "x"}])
    task = load_task(DataConfig(train_file=str(tmp_path / "dup.jsonl"), val_file=str(val)))
    assert [(e.prompt, e.response) for e in task.val] == [("new", "x")]
    assert task.params["duplicates"]["val_in_train"] == 1
    assert task.params["duplicates"]["val_repeats"] == 1
    only_trained = _rows(tmp_path / "v2.jsonl", [{"prompt": "q1", "response": "answer 1"}])
    with pytest.raises(ValueError, match="every validation row also occurs in the training"):
        load_task(DataConfig(train_file=str(tmp_path / "dup.jsonl"), val_file=str(only_trained)))


def test_a_file_without_repeats_splits_as_before():
    rows = list(range(40))
    split = holdout(rows)
    assert split.train == rows[:36] and split.val == rows[36:] and split.notes("f") is None
    with pytest.raises(ValueError, match="need at least 2 distinct rows.*got 1 \\(of 5 rows\\)"):
        holdout([7] * 5, where="f")


def test_repeated_rows_are_said_once_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_smoke(run, "--train-file", str(_repeating_file(tmp_path)), "--steps", "2")) == 0
    err = capsys.readouterr().err
    assert err.count("6 of 36 training rows repeat an earlier row") == 1, err
    assert "the validation split holds 3 distinct rows, none trained on" in err
    assert json.loads((run / "results.json").read_text())["duplicates"]["train_repeats"] == 6


def test_the_hf_compare_split_is_leak_free_too(tmp_path):
    from maskdiff.experiments.compare_hf import rows_of

    rows = [{"text": f"row {i}"} for i in range(20)]
    train, test = rows_of(str(_rows(tmp_path / "r.jsonl", rows[18:] + rows)), None)
    assert len(test) == 2 and not [r for r in test if r in train]


# -- 8. no NaN in any JSON; an undefined standard error reads n/a -------------------------------
def test_one_validation_example_writes_strict_json_and_prints_n_a(tmp_path, capsys):
    data = _rows(tmp_path / "ten.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"}
                                          for i in range(10)])  # 10% held out: one example
    run = tmp_path / "run"
    assert main(_smoke(run, "--train-file", str(data), "--steps", "6")) == 0
    out, err = capsys.readouterr()
    results = _strict((run / "results.json").read_text())
    assert results["best_val_se"] is None and results["val_examples"] == 1
    assert results["best_val"] is not None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    assert "n/a (1 validation example)" in out and "nan" not in out.lower()
    assert err.count("the validation split has 1 example") == 1
    assert main(["evaluate", "--run", str(run), "--n", "1", "--rates", "1"]) == 0
    assert "± n/a (1 example)" in capsys.readouterr().out
    assert _strict((run / "eval.json").read_text())["loss"]["se"] is None


def test_the_strict_writer_never_writes_nan():
    doc = {"a": float("nan"), "b": [float("inf"), 1.5, {"c": -float("inf")}], "d": (2.0,)}
    assert _strict(jsonio.dumps(doc)) == {"a": None, "b": [None, 1.5, {"c": None}], "d": [2.0]}


def test_no_module_writes_json_without_the_strict_writer():
    """Every JSON maskdiff writes goes through ``jsonio.dumps`` (NaN/inf become null)."""
    root = Path(__file__).resolve().parents[1] / "maskdiff"
    bare = sorted(f"{path.relative_to(root)}:{number}"
                  for path in root.rglob("*.py") if path.name != "jsonio.py"
                  for number, line in enumerate(path.read_text().splitlines(), 1)
                  if "json.dump(" in line or "json.dumps(" in line)
    assert bare == [], bare


# -- 12. a checkpoint whose config.json disagrees with its weights is damaged --------------------
def _widen(checkpoint: Path) -> None:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config["model"]["d_model"] *= 2
    path.write_text(json.dumps(config))


def _edit_state(checkpoint: Path, edit) -> None:
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    edit(state)
    torch.save(state, checkpoint / "state.pt")


def _one_group(state):
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]


@pytest.mark.parametrize("damage, reason", [
    (_widen, "model.safetensors does not fit the model of its config"),
    (lambda c: _edit_state(c, lambda s: s.pop("optimizer")), "state.pt does not fit this run"),
    (lambda c: _edit_state(c, _one_group), "state.pt does not fit this run (ValueError"),
    (lambda c: _edit_state(c, lambda s: s.pop("step")), "state.pt holds no step"),
], ids=["config-wider", "state-no-optimizer", "state-other-optimizer", "state-no-step"])
def test_a_checkpoint_that_contradicts_itself_or_the_run_falls_back(tmp_path, capsys, damage,
                                                                     reason):
    config, root = _two_checkpoints(tmp_path)
    damage(root / "step-000004")
    trainer = Trainer(config, quiet=True)
    trainer.fit()
    err = capsys.readouterr().err
    assert "skipped damaged checkpoint" in err and reason in err, err
    straight = Trainer(replace(config, out_dir=str(tmp_path / "straight")), quiet=True)
    straight.fit()
    for name, value in _weights(straight).items():  # resumed from step 2: still exact
        assert torch.equal(value, trainer.model.state_dict()[name]), name


def test_evaluate_skips_a_self_contradicting_checkpoint_or_says_so_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_smoke(run, "--steps", "6")) == 0
    for ckpt in (run / "best").glob("step-*"):
        _widen(ckpt)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--n", "2", "--rates", "1"]) == 0
    err = capsys.readouterr().err
    assert "does not fit the model of its config" in err and "Traceback" not in err
    for ckpt in (run / "checkpoints").glob("step-*"):
        _widen(ckpt)
    assert main(["evaluate", "--run", str(run), "--n", "2", "--rates", "1"]) == 1
    err = capsys.readouterr().err
    assert "no valid checkpoint" in err and "size mismatch" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_starting_weights_that_do_not_fit_are_one_error(tmp_path):
    config = tiny(tmp_path)
    with pytest.raises(CheckpointError, match="init_weights does not fit.*final_norm"):
        Trainer(config, init_weights={**_weights(Trainer(config, quiet=True)),
                                      "final_norm.bias": torch.zeros(64)}, quiet=True)


# -- 13. rows longer than a HF model's context; bytes that are not UTF-8 -------------------------
@pytest.mark.parametrize("command", ["evaluate", "fit-pots"])
def test_hf_rows_longer_than_the_context_are_one_line_naming_the_row(tmp_path, capsys, command):
    pytest.importorskip("transformers")
    from test_evaluation import bert_dir  # max_position_embeddings=48

    model = bert_dir(tmp_path / "bert")
    data = _rows(tmp_path / "rows.jsonl", [{"text": "hello world"}, {"text": "the answer"},
                                           {"text": " ".join(["hello"] * 80)}])
    argv = {"evaluate": ["evaluate", "--hf", str(model), "--data", str(data), "--rates", "1"],
            "fit-pots": ["fit-pots", "--hf", str(model), "--data", str(data),
                         "--out", str(tmp_path / "pp")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data}:3: the row is 80 tokens, longer than the 48-token context" in err, err
    assert "Traceback" not in err and err.count("error") == 1  # (transformers' bars aside)


def test_compare_hf_refuses_a_training_row_longer_than_the_context(tmp_path, capsys):
    from test_compare_data import _tiny_hf_model  # max_position_embeddings=32

    model = _tiny_hf_model(tmp_path / "bert")
    rows = [{"prompt": f"add {a} {b}", "response": f"{a + b} #### {a + b}"}
            for a in range(4) for b in range(4)]
    rows[5]["response"] = " ".join(["1"] * 40)
    data = _rows(tmp_path / "rows.jsonl", rows)
    assert main(["compare", "--preset", "smoke", "--hf", str(model), "--train-file", str(data),
                 "--methods", "standard", "--seeds", "1", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:6: the row is 44 tokens, longer than the 32-token context" in err, err


def test_data_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    from test_evaluation import bert_dir

    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"text": "hello world"}\n{"text": "the \xff answer"}\n')
    assert main(["evaluate", "--hf", str(bert_dir(tmp_path / "bert")), "--data",
                 str(data)]) == 2
    assert f"{data}:2: not UTF-8 (byte 0xff" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_bytes(b'{\n "seed": 1,\n "out_dir": "r\xff"\n}\n')
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    assert f"{config}:3: not UTF-8 (byte 0xff)" in capsys.readouterr().err


# -- 15. a full disk: every write error names its file -----------------------------------------
class _FullDisk:
    """A file opened for writing on a full disk: writing fails as write(2) does, unnamed."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.mark.parametrize("name", [".lock", "config.json", "tokenizer.json", "metrics.jsonl",
                                  "state.pt", "results.json"])
def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, capsys, monkeypatch, name):
    from maskdiff.training import checkpoint as checkpoint_module

    run = tmp_path / "run"
    real_open, real_fdopen = io.open, os.fdopen

    def full(handle, file, mode):  # a write under RUN to a file named like NAME (or its temp)
        writing = any(m in mode for m in "wa+")
        hit = writing and str(file).startswith(str(run)) and name in Path(file).name
        return _FullDisk(handle) if hit else handle

    def full_open(file, mode="r", *args, **kwargs):
        return full(real_open(file, mode, *args, **kwargs), file, mode)

    def full_fdopen(fd, mode="r", *args, **kwargs):  # temporary files made with mkstemp
        return full(real_fdopen(fd, mode, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"),
                    mode)
    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(os, "fdopen", full_fdopen)
    if name == "state.pt":  # torch writes from C++: its error names no file either
        def full_save(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(checkpoint_module.torch, "save", full_save)
    assert main(_smoke(run, "--steps", "3")) == 1
    err = capsys.readouterr().err
    target = run / "best" / "step-000003" if name == "state.pt" else run / name  # best: first
    assert f"error: {target}: No space left on device" in err, err
    assert "Traceback" not in err and err.count("error") == 1


# -- 16. extending a finished run ----------------------------------------------------------------
def test_extending_a_finished_run_needs_the_flag_and_continues_honestly(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_smoke(run)) == 0  # 12 steps
    assert (run / "checkpoints" / "LATEST").read_text() == "step-000012\n"
    capsys.readouterr()
    assert main(_smoke(run, "--steps", "24")) == 2
    err = capsys.readouterr().err
    assert "differs in ['optim.max_steps'] (12 -> 24)" in err and "pass --extend" in err
    assert main(_smoke(run, "--steps", "6", "--extend")) == 2
    assert "must exceed it" in capsys.readouterr().err
    assert main(_smoke(tmp_path / "empty", "--extend")) == 2
    assert "holds no checkpoint to extend" in capsys.readouterr().err
    from safetensors.torch import load_file
    before = load_file(run / "checkpoints" / "step-000012" / "model.safetensors")
    assert main(_smoke(run, "--steps", "24", "--extend")) == 0
    err = capsys.readouterr().err
    assert err.count("maskdiff: extending") == 1 and "recomputed for 24 steps" in err
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 24 and results["extended_from"] == [12]
    lines = _metrics(run)
    assert {"step": 12, "extended": {"from_max_steps": 12, "to_max_steps": 24}} in lines
    # the schedule of the extension is the 24-step schedule from step 13 on
    optim = OptimConfig(max_steps=24, warmup_steps=2, batch_size=8)
    assert [r["lr"] for r in lines if r.get("step") == 24 and "lr" in r] == [optim.lr_at(23)]
    after = load_file(run / "checkpoints" / "step-000024" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert main(_smoke(run, "--steps", "24", "--extend")) == 0  # done: a plain resume, no-op
    assert json.loads((run / "results.json").read_text())["extended_from"] == [12]


def test_an_extension_killed_midway_resumes_exactly(tmp_path):
    config = tiny(tmp_path)  # 6 steps
    Trainer(config, quiet=True).fit()
    longer = replace(config, optim=replace(config.optim, max_steps=12))
    straight_dir = replace(longer, out_dir=str(tmp_path / "straight"))
    Trainer(replace(config, out_dir=straight_dir.out_dir), quiet=True).fit()
    Trainer(longer, quiet=True).fit(extend=True, stop_after=9)  # killed at step 9
    resumed = Trainer(longer, quiet=True)
    resumed.fit()  # the checkpoint is the 12-step run's now: no flag needed
    straight = Trainer(straight_dir, quiet=True)
    straight.fit(extend=True)
    for name, value in _weights(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "straight")
    scratch = Trainer(replace(longer, out_dir=str(tmp_path / "scratch")), quiet=True)
    scratch.fit()  # a 12-step run from scratch decays differently: other weights
    assert any(not torch.equal(v, resumed.model.state_dict()[k])
               for k, v in _weights(scratch).items())
