"""``maskdiff compare``: the plan, the statistics, the job end to end and its reuse of runs."""

import json
import os

import pytest

from maskdiff.cli import main
from maskdiff.experiments.compare import (
    EQUAL_COMPUTE, PRESETS, CompareJob, RunSpec, plan,
)
from maskdiff.experiments.compare_report import summarise


def test_the_full_plan_runs_every_method_with_syrm_on_tables_and_the_equal_compute_variant():
    specs = plan(PRESETS["full"])
    labels = {s.label for s in specs}
    assert {"standard", "clipped", "strats", "ema", "isad", "mirror", "multisample2", "ppots",
            "ppots_online", "ppots_mirror", "window", "ar", EQUAL_COMPUTE,
            "syrm (table)", "standard (table)", "gpots", "gpots_mirror", "gpots_online"} == labels
    assert len(specs) == len(labels) * 3
    assert plan(PRESETS["demo"], seeds=[1, 2])[:2] == [RunSpec("standard", 1, "arithmetic"),
                                                        RunSpec("standard", 2, "arithmetic")]


def test_unknown_methods_and_repeated_seeds_are_refused():
    from dataclasses import replace

    with pytest.raises(ValueError, match="unknown method"):
        replace(PRESETS["smoke"], methods=("standard", "magic"))
    with pytest.raises(ValueError, match="distinct"):
        replace(PRESETS["smoke"], seeds=(1, 1))


def _record(label, seed, p, fwd=100):
    return {"label": label, "method": label, "task": "arithmetic", "seed": seed, "pass_at_1": p,
            "test_loss": 1.0, "test_loss_se": 0.1, "test_loss_kind": "ELBO", "variance_proxy": 1.0,
            "forward_passes": fwd, "train_seconds": 1.0, "steps": 10, "history": [],
            "loss_per_t_bin": []}


def test_summary_statistics_are_the_closed_form_ones():
    records = [_record("standard", s, p) for s, p in [(1, 0.2), (2, 0.4), (3, 0.3)]]
    records += [_record("mirror", s, p, fwd=200) for s, p in [(1, 0.5), (2, 0.45), (3, 0.35)]]
    out = summarise(PRESETS["smoke"], records, seconds=1.0, ppots=None, window=None)
    std, mir = out["methods"]["standard"], out["methods"]["mirror"]
    assert std["pass_at_1_stats"]["mean"] == pytest.approx(0.3)
    assert std["pass_at_1_stats"]["sd"] == pytest.approx(0.1)
    assert mir["pass_at_1_stats"]["range"] == pytest.approx(0.15)
    assert mir["worst_minus_standard_best"] == pytest.approx(0.35 - 0.4)
    assert mir["mean_minus_standard"] == pytest.approx(1.3 / 3 - 0.3)
    assert mir["sd_ratio_to_standard"] == pytest.approx(0.0763762615 / 0.1)
    assert mir["fwd_ratio_to_standard"] == 2.0


def test_smoke_job_end_to_end_and_restart_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"standard", "mirror", "ppots_mirror", "ar", EQUAL_COMPUTE}
    assert results["seeds"] == [42, 731]
    # one thread per run (the suite's, or one per worker process), recorded per job and per run
    assert results["threads"] == 1 and {r["threads"] for r in results["runs"]} == {1}
    # Same steps and batch for all: two-forward methods and standard@2x spend exactly twice.
    for label in ("mirror", "ppots_mirror", EQUAL_COMPUTE):
        assert methods[label]["fwd_ratio_to_standard"] == 2.0
    assert methods["ar"]["test_loss_kind"] == "causal NLL"
    for m in methods.values():
        assert all(0.0 <= p <= 1.0 for p in m["pass_at_1"]) and len(m["pass_at_1"]) == 2
    for name in ("report.md", "pass_at_1.png", "val_loss.png", "loss_per_t_bin.png",
                 "ppots/ppots.json", "ppots/ppots.png"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "start").iterdir()) == ["arithmetic-causal",
                                                                  "arithmetic-diffusion"]
    # The seeds differ in what they compute (data order, rates, masks), not in their start.
    runs = [r for r in results["runs"] if r["label"] == "standard"]
    assert runs[0]["history"] != runs[1]["history"]

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("compare.json")}
    assert len(stamps) == 10
    os.utime(out / "results.json", ns=(0, 0))
    job = CompareJob(PRESETS["smoke"], out, progress=False)
    again = job.run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    assert again["methods"]["mirror"]["pass_at_1"] == methods["mirror"]["pass_at_1"]
    assert "pass@1" in capsys.readouterr().out
