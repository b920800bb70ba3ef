"""``maskdiff compare --regime pretrain``: compute to target on hand-made curves (censored
included), common random numbers of the test ELBO, the orchestration with stand-in runs, and
the smoke preset end to end through the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest

from maskdiff.cli import main
from maskdiff.experiments.pretrain import CurveTrainer, PretrainJob, pretrain_plan
from maskdiff.experiments.pretrain_presets import PRETRAIN_PRESETS, PretrainPreset, pretrain_config
from maskdiff.experiments.pretrain_summary import compute_to_target, multiplier, seed_target

X = [0.0, 100.0, 200.0, 300.0, 400.0]


def _run(ys, x=X, method="m", seed=0):
    return {"method": method, "seed": seed, "causal": False,
            "curve": [{"fwd": a, "test_loss": b} for a, b in zip(x, ys)]}


def test_compute_to_target_interpolates_each_seeds_curve_and_censors():
    base = [_run([5, 4, 3, 2.5, 2]), _run([5, 4.5, 3.5, 3, 2.8])]
    method = [_run([5, 3.5, 2.5, 2.2, 2.1]), _run([5, 3.5, 3.0, 2.6, 2.4])]
    q25, q50, q100 = compute_to_target(base, method, (0.25, 0.5, 1.0))
    # 1/4: targets 4 and 4.5 (standard at 100 passes); the method crosses at 66.7 and 33.3.
    assert q25["targets"] == [4.0, 4.5] and q25["fwd_base"] == pytest.approx(100.0)
    assert q25["fwd_method"] == pytest.approx(50.0) and q25["multiplier"] == pytest.approx(2.0)
    # 1/2: targets 3 and 3.5; crossings 150 (between 3.5 and 2.5) and 100 (exactly at 3.5).
    assert q50["multiplier"] == pytest.approx(200 / 125) and q50["censored"] == 0
    assert q50["per_seed"] == pytest.approx([200 / 150, 2.0])
    # The end: seed 0's target 2.0 is never reached (2.1 at best): censored, not NaN; seed 1's
    # 2.8 is reached at 250. The bound counts the censored seed as reaching at 400.
    assert q100["multiplier"] is None and q100["censored"] == 1 and q100["n"] == 2
    assert q100["upper_bound"] == pytest.approx(400 / 325)
    assert q100["per_seed"][0] is None and q100["per_seed"][1] == pytest.approx(400 / 250)


def test_the_multiplier_interval_resamples_paired_seeds():
    # A method on the same curves at half the forward passes is exactly 2x on every resample.
    base = [_run(y) for y in ([5, 4, 3, 2.5, 2], [5, 4.2, 3.1, 2.4, 2.2], [6, 4, 3.3, 2.9, 2.5])]
    fast = [_run([p["test_loss"] for p in r["curve"]], x=[v / 2 for v in X]) for r in base]
    row = compute_to_target(base, fast, (1.0,))[0]
    assert row["multiplier"] == pytest.approx(2.0)
    assert row["lo"] == pytest.approx(2.0) and row["hi"] == pytest.approx(2.0)
    noisy = multiplier([100, 200, 300, 400], [50, 250, 150, 200], [400] * 4)
    assert noisy["multiplier"] == pytest.approx(1000 / 650)
    assert noisy["lo"] < noisy["multiplier"] < noisy["hi"]


def test_seed_target_is_the_best_value_up_to_the_fraction():
    assert seed_target(X, [5, 3, 4, 2, 1], 0.5) == 3.0  # best so far, not the value at 200
    assert seed_target(X, [5, 3, 4, 2, 1], 1.0) == 1.0


SMOKE = PRETRAIN_PRESETS["pretrain-smoke"]


def test_the_test_elbo_uses_common_random_numbers(tmp_path):
    config = replace(SMOKE.base, out_dir=str(tmp_path / "run"))
    from maskdiff.data.setup import load_task

    task = load_task(config.data)

    def trainer(seed):
        return CurveTrainer(config, task=task, quiet=True, test_examples=task.test,
                            test_rates=2, test_seed=seed)

    a, b = trainer(4321), trainer(4321)
    assert a.test_loss() == a.test_loss() == b.test_loss()  # same model, same draws: identical
    assert trainer(1).test_loss() != a.test_loss()  # other draws: another estimate


def _fake_record(job, spec):
    rng = np.random.default_rng(spec.seed)
    speed = {"standard": 1.0, "window": 1.5, "ar": 1.0}[spec.method]
    ys = 4.0 - speed * np.log1p(np.arange(5)) / 2 + rng.normal(0, 0.01, 5)
    return {"method": spec.method, "seed": spec.seed, "causal": spec.method == "ar",
            "curve": [{"step": 2 * i, "fwd": 8.0 * i, "test_loss": float(y)}
                      for i, y in enumerate(ys)],
            "forward_passes": 32, "fwd_per_step": 4.0, "steps": 8, "train_seconds": 1.0,
            "run_dir": str(job.out_dir / "runs" / spec.dirname),
            "window": [0.35, 0.45] if spec.method == "window" else None}


def test_the_job_summarises_reports_and_calls_the_judge(tmp_path, monkeypatch):
    preset = replace(SMOKE, methods=("standard", "window", "ar"), seeds=(1, 2, 3))
    assert [(s.method, s.seed) for s in pretrain_plan(preset)][:3] == [
        ("standard", 1), ("window", 1), ("ar", 1)]
    monkeypatch.setattr(PretrainJob, "run_one", _fake_record)
    monkeypatch.setattr(PretrainJob, "prediction",
                        lambda self: {"t_star": 0.4, "window": [0.35, 0.45], "level": "char",
                                      "corpus_chars": 10})
    calls = []

    def judge(run, twin):  # a stand-in judge: the NLL of its samples is the seed's number
        calls.append((run.name, twin.parent.name))
        nll = {"judge_nll": {"mean": float(run.name[1:]) + (run.parent.name == "window")},
               "diversity": {"distinct_2": 0.5}}
        return {"sources": {"unconditional": nll, "continuation": nll},
                "probe": [{"rate": 1.0, "judge_nll": {"mean": 3.0},
                           "masked_accuracy": {"mean": 0.25}}]}

    job = PretrainJob(preset, tmp_path, progress=False, judge=judge)
    results = job.run()
    assert sorted(calls) == sorted([(f"s{s}", "ar") for s in (1, 2, 3)] * 2)
    window = results["methods"]["window"]
    assert window["vs_standard"]["final_test_loss"]["mean"] < 0  # faster and lower
    assert all(r["multiplier"] > 1 for r in window["vs_standard"]["compute_to_target"])
    assert results["methods"]["ar"]["loss_kind"] == "causal NLL"
    assert "vs_standard" not in results["methods"]["ar"]
    assert set(results["judge"]["runs"]) == {"1", "2", "3"}
    nll = window["generation"]["unconditional_nll"]
    assert nll["mean"] == pytest.approx(3.0)  # seeds 1, 2, 3, each + 1
    assert nll["vs_standard"]["mean"] == pytest.approx(1.0)
    assert window["generation"]["probe_1_accuracy"]["mean"] == pytest.approx(0.25)
    report = (tmp_path / "report.md").read_text()
    assert "compute × to std@0.25" in report and "probe r=1: masked accuracy" in report
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    from maskdiff.experiments.readme_tables import add, update  # the README's future tables

    add(tmp_path / "docs", "compare-pretrain", tmp_path / "results.json")
    text = "".join(f"<!-- results:compare-pretrain:{t} -->\n<!-- /results -->\n"
                   for t in ("pretrain-setup", "pretrain", "pretrain-generation"))
    new, changed = update(text, tmp_path / "docs")
    assert len(changed) == 3 and "| window [0.350, 0.450] | 1 |" in new


def test_presets_refuse_bad_sizes():
    with pytest.raises(ValueError, match="multiple of curve_points"):
        PretrainPreset(name="x", base=pretrain_config(steps=10, curve_points=4), curve_points=4)
    with pytest.raises(ValueError, match="must include 'standard'"):
        PretrainPreset(name="x", methods=("mirror",), base=pretrain_config(steps=8, curve_points=4),
                       curve_points=4)


def test_the_regime_refuses_finetune_presets_in_one_line(tmp_path, capsys):
    code = main(["compare", "--regime", "pretrain", "--preset", "demo", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset must be one of" in err[0]


@pytest.mark.slow
def test_the_smoke_preset_end_to_end_and_resumed(tmp_path):
    argv = ["compare", "--regime", "pretrain", "--preset", "pretrain-smoke", "--out",
            str(tmp_path), "--quiet", "--workers", "1"]
    assert main(argv) == 0
    out = tmp_path / "pretrain"
    results = json.loads((out / "results.json").read_text())
    assert results["regime"] == "pretrain" and len(results["seeds"]) == 2
    assert list(results["methods"]) == list(SMOKE.methods)
    pred = results["prediction"]
    assert pred["window"][1] - pred["window"][0] == pytest.approx(0.1, abs=1e-9)
    assert results["methods"]["window"]["window"] == pytest.approx(pred["window"])
    twice = results["methods"]["standard@2x"]["fwd_per_step"]
    assert twice == 2 * results["methods"]["standard"]["fwd_per_step"]
    for r in results["runs"]:
        assert len(r["curve"]) == SMOKE.curve_points + 1 and r["curve"][0]["step"] == 0
        assert (r.get("generation") is None) == (r["method"] == "ar")  # the twin judged the rest
    generation = results["methods"]["window"]["generation"]
    assert generation["unconditional_nll"]["vs_standard"] is not None
    assert {"probe_0.5_accuracy", "probe_1_accuracy"} <= set(generation)
    assert main(argv) == 0  # finished runs are reused: the same curves
    again = json.loads((out / "results.json").read_text())
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in results["runs"]]


@pytest.mark.slow
def test_the_protocol_runs_on_a_train_file_of_text_rows(tmp_path):
    from maskdiff.data.corpus import load_corpus

    text = load_corpus("val")
    rows = [text[i:i + 40] for i in range(0, 40 * 120, 40)]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    assert main(["compare", "--regime", "pretrain", "--preset", "pretrain-smoke", "--train-file",
                 str(data), "--max-len", "48", "--methods", "standard,window", "--seeds", "1,2",
                 "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]) == 0
    results = json.loads((tmp_path / "out" / "pretrain" / "results.json").read_text())
    assert results["task"]["name"] == "jsonl" and results["task"]["train_file"] == str(data)
    assert results["task"]["n_train"] + results["task"]["n_val"] == 120
    assert results["prediction"]["corpus_chars"] < 40 * 120  # t* read from the training rows
    assert "held-out rows" in (tmp_path / "out" / "pretrain" / "report.md").read_text()


@pytest.mark.slow
def test_seed_s_is_the_same_run_for_methods_that_coincide(tmp_path):
    # Online P-POTS starts uniform and first refits at step 50: over the smoke preset's 8 steps
    # it draws what standard draws, so with the same seed (init, data order, rate and mask
    # streams) its whole curve equals standard's, to the bit; MIRROR's does not.
    preset = replace(SMOKE, methods=("standard", "ppots_online", "mirror"), seeds=(5,))
    results = PretrainJob(preset, tmp_path, progress=False).run()
    curves = {r["method"]: [p["test_loss"] for p in r["curve"]] for r in results["runs"]}
    assert curves["ppots_online"] == curves["standard"]
    assert curves["mirror"][0] == curves["standard"][0]  # the same initialisation
    assert curves["mirror"][1:] != curves["standard"][1:]
