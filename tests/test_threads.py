"""``--threads`` on every command whose numbers come from torch (issue 17): the flag sets the
intra-op threads before any work, and each command's output records the number used."""

import json

import pytest
import torch

from maskdiff.cli import main


class _Started(Exception):
    """Raised by a stand-in for a command's work: carries the threads in effect at its start."""


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _started(*args, **kwargs):
    raise _Started(torch.get_num_threads())


# Each command, and the first piece of work it does (replaced by a stand-in).
COMMANDS = [
    (["window-sweep", "--preset", "smoke"], "maskdiff.experiments.window_sweep.run_window_sweep"),
    (["parity-sweep", "--preset", "smoke"], "maskdiff.experiments.parity_sweep.run_parity_sweep"),
    (["parity", "--preset", "smoke"], "maskdiff.labs.parity.train_parity"),
    (["image", "--preset", "smoke"], "maskdiff.experiments.image.ImageJob.run"),
    (["decompose", "--preset", "smoke", "--out", "OUT"],
     "maskdiff.experiments.decompose.load_model_source"),
    (["fit-pots", "--preset", "smoke", "--out", "OUT"],
     "maskdiff.experiments.sources.load_model_source"),
    (["evaluate", "--run", "R"], "maskdiff.commands.evaluate.load_run"),
    (["generate", "--run", "R", "--prompt", "p"], "maskdiff.commands.generate.load_run"),
    (["compare", "--preset", "smoke", "--workers", "1"],
     "maskdiff.experiments.compare.CompareJob.start_weights"),
    (["train", "--preset", "smoke", "--out", "OUT"], "maskdiff.training.trainer.Trainer.__init__"),
]


@pytest.mark.parametrize("argv, work", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_threads_is_set_before_the_work_and_refused_below_one(argv, work, monkeypatch, tmp_path,
                                                              restore_threads, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    monkeypatch.setattr(work, _started)
    torch.set_num_threads(1)
    with pytest.raises(_Started) as started:
        main(argv + ["--threads", "2"])
    assert started.value.args == (2,)
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--threads", "0"])
    assert exit_info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_evaluate_parity_and_fit_pots_record_the_threads(tmp_path, restore_threads):
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--steps", "2", "--out", str(run), "--quiet",
                 "--threads", "2"]) == 0
    assert json.loads((run / "results.json").read_text())["threads"] == 2
    assert main(["evaluate", "--run", str(run), "--n", "2", "--rates", "1", "--threads", "1"]) == 0
    assert json.loads((run / "eval.json").read_text())["threads"] == 1
    assert main(["parity", "--preset", "smoke", "--max-steps", "2", "--eval-every", "1",
                 "--threads", "2", "--out", str(tmp_path / "parity.json")]) == 0
    assert json.loads((tmp_path / "parity.json").read_text())["threads"] == 2
    assert main(["fit-pots", "--run", str(run), "--a", "2", "--b", "8", "--c", "2",
                 "--restarts", "1", "--quiet", "--threads", "1", "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "ppots.json").read_text())["threads"] == 1


def test_compare_threads_are_per_worker_and_recorded(tmp_path, restore_threads):
    from maskdiff.experiments.compare import PRESETS, CompareJob
    from maskdiff.experiments.pool import worker_pool
    from maskdiff.experiments.compare_report import _processes

    preset = PRESETS["smoke"]
    torch.set_num_threads(1)
    assert CompareJob(preset, tmp_path, workers=3).training_threads() == 1  # the default: 1 each
    assert CompareJob(preset, tmp_path, workers=3, threads=2).training_threads() == 2
    assert torch.get_num_threads() == 1  # workers' threads leave this process alone
    assert CompareJob(preset, tmp_path, workers=1).training_threads() == 1  # this process's
    with worker_pool(2, 3) as pool:  # a spawned worker sets its threads before any run
        assert pool.submit(torch.get_num_threads).result() == 3
    assert _processes({"workers": 3, "threads": 2}) == "3 worker processes × 2 thread(s) each"
    assert _processes({"workers": 1, "threads": 4}) == "one process, 4 thread(s)"
    reused = {"workers": 1, "threads": 4, "runs": [{"threads": 1}, {"threads": 2}]}
    assert _processes(reused) == "one process, 4 thread(s); the runs trained with 1, 2 thread(s)"
