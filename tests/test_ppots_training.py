"""P-POTS end to end: estimation on a model, the density a config carries, static and online
training (exact resumption with refits), and the fit-pots / train command lines."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from maskdiff.cli import main
from maskdiff.training.config import RefitConfig
from maskdiff.core.methods import method_config
from maskdiff.ppots import (
    density_from_ppots, epr_density, estimate_ppots, fit_ppots, model_p_hat, save_ppots_json,
)
from maskdiff.training.runs import example_batch
from maskdiff.core.samplers import Importance
from maskdiff.training.trainer import Trainer

from test_train import _metrics, _weights, tiny

PARAMS = {"a": 0.4, "b": 0.2, "A": 0.5, "kappa": 1.2, "r": 0.8, "q": 1.5, "m": 2.0}


def test_model_p_hat_counts_its_forward_passes_and_matches_the_nested_design(tmp_path):
    trainer = Trainer(tiny(tmp_path), quiet=True)
    batch = example_batch(trainer.config, trainer.task, 5)
    measured = model_p_hat(trainer.model, batch, mask_token_id=trainer.task.tokenizer.mask_id,
                           n_rates=10, n_masks=3, progress=False)
    assert measured.forward_passes == 5 * 10 * 3
    phat = measured.phat
    assert phat.p_hat.shape == (10,) and abs(phat.p_hat.sum() - 1) < 1e-12
    # The same seed gives the same table; the model is left in training mode.
    again = model_p_hat(trainer.model, batch, mask_token_id=trainer.task.tokenizer.mask_id,
                        n_rates=10, n_masks=3, progress=False)
    np.testing.assert_array_equal(phat.second_moment, again.phat.second_moment)
    assert trainer.model.training
    # An untrained model's loss grows with t far less than the masked count: p̂ stays within
    # a factor of 3 of uniform (a loose sanity bound; the exact shape is the fit's job).
    assert phat.p_hat.max() / phat.p_hat.min() < 3.0


def test_estimate_ppots_fits_and_times_the_estimation(tmp_path):
    trainer = Trainer(tiny(tmp_path), quiet=True)
    batch = example_batch(trainer.config, trainer.task, 4)
    result = estimate_ppots(trainer.model, batch, mask_token_id=trainer.task.tokenizer.mask_id,
                            n_rates=12, n_masks=2, restarts=2, progress=False)
    assert result.forward_passes == 4 * 12 * 2 and result.seconds > 0
    assert result.epr.kl < 0.05 and result.poly7.kl < 0.05


def test_density_from_ppots_tabulates_the_fitted_epr(tmp_path):
    t = np.linspace(0.01, 0.99, 40)
    table = epr_density(PARAMS, 1e-3)
    p_hat = np.interp(t, table.t_grid, table.p_grid)
    save_ppots_json(tmp_path / "ppots.json", fit_ppots(t, p_hat / p_hat.sum(), restarts=4))
    density = density_from_ppots(tmp_path / "ppots.json")
    assert len(density["t"]) <= 512
    grid = np.linspace(1e-3, 1.0, 1001)
    approx = np.interp(grid, density["t"], density["p"])
    exact = np.interp(grid, table.t_grid, table.p_grid)
    assert np.max(np.abs(approx - exact) / exact) < 0.02
    # A sampler built from it is the importance sampler of that density.
    sampler = Importance(density, mix=0.0)
    pdf = sampler.pdf(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(pdf, np.interp([0.1, 0.5, 0.9], table.t_grid, table.p_grid), rtol=0.02)


def _online(tmp_path, **overrides):
    est = replace(method_config("ppots_online"),
                  refit=RefitConfig(refit_every=3, n_bins=8, min_count=1, restarts=2))
    return tiny(tmp_path, estimator=est, checkpoint_every=2, **overrides)


def test_online_refits_change_the_sampler_and_resume_exactly(tmp_path):
    config = _online(tmp_path)
    straight = Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True)
    flat = straight.estimator.rate_sampler.pdf(torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    straight.fit()
    refits = [r["ppots_refit"] for r in _metrics(tmp_path / "a") if "ppots_refit" in r]
    assert [r["step"] for r in refits] == [3, 6]
    # 24 draws in 8 bins may leave a bin empty at step 3: that refit is skipped and logged.
    assert refits[0]["refit"] is None or refits[0]["refit"] == 1
    assert refits[-1]["refit"] >= 1 and set(refits[-1]["params"]) == set(PARAMS)
    after = straight.estimator.rate_sampler.pdf(torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    assert not torch.allclose(flat, after)  # the density moved off uniform

    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=4)  # between the two refits
    resumed = Trainer(interrupted, quiet=True)
    resumed.fit()
    for name, value in _weights(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_online_refit_needs_the_importance_sampler():
    from maskdiff.training.config import ComponentConfig, EstimatorConfig

    with pytest.raises(ValueError, match="needs sampler 'importance'"):
        EstimatorConfig(sampler=ComponentConfig(name="uniform"), refit=RefitConfig())


def test_fit_pots_and_train_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "pots"
    assert main(["fit-pots", "--preset", "smoke", "--a", "4", "--b", "10", "--c", "2",
                 "--restarts", "2", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "ppots.json").read_text())
    assert {"t", "p_hat", "epr", "poly7", "mix", "estimator", "forward_passes", "seconds",
            "cost_fraction"} <= set(doc)
    assert set(doc["epr"]["params"]) == set(PARAMS) and doc["forward_passes"] == 4 * 10 * 2
    assert (out / "ppots.png").stat().st_size > 10_000
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--method", "ppots_mirror", "--ppots",
                 str(out / "ppots.json"), "--out", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["estimator"]["sampler"]["name"] == "importance"
    assert config["estimator"]["masker"]["name"] == "mirror"
    assert "best validation loss" in capsys.readouterr().out


def test_fit_pots_refuses_two_sources(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"t": list(np.linspace(0.05, 0.95, 10)), "p_hat": [0.1] * 10}))
    code = main(["fit-pots", "--from-table", str(table), "--preset", "smoke", "--out", str(tmp_path)])
    assert code != 0
    assert "exactly one table source" in capsys.readouterr().err
