"""The pretraining rate samplers (docs/method.md §3 "Bell-shaped rates", "Annealed
windows"): bell-shaped time sampling, biased and importance-weighted, the parity paper's fixed
windows and the annealed window, as samplers and as methods of ``maskdiff train``."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from maskdiff.cli import main
from maskdiff.core.batch import Batch
from maskdiff.core.masking import Bernoulli
from maskdiff.core.methods import get_method, method_config
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS, Window, build_sampler
from maskdiff.core.seeding import BatchRandomness
from maskdiff.core.shaped_samplers import Annealed, Bell, BellImportance, bell_pdf
from maskdiff.training.config import TrainConfig
from maskdiff.training.trainer import Trainer
from tiny import tiny

FUNCTIONS = {"t": lambda t: t, "exp(-3t)": lambda t: np.exp(-3 * t), "1/t": lambda t: 1.0 / t}


def _check_contract(sampler, n_batches=1000, batch=100, seed=0):
    """The weighted mean of smooth f over 100k draws is within 4 SE of the declared target's
    expectation, E_target[f] = ∫ f · target_pdf."""
    lo, hi = sampler.target_interval()
    gen = torch.Generator().manual_seed(seed)
    means = np.empty((n_batches, len(FUNCTIONS)))
    for i in range(n_batches):
        t, w = sampler.sample(batch, gen)
        t, w = t.double().numpy(), w.double().numpy()
        means[i] = [np.mean(w * f(t)) for f in FUNCTIONS.values()]
    for col, (name, f) in enumerate(FUNCTIONS.items()):
        truth = integrate.quad(
            lambda x: f(x) * float(sampler.target_pdf(torch.tensor([x], dtype=torch.float64))[0]),
            lo, hi, limit=400, points=[0.5])[0]
        se = means[:, col].std(ddof=1) / math.sqrt(n_batches)
        assert abs(means[:, col].mean() - truth) < 4 * se + 1e-9, (sampler, name, truth, se)


@pytest.mark.parametrize("sampler", [
    Bell(alpha=8.0), Bell(family="logit_normal", sigma=0.5),
    BellImportance(alpha=8.0), BellImportance(family="logit_normal", mix=0.2),
    Annealed(total_steps=100).at_step(25), Annealed(total_steps=100).at_step(60),
], ids=["bell-beta8", "bell-ln", "bell_iw-beta8", "bell_iw-ln", "annealed-25", "annealed-60"])
def test_each_sampler_is_unbiased_for_its_declared_target(sampler):
    _check_contract(sampler)


def test_biased_forms_declare_their_own_targets():
    bell, unbiased = Bell(), BellImportance()
    assert unbiased.target() == ("uniform", DEFAULT_EPS, 1.0) == build_sampler("uniform").target()
    assert bell.target() != unbiased.target() and bell.target()[0] == "bell"
    # The biased target is a normalised density on [eps, 1], peaked at 1/2, zero outside.
    grid = torch.linspace(DEFAULT_EPS, 1.0, 20001, dtype=torch.float64)
    assert float(torch.trapezoid(bell.target_pdf(grid), grid)) == pytest.approx(1.0, abs=1e-6)
    assert bell.target_pdf(torch.tensor([0.0005, 1.2])).tolist() == [0.0, 0.0]
    # A fixed window's target is uniform on it (the parity paper's SFT windows).
    for name, interval in [("window_0.45_0.55", (0.45, 0.55)), ("window_0.2_1", (0.2, 1.0)),
                           ("window_0.3_1", (0.3, 1.0)), ("window_0.5_1", (0.5, 1.0))]:
        sampler = method_config(name).build(mask_token_id=0).rate_sampler
        assert sampler.target() == ("uniform", *interval), name


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0, 8.0])
def test_the_beta_bell_is_the_closed_form_normalised_on_eps_1(alpha):
    bell, points = Bell(alpha=alpha), np.array([0.01, 0.2, 0.5, 0.77, 0.999])
    mass = 1.0 - stats.beta.cdf(DEFAULT_EPS, alpha, alpha)  # what [eps, 1] holds of Beta(α, α)
    closed = (math.gamma(2 * alpha) / math.gamma(alpha) ** 2
              * points ** (alpha - 1) * (1 - points) ** (alpha - 1)) / mass
    got = bell.target_pdf(torch.from_numpy(points)).numpy()
    # The draws follow the 4096-point table of the density: linear between grid points, so
    # within 1e-6 of the closed form (relative error is larger only where p is ~1e-7, t = 0.999).
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bell_pdf("beta", alpha)(torch.from_numpy(points)).numpy(),
                               stats.beta.pdf(points, alpha, alpha), rtol=1e-10)


def test_the_logit_normal_bell_is_the_closed_form():
    mu, sigma, points = 0.3, 0.8, np.array([0.01, 0.2, 0.5, 0.9])
    logit = np.log(points / (1 - points))
    closed = (np.exp(-(logit - mu) ** 2 / (2 * sigma ** 2))
              / (sigma * math.sqrt(2 * math.pi) * points * (1 - points)))
    np.testing.assert_allclose(bell_pdf("logit_normal", mu=mu, sigma=sigma)(
        torch.from_numpy(points)).numpy(), closed, rtol=1e-10)
    mass = 1.0 - stats.norm.cdf((math.log(DEFAULT_EPS / (1 - DEFAULT_EPS)) - mu) / sigma)
    got = Bell(family="logit_normal", mu=mu, sigma=sigma).target_pdf(torch.from_numpy(points))
    np.testing.assert_allclose(got.numpy(), closed / mass, rtol=1e-5, atol=1e-6)
    assert float(bell_pdf("logit_normal")(torch.tensor([1.0]))) == 0.0  # vanishes at t = 1


def test_the_unbiased_form_mixes_and_weights_by_the_inverse_density():
    mix, points = 0.05, torch.tensor([0.01, 0.3, 0.5, 0.999], dtype=torch.float64)
    sampler, bell = BellImportance(alpha=4.0, mix=mix), Bell(alpha=4.0)
    expected = (1 - mix) * bell.target_pdf(points) + mix / (1 - DEFAULT_EPS)
    torch.testing.assert_close(sampler.pdf(points), expected, rtol=1e-6, atol=1e-9)
    t, w = sampler.sample(50_000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(w.double(), 1 / ((1 - DEFAULT_EPS) * sampler.pdf(t)),
                               rtol=1e-5, atol=0)
    assert float(w.max()) <= 1 / mix + 1e-3  # the uniform share bounds the weights
    assert sampler.state_dict() == {} and sampler.config()["alpha"] == 4.0


def test_bad_bell_and_annealed_arguments_are_named():
    with pytest.raises(ValueError, match="alpha >= 1"):
        Bell(alpha=0.5)
    with pytest.raises(ValueError, match="family must be one of"):
        BellImportance(family="gauss")
    with pytest.raises(ValueError, match="sigma > 0"):
        Bell(family="logit_normal", sigma=0.0)
    with pytest.raises(ValueError, match="widen_fraction must lie in"):
        Annealed(widen_fraction=0.0)
    with pytest.raises(ValueError, match="total_steps must be an integer"):
        Annealed(total_steps=2.5)
    with pytest.raises(ValueError, match="t_min < t_max"):
        Annealed(start=(0.6, 0.5))


def test_the_annealed_window_at_the_start_middle_and_end():
    sampler = Annealed(start=(0.45, 0.55), widen_fraction=0.5, total_steps=100)
    assert sampler.window_at(0) == (0.45, 0.55)
    assert sampler.window_at(25) == pytest.approx((0.225, 0.775))  # half-way through widening
    assert sampler.window_at(50) == sampler.window_at(99) == (0.0, 1.0)
    assert sampler.at_step(99).target() == ("uniform", DEFAULT_EPS, 1.0)  # U[eps, 1] after
    assert sampler.target_interval() == (0.45, 0.55)  # sample() draws the start
    # Without a schedule length the window stays at its start (a diagnostic's step is a key).
    with pytest.warns(UserWarning, match="without total_steps"):
        assert Annealed().window_at(70) == (0.45, 0.55)


def test_the_estimator_draws_each_step_from_its_window_and_ranks_agree():
    sampler = Annealed(total_steps=10)  # widens over steps 0..5
    estimator = Estimator(rate_sampler=sampler, masker=Bernoulli(), mask_token_id=0)
    ones = torch.ones(4, 3, dtype=torch.long)
    batch = Batch(x0=ones, eligible=ones.bool(), attention_mask=ones.bool(),
                  example_index=torch.arange(4))
    for step in (0, 2, 5, 9):
        full = BatchRandomness.for_batch(7, step, range(8))
        u = full.rate_uniforms()
        t, _ = sampler.at_step(step).sample_at(u, torch.arange(8), 8, full.batch_generator())
        lo, hi = Window(*sampler.window_at(step)).target_interval()
        assert float(t.min()) >= lo - 1e-6 and float(t.max()) <= hi + 1e-6
        # Two ranks holding halves of the global batch draw what one rank draws.
        halves = [BatchRandomness.for_batch(7, step, range(8)[k:k + 4], range(k, k + 4), 8)
                  for k in (0, 4)]
        drawn = torch.cat([estimator.draw(batch, r)[0] for r in halves])
        torch.testing.assert_close(drawn, t)


def _tiny(tmp_path, **overrides) -> TrainConfig:
    return tiny(tmp_path, **{"checkpoint_every": 2, "estimator": method_config("annealed"),
                             **overrides})


def test_the_trainer_anneals_over_the_runs_max_steps(tmp_path):
    trainer = Trainer(_tiny(tmp_path), quiet=True)
    sampler = trainer.estimator.rate_sampler
    assert isinstance(sampler, Annealed) and sampler.total_steps == 6  # from optim.max_steps
    assert "total_steps" not in trainer.config.estimator.sampler.params  # not in config.json
    for step in range(6):
        trainer.step = step
        t = trainer.train_step()["stats"].t
        lo, hi = Window(*sampler.window_at(step)).target_interval()
        assert float(t.min()) >= lo - 1e-6 and float(t.max()) <= hi + 1e-6, step
    assert sampler.window_at(3) == (0.0, 1.0)


def test_an_annealed_run_resumes_bit_identically(tmp_path):
    config = _tiny(tmp_path)
    straight = Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True)
    straight.fit()
    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=2)
    resumed = Trainer(interrupted, quiet=True)
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("a", "b")]
    for run in rows:
        for row in run:
            row.pop("tokens_per_s", None)
    assert rows[0] == rows[1]


def test_train_bell_iw_on_the_smoke_preset(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--method", "bell_iw", "--steps", "3", "--quiet",
                 "--set", "estimator.sampler.params.alpha=8", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert config["estimator"]["sampler"] == {
        "name": "bell_iw", "params": {"family": "beta", "alpha": 8, "mix": 0.05}}
    assert results["steps"] == 3 and math.isfinite(results["best_val"])
    assert get_method("bell_iw").cost == 1 and get_method("annealed").needs == frozenset()


def test_the_hugging_face_trainer_gives_the_annealed_schedule_its_max_steps():
    from maskdiff.hf.methods import trainer_objective

    estimator, _ = trainer_objective(method_config("annealed"), {}, 5, max_steps=40)
    assert estimator.rate_sampler.total_steps == 40
    assert estimator.rate_sampler.window_at(20) == pytest.approx((0.0, 1.0))
