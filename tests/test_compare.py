"""``maskdiff compare``: the plan, the statistics, the job end to end and its reuse of runs."""

import json
import os

import pytest

from maskdiff.cli import main
from maskdiff.experiments.compare import (
    EQUAL_COMPUTE, PRESETS, CompareJob, RunSpec, plan,
)
from maskdiff.experiments.compare_summary import summarise


def test_the_full_plan_runs_every_method_with_syrm_on_tables_and_the_equal_compute_variant():
    specs = plan(PRESETS["full"])
    labels = {s.label for s in specs}
    assert {"standard", "clipped", "strats", "ema", "isad", "mirror", "multisample2", "ppots",
            "ppots_online", "ppots_mirror", "window", "ar", EQUAL_COMPUTE,
            "syrm (table)", "standard (table)", "gpots", "gpots_mirror", "gpots_online",
            # the pretraining rate samplers (docs/method.md §3)
            "bell", "bell_iw", "bell2", "bell8", "bell_ln", "bell_ln_iw", "window_0.45_0.55",
            "window_0.2_1", "window_0.3_1", "window_0.5_1", "annealed", "standard@4x"} == labels
    assert len(specs) == len(labels) * len(PRESETS["full"].seeds)
    assert len(PRESETS["full"].seeds) >= 10 and len(PRESETS["demo"].seeds) >= 5
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
            "loss_per_t_bin": [], "hits": "", "elbo_items": []}


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
    # The paired statistics: the differences are (0.3, 0.05, 0.05) points of pass@1.
    diff = mir["vs_standard"]["pass_at_1"]["difference"]
    assert diff["mean"] == pytest.approx(0.4 / 3)
    assert diff["p"] == pytest.approx(0.25073, abs=1e-4)  # t = 1.6 with 2 df: p = 1 - 1.6 / sqrt(4.56)
    assert std["pass_at_1_ci"]["hi"] - 0.3 == pytest.approx(4.302653 * 0.1 / 3 ** 0.5)


def test_two_view_methods_are_paired_with_standard_at_twice_the_batch():
    from scipy import stats as scipy_stats

    from maskdiff.experiments.compare_report import equal_compute_table, equal_compute_words

    seeds, std, mir, big = (1, 2, 3, 4), (0.2, 0.4, 0.3, 0.35), (0.5, 0.45, 0.35, 0.4), (
        0.3, 0.5, 0.3, 0.4)
    records = [_record("standard", s, p) for s, p in zip(seeds, std)]
    records += [_record("mirror", s, p, fwd=200) for s, p in zip(seeds, mir)]
    records += [_record(EQUAL_COMPUTE, s, p, fwd=200) for s, p in zip(seeds, big)]
    records += [_record("ppots", s, p) for s, p in zip(seeds, std)]
    out = summarise(PRESETS["smoke"], records, seconds=1.0, ppots=None, window=None)
    vs = out["methods"]["mirror"]["vs_equal_compute"]
    assert vs["baseline"] == EQUAL_COMPUTE and vs["paired_seeds"] == list(seeds)
    assert vs["fwd_ratio"] == 1.0
    diff = vs["pass_at_1"]["difference"]
    expected = scipy_stats.ttest_rel(mir, big)
    assert diff["mean"] == pytest.approx(sum(mir) / 4 - sum(big) / 4)
    assert diff["p"] == pytest.approx(expected.pvalue)
    # one-view methods and the control itself have no equal-compute comparison
    assert all("vs_equal_compute" not in out["methods"][k] for k in ("standard", "ppots",
                                                                    EQUAL_COMPUTE))
    table, words = equal_compute_table(out), equal_compute_words(out)
    assert len(table) == 3 and table[2].startswith(f"| mirror | {EQUAL_COMPUTE} | +5.0 [")
    assert words[0].startswith(f"- **mirror** at equal compute — pass@1 +5.0 [")
    assert f"not significantly different from {EQUAL_COMPUTE}" in words[0]


def test_smoke_job_end_to_end_and_restart_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"standard", "mirror", "ppots_mirror", "ar", EQUAL_COMPUTE}
    assert results["seeds"] == [42, 731, 20231]
    # one thread per run (the suite's, or one per worker process), recorded per job and per run
    assert results["threads"] == 1 and {r["threads"] for r in results["runs"]} == {1}
    # Same steps and batch for all: two-forward methods and standard@2x spend exactly twice.
    for label in ("mirror", "ppots_mirror", EQUAL_COMPUTE):
        assert methods[label]["fwd_ratio_to_standard"] == 2.0
    assert methods["ar"]["test_loss_kind"] == "causal NLL"
    for m in methods.values():
        assert all(0.0 <= p <= 1.0 for p in m["pass_at_1"]) and len(m["pass_at_1"]) == 3
        assert m["pass_at_1_floor"]["n_items"] == 8 and m["test_loss_floor"]["n_items"] == 8
        assert "test_loss_ci" in m and "test_loss_sd" in m
    for name in ("report.md", "pass_at_1.png", "val_loss.png", "loss_per_t_bin.png",
                 "ppots/ppots.json", "ppots/ppots.png"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "start").iterdir()) == ["arithmetic-causal",
                                                                  "arithmetic-diffusion"]
    # The seeds differ in what they compute (data order, rates, masks), not in their start.
    runs = sorted((r for r in results["runs"] if r["label"] == "standard"),
                  key=lambda r: r["seed"])
    assert runs[0]["history"] != runs[1]["history"]

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("compare.json")}
    assert len(stamps) == 15
    # Every run is scored on the same items with the same draws (CRN): per-item values kept.
    for p in stamps:
        rec = json.loads(p.read_text())
        assert len(rec["hits"]) == 8 and len(rec["elbo_items"]) == 8
    assert methods["mirror"]["vs_standard"]["compute"]["target"] == pytest.approx(
        min(h["val_loss"] for h in runs[0]["history"]) / 3
        + min(h["val_loss"] for h in runs[1]["history"]) / 3
        + min(h["val_loss"] for h in runs[2]["history"]) / 3)
    noise = results["grad_noise"]["methods"]
    assert set(noise) == {"standard", "mirror", "ppots_mirror"}
    assert all(v["trace_cov"] > 0 for v in noise.values())
    assert "## In words" in (out / "report.md").read_text()
    os.utime(out / "results.json", ns=(0, 0))
    job = CompareJob(PRESETS["smoke"], out, progress=False)
    again = job.run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    assert again["methods"]["mirror"]["pass_at_1"] == methods["mirror"]["pass_at_1"]
    assert "pass@1" in capsys.readouterr().out
    # A run finished under another configuration (a changed preset, a changed default) is not
    # passed off as this job's: refused, naming the run and the field, and nothing is removed.
    # (maskdiff.jobs: the record carries the configuration it was made under.)
    saved = next(p for p in stamps if "/mirror/" in str(p))
    record = json.loads(saved.read_text())
    lr = record["job_key"]["config"]["optim"]["lr"]
    record["job_key"]["config"]["optim"]["lr"] = 2 * lr
    saved.write_text(json.dumps(record))
    stamps[saved] = saved.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"mirror/s\d+/compare\.json: this run was made under "
                                         rf"another configuration \(config\.optim\.lr: {2 * lr} "
                                         rf"→ {lr}\)"):
        CompareJob(PRESETS["smoke"], out, progress=False).run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_paired_design_gives_every_method_the_same_data_order_per_seed(tmp_path):
    """Seed s: the same sequence of training examples for every method (standard@2x takes it
    two batches at a time); another seed, another order."""
    from maskdiff.training.trainer import Trainer

    job = CompareJob(PRESETS["smoke"], tmp_path, progress=False)

    def order(method, seed, n=48):
        config = job.run_config(RunSpec(method, seed, "arithmetic"))
        trainer = Trainer(config, task=job.task("arithmetic"), quiet=True)
        bs = config.optim.batch_size
        return [i for k in range(n // bs) for i in trainer.order.global_batch(k, bs)]

    reference = order("standard", 731)
    for method in ("mirror", "ar", EQUAL_COMPUTE):
        assert order(method, 731) == reference, method
    assert order("standard", 42) != reference


def test_a_sweep_point_keeps_the_training_examples_and_the_sweep_reuses_the_plain_runs(tmp_path):
    from maskdiff.experiments.compare_sweep import SweepJob, sweep_point

    point = sweep_point(PRESETS["demo"], 8, ("standard",))
    assert (point.base.optim.batch_size, point.base.optim.max_steps) == (8, 600)
    assert point.base.eval.every == 60 and point.start_batch == 32
    with pytest.raises(ValueError, match="must divide"):
        sweep_point(PRESETS["demo"], 7, ("standard",))
    out = tmp_path / "sw"
    doc = SweepJob(PRESETS["smoke"], out, (4, 8), ("standard", "mirror"), workers=1,
                   progress=False).run()
    assert sorted(doc["points"]) == ["4", "8"]
    assert (out / "runs" / "arithmetic" / "mirror" / "s42" / "compare.json").exists()  # batch 8
    assert (out / "b4" / "runs" / "arithmetic" / "mirror" / "s42" / "compare.json").exists()
    b4 = doc["points"]["4"]
    assert b4["steps"] == 12 and b4["methods"]["mirror"]["compute"]["multiplier"] >= 0
    assert b4["methods"]["mirror"]["predicted_multiplier"] > 0
    assert (out / "sweep.png").exists() and "| 4 | mirror |" in (out / "sweep.md").read_text()


def test_no_row_of_the_full_presets_tasks_is_truncated(tmp_path):
    """A cut row loses the end of its response (its answer): no task of the full preset may
    cut one, in any split (the table task's rows run to 141 tokens)."""
    from dataclasses import replace

    from maskdiff.data.setup import load_task
    from maskdiff.training.runs import make_collator, truncation_counts

    job = CompareJob(PRESETS["full"], out_dir=tmp_path)
    for task_name in sorted({spec.task for spec in plan(PRESETS["full"])}):
        data = job.data_config(task_name)
        task = load_task(data)
        collate = make_collator(replace(PRESETS["full"].base, data=data), task)
        counts = truncation_counts(collate, {"train": task.train, "val": task.val,
                                             "test": task.test})
        assert all(c["examples"] == 0 for c in counts.values()), (task_name, counts)


@pytest.mark.slow  # ~40 s: out of the default run (10-minute budget), `pytest -m slow`
def test_a_finished_run_whose_task_filled_its_parameters_is_reused(tmp_path):
    """ISAD's delimiter ids are filled in from the task when the run starts, so the saved
    config holds them and the job's own config does not: reuse compares the resolved one."""
    out = tmp_path / "cmp"
    args = ["compare", "--preset", "smoke", "--methods", "standard,isad", "--seeds", "42",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    saved = json.loads((out / "runs" / "arithmetic" / "isad" / "s42" / "config.json").read_text())
    assert saved["estimator"]["masker"]["params"]["token_ids"]
    stamp = (out / "runs" / "arithmetic" / "isad" / "s42" / "compare.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "arithmetic" / "isad" / "s42" / "compare.json").stat().st_mtime_ns == stamp


def test_the_windows_preset_is_the_sft_window_table_on_fulls_runs():
    """Issue 26 item 4: the parity paper's windows ([0, 1] is standard), 10 paired seeds, on
    `full`'s base and starting checkpoint, so the two jobs share their runs."""
    windows, full = PRESETS["windows"], PRESETS["full"]
    assert windows.methods == ("standard", "window_0.45_0.55", "window_0.2_1", "window_0.3_1",
                               "window_0.5_1")
    assert windows.base == full.base and windows.seeds == full.seeds[:10]
    assert windows.pretrain_steps == full.pretrain_steps
    assert windows.pretrain_lr == full.pretrain_lr
    assert {s.dirname for s in plan(windows)} <= {s.dirname for s in plan(full)}
