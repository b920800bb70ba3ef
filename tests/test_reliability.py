"""Faults and bad input (issue 17): nothing lost, nothing silent. One test (or more) per case."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from maskdiff.cli import main
from maskdiff.training import checkpoint as checkpoint_module
from maskdiff.training.checkpoint import CheckpointError, find_checkpoint, latest_checkpoint
from maskdiff.data.setup import load_task
from maskdiff.training.config import DataConfig, EvalConfig, OptimConfig, to_dict
from maskdiff.training.errors import RunDirError, TrainingError
from maskdiff.training.rundir import claim
from maskdiff.training.trainer import Trainer

from test_train import _metrics, _weights, tiny


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def _smoke(out, *extra):
    return ["train", "--preset", "smoke", "--out", str(out), "--quiet", *extra]


# -- 1. a fresh run in an old run's directory ----------------------------------------------------
def test_fresh_run_in_an_old_runs_directory_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_smoke(run, "--steps", "2")) == 0
    assert _steps(run) == ["step-000002"]
    assert main(_smoke(run, "--steps", "1", "--no-resume")) == 1
    err = capsys.readouterr().err
    assert "already holds a run (checkpoints up to step-000002)" in err and "Traceback" not in err
    assert _steps(run) == ["step-000002"]  # untouched
    assert main(_smoke(run, "--steps", "1", "--overwrite", "--threads", "1")) == 0
    assert _steps(run) == ["step-000001"]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 1 and results["threads"] == 1
    assert main(["evaluate", "--run", str(run), "--n", "4", "--rates", "1",
                 "--checkpoint", "latest"]) == 0


def test_cleanup_goes_by_step_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    w = {"w": torch.ones(2)}
    checkpoint_module.save_checkpoint(root, 399, w, {"step": 399}, {})
    checkpoint_module.save_checkpoint(root, 400, w, {"step": 400}, {})
    checkpoint_module.save_checkpoint(root, 3, w, {"step": 3}, {})  # an abandoned future goes
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-000003"]
    assert latest_checkpoint(root).name == "step-000003"


# -- 2. damaged checkpoints: validated on load, newest valid one used, LATEST contained ------
def _two_checkpoints(tmp_path):
    config = tiny(tmp_path, checkpoint_every=2)
    Trainer(config, quiet=True).fit(stop_after=4)
    root = tmp_path / "run" / "checkpoints"
    assert _steps(tmp_path / "run") == ["step-000002", "step-000004"]
    return config, root


@pytest.mark.parametrize("damage", [
    lambda root: (root / "step-000004" / "state.pt").unlink(),
    lambda root: (root / "LATEST").write_text(""),
    lambda root: (root / "LATEST").write_text(".\n"),
    lambda root: (root / "LATEST").write_text("step-000009\n"),
    lambda root: (root / "LATEST").write_text("../../other/checkpoints/step-000004\n"),
    lambda root: _truncate(root / "step-000004" / "model.safetensors"),
    lambda root: _truncate(root / "step-000004" / "state.pt"),
], ids=["no-state", "latest-empty", "latest-dot", "latest-missing", "latest-outside",
        "truncated-weights", "truncated-state"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, damage, capsys):
    config, root = _two_checkpoints(tmp_path)
    damage(root)
    found = find_checkpoint(root)
    if "step-000004" in {p.name for p, _ in found.skipped} or not (root / "step-000004" /
                                                                    "state.pt").exists():
        expected = "step-000002"
    else:  # only LATEST is damaged: the step directories are intact, the newest one is used
        expected = "step-000004"
    assert found.checkpoint.path.name == expected and found.skipped
    trainer = Trainer(config, quiet=True)
    trainer.fit()
    assert "skipped damaged checkpoint" in capsys.readouterr().err
    straight = Trainer(replace(config, out_dir=str(tmp_path / "straight")), quiet=True)
    straight.fit()
    for name, value in _weights(straight).items():  # resumed from the fallback: still exact
        assert torch.equal(value, trainer.model.state_dict()[name]), name


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    config = tiny(tmp_path, checkpoint_every=2)
    Trainer(config, quiet=True).fit(stop_after=4)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 1.2')  # killed during the write of step 5's line
    Trainer(config, quiet=True).fit()
    Trainer(replace(config, out_dir=str(tmp_path / "straight")), quiet=True).fit()
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "straight")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_no_valid_checkpoint_is_an_error_not_a_silent_restart(tmp_path, capsys):
    config, root = _two_checkpoints(tmp_path)
    for step in ("step-000002", "step-000004"):
        _truncate(root / step / "model.safetensors")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*model.safetensors is damaged"):
        Trainer(config, quiet=True).fit()
    assert _steps(tmp_path / "run") == ["step-000002", "step-000004"]  # nothing cleaned up


def test_cli_reports_a_corrupt_run_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_smoke(run, "--steps", "6")) == 0
    for ckpt in (run / "best").glob("step-*"):
        _truncate(ckpt / "model.safetensors")
    for ckpt in (run / "checkpoints").glob("step-*"):
        _truncate(ckpt / "state.pt")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--n", "4"]) == 1
    err = capsys.readouterr().err
    assert "no valid checkpoint" in err and "Traceback" not in err


# -- 3. two trainers in one directory ----------------------------------------------------------
def test_a_second_trainer_in_the_same_directory_is_refused(tmp_path):
    config = tiny(tmp_path)
    with claim(config.out_dir, rank=0, config={}, resume=True):
        (tmp_path / "run" / "config.json").write_text(json.dumps(to_dict(config)))
        with pytest.raises(RunDirError, match=f"in use by another trainer \\(pid {os.getpid()}\\)"):
            Trainer(replace(config, seed=7), quiet=True).fit()  # another config: refused
        with pytest.raises(RunDirError, match="in use by another trainer"):
            Trainer(config, quiet=True).fit(resume=False)  # a fresh start: refused
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    Trainer(config, quiet=True).fit()  # the lock is released with its holder


def test_the_lock_is_held_across_processes_and_freed_by_kill(tmp_path, capsys):
    import multiprocessing

    out = tmp_path / "run"
    out.mkdir()
    ctx = multiprocessing.get_context("fork")  # a process of its own, without a second import
    receive, send = ctx.Pipe(duplex=False)

    def hold() -> None:
        with claim(out, rank=0, config={}, resume=True):
            send.send("held")
            time.sleep(60)

    proc = ctx.Process(target=hold)
    proc.start()
    try:
        assert receive.poll(30) and receive.recv() == "held"
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            with claim(out, rank=0, config={}, resume=False):
                pass
        threading.Timer(0.5, proc.kill).start()
        with claim(out, rank=0, config={}, resume=True):  # the same run: waits for the holder
            assert not proc.is_alive()  # ... which kill -9 ended without a stale lock
    finally:
        proc.kill()
        proc.join()
    assert "waiting for it to finish" in capsys.readouterr().err


def test_a_resumed_start_over_logs_of_another_config_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 1}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(RunDirError, match=r"differs in \['seed'\]"):
        with claim(run, rank=0, config={"seed": 2}, resume=True):
            pass


# -- 4. truncation is counted and reported; the test split of a train_file ----------------------
def test_truncation_is_counted_in_results_and_reported(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "q", "response": "a" * 996 + f"{i:04d}" if i % 4 == 0 else f"{i:03d}"}
            for i in range(40)]  # distinct rows: repeated ones would not be split as 36 + 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(_smoke(run, "--train-file", str(data), "--steps", "2", "--set",
                       "data.max_len=32")) == 0
    err = capsys.readouterr().err
    truncated = json.loads((run / "results.json").read_text())["truncated"]
    # 36 training rows (4 held out), every 4th of the 40 is long: 9 train, 1 val
    assert truncated["train"] == {"examples": 9, "tokens": 9 * (1 + 1000 + 1 - 32), "of": 36}
    assert truncated["val"]["examples"] == 1
    assert "truncated to max_len=32: 9/36 train examples" in err
    assert main(["evaluate", "--run", str(run), "--n", "2"]) == 0
    assert "the test split is the validation split" in capsys.readouterr().err


# -- 5. non-finite values, repeated seeds, counts that silently became defaults ----------------
@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "optim.lr must be finite"),
    (["--set", "optim.weight_decay=NaN"], "optim.weight_decay must be finite"),
    (["--set", "optim.grad_clip=NaN"], "optim.grad_clip must be finite"),
    (["--set", "optim.lr=abc"], "optim.lr must be a number, got 'abc'"),
    (["--device", "bogus"], "train.device must be cpu, cuda"),
])
def test_non_finite_or_mistyped_config_values_are_refused(argv, message, tmp_path, capsys):
    assert main(_smoke(tmp_path / "x", *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_nan_validation_loss_stops_and_is_never_best(tmp_path, monkeypatch):
    config = tiny(tmp_path, checkpoint_every=3)
    trainer = Trainer(config, quiet=True)
    real = trainer.validate

    def poisoned():
        result = real()
        return replace(result, mean=float("nan")) if trainer.step == 6 else result
    monkeypatch.setattr(trainer, "validate", poisoned)
    with pytest.raises(TrainingError, match="validation loss is nan at step 6.*step-000003"):
        trainer.fit()
    assert trainer.best_step == 3 and math.isfinite(trainer.best)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000003"


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(CheckpointError, match="non-finite weights in \\['w'\\]"):
        checkpoint_module.save_checkpoint(tmp_path, 1, {"w": torch.tensor([float("nan")])}, {}, {})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["compare", "--preset", "smoke", "--seeds", "1,1"], "repeats seed(s) [1]"),
    (["compare", "--preset", "smoke", "--seeds", ""], "names no seed"),
])
def test_seeds_must_be_distinct_and_given(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["evaluate", "--run", "R", "--n", "-1"],
    ["generate", "--run", "R", "--prompt", "p", "--gen-length", "0"],
    ["generate", "--run", "R", "--prompt", "p", "--steps", "0"],
    ["generate", "--run", "R", "--prompt", "p", "--block-length", "0"],
    ["train", "--preset", "smoke", "--threads", "0"],
])
def test_counts_below_one_are_refused_not_defaulted(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


# -- 6. sizes are checked before allocation ----------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["theory", "parity", "--k", "100000"], "Gauss-Legendre integration of degree 100001"),
    (_smoke("OUT", "--batch-size", "100000"), "a step of 100000 rows × 128 positions (max_len=128"),
    (_smoke("OUT", "--set", "data.max_len=100000"), "max_len=100000"),
])
def test_oversized_configurations_are_refused_with_the_estimate(argv, message, capsys,
                                                                monkeypatch, tmp_path):
    monkeypatch.setenv("MASKDIFF_MEMORY_LIMIT", "2GiB")
    argv = [str(tmp_path / "x") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "GiB of memory, more than the 2.0 GiB of MASKDIFF_MEMORY_LIMIT" in err


# -- 7. a stopped rank: the others fail after the collective timeout ---------------------------
# The ranks are forked from this process (torch already imported: a second, not ten, under
# load); a file barrier lines them up before the process group forms, so the 1 s timeout only
# measures the stall.
def _two_ranks(tmp_path, body) -> str:
    """Run ``body(rank)`` on two forked gloo ranks; rank 0's error as ``"Type message"``."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def rank_main(rank: int) -> None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                          RANK=str(rank), LOCAL_RANK=str(rank), MASKDIFF_COLLECTIVE_TIMEOUT="1")
        (tmp_path / f"ready-{rank}").touch()
        while not (tmp_path / f"ready-{1 - rank}").exists():
            time.sleep(0.005)
        try:
            body(rank)
            send.send("no error")
        except BaseException as err:  # noqa: BLE001  (the parent asserts on it)
            send.send(f"{type(err).__name__} {err}")
        finally:
            os._exit(0)  # no atexit: a process group with a stopped peer aborts on teardown

    procs = [ctx.Process(target=rank_main, args=(rank,)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        assert receive.poll(60), "rank 0 neither failed nor finished within 60 s"
        return receive.recv()
    finally:
        for proc in procs:
            proc.kill()
            proc.join()


def _all_reduce_then_stop(rank: int) -> None:
    from maskdiff.training import distributed

    distributed.init_from_env("cpu")
    distributed.all_reduce_sum(torch.ones(1))
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    distributed.all_reduce_sum(torch.ones(1))


def test_a_stopped_rank_makes_the_other_fail_after_the_timeout(tmp_path):
    message = _two_ranks(tmp_path, _all_reduce_then_stop)
    assert message.startswith("TrainingError rank 0/2: all_reduce waited more than 1 s"), message


def test_a_rank_stopped_in_backward_makes_the_other_fail_with_one_line(tmp_path):
    """DDP's own gradient all-reduce (inside backward) times out into the same TrainingError."""
    config = tiny(tmp_path, optim=OptimConfig(max_steps=3, warmup_steps=1, batch_size=4),
                  eval=EvalConfig(every=100, n_examples=4, rates_per_example=1, patience=0),
                  data=DataConfig(n_train=16, n_val=4, n_test=4))
    task = load_task(config.data)
    import torch._dynamo  # noqa: F401  (DDP imports it: seconds, paid once here, not per rank)

    def train(rank: int) -> None:
        trainer = Trainer(config, task=task, quiet=True)
        if rank == 1:  # stop before step 2's backward: rank 0 waits in its gradient all-reduce
            real = torch.Tensor.backward

            def backward(self, *args, **kwargs):
                if trainer.step == 1:
                    os.kill(os.getpid(), signal.SIGSTOP)
                return real(self, *args, **kwargs)
            torch.Tensor.backward = backward
        trainer.fit()

    message = _two_ranks(tmp_path, train)
    assert message.startswith("TrainingError rank 0/2: step 2 (DDP's gradient all-reduce) waited "
                              "more than 1 s for the other ranks"), message


# -- 8. one line, not a traceback, for every expected failure ----------------------------------
def test_expected_failures_are_one_line_errors(tmp_path, capsys, monkeypatch):
    cases = [
        (_smoke(tmp_path / "a", "--config", str(tmp_path / "missing.json")), "missing.json"),
        (_smoke(tmp_path / "b", "--train-file", str(tmp_path / "none.jsonl")), "none.jsonl"),
        (_smoke(tmp_path / "c", "--method", "ppots", "--ppots", str(tmp_path / "p.json")),
         "p.json"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cases.append((_smoke(tmp_path / "d", "--method", "ppots", "--ppots", str(bad)),
                  f"{bad}: not a P-POTS result"))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    cases.append((_smoke(tmp_path / "e", "--train-file", str(latin)), f"{latin}:2: not UTF-8"))
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "\\ud800", "response": "b"}\n')
    cases.append((_smoke(tmp_path / "f", "--train-file", str(lone)), f"{lone}:2: 'prompt' holds"))
    for argv, message in cases:
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "f" / "tokenizer.json").exists()


def test_an_unwritable_out_and_a_full_disk_are_one_line_errors(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(_smoke(blocker / "run")) == 1  # --out under a regular file: not creatable
    assert "Traceback" not in capsys.readouterr().err

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")
    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    assert main(_smoke(tmp_path / "run", "--steps", "6")) == 1
    err = capsys.readouterr().err
    assert "writing checkpoint" in err and "full or unwritable disk" in err
    assert "Traceback" not in err and not list((tmp_path / "run" / "checkpoints").glob("*"))


def test_ctrl_c_is_exit_130_and_a_resumable_run(tmp_path, capsys, monkeypatch):
    from maskdiff.training import trainer as trainer_module

    real = trainer_module.Trainer.train_step

    def interrupted(self):
        if self.step == 8:
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted)
    assert main(_smoke(tmp_path / "run")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000006"


def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_smoke(tmp_path / "run", "--device", "cuda")) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


# -- 9. tokenizer files are written atomically ---------------------------------------------------
class _Unwritable:
    """An HF tokenizer stand-in whose JSON cannot be encoded: the write fails half-way."""

    def to_str(self) -> str:
        return '{"model": "\ud800"}'


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_failed_tokenizer_write_keeps_the_previous_file(tmp_path, kind):
    from maskdiff.data import load_tokenizer
    from maskdiff.data.bpe import BPETokenizer
    from maskdiff.data.char_tokenizer import CharTokenizer

    if kind == "char":
        good, bad = CharTokenizer("abc"), CharTokenizer("ab\ud800")  # a lone surrogate: no UTF-8
    else:
        good = BPETokenizer.train(["hello world", "abc abd"] * 4, vocab_size=270)
        bad = BPETokenizer.train(["hello world"], vocab_size=270)
        bad._hf = _Unwritable()
    path = tmp_path / "tokenizer.json"
    good.save(path)
    before = path.read_bytes()
    with pytest.raises(UnicodeEncodeError):
        bad.save(path)
    assert path.read_bytes() == before and load_tokenizer(path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temporary left
    with pytest.raises(UnicodeEncodeError):
        bad.save(tmp_path / "fresh.json")
    assert not (tmp_path / "fresh.json").exists()  # never a 0-byte file


def test_every_output_file_is_written_atomically():
    """No module writes a results/record/report file with a bare ``write_text``: a job killed
    mid-write would leave a half-written JSON that the resumed job cannot read. The one exception
    writes into a checkpoint's staging directory, which is renamed into place as a whole."""
    root = Path(__file__).resolve().parents[1] / "maskdiff"
    bare = sorted(f"{path.relative_to(root)}:{number}: {line.strip()}"
                  for path in root.rglob("*.py")
                  for number, line in enumerate(path.read_text().splitlines(), 1)
                  if ".write_text(" in line and "atomic_write_text" not in line
                  and not (path.name == "checkpoint.py" and "(tmp / " in line))
    assert bare == [], bare
