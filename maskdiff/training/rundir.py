"""A run directory's identity: one trainer at a time, and no fresh run mixed into an old one.

:func:`claim` is held by a trainer for the whole of ``fit``:

* a lock (``out_dir/.lock``, ``flock``: released by the kernel when the process dies, so a
  ``kill -9`` never leaves a stale lock) keeps a second trainer out of the directory: refused
  when it would start fresh or its config differs from the directory's ``config.json``; when
  it resumes the same run (parallel experiment workers reading a shared starting run), it
  waits for the first to finish, saying so, then resumes what that one left;
* a fresh start (no resume) in a directory that already holds a run is refused unless
  ``overwrite`` is given, which first removes that run's checkpoints, logs and results;
* a resumed start in a directory whose run left no checkpoint but logs of a different config is
  refused too (its ``config.json`` would otherwise describe other weights).

Only rank 0 locks and checks; the other ranks of a ``torchrun`` job share its directory.
See docs/architecture.md ("Reliability").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from maskdiff.fileio import naming
from maskdiff.training.checkpoint import step_dirs
from maskdiff.training.config import config_differences
from maskdiff.training.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock)
    fcntl = None

LOCK_FILE = ".lock"
# What --overwrite removes: the run, and the experiment records made from it (maskdiff.jobs).
RUN_OUTPUTS = ("checkpoints", "best", "metrics.jsonl", "results.json", "tensorboard",
               "finished.json", "compare.json", "image.json", "test.json")


@contextmanager
def _lock(out_dir: Path, wait_if: "callable | None" = None) -> Iterator[None]:
    """Hold ``out_dir/.lock``. When another process holds it: wait for it if ``wait_if()``
    says so (a resume of the same run: it then finds that run's progress), else refuse."""
    path = out_dir / LOCK_FILE
    handle = open(path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                if wait_if is None or not wait_if():
                    raise RunDirError(f"{out_dir} is in use by another trainer (pid {holder}); "
                                      f"wait for it to finish or use another --out") from None
                print(f"maskdiff: {out_dir} is in use by another trainer of the same run (pid "
                      f"{holder}); waiting for it to finish, then resuming", file=sys.stderr,
                      flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        with naming(path):  # a full disk: the error names the lock file
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def _same_run(out_dir: Path, config: dict[str, Any], free_fields: tuple[str, ...]) -> bool:
    """Whether ``out_dir/config.json`` is absent (not yet written) or describes ``config``."""
    saved = out_dir / "config.json"
    if not saved.is_file():
        return True
    try:
        old = json.loads(saved.read_text())
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(old, dict) and not config_differences(old, config, free_fields)


def held_run(out_dir: Path) -> str | None:
    """What in ``out_dir`` belongs to an earlier run (a short description), or None."""
    steps = step_dirs(out_dir / "checkpoints")
    if steps:
        return f"checkpoints up to {steps[0].name}"
    metrics = out_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return "metrics.jsonl"
    for name in ("results.json", "best"):
        if (out_dir / name).exists():
            return name
    return None


def _check(out_dir: Path, config: dict[str, Any], resume: bool, overwrite: bool,
           free_fields: tuple[str, ...]) -> None:
    held = held_run(out_dir)
    if held is None:
        return
    if overwrite:
        for name in RUN_OUTPUTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return
    if not resume:
        raise RunDirError(f"{out_dir} already holds a run ({held}); resume it (without "
                          f"--no-resume), replace it with --overwrite, or use another --out")
    saved = out_dir / "config.json"
    if not step_dirs(out_dir / "checkpoints") and saved.is_file():
        try:
            old = json.loads(saved.read_text())
        except (ValueError, UnicodeDecodeError):
            old = None
        differ = config_differences(old, config, free_fields) if isinstance(
            old, dict) else ["config.json (unreadable)"]
        if differ:
            raise RunDirError(f"{out_dir} holds another run ({held}, no checkpoint) whose config "
                              f"differs in {differ}; use --overwrite or another --out")


@contextmanager
def claim(out_dir: str | Path, *, rank: int, config: dict[str, Any], resume: bool,
          overwrite: bool = False, free_fields: tuple[str, ...] = ()) -> Iterator[None]:
    """Hold ``out_dir`` for one trainer (see the module docstring); a no-op on ranks > 0."""
    if rank != 0:
        yield
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wait_if = (lambda: _same_run(out_dir, config, free_fields)) if resume and not overwrite else None
    with _lock(out_dir, wait_if):
        _check(out_dir, config, resume, overwrite, free_fields)
        yield
