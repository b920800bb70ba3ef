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
from collections.abc import Iterable
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
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}: not UTF-8 (byte {raw[err.start]:#04x} at byte "
                                 f"{err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: invalid JSON ({err.msg} at column {err.colno})"
                ) from err
            if not isinstance(row, dict):
                raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
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
    if not examples:
        raise ValueError(f"{path}: the file has no rows")
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
