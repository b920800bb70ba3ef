"""Reading and writing examples as JSON Lines.

Two row kinds, one kind per file: ``{"prompt": str, "response": str}`` (SFT) and
``{"text": str}`` (pretraining; becomes ``Example(prompt="", response=text)``). Blank lines
are skipped. Anything else -- bad JSON, a row that is not an object, a missing key, a value
that is not a string, an empty response or text, rows of both kinds in one file, unknown keys
(unless ``extra_keys="ignore"``), no rows at all, bytes that are not UTF-8, a lone surrogate
escape (``"\\ud800"``) -- raises ValueError naming the file and line, so a broken data set
never trains silently on a subset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from maskdiff import jsonio
from maskdiff.data.examples import Example
from maskdiff.fileio import naming

_KINDS = {"sft": ("prompt", "response"), "text": ("text",)}


def _row_kind(row: dict) -> str | None:
    if "prompt" in row or "response" in row:
        return "sft"
    if "text" in row:
        return "text"
    return None


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file, the one reader of maskdiff's
    JSONL and text inputs: bytes that are not UTF-8 are a ValueError naming the file, the line
    and the byte (Python's own error names neither file nor line)."""
    path = Path(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not UTF-8 (byte {raw[err.start]:#04x} at "
                                 f"byte {err.start + 1} of the line)") from None


def read_json_lines(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not
    UTF-8, not JSON or not a JSON object is a ValueError naming the file and line, and so is
    a file without rows."""
    rows = []
    for line_no, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg} at column {err.colno})"
                             ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: a row must be a JSON object, got "
                             f"{type(row).__name__}")
        rows.append((line_no, row))
    if not rows:
        raise ValueError(f"{path}: the file has no rows")
    return rows


def load_jsonl(path: str | Path, extra_keys: str = "error") -> list[Example]:
    """The examples of a JSONL file (see the module docstring for the accepted rows).

    Args:
        path: the file.
        extra_keys: "error" (default) to reject keys other than the row kind's, "ignore" to
            drop them (e.g. an ``"id"`` column).
    """
    if extra_keys not in ("error", "ignore"):
        raise ValueError(f"extra_keys must be 'error' or 'ignore', got {extra_keys!r}")
    path = Path(path)
    examples: list[Example] = []
    file_kind: str | None = None
    first_line = 0
    for line_no, row in read_json_lines(path):
        where = f"{path}:{line_no}"
        kind = _row_kind(row)
        if kind is None:
            raise ValueError(
                f"{where}: a row needs keys 'prompt' and 'response', or 'text'; "
                f"got {sorted(row)}"
            )
        if file_kind is None:
            file_kind, first_line = kind, line_no
        elif kind != file_kind:
            raise ValueError(
                f"{where}: a {kind!r} row in a file whose rows are {file_kind!r} "
                f"(from line {first_line}); mixed kinds are not allowed"
            )
        keys = _KINDS[kind]
        for key in keys:
            if key not in row:
                raise ValueError(f"{where}: missing key {key!r}")
            if not isinstance(row[key], str):
                raise ValueError(
                    f"{where}: {key!r} must be a string, got {type(row[key]).__name__}"
                )
            try:
                row[key].encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"{where}: {key!r} holds a lone surrogate "
                                 f"({row[key][err.start]!r}), not text") from None
        unknown = sorted(set(row) - set(keys))
        if unknown and extra_keys == "error":
            raise ValueError(
                f"{where}: unknown keys {unknown} (pass extra_keys='ignore' to drop them)"
            )
        target = row[keys[-1]]
        if target == "":
            raise ValueError(f"{where}: {keys[-1]!r} is empty")
        examples.append(Example(row["prompt"], row["response"]) if kind == "sft"
                        else Example("", row["text"]))
    return examples


def save_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    """Write examples as JSONL: ``{"text"}`` rows if every prompt is empty, else SFT rows."""
    examples = list(examples)
    if not examples:
        raise ValueError("examples is empty: nothing to write")
    pretraining = all(e.is_pretraining for e in examples)
    with naming(path), Path(path).open("w", encoding="utf-8") as handle:
        for example in examples:
            row = ({"text": example.response} if pretraining
                   else {"prompt": example.prompt, "response": example.response})
            handle.write(jsonio.dumps(row, ensure_ascii=False) + "\n")
