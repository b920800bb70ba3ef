"""The GPU check: what one CUDA GPU does with maskdiff, as one table (README "GPU check").

Run through ``bash benchmarks/gpu_check.sh [--dry-run] [--out PATH]``, which picks the Python.
Each part runs in its own process under its own time limit, inside one overall budget; a part
that fails or runs out of time is a failed row and the other parts still run:

- ``cuda tests``: ``pytest -m cuda`` on the test files that carry the ``cuda`` marker, one row
  per test (without CUDA they skip, with the reason).
- ``overhead``: ``benchmarks/overhead.py`` at ~99M parameters (d_model 768, 14 layers, 12 heads),
  sequence 512, batch 32, bf16 autocast on CUDA: ms/step, tokens/s and model FLOPs utilisation
  of the bare loop and the trainer with standard, MIRROR fused and unfused, online P-POTS.
- ``hf steps``: ``benchmarks/hf_steps.py --out PATH [--dry-run]``, only when that file exists;
  its JSON's ``rows`` (``name`` and any of tokens_per_s, mfu, ms_per_step, peak_memory_gib).

MFU is against :data:`PEAK_TFLOPS`. ``--dry-run``: tiny sizes on the CPU, a handful of steps
(the test suite runs it); its MFU is against the same GPU peak, so only its presence means
anything. Writes the rows as JSON (``--out``; default ``$OUT/gpu_check.json`` when ``OUT`` is
set, else ``benchmarks/results/gpu_check.json``) and each part's log and output beside it in
``<out stem>_files/``. Exit status 1 when a row failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NVIDIA H200 (SXM) dense BF16 tensor-core peak, TFLOP/s (1979 is the 2:4-sparse figure).
PEAK_TFLOPS = 989.0
PEAK_SOURCE = "NVIDIA H200 SXM bf16 dense tensor-core peak (989 TFLOP/s; no sparsity)"
OVERHEAD_ROWS = {"bare PyTorch loop": "bare loop (plain PyTorch step)",  # in the table's order
                 "maskdiff standard": "trainer standard",
                 "maskdiff mirror": "trainer MIRROR fused",
                 "maskdiff mirror (unfused)": "trainer MIRROR unfused",
                 "maskdiff ppots_online": "trainer online P-POTS",
                 # block diffusion (method.md §12): [x_t ; x_0] through flex attention on CUDA
                 "maskdiff standard block b=16": "trainer block diffusion b=16"}
SIZES = {  # overhead.py's arguments: on the GPU, and for --dry-run
    "gpu": ["--device", "cuda", "--d-model", "768", "--layers", "14", "--n-heads", "12",
            "--max-len", "512", "--batch-size", "32", "--n-train", "512", "--steps", "10",
            "--rounds", "5", "--warmup", "3", "--threads", "8"],
    "dry": ["--device", "cpu", "--d-model", "32", "--layers", "1", "--n-heads", "2",
            "--max-len", "128", "--batch-size", "4", "--n-train", "16", "--steps", "2",
            "--rounds", "1", "--warmup", "1", "--threads", "1"],
}
LIMITS = {"gpu": {"cuda tests": 150, "overhead": 240, "hf steps": 240},  # seconds per part
          "dry": {"cuda tests": 120, "overhead": 120, "hf steps": 120}}
PART_NAMES = {"tests": "cuda tests", "overhead": "overhead", "hf": "hf steps"}
METRICS = ("tokens_per_s", "mfu", "ms_per_step", "memory_gib")
MEMORY_KEYS = ("peak_memory_gib", "memory_gib", "max_memory_allocated_gib", "peak_mem_gib")


def row(part, name, status, note="", **metrics):
    return {"part": part, "name": name, "status": status, "note": note,
            **{k: metrics.get(k) for k in METRICS}}


class Budget:
    """The overall deadline and each part's share of what is left."""

    def __init__(self, started_at: float, seconds: float) -> None:
        self.deadline = started_at + seconds

    def limit(self, part_limit: float) -> float:
        return min(part_limit, self.deadline - time.time() - 5)


def run_part(cmd, log: Path, timeout: float, outputs=()) -> tuple[int | None, float]:
    """Runs ``cmd`` (its output to ``log``, ``outputs`` removed first); returns (exit status, or
    None on timeout, and seconds).
    The whole process group is killed at the limit, so pytest's or torch's children go too."""
    begin = time.time()
    for stale in outputs:  # a part that dies early must not leave an old run's file to be read
        Path(stale).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(map(str, cmd)) + "\n")
        handle.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code = None
    lines = log.read_text(errors="replace").splitlines()
    print(f"--- {log.name} (last lines)")
    for line in lines[-15:]:
        print(f"  | {line[:160]}")
    return code, time.time() - begin


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's process group, SIGKILL to what is left 5 s later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:120] if lines else ""


def failed(part, name, code, seconds, log: Path):
    status = "timeout" if code is None else "failed"
    what = f"killed after {seconds:.0f} s" if code is None else f"exit {code}"
    return [row(part, name, status, f"{what}: {last_line(log)} ({log.name})")]


def cuda_test_files() -> list[str]:
    """The test files that mark tests ``cuda``."""
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if "mark.cuda" in p.read_text(errors="replace")]


def cuda_tests(files: Path, budget: Budget, limit: float) -> list[dict]:
    part, xml, log = "cuda tests", files / "cuda_tests.xml", files / "cuda_tests.log"
    paths = cuda_test_files()
    if not paths:
        return [row(part, "pytest -m cuda", "failed", "no test file carries the cuda marker")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *paths]
    code, seconds = run_part(cmd, log, budget.limit(limit), outputs=[xml])
    if code is None or not xml.exists():
        return failed(part, "pytest -m cuda", code, seconds, log)
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        name = case.get("name") if module == "test_benchmarks_cuda" else f"{module}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            message = (bad.get("message") or "").strip()
            status, note = "failed", message.splitlines()[0][:120] if message else ""
        elif skipped is not None:
            status, note = "skipped", (skipped.get("message") or "")[:120]
        else:
            status, note = "passed", f"{float(case.get('time', 0)):.1f} s"
        rows.append(row(part, name, status, note))
    if code not in (0, 5) and not any(r["status"] == "failed" for r in rows):
        rows += failed(part, "pytest -m cuda", code, seconds, log)
    return rows or [row(part, "pytest -m cuda", "failed", f"no test collected ({log.name})")]


def overhead(files: Path, budget: Budget, limit: float, dry_run: bool) -> list[dict]:
    part, out, log = "overhead", files / "overhead.json", files / "overhead.log"
    if not dry_run and not cuda_available():
        return [row(part, "overhead.py --device cuda", "failed",
                    "this Python's torch sees no CUDA device (use --dry-run on a CPU)")]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"),
           *SIZES["dry" if dry_run else "gpu"], "--bf16", "--peak-tflops", str(PEAK_TFLOPS),
           "--methods", "standard,mirror,ppots_online", "--block-sizes", "16",
           "--json", str(out)]
    code, seconds = run_part(cmd, log, budget.limit(limit), outputs=[out])
    if code != 0 or not out.exists():
        return failed(part, "overhead.py", code, seconds, log)
    data = json.loads(out.read_text())
    note = (f"{data['n_parameters'] / 1e6:.3g}M params, {data['args']['batch_size']}×"
            f"{data['args']['max_len']} tokens, bf16, {data['device_name']}")
    rows, order = [], list(OVERHEAD_ROWS)
    for r in sorted(data["rows"], key=lambda r: order.index(r["contender"])
                    if r["contender"] in order else len(order)):
        rows.append(row(part, OVERHEAD_ROWS.get(r["contender"], r["contender"]), "ok", note,
                        tokens_per_s=r["tokens_per_s"], mfu=r["mfu"], ms_per_step=r["ms_per_step"],
                        memory_gib=data.get("peak_memory_gib")))
        note = ""  # once is enough
    return rows


def hf_steps(files: Path, budget: Budget, limit: float, dry_run: bool) -> list[dict]:
    part, script = "hf steps", ROOT / "benchmarks" / "hf_steps.py"
    if not script.exists():
        return [row(part, "hf_steps.py", "absent", "benchmarks/hf_steps.py is not in this tree")]
    out, log = files / "hf_steps.json", files / "hf_steps.log"
    cmd = [sys.executable, str(script), "--out", str(out), *(["--dry-run"] if dry_run else [])]
    code, seconds = run_part(cmd, log, budget.limit(limit), outputs=[out])
    if code != 0 or not out.exists():
        return failed(part, "hf_steps.py", code, seconds, log)
    data = json.loads(out.read_text())
    rows = []
    for r in data.get("rows") or [data]:
        memory = next((number(r.get(k)) for k in MEMORY_KEYS if number(r.get(k)) is not None), None)
        rows.append(row(part, str(r.get("name") or r.get("contender") or "hf_steps.py"),
                        str(r.get("status", "ok")), str(r.get("note", "")),
                        tokens_per_s=number(r.get("tokens_per_s")), mfu=number(r.get("mfu")),
                        ms_per_step=number(r.get("ms_per_step")), memory_gib=memory))
    return rows


def number(value) -> float | None:
    """A JSON number as a float; anything else (missing, text, a bool) as None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def environment(dry_run: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"dry_run": dry_run, "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.executable,
            "python_version": platform.python_version(), "commit": commit,
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "peak_tflops": PEAK_TFLOPS, "peak_source": PEAK_SOURCE}


def fmt(value, spec: str) -> str:
    """``value`` in ``spec``, or a right-aligned dash of the same width."""
    return f"{'-':>{spec.split('.')[0]}}" if value is None else format(value, spec)


def table(env: dict, rows: list[dict], seconds: float) -> str:
    """The one table, with the device, versions and peak it was measured against above it."""
    head = (f"GPU check{' (DRY RUN: tiny sizes on the CPU)' if env['dry_run'] else ''} — "
            f"{env['device']}, torch {env['torch']} (CUDA {env['cuda']}), Python "
            f"{env['python_version']}, commit {env['commit']}, {env['date_utc']}, {seconds:.0f} s\n"
            f"MFU against {env['peak_source']}")
    name_width = max([len(r["name"]) for r in rows] + [4])
    lines = [head, f"{'part':<10}  {'name':<{name_width}}  {'status':<7}  {'tokens/s':>10}  "
                   f"{'MFU %':>6}  {'ms/step':>8}  {'mem GiB':>7}  note"]
    for r in rows:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(f"{r['part']:<10}  {r['name']:<{name_width}}  {r['status']:<7}  "
                     f"{fmt(r['tokens_per_s'], '10.0f')}  {fmt(mfu, '6.3g')}  "
                     f"{fmt(r['ms_per_step'], '8.1f')}  {fmt(r['memory_gib'], '7.1f')}  {r['note']}")
    return "\n".join(lines)


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return ROOT / "benchmarks" / "results" / "gpu_check.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: see above)")
    parser.add_argument("--parts", default="tests,overhead,hf",
                        help="comma-separated subset of tests,overhead,hf")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="all parts together, counted from --started-at (default 9 min: "
                             "one command on a lent GPU machine may run 10)")
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds the check began (gpu_check.sh passes its start)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.parts.split(",") if name not in PART_NAMES]
    if unknown:
        parser.error(f"--parts: unknown part(s) {unknown} (tests, overhead, hf)")
    started = args.started_at or time.time()
    budget, sizes = Budget(started, args.budget_s), "dry" if args.dry_run else "gpu"
    out = args.out or default_out()
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    env = environment(args.dry_run)
    parts = {"tests": lambda: cuda_tests(files, budget, LIMITS[sizes]["cuda tests"]),
             "overhead": lambda: overhead(files, budget, LIMITS[sizes]["overhead"], args.dry_run),
             "hf": lambda: hf_steps(files, budget, LIMITS[sizes]["hf steps"], args.dry_run)}
    rows = []
    for name in args.parts.split(","):
        if budget.limit(1e9) < 10:
            rows.append(row(PART_NAMES[name], "-", "timeout", "the overall budget was spent before it"))
            continue
        try:
            rows += parts[name]()
        except Exception as err:  # a part's own bug: a failed row, the rest still runs
            rows.append(row(PART_NAMES[name], "-", "failed", f"{type(err).__name__}: {err}"[:160]))
    seconds = time.time() - started
    print(table(env, rows, seconds))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**env, "seconds": seconds, "rows": rows,
                               "files": str(files)}, indent=2) + "\n")
    print(f"written: {out} (part logs in {files})")
    return 1 if any(r["status"] in ("failed", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
