"""benchmarks/gpu_check.sh end to end on the CPU (--dry-run), and its guards: a failing part is a
failed row while the rest still runs, a part over its limit is killed; overhead.py's FLOP count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_NAMES = ["bare loop (plain PyTorch step)", "trainer standard", "trainer MIRROR fused",
                  "trainer MIRROR unfused", "trainer online P-POTS", "trainer block diffusion b=16"]
PASSES = {"maskdiff mirror": 2, "maskdiff mirror (unfused)": 2}


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_step_flops_counts_weights_attention_and_views():
    overhead = _load("overhead")
    # 6·N per token + 12·layers·d·L per token, times tokens and forward passes.
    assert overhead.step_flops(1000, 2, 8, 16, 10) == 10 * (6000 + 12 * 2 * 8 * 16)
    assert overhead.step_flops(1000, 2, 8, 16, 10, 2) == 2 * 10 * (6000 + 3072)


@pytest.mark.slow  # ~35 s: the whole GPU check script on the CPU
def test_gpu_check_dry_run_prints_one_table_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "MASKDIFF_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["peak_tflops"] == 989.0
    rows = report["rows"]
    # One table, at the end, naming every row.
    assert done.stdout.count("GPU check (DRY RUN") == 1
    table = done.stdout[done.stdout.index("GPU check (DRY RUN"):]
    assert "MFU against NVIDIA H200 SXM bf16 dense" in table
    assert all(r["name"] in table for r in rows)

    tests = [r for r in rows if r["part"] == "cuda tests"]
    names = {r["name"].split("[")[0] for r in tests}
    assert {"test_training_on_the_device_lowers_the_validation_elbo", "test_fused_mirror_equals_unfused",
            "test_loss_and_gradients_equal_the_cpus_on_identical_masks"} <= names
    assert all(r["status"] in ("passed", "skipped") for r in tests), tests
    if report["device"].startswith("cpu"):  # no CUDA here: each skips with its reason
        assert all(r["status"] == "skipped" and "no CUDA device" in r["note"] for r in tests)

    bench = [r for r in rows if r["part"] == "overhead"]
    assert [r["name"] for r in bench] == OVERHEAD_NAMES
    raw = json.loads((tmp_path / "gpu_check_files" / "overhead.json").read_text())
    by_name = {r["contender"]: r for r in raw["rows"]}
    tokens = raw["args"]["batch_size"] * raw["args"]["max_len"]
    for contender, r in by_name.items():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] > 0, r
        assert r["tokens_per_s"] == pytest.approx(tokens / (r["ms_per_step"] / 1e3), rel=1e-9)
        factor = r["input_factor"]  # 2 for block diffusion: the model reads [x_t ; x_0]
        assert factor == (2 if "block" in contender else 1)
        flops = PASSES.get(contender, 1) * factor * tokens * (
            6 * raw["n_parameters"]
            + 12 * raw["args"]["layers"] * raw["args"]["d_model"] * factor * raw["args"]["max_len"])
        assert r["mfu"] == pytest.approx(flops / (r["ms_per_step"] / 1e3) / 989e12, rel=1e-9)
    for r in bench:
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["ms_per_step"] > 0

    hf = [r for r in rows if r["part"] == "hf steps"]
    if (ROOT / "benchmarks" / "hf_steps.py").exists():
        fixtures = (ROOT.parent / "shared" / "fixtures" / "models" / "llada").is_dir()
        assert hf and all(r["status"] == ("ok" if fixtures else "skipped") for r in hf), hf
    else:
        assert [r["status"] for r in hf] == ["absent"]


def test_a_failing_part_is_a_failed_row_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    check = _load("gpu_check")

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "cuda_tests", broken)
    monkeypatch.setattr(check, "cuda_available", lambda: False)
    out = tmp_path / "check.json"
    assert check.main(["--parts", "tests,overhead", "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [(r["part"], r["status"]) for r in rows] == [("cuda tests", "failed"),
                                                        ("overhead", "failed")]
    assert rows[0]["note"] == "RuntimeError: boom"
    assert "sees no CUDA device" in rows[1]["note"]
    assert "RuntimeError: boom" in capsys.readouterr().out


def test_a_part_over_its_limit_is_killed_and_named(tmp_path):
    check = _load("gpu_check")
    log = tmp_path / "slow.log"
    begin = time.time()
    code, seconds = check.run_part(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        log, timeout=1)
    assert code is None and time.time() - begin < 30
    [failed] = check.failed("overhead", "overhead.py", code, seconds, log)
    assert failed["status"] == "timeout" and failed["note"].startswith("killed after")
    assert "started (slow.log)" in failed["note"]
