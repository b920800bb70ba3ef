"""Atomic file writes, for every layer (it imports nothing of maskdiff; docs/architecture.md §2).

A reader (a resumed run, a parallel worker, ``maskdiff evaluate``) sees a file's old content or
its new content, never a half-written or empty file: the text goes to ``NAME.tmp`` in the same
directory and replaces ``NAME`` with one ``os.replace``. A failed write (a full disk, an
interruption) removes the temporary file and leaves ``NAME`` as it was.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file: the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with naming(path), open(tmp, "w", encoding=encoding) as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
