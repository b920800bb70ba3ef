"""The ELBO schemes (docs/method.md §8) against the *exact* ELBO of a tiny model: every scheme
unbiased; LLaDA's count estimator and its MIRROR pair; the fitted (P-POTS) density seeded and
cached; the preference estimators reuse the same draws."""

import json
import math

import pytest
import torch

from maskdiff.cli import main
from maskdiff.core.batch import Batch
from maskdiff.core.counts import count_views, count_weights
from maskdiff.core.seeding import BatchRandomness
from maskdiff.preference import PREFERENCE_ESTIMATORS, exact_log_likelihood
from maskdiff.training.evaluate import ELBO_SCHEMES, elbo_draws, fit_elbo_density

from test_preference import MASK, _batch, _model  # noqa: E402  (the tiny model and batch)


@pytest.fixture(scope="module")
def exact_case():
    model, batch = _model(), _batch()
    exact = -exact_log_likelihood(model, batch, mask_token_id=MASK)  # the loss: −ELBO, nats
    density = fit_elbo_density(model, batch, mask_token_id=MASK, seed=0, normalizer="none")
    return model, batch, exact, density


@pytest.mark.parametrize("scheme", sorted(ELBO_SCHEMES))
def test_every_scheme_is_unbiased_for_the_exact_elbo(scheme, exact_case):
    """Over 60 seeds of 4 draws each, every scheme's mean is the exact ELBO (all 2^L − 1
    masks weighted by c(l)) within 4 standard errors, on each of three examples."""
    model, batch, exact, density = exact_case
    chosen = ELBO_SCHEMES[scheme]
    est = chosen.estimators(mask_token_id=MASK, rates=4, normalizer="none", density=density)
    with torch.no_grad():
        means = torch.stack([elbo_draws(model, batch, est, seed=s).mean(1) for s in range(60)])
    z = (means.mean(0) - exact) / (means.std(0) / math.sqrt(len(means)))
    assert (z.abs() < 4).all(), (scheme, z, means.mean(0), exact)
    assert float(means.std(0).max()) > 0  # really random


def test_the_mirror_count_views_are_complementary_with_weights_l_plus_one_times_c():
    batch = _batch()
    n = batch.eligible.sum(1)
    c = count_weights(n, 1e-3)
    for step in range(20):
        first, second = count_views(batch.x0, batch.eligible, BatchRandomness.for_batch(
            3, step, [0, 1, 2]), MASK, 1e-3, stratum=(step % 4, 4), mirror=True)
        assert torch.equal(first.masked ^ second.masked, batch.eligible)
        assert not (first.masked & second.masked).any()
        for view in (first, second):
            size = view.masked.sum(1)
            for b in range(3):
                if size[b] > 0:  # masked tokens carry 1/((L+1)·c(size))
                    expected = 1 / ((n[b] + 1) * c[b, size[b] - 1])
                    got = view.inclusion_prob[b][view.masked[b]]
                    assert torch.allclose(got.double(), expected.expand_as(got), rtol=1e-6)


def test_the_preference_lowvar_estimators_are_the_evaluation_schemes_draws():
    """One implementation: the preference estimator's B̂ is minus the evaluation scheme's mean
    (normalizer none) on the same seed."""
    model, batch = _model(), _batch()
    for name in ("lowvar", "lowvar-stratified", "lowvar-mirror"):
        scheme = ELBO_SCHEMES[PREFERENCE_ESTIMATORS[name].scheme]
        budget = scheme.passes(3)
        with torch.no_grad():
            b_hat = PREFERENCE_ESTIMATORS[name].log_likelihood(model, batch, seed=7,
                                                               budget=budget, mask_token_id=MASK)
            draws = elbo_draws(model, batch, scheme.estimators(mask_token_id=MASK, rates=3,
                                                               normalizer="none"), seed=7)
        torch.testing.assert_close(b_hat.double(), -draws.mean(1), rtol=1e-5, atol=1e-5)


def test_the_fitted_density_is_seeded_cached_and_puts_mass_on_small_rates(tmp_path):
    model, batch = _model(), _batch()
    a = fit_elbo_density(model, batch, mask_token_id=MASK, seed=1, cache_dir=tmp_path,
                         key={"model": "tiny"})
    path = tmp_path / "elbo_density.json"
    mtime = path.stat().st_mtime_ns
    again = fit_elbo_density(model, batch, mask_token_id=MASK, seed=1, cache_dir=tmp_path,
                             key={"model": "tiny"})
    assert again == a and path.stat().st_mtime_ns == mtime  # reused
    assert fit_elbo_density(model, batch, mask_token_id=MASK, seed=1)["p"] == a["p"]  # seeded
    assert fit_elbo_density(model, batch, mask_token_id=MASK, seed=2)["p"] != a["p"]
    t, p = torch.tensor(a["t"]), torch.tensor(a["p"])
    assert float(p[t < 0.01].mean()) > 2 * float(p[t > 0.9].mean())  # the 1/t tail kept
    # the fit is sqrt(a/t + b + c·t) of the measured second moments
    doc = json.loads(path.read_text())
    coef = doc["coefficients"]
    assert min(coef) >= 0 and coef[0] > 0
    assert a["p"][0] == pytest.approx(math.sqrt(coef[0] / a["t"][0] + coef[1] + coef[2] * a["t"][0]))
    epr = fit_elbo_density(model, batch, mask_token_id=MASK, seed=1, form="epr",
                           cache_dir=tmp_path, key={"model": "tiny"})
    assert (tmp_path / "ppots.json").exists() and epr["p"] != a["p"]
    with pytest.raises(ValueError, match="ppots-stratified.*fitted density"):
        ELBO_SCHEMES["ppots-stratified"].estimators(mask_token_id=MASK, rates=2)


def test_count_schemes_refuse_a_block_layout_in_one_line():
    from maskdiff.core.blocks import BlockLayout

    with pytest.raises(ValueError, match="no block-diffusion form"):
        ELBO_SCHEMES["lowvar"].estimators(mask_token_id=MASK, rates=2, layout=BlockLayout(4))


def test_evaluate_a_run_under_the_new_schemes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--seed", "3", "--set", "optim.max_steps=2",
                 "--out", str(run), "--quiet"]) == 0
    for scheme, passes in (("lowvar-mirror", 6), ("ppots-stratified", 3)):
        assert main(["evaluate", "--run", str(run), "--n", "4", "--scheme", scheme,
                     "--rates", "3"]) == 0
        report = json.loads((run / "eval.json").read_text())
        assert report["scheme"] == scheme and report["forward_passes_per_example"] == passes
        assert math.isfinite(report["loss"]["mean"]) and report["loss"]["mean"] > 0
    assert (run / "elbo_density" / "elbo_density.json").exists()  # the fit, cached per run
