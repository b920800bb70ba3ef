"""Every reuse site on the one job primitive (maskdiff.jobs, issue 24): a damaged record is named
on stderr, set aside and recomputed; a changed configuration is refused in the one wording (or,
for a cheap derived result, recomputed). Each site gets a different kind of damage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from maskdiff.cli import main
from maskdiff.jobs import KEY_FIELD, JobRefused


def _one_line_naming(err: str, path: Path, word: str = "damaged") -> None:
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1 and word in lines[0] and "set aside as" in lines[0], err


def _aside(path: Path, label: str = "damaged") -> list[Path]:
    return list(path.parent.glob(f"{path.name}.{label}-*"))


def _ppots_result():
    from maskdiff.ppots import fit_ppots

    t = 1e-3 + (1 - 1e-3) * (np.arange(1, 31) - 0.5) / 30
    p = (0.2 + t) / (0.2 + t).sum()
    return fit_ppots(t, p, eps=1e-3, mix=0.05, restarts=2)


# ----------------------------------------------------------------------------- start runs
def _tiny_config(out: Path, **optim):
    from maskdiff.training.presets import PRESETS

    base = PRESETS["smoke"]
    return replace(base, out_dir=str(out), data=replace(base.data, n_train=32, n_val=8, n_test=8),
                   optim=replace(base.optim, max_steps=4, **optim),
                   eval=replace(base.eval, every=2, n_examples=8))


def test_a_finished_start_run_is_reused_only_under_its_config(tmp_path, capsys):
    """compare's and image's starting checkpoints and decompose's preset model: a changed
    preset (image used to check only the step count) is refused, naming the field."""
    from maskdiff.training.runs import FINISHED, finished_weights
    from maskdiff.training.trainer import Trainer

    config, calls = _tiny_config(tmp_path / "start"), []

    def train(config=config):
        calls.append(1)
        Trainer(config, quiet=True).fit(resume=True)

    first = finished_weights(config, train)
    again = finished_weights(config, train)
    assert len(calls) == 1 and all((first[k] == again[k]).all() for k in first)
    record = tmp_path / "start" / FINISHED
    assert json.loads(record.read_text())["steps"] == 4
    record.write_text("")  # emptied (a disk filled before the rename of an older maskdiff)
    capsys.readouterr()
    finished_weights(config, train)
    _one_line_naming(capsys.readouterr().err, record)
    assert len(calls) == 2 and len(_aside(record)) == 1
    changed = _tiny_config(tmp_path / "start", lr=1e-2)
    with pytest.raises(JobRefused) as err:
        finished_weights(changed, train)
    assert "config.optim.lr: 0.003 → 0.01" in str(err.value) and str(record) in str(err.value)
    assert len(calls) == 2


def test_image_refuses_a_start_of_a_changed_preset(tmp_path):
    from maskdiff.experiments.image import PRESETS, ImageJob

    job = ImageJob(PRESETS["smoke"], tmp_path, progress=False)
    config = job.start_config()
    record = Path(config.out_dir) / "finished.json"
    record.parent.mkdir(parents=True)
    from maskdiff.training.runs import run_key
    record.write_text(json.dumps({"steps": 1, "checkpoint": "checkpoints/step-000001",
                                  KEY_FIELD: run_key(replace(config, seed=3))}))
    with pytest.raises(JobRefused, match=r"finished\.json: this run was made under another "
                                         r"configuration \(config\.seed: 3 → 0\)"):
        job.start_weights()


# ----------------------------------------------------------------------------- compare
def test_compare_run_record_damaged_then_changed_scoring(tmp_path, capsys):
    from maskdiff.experiments.compare import PRESETS, CompareJob

    preset = replace(PRESETS["smoke"], methods=("standard",), seeds=(42,), grad_noise_draws=0)
    CompareJob(preset, tmp_path, progress=False).run()
    record = next((tmp_path / "runs").rglob("compare.json"))
    first = json.loads(record.read_text())
    record.write_text(record.read_text()[:100])  # cut short: the "Expecting ','"
    capsys.readouterr()
    CompareJob(preset, tmp_path, progress=False).run()
    _one_line_naming(capsys.readouterr().err, record)
    again = json.loads(record.read_text())
    assert again["elbo_items"] == first["elbo_items"] and again["steps"] == first["steps"]
    with pytest.raises(JobRefused) as err:
        CompareJob(replace(preset, elbo_rates=preset.elbo_rates + 1), tmp_path,
                   progress=False).run()
    message = str(err.value)
    assert "\n" not in message and str(record) in message and "score.elbo_rates" in message


def test_compare_a_damaged_grad_noise_record_is_recomputed_and_the_sweep_reads_around_it(
        tmp_path, capsys):
    from maskdiff.jobs import load_record, reuse_or_run

    path = tmp_path / "grad_noise.json"
    path.write_text(json.dumps({"n_draws": "eight"}))  # the right key, the wrong everything
    assert load_record(path) is not None  # a report reads it as it is ...
    path.write_text('{"n_draws": 8, "methods": {')
    assert load_record(path) is None  # ... and leaves a damaged one out, naming it
    assert "grad_noise.json is damaged" in capsys.readouterr().err
    doc = reuse_or_run(path, {"n_draws": 8}, lambda: {"n_draws": 8, "methods": {}},
                       on_change="recompute", required=("n_draws",))
    assert doc == {"n_draws": 8, "methods": {}}
    _one_line_naming(capsys.readouterr().err, path)


def test_compare_hf_run_record(tmp_path, capsys):
    from maskdiff.experiments.compare_hf import HFCompareJob
    from maskdiff.experiments.compare_presets import PRESETS

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"add {i}", "response": f"{i} #### {i}"}) + "\n"
                            for i in range(20)))
    preset = replace(PRESETS["smoke"], methods=("standard",), seeds=(42,))
    calls = []

    def job(hf="model-a"):
        j = HFCompareJob(preset, tmp_path / "out", hf=hf, train_file=str(rows), progress=False)
        j._train_and_score = lambda spec, config, run_dir: calls.append(1) or {
            "method": spec.method, "seed": spec.seed, "test_loss": 1.5, "steps": 12,
            "history": [], "elbo_items": [1.5], "pass_at_1": 0.5}
        return j

    spec = job().specs()[0]
    assert job().run_one(spec)["test_loss"] == 1.5 and job().run_one(spec) and len(calls) == 1
    record = next((tmp_path / "out" / "runs").rglob("compare.json"))
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "pass_at_1": "half"}))  # a field of the wrong type
    capsys.readouterr()
    job().run_one(spec)
    _one_line_naming(capsys.readouterr().err, record)
    assert len(calls) == 2
    with pytest.raises(JobRefused, match=r'hf: "model-a" → "model-b"'):
        job("model-b").run_one(spec)  # another model: the old scores are not this job's


def test_compare_hf_keeps_beta2_min_lr_ratio_and_grad_accum():
    """One function applies a method (maskdiff.training.needs.apply_method); compare --hf used
    to rebuild the optimiser from half the fields."""
    pytest.importorskip("transformers")
    import torch

    from maskdiff.experiments.compare_hf import optimizers, training_arguments
    from maskdiff.training.needs import apply_method
    from maskdiff.training.presets import PRESETS

    base = PRESETS["smoke"]
    base = replace(base, optim=replace(base.optim, beta2=0.95, min_lr_ratio=0.25, grad_accum=2,
                                       batch_size=8, max_steps=10, warmup_steps=2))
    config = apply_method(base, "standard@2x")
    assert config.optim.batch_size == 16 and config.optim.beta2 == 0.95
    args = training_arguments(config, Path("/tmp/unused"))
    assert (args.adam_beta2, args.gradient_accumulation_steps) == (0.95, 2)
    assert args.per_device_train_batch_size == 8  # 16 per step = 8 × 2 accumulated
    model = torch.nn.Linear(3, 3)
    adamw, schedule = optimizers(model, config)
    assert adamw.param_groups[0]["betas"] == (config.optim.beta1, 0.95)
    for _ in range(10):
        adamw.step()
        schedule.step()
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.25 * config.optim.lr)


def test_train_compare_and_image_apply_a_method_the_same_way(tmp_path):
    from maskdiff.commands.train import build_config, register
    from maskdiff.experiments.compare import PRESETS, CompareJob, RunSpec
    from maskdiff.training.needs import apply_method
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "smoke", "--method", "standard@2x",
                              "--batch-size", "4", "--out", str(tmp_path)])
    config = build_config(args)
    assert config.optim.batch_size == 8
    from maskdiff.training.presets import PRESETS as TRAIN
    base = replace(TRAIN["smoke"], optim=replace(TRAIN["smoke"].optim, batch_size=4),
                   out_dir=str(tmp_path))
    assert config == apply_method(base, "standard@2x", window=tuple(args.window))
    job = CompareJob(PRESETS["smoke"], tmp_path, progress=False)
    ar = job.run_config(RunSpec("ar", 42, "arithmetic"))
    assert ar.model.causal and ar.optim == PRESETS["smoke"].base.optim


# ----------------------------------------------------------------------------- densities
def test_fitted_density_cache_recomputes_damaged_or_outdated(tmp_path, capsys):
    from maskdiff.ppots import cached_density

    calls = []

    def estimate():
        calls.append(1)
        return _ppots_result()

    key = {"design": [4, 8, 2], "start": {"lr": 0.1}}
    first = cached_density(tmp_path, estimate, key=key)
    assert cached_density(tmp_path, estimate, key=key) == first and len(calls) == 1
    path = tmp_path / "ppots.json"
    doc = json.loads(path.read_text())
    del doc["epr"]  # a key gone
    path.write_text(json.dumps(doc))
    assert cached_density(tmp_path, estimate, key=key) == first and len(calls) == 2
    _one_line_naming(capsys.readouterr().err, path)
    cached_density(tmp_path, estimate, key={**key, "design": [8, 8, 2]})  # a new design
    assert len(calls) == 3 and len(_aside(path, "replaced")) == 1
    assert "another configuration (design: [4, 8, 2] → [8, 8, 2])" in capsys.readouterr().err
    from maskdiff.ppots import load_ppots_json
    assert load_ppots_json(path).epr.kl >= 0  # train --ppots still reads it


def test_decompose_ppots_density(tmp_path, capsys, monkeypatch):
    import maskdiff.ppots
    from maskdiff.experiments.decompose import ppots_density
    from maskdiff.training.config import TrainConfig

    calls = []
    monkeypatch.setattr(maskdiff.ppots, "estimate_ppots",
                        lambda *a, **k: calls.append(k) or _ppots_result())
    source = SimpleNamespace(model=None, mask_token_id=3, config=TrainConfig(),
                             description={"run": "runs/a", "load_seconds": 1.0})
    batch = [0] * 4
    density, info = ppots_density(source, batch, out=tmp_path, n_rates=8, n_masks=2, seed=0)
    ppots_density(source, batch, out=tmp_path, n_rates=8, n_masks=2, seed=0)
    assert len(calls) == 1 and info["b"] == 8
    (tmp_path / "ppots.json").write_bytes(b"\xff\xfe not text")
    ppots_density(source, batch, out=tmp_path, n_rates=8, n_masks=2, seed=0)
    _one_line_naming(capsys.readouterr().err, tmp_path / "ppots.json")
    other = SimpleNamespace(**{**vars(source), "description": {"run": "runs/b"}})
    ppots_density(other, batch, out=tmp_path, n_rates=8, n_masks=2, seed=0)  # another model
    assert len(calls) == 3


def test_gradient_targets_record_needs_its_fit(tmp_path, capsys, monkeypatch):
    import maskdiff.experiments.gradient_targets as gt

    calls = []
    targets = SimpleNamespace(t=np.array([0.5]), second_moment={}, se={}, seconds=0.0,
                              correlation=lambda p: 0.0)
    monkeypatch.setattr(gt, "measure_gradient_targets", lambda *a, **k: calls.append(1) or targets)
    monkeypatch.setattr(gt, "_fits", lambda *a, **k: {"gradient": _ppots_result()})
    monkeypatch.setattr(gt, "density_gradient_variance", lambda *a, **k: {})
    monkeypatch.setattr(gt, "plot_densities", lambda *a, **k: None)
    kwargs = dict(out=tmp_path, mask_token_id=3, normalizer="eligible", n_rates=8, n_masks=2,
                  seed=0, grad_draws=4)
    gt.gradient_density(None, [0] * 4, **kwargs)
    gt.gradient_density(None, [0] * 4, **kwargs)
    assert len(calls) == 1
    (tmp_path / "gpots.json").write_text("[]")  # the fit it stands on is damaged
    capsys.readouterr()
    _, record = gt.gradient_density(None, [0] * 4, **kwargs)
    assert len(calls) == 2 and record["settings"]["b"] == 8
    _one_line_naming(capsys.readouterr().err, tmp_path / "gradient_targets.json")


# ----------------------------------------------------------------------------- sweeps
def test_parity_sweep_run_record(tmp_path, capsys):
    from maskdiff.experiments import parity_sweep

    preset = parity_sweep.PRESETS["smoke"]
    settings = parity_sweep.paper_settings(preset.base.k)[:1]
    run = lambda base=None: parity_sweep.run_parity_sweep(  # noqa: E731
        preset, tmp_path, seeds=(0,), settings=settings, base=base, progress=False)
    first = run()
    record = next((tmp_path / "runs").glob("*.json"))
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "history": "none"}))  # the wrong type
    capsys.readouterr()
    again = run()
    _one_line_naming(capsys.readouterr().err, record)
    assert again["curves"] == first["curves"]  # recomputed: the same seeded run
    with pytest.raises(JobRefused, match=r"this run was made under another configuration "
                                         r"\(lr: "):
        run(replace(preset.base, lr=preset.base.lr * 2))


def test_window_sweep_prediction_and_run_record(tmp_path, capsys, monkeypatch):
    import maskdiff.data.corpus
    from maskdiff.experiments import window_sweep

    monkeypatch.setattr(maskdiff.data.corpus, "load_corpus",
                        lambda split: "the cat sat on the mat. " * 40)
    preset = window_sweep.PRESETS["smoke"]
    first = window_sweep._predict(preset, None, tmp_path, None)
    (tmp_path / "prediction.json").write_text(json.dumps({"t_star": None, "source": "corpus"}))
    capsys.readouterr()
    assert window_sweep._predict(preset, None, tmp_path, None)["t_star"] == first["t_star"]
    _one_line_naming(capsys.readouterr().err, tmp_path / "prediction.json")
    changed = replace(preset, corpus_chars=(preset.corpus_chars or 10_000) // 2)
    window_sweep._predict(changed, None, tmp_path, None)  # another corpus: predicted again
    assert "corpus_chars" in capsys.readouterr().err


# ----------------------------------------------------------------------------- readme-tables
def test_readme_tables_check_names_a_damaged_file_or_missing_key(tmp_path, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results"
    results.mkdir()
    readme.write_text("x\n<!-- results:demo:pass -->\nold\n<!-- /results -->\n")
    (results / "demo.json").write_text('{"methods": {"standard": ' + "1" * 50)
    assert main(["readme-tables", "--check", "--readme", str(readme),
                 "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(results / "demo.json") in err and "not valid JSON" in err
    (results / "demo.json").write_text(json.dumps({"preset": "demo", "seeds": [1]}))
    assert main(["readme-tables", "--check", "--readme", str(readme),
                 "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(results / "demo.json") in err and "missing key" in err
    assert "Traceback" not in err
