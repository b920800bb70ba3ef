"""docs/method.md §10: the language-model window sweep (settings, summary statistics, smoke run, CLI)."""

from __future__ import annotations

import argparse
import io
import json
import math
from contextlib import redirect_stdout

import pytest

from maskdiff.commands import window_sweep as window_sweep_command
from maskdiff.experiments import window_sweep
from maskdiff.experiments.window_sweep import (
    BASELINE, PREDICTED, Setting, predicted_window, summarise, sweep_settings,
)


def test_settings_are_the_ten_intervals_plus_the_predicted_window():
    settings = sweep_settings(0.355)
    assert len(settings) == 12
    assert settings[0] == Setting(BASELINE, None, "baseline")
    intervals = [s.window for s in settings if s.kind == "interval"]
    assert intervals == [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5),
                         (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)]
    predicted = settings[-1]
    assert predicted.kind == "predicted" and predicted.label == PREDICTED
    assert predicted.window == pytest.approx((0.305, 0.405))
    assert predicted.centre == pytest.approx(0.355)
    assert len({s.slug for s in settings}) == 12  # one run directory each


def test_predicted_window_is_clipped_to_the_unit_interval():
    assert predicted_window(0.02) == pytest.approx((0.0, 0.07))
    assert predicted_window(0.99) == pytest.approx((0.94, 1.0))
    assert predicted_window(0.5, 0.2) == pytest.approx((0.4, 0.6))
    with pytest.raises(ValueError, match="t_star"):
        predicted_window(1.5)
    with pytest.raises(ValueError, match="width"):
        predicted_window(0.5, 0.0)


def test_settings_build_the_window_method():
    base, interval = sweep_settings(0.4)[0], sweep_settings(0.4)[3]
    assert base.estimator().sampler.name == "uniform"
    est = interval.estimator()
    assert est.sampler.name == "window"
    assert est.sampler.params == {"t_min": 0.2, "t_max": 0.3}
    sampler = est.build(mask_token_id=0).rate_sampler
    import torch

    t, w = sampler.sample(1000, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0.2 and float(t.max()) <= 0.3 and bool((w == 1).all())


def test_summary_combines_seed_spread_and_test_error():
    settings = sweep_settings(0.5)[:2]
    records = [
        {"label": BASELINE, "seed": 0, "test_loss": 2.0, "test_se": 0.03},
        {"label": BASELINE, "seed": 1, "test_loss": 2.2, "test_se": 0.04},
        {"label": settings[1].label, "seed": 0, "test_loss": 3.0, "test_se": 0.05},
    ]
    out = summarise(records, settings)
    base = out[BASELINE]
    sd = math.sqrt(((2.0 - 2.1) ** 2 + (2.2 - 2.1) ** 2) / 1)
    assert base["test_loss_mean"] == pytest.approx(2.1)
    assert base["test_loss_sd_seeds"] == pytest.approx(sd)
    assert base["se"] == pytest.approx(math.sqrt(sd ** 2 / 2 + (0.03 ** 2 + 0.04 ** 2) / 2))
    one = out[settings[1].label]
    assert one["test_loss_sd_seeds"] == 0.0 and one["se"] == pytest.approx(0.05)


def test_smoke_sweep_end_to_end_and_restart(tmp_path, capsys):
    preset = window_sweep.PRESETS["smoke"]
    results = window_sweep.run_window_sweep(preset, tmp_path, progress=False)
    for name in ("report.md", "results.json", "prediction.json", "test_loss_vs_window.png",
                 "val_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) >= {"t_star", "prediction", "settings", "summary", "best_interval", "runs",
                          "seeds", "config", "threads"}
    # the predicted t* comes from the corpus' n-gram shares (char level): they sum to one
    weights = saved["prediction"]["weights"]
    assert sorted(weights) == ["2", "3", "4", "5", "6"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert 0.0 < saved["t_star"] < 1.0
    windows = [tuple(s["window"]) if s["window"] else None for s in saved["settings"]]
    assert windows[0] is None and len(windows) == 12
    assert windows[1:11] == [(round(j / 10, 10), round((j + 1) / 10, 10)) for j in range(10)]
    assert windows[11] == pytest.approx(predicted_window(saved["t_star"]))
    assert len(saved["runs"]) == 12 and len(saved["summary"]) == 12
    for run in saved["runs"]:
        # every run trained the same number of steps and was tested on the same examples
        assert run["steps"] == preset.train.optim.max_steps
        assert run["test_n"] == preset.n_test
        assert math.isfinite(run["test_loss"]) and run["test_loss"] > 0 and run["test_se"] > 0
    best = saved["best_interval"]
    interval_losses = {k: v["test_loss_mean"] for k, v in saved["summary"].items()
                       if v["kind"] == "interval"}
    assert best["label"] == min(interval_losses, key=interval_losses.get)
    assert best["distance_to_t_star"] == pytest.approx(abs(best["centre"] - saved["t_star"]))
    # restart: every run is reused (same numbers, far less time); one record that lost a key
    # is named, set aside and recomputed from its finished run (maskdiff.jobs)
    damaged = sorted((tmp_path / "runs").rglob("test.json"))[3]
    record = json.loads(damaged.read_text())
    del record["test_per_example"]
    damaged.write_text(json.dumps(record))
    capsys.readouterr()
    again = window_sweep.run_window_sweep(preset, tmp_path, progress=False)
    assert [r["test_loss"] for r in again["runs"]] == [r["test_loss"] for r in results["runs"]]
    assert again["seconds"] < results["seconds"]
    err = capsys.readouterr().err
    assert f"{damaged} is damaged (missing field 'test_per_example')" in err
    assert len(list(damaged.parent.glob("test.json.damaged-*"))) == 1


def test_cli_with_a_given_t_star(tmp_path):
    parser = argparse.ArgumentParser()
    window_sweep_command.register(parser.add_subparsers())
    args = parser.parse_args(["window-sweep", "--preset", "smoke", "--t-star", "0.47",
                              "--out", str(tmp_path), "--quiet"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["t_star"] == 0.47 and saved["prediction"]["source"] == "given"
    assert saved["settings"][-1]["window"] == pytest.approx([0.42, 0.52])
    assert "best interval" in out.getvalue()
    args = parser.parse_args(["window-sweep", "--preset", "smoke", "--t-star", "1.5",
                              "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--t-star"):
        args.func(args)


def test_per_example_elbo_matches_evaluate_elbo_and_pairs_models():

    from maskdiff.training.evaluate import elbo
    from maskdiff.training.trainer import Trainer

    preset = window_sweep.PRESETS["smoke"]
    trainer = Trainer(preset.train, quiet=True)
    examples = list(trainer.task.test)[:8]
    kwargs = dict(mask_token_id=trainer.task.tokenizer.mask_id, rates_per_example=3, seed=11)
    values = window_sweep.per_example_elbo(trainer.model, examples, trainer.collate,
                                           batch_size=3, **kwargs)
    reference = elbo(trainer.model, examples, trainer.collate, batch_size=5, **kwargs)
    assert values.shape == (8,)
    assert float(values.mean()) == pytest.approx(reference.mean, rel=1e-6)
    assert float(values.std()) / math.sqrt(8) == pytest.approx(reference.se, rel=1e-5)
    # paired delta of a model with itself is exactly zero; a shifted copy gives the shift
    records = [{"label": BASELINE, "seed": 0, "test_per_example": values.tolist()},
               {"label": "x", "seed": 0, "test_per_example": (values + 0.25).tolist()}]
    paired = window_sweep.paired_delta(records, "x")
    assert paired["delta"] == pytest.approx(0.25) and paired["se"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(paired["se_seeds"]) and paired["se_total"] == paired["se"]
    # two seeds: se over seeds is the sd of the per-seed deltas / sqrt(2)
    records += [{"label": BASELINE, "seed": 1, "test_per_example": values.tolist()},
                {"label": "x", "seed": 1, "test_per_example": (values + 0.75).tolist()}]
    paired = window_sweep.paired_delta(records, "x")
    assert paired["delta"] == pytest.approx(0.5)
    assert paired["per_seed"] == pytest.approx({"0": 0.25, "1": 0.75})
    assert paired["se_seeds"] == pytest.approx(math.sqrt(0.125) / math.sqrt(2))
    assert paired["se_total"] == paired["se_seeds"]
    assert window_sweep.paired_delta(records, "missing") is None
