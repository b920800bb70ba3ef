"""Writing an experiment's ``report.md``, and the interval cell its tables share."""

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


def interval(d: dict | None, *, scale: float = 1.0, digits: int = 4, sign: str = "",
             p: bool = False) -> str:
    """``mean [lo, hi]`` of a :mod:`~maskdiff.experiments.stats` result, each value times
    ``scale`` with ``digits`` decimals (``sign="+"``: signed); "–" without a result, the mean
    alone without an interval; ``p``: followed by `` (p = …)`` when the result has a p-value."""
    if not d:
        return "–"
    f = lambda x: f"{scale * x:{sign}.{digits}f}"  # noqa: E731
    if d.get("lo") is None:
        return f(d["mean"])
    cell = f"{f(d['mean'])} [{f(d['lo'])}, {f(d['hi'])}]"
    return f"{cell} (p = {d['p']:.2g})" if p and "p" in d else cell
