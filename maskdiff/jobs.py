"""Resumable jobs: reuse a named result or compute it, for every layer (docs/architecture.md §3,
"Jobs"; it imports only :mod:`maskdiff.fileio`).

A *record* is one JSON object in a file (a run's ``compare.json``, a fitted ``ppots.json``, a
``decompose`` measurement, a start run's ``finished.json``) that carries, under
:data:`KEY_FIELD`, the resolved configuration it was made under. :func:`reuse_or_run` is the one
way every experiment reuses such a result:

* a record whose key equals the requested one is returned as it is (no lock taken: records are
  only ever replaced whole, by :func:`maskdiff.fileio.atomic_write_text`);
* otherwise the record is computed under a lock (``.NAME.lock``, ``flock``: the kernel releases
  it when the process dies) and written atomically; a second process asking for the same record
  meanwhile waits, then reuses it;
* a **damaged** record (not JSON, not UTF-8, empty, not an object, a missing or mistyped field,
  one that fails the caller's ``check``) is named on stderr, set aside as
  ``NAME.damaged-<UTC time>`` and recomputed: it never stops the job;
* a record made under **another configuration** is refused with :func:`refusal`'s one wording
  (naming the file and the differing fields) when recomputing would discard work the user may
  still want (a trained run), or set aside as ``NAME.replaced-<UTC time>`` and recomputed when
  it is a cheap derived result (``on_change="recompute"``).

A record written before records carried their key is read through ``legacy`` (its key, as far
as it can be told, e.g. from the run's ``config.json``), or else treated as made under an
unknown configuration.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock)
    fcntl = None

KEY_FIELD = "job_key"
ON_CHANGE = ("refuse", "recompute")

Differ = Callable[[Any, Any], list[str]]


class JobRefused(ValueError):
    """A record made under another configuration, where recomputing it is not ours to decide."""


def plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists, keys strings): keys compare equal
    before and after a round trip through a record."""
    return json.loads(jsonio.dumps(value))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The fields in which two keys differ, dotted, each with its old and new value
    (``optim.max_steps: 12 → 24``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for name in sorted(set(old) | set(new), key=str):
            out += differences(old.get(name), new.get(name), f"{prefix}{name}.")
        return out
    if old == new:
        return []
    show = lambda v: (jsonio.dumps(v) if len(jsonio.dumps(v)) <= 40 else "…")  # noqa: E731
    return [f"{prefix.rstrip('.') or 'key'}: {show(old)} → {show(new)}"]


def refusal(path: str | Path, differing: list[str], what: str = "result") -> JobRefused:
    """The one wording of every refused reuse: the record, what differs, what to do."""
    shown = ", ".join(differing[:5]) + (f", … ({len(differing)} fields)" if len(differing) > 5
                                        else "")
    return JobRefused(f"{path}: this {what} was made under another configuration ({shown}); "
                      f"remove {Path(path).name} (or its directory) to recompute it, or use "
                      "another output directory")


def note(message: str) -> None:
    print(f"maskdiff: {message}", file=sys.stderr, flush=True)


def set_aside(path: str | Path, reason: str, label: str = "damaged") -> Path:
    """Rename ``path`` to ``NAME.<label>-<UTC time>`` (nothing is deleted), saying why on stderr
    in one line: ``reason`` completes "NAME ..." (e.g. "is damaged (empty file)")."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}-{stamp}-{counter}")
        counter += 1
    os.replace(path, target)
    note(f"{path} {reason}: set aside as {target.name}; recomputing it")
    return target


def read_record(path: str | Path, required: tuple[str, ...] = (),
                check: Callable[[dict], Any] | None = None) -> tuple[dict | None, str | None]:
    """``(record, None)``, ``(None, None)`` when there is no file, or ``(None, why)`` when it is
    damaged: not UTF-8 JSON, not an object, a ``required`` field missing, or ``check(record)``
    raising ``KeyError``, ``TypeError`` or ``ValueError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, "a directory, not a file"
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text: {err.reason} at byte {err.start}"
    if not text.strip():
        return None, "empty file"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    if not isinstance(record, dict):
        return None, f"a JSON object is expected, found {type(record).__name__}"
    missing = [name for name in required if name not in record]
    if missing:
        return None, f"missing field {missing[0]!r}"
    if check is not None:
        try:
            check(record)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            return None, f"{type(err).__name__}: {err}"
    return record, None


def load_record(path: str | Path, required: tuple[str, ...] = ()) -> dict | None:
    """A record to report from (not to reuse): its content without the key, or None when it is
    missing or damaged (named on stderr)."""
    record, why = read_record(path, required)
    if why is not None:
        note(f"{path} is damaged ({why}): left out")
    return None if record is None else {k: v for k, v in record.items() if k != KEY_FIELD}


@contextmanager
def record_lock(path: str | Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` next to the record for as long as it is being computed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the handle releases the lock


def _stored_key(record: dict, legacy: Callable[[dict], Any] | None) -> tuple[bool, Any]:
    if KEY_FIELD in record:
        return True, record[KEY_FIELD]
    if legacy is not None:
        key = legacy(record)
        if key is not None:
            return True, plain(key)
    return False, None


def _reuse(path: Path, key: Any, *, on_change: str, what: str, required: tuple[str, ...],
           check, differ: Differ, legacy, act: bool) -> dict | None:
    """The record to reuse, or None to compute it. With ``act``, a damaged or outdated record
    is set aside (or refused) first; without, nothing is touched."""
    record, why = read_record(path, required, check)
    if record is None:
        if why is not None and act:
            set_aside(path, f"is damaged ({why})")
        return None
    known, stored = _stored_key(record, legacy)
    if known and type(stored) is not type(key):  # the key itself is damaged
        if act:
            set_aside(path, f"is damaged (field {KEY_FIELD!r} holds {type(stored).__name__})")
        return None
    differing = differ(stored, key) if known else ["unknown"]
    if not differing:
        return {k: v for k, v in record.items() if k != KEY_FIELD}
    if act:
        if on_change == "refuse" and known:
            raise refusal(path, differing, what)
        set_aside(path, f"was made under another configuration ({', '.join(differing[:3])})"
                  if known else "records no configuration (an older maskdiff wrote it)",
                  label="replaced")
    return None


def reuse_or_run(path: str | Path, key: Any, compute: Callable[[], dict], *,
                 on_change: str = "refuse", what: str = "result", required: tuple[str, ...] = (),
                 check: Callable[[dict], Any] | None = None, differ: Differ = differences,
                 legacy: Callable[[dict], Any] | None = None) -> dict:
    """The record at ``path`` made under ``key``: reused, or ``compute()``-d and written with
    its key (see the module docstring). Returns the record without its key.

    ``key``: the resolved configuration (anything JSON holds). ``on_change``: ``"refuse"`` (a
    :class:`JobRefused` naming the differing fields) or ``"recompute"``. ``required`` and
    ``check`` tell a damaged record. ``differ(old_key, new_key)`` lists differing fields
    (default :func:`differences`). ``legacy(record)`` gives the key of a record written
    without one, or None."""
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
    path, key = Path(path), plain(key)
    options = dict(on_change=on_change, what=what, required=required, check=check,
                   differ=differ, legacy=legacy)
    found = _reuse(path, key, act=False, **options)
    if found is not None:
        return found
    with record_lock(path):
        found = _reuse(path, key, act=True, **options)  # another process may have made it
        if found is not None:
            return found
        record = plain(compute())
        if not isinstance(record, dict):
            raise TypeError(f"{path}: compute() must return a dict, got {type(record).__name__}")
        record.pop(KEY_FIELD, None)
        atomic_write_text(path, jsonio.dumps({**record, KEY_FIELD: key}, indent=1) + "\n")
        return record
