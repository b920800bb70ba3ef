"""Atomic file writes, for every layer (it imports nothing of maskdiff; docs/architecture.md §2).

A reader (a resumed run, a parallel worker, ``maskdiff evaluate``) sees a file's old content or
its new content, never a half-written or empty file: the text goes to ``NAME.tmp`` in the same
directory and replaces ``NAME`` with one ``os.replace``. A failed write (a full disk, an
interruption) removes the temporary file and leaves ``NAME`` as it was.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file: the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding=encoding) as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
