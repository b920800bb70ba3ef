"""The resumable-job primitive (maskdiff.jobs) and unique temporary names (maskdiff.fileio)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from maskdiff.fileio import atomic_write_text, clean_stale_temps
from maskdiff.jobs import KEY_FIELD, JobRefused, differences, read_record, reuse_or_run

# Damage of every kind a record meets: cut short, emptied, the wrong JSON type, a field gone,
# a field of the wrong type, not text at all.
DAMAGE = {
    "truncated": '{"value": 3, "job_key": {"a": 1',
    "empty": "",
    "whitespace": "  \n",
    "list": "[1, 2, 3]",
    "string": '"value"',
    "missing": json.dumps({"other": 1, KEY_FIELD: {"a": 1}}),
    "wrong-type": json.dumps({"value": "three", KEY_FIELD: {"a": 1}}),
    "null": "null",
    "number": "3.5",
    "nan": '{"value": NaN, "job_key": {"a": 1}}',
    "key-type": json.dumps({"value": 3, KEY_FIELD: "a=1"}),
    "bom": "\ufeff" + json.dumps({"value": 3, KEY_FIELD: {"a": 1}}),
}


def _check(record: dict) -> None:
    if not isinstance(record["value"], int):
        raise TypeError(f"value must be an int, got {type(record['value']).__name__}")


def _counting(value=7):
    calls = []

    def compute():
        calls.append(1)
        return {"value": value}
    return compute, calls


def test_computes_once_then_reuses(tmp_path):
    path = tmp_path / "r.json"
    compute, calls = _counting()
    assert reuse_or_run(path, {"a": 1}, compute) == {"value": 7}
    assert reuse_or_run(path, {"a": 1}, compute) == {"value": 7}
    assert len(calls) == 1
    assert json.loads(path.read_text())[KEY_FIELD] == {"a": 1}


def test_tuples_and_lists_are_one_key(tmp_path):
    path = tmp_path / "r.json"
    compute, calls = _counting()
    reuse_or_run(path, {"design": (32, 8, 8)}, compute)
    reuse_or_run(path, {"design": [32, 8, 8]}, compute)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_record_is_named_set_aside_and_recomputed(tmp_path, capsys, kind):
    path = tmp_path / "compare.json"
    path.write_text(DAMAGE[kind])
    compute, calls = _counting()
    assert reuse_or_run(path, {"a": 1}, compute, required=("value",), check=_check) == {"value": 7}
    assert len(calls) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "damaged" in err[0]
    aside = list(tmp_path.glob("compare.json.damaged-*"))
    assert len(aside) == 1 and aside[0].read_text() == DAMAGE[kind]  # nothing lost
    assert json.loads(path.read_text())["value"] == 7


def test_a_directory_in_place_of_the_record_is_set_aside(tmp_path, capsys):
    path = tmp_path / "r.json"
    (path / "inner").mkdir(parents=True)
    compute, calls = _counting()
    assert reuse_or_run(path, {}, compute) == {"value": 7} and len(calls) == 1
    assert "a directory, not a file" in capsys.readouterr().err
    assert (next(tmp_path.glob("r.json.damaged-*")) / "inner").is_dir()


def test_not_utf8_is_damaged(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"value": \xff}')
    record, why = read_record(path)
    assert record is None and "UTF-8" in why
    compute, calls = _counting()
    reuse_or_run(path, {}, compute)
    assert len(calls) == 1 and "r.json is damaged" in capsys.readouterr().err


def test_changed_key_is_refused_in_one_line_naming_file_and_field(tmp_path):
    path = tmp_path / "runs" / "compare.json"
    reuse_or_run(path, {"optim": {"max_steps": 12, "lr": 0.1}}, _counting()[0])
    compute, calls = _counting()
    with pytest.raises(JobRefused) as err:
        reuse_or_run(path, {"optim": {"max_steps": 24, "lr": 0.1}}, compute, what="run")
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "optim.max_steps: 12 → 24" in message and "lr" not in message
    assert not calls and json.loads(path.read_text())["value"] == 7  # untouched


def test_changed_key_is_recomputed_where_asked(tmp_path, capsys):
    path = tmp_path / "ppots.json"
    reuse_or_run(path, {"design": [8, 4]}, _counting(1)[0], on_change="recompute")
    assert reuse_or_run(path, {"design": [16, 4]}, _counting(2)[0],
                        on_change="recompute") == {"value": 2}
    assert "another configuration (design: [8, 4] → [16, 4])" in capsys.readouterr().err
    assert len(list(tmp_path.glob("ppots.json.replaced-*"))) == 1


def test_legacy_record_uses_its_legacy_key_or_is_set_aside(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"value": 5}))
    compute, calls = _counting()
    assert reuse_or_run(path, {"a": 1}, compute, legacy=lambda r: {"a": 1}) == {"value": 5}
    with pytest.raises(JobRefused, match="a: 2 → 1"):
        reuse_or_run(path, {"a": 1}, compute, legacy=lambda r: {"a": 2})
    assert reuse_or_run(path, {"a": 1}, compute) == {"value": 7}  # no legacy key: recomputed
    assert "older maskdiff" in capsys.readouterr().err and len(calls) == 1


def test_differences_are_dotted_with_values():
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: 2 → 3", "d: null → 4"]


def _hold_and_compute(path: str, marker: str) -> None:
    def compute():
        Path(marker).write_text("started")
        time.sleep(1.0)
        return {"value": os.getpid()}
    reuse_or_run(path, {"a": 1}, compute)


def test_second_process_waits_for_the_first_then_reuses(tmp_path):
    path, marker = tmp_path / "r.json", tmp_path / "marker"
    ctx = mp.get_context("fork")
    first = ctx.Process(target=_hold_and_compute, args=(str(path), str(marker)))
    first.start()
    while not marker.exists():
        time.sleep(0.02)
    compute, calls = _counting()
    record = reuse_or_run(path, {"a": 1}, compute)
    first.join(10)
    assert record == {"value": first.pid} and not calls


def _write_many(path: str, tag: str, n: int, failures) -> None:
    for i in range(n):
        try:
            atomic_write_text(path, f"{tag} {i}\n" * 50)
        except OSError:
            failures.value += 1


def test_two_writers_of_one_file_never_fail(tmp_path):
    """Issue 24 item 14: with one shared NAME.tmp, 245 of 600 writes failed."""
    path = tmp_path / "report.md"
    ctx = mp.get_context("fork")
    failures = ctx.Value("i", 0)
    procs = [ctx.Process(target=_write_many, args=(str(path), tag, 300, failures))
             for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert failures.value == 0 and all(p.exitcode == 0 for p in procs)
    lines = set(path.read_text().splitlines())
    assert len(lines) == 1 and lines.pop() in ("a 299", "b 299")  # one whole write, not a mix
    assert not list(tmp_path.glob("*.tmp"))


def test_stale_temps_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    path = tmp_path / "results.json"
    ctx = mp.get_context("fork")
    dead = ctx.Process(target=lambda: None)
    dead.start()
    dead.join()
    stale = tmp_path / f"results.json.{dead.pid}.abcd0123.tmp"
    live = tmp_path / f"results.json.{os.getppid()}.abcd0123.tmp"
    old, young = tmp_path / "results.json.tmp", tmp_path / "other.json.tmp"
    for p in (stale, live, old, young):
        p.write_text("half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    atomic_write_text(path, "{}\n")
    assert not stale.exists() and not old.exists()
    assert live.exists() and young.exists()
    assert clean_stale_temps(path) == []
