"""Killed jobs (issue 24, items 1-2): SIGTERM ends ``train`` and ``compare`` like Ctrl-C (one line,
exit 143, a resumable state), and ``compare``'s worker processes never outlive the job, even when
the job itself is killed with SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskdiff.cli import main
from maskdiff.training.checkpoint import find_checkpoint, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ["compare", "--preset", "smoke", "--methods", "standard", "--seeds", "1,2",
           "--workers", "2", "--quiet"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _workers(pid: int) -> list:
    """The spawned pool workers under ``pid`` (not the resource tracker)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow),  # ~32 s
                                    signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_compare_workers_die_with_the_job_and_the_job_resumes(tmp_path, signum, capsys):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "cmp"
    argv = [*COMPARE, "--out", str(out)]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: an orphan holding a pipe would hang us
    family = []
    with open(log, "w") as stderr:
        job = subprocess.Popen([sys.executable, "-m", "maskdiff.cli", *argv], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        workers = _wait(lambda: len(_workers(job.pid)) == 2 and _workers(job.pid), 120,
                        "two pool workers")
        # every descendant (workers and the resource tracker) must go with the job
        family = psutil.Process(job.pid).children(recursive=True)
        _wait(lambda: any(out.glob("**/checkpoints/step-*")), 120, "a run's first checkpoint")
        job.send_signal(signum)
        job.wait(timeout=60)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"orphaned after {signum.name}: {[p.cmdline() for p in alive]}"
        assert {p.pid for p in workers} <= {p.pid for p in gone}
    finally:
        for process in [*family, psutil.Process(job.pid)] if job.poll() is None else family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        job.wait()
    if signum == signal.SIGTERM:
        assert job.returncode == 143
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines == ["maskdiff compare: interrupted by SIGTERM; rerun the same command to "
                         "resume (finished runs are reused)"], lines
        return
    assert job.returncode == -signal.SIGKILL
    assert main(argv) == 0  # the killed job resumes and finishes
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["standard"]["seeds"] == [1, 2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_to_train_is_one_line_exit_143_and_a_resumable_run(tmp_path, capsys, monkeypatch,
                                                                   signum):
    from maskdiff.training import trainer as trainer_module

    if signal.getsignal(signum) is signal.SIG_IGN:
        pytest.skip(f"{signum.name} is ignored in this session (nohup): left ignored")
    real = trainer_module.Trainer.train_step

    def terminated(self):
        if self.step == 8:
            os.kill(os.getpid(), signum)  # what a scheduler (or a closed terminal) sends
        return real(self)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", terminated)
    run = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--out", str(run), "--quiet"]
    before = signal.getsignal(signum)
    assert main(argv) == 128 + signum  # 143 for SIGTERM, 129 for SIGHUP
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"maskdiff train: interrupted by {signum.name}; rerun the same command to "
                       f"resume from {run / 'checkpoints' / 'step-000006'}")
    assert "Traceback" not in "\n".join(err)
    assert signal.getsignal(signum) is before  # the handler was put back
    found = find_checkpoint(run / "checkpoints")
    assert found.checkpoint.path.name == "step-000006" and not found.skipped
    assert not list((run / "checkpoints").glob("*.tmp"))
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real)
    assert main(argv) == 0  # the same command resumes (the lock died with the stopped run)
    assert json.loads((run / "results.json").read_text())["steps"] == 12
    assert latest_checkpoint(run / "checkpoints").name == "step-000012"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # no step logged twice
