"""Atomic file writes, for every layer (it imports nothing of maskdiff; docs/architecture.md §2).

A reader (a resumed run, a parallel worker, ``maskdiff evaluate``) sees a file's old content or
its new content, never a half-written or empty file: the text goes to a temporary file in the
same directory and replaces ``NAME`` with one ``os.replace``. The temporary name is unique per
writer (``NAME.<pid>.<random>.tmp``), so two processes (or threads) writing the same file never
rename each other's half-written text: the last complete write wins. A failed write (a full
disk, an interruption) removes its temporary file and leaves ``NAME`` as it was; a temporary
file left by a killed writer (its process is gone, or an old-style ``NAME.tmp`` over an hour
old) is removed by the next write of ``NAME``.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STALE_SECONDS = 3600.0  # an old-style NAME.tmp (no writer's pid in it) older than this is stale


def temp_name(path: Path) -> Path:
    """A temporary file next to ``path`` that no other writer uses."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError included: someone else's process, leave its file alone
        return True
    return True


def clean_stale_temps(path: str | Path, now: float | None = None) -> list[Path]:
    """Remove the temporary files of ``path`` that no living writer will finish: a
    ``NAME.<pid>.<hex>.tmp`` whose process is gone, and an old-style ``NAME.tmp`` older than
    :data:`STALE_SECONDS`. A living writer's file is never touched. Returns what was removed."""
    path = Path(path)
    now = time.time() if now is None else now
    removed = []
    try:
        candidates = list(path.parent.glob(f"{path.name}.*tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        rest = tmp.name[len(path.name) + 1:].split(".")
        try:
            if rest == ["tmp"]:
                stale = now - tmp.stat().st_mtime > STALE_SECONDS
            elif len(rest) == 3 and rest[0].isdigit() and rest[2] == "tmp":
                stale = int(rest[0]) != os.getpid() and not _pid_alive(int(rest[0]))
            else:
                continue
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile (another cleaner), or not ours to remove
            continue
    return removed


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file: the old file or the new, never half."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with naming(path), open(tmp, "w", encoding=encoding) as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    clean_stale_temps(path)


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Let no write error go unnamed: an ``OSError`` without a file name (what ``write(2)`` and
    ``close(2)`` report for a full disk or an exceeded quota: ``[Errno 28] No space left on
    device``) is raised again as the same error naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
