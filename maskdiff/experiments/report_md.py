"""Writing an experiment's ``report.md``."""

from __future__ import annotations

from pathlib import Path

from maskdiff.fileio import atomic_write_text


def write_report_md(out_dir: Path, lines: list[str]) -> Path:
    """Write ``out_dir/report.md`` from ``lines``, followed by the hand-written ``notes.md`` of
    the directory when there is one (findings kept across regenerations of the report)."""
    notes = out_dir / "notes.md"
    if notes.exists():
        lines = [*lines, "## Notes", "", notes.read_text().strip(), ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
