"""Sampler contracts (docs/method.md §3): every registered sampler is unbiased for its declared target."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from maskdiff.core.samplers import (
    SAMPLERS, Clipped, Importance, RateSampler, Stratified, Uniform, Window, build_sampler,
    stratum_layout,
)

# Every registered sampler must have cases here (test_every_registered_sampler_has_cases).
SAMPLER_CASES = {
    "uniform": [{}, {"eps": 0.01}],
    "window": [{"t_min": 0.0, "t_max": 0.1}, {"t_min": 0.45, "t_max": 0.55}],
    "clipped": [{}],
    "stratified": [{}],
    "importance": [
        {"density": lambda t: 0.2 + t ** 2},
        {"density": ([0.0, 0.3, 1.0], [3.0, 0.5, 2.0]), "stratified": True},
        {"density": lambda t: torch.exp(-4 * t), "mix": 0.2},
    ],
    # maskdiff.core.shaped_samplers (tests/test_bell_samplers.py has their own tests):
    # bell's target is its own density (target_pdf), annealed's sample() draws its start window.
    "bell": [{}, {"family": "logit_normal", "mu": 0.3, "sigma": 0.8}],
    "bell_iw": [{}, {"family": "logit_normal", "stratified": True}, {"alpha": 1.0}],
    "annealed": [{}, {"start": (0.0, 0.1), "total_steps": 10}],
}

TEST_FUNCTIONS = {
    "t": lambda t: t,
    "t^2": lambda t: t * t,
    "exp(-3t)": lambda t: np.exp(-3 * t),
    "1/t": lambda t: 1.0 / t,  # unbounded near 0: eps keeps it finite
}

CASES = [(name, kw) for name, kws in SAMPLER_CASES.items() for kw in kws]


def test_every_registered_sampler_has_cases():
    assert set(SAMPLERS) == set(SAMPLER_CASES)


def _batch_means(sampler: RateSampler, *fs, n_batches=2000, batch=100, seed=0):
    """Means of ``w·f(t)`` over ``n_batches`` batches: shape (n_batches, len(fs))."""
    gen = torch.Generator().manual_seed(seed)
    means = np.empty((n_batches, len(fs)))
    for i in range(n_batches):
        t, w = sampler.sample(batch, gen)
        t, w = t.double().numpy(), w.double().numpy()
        means[i] = [np.mean(w * f(t)) for f in fs]
    return means if len(fs) > 1 else means[:, 0]


def _target_pdf(sampler: RateSampler, t: float) -> float:
    """The declared target's density (uniform on target_interval unless the sampler says)."""
    return float(sampler.target_pdf(torch.tensor([t], dtype=torch.float64))[0])


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_weighted_mean_matches_target(name, kwargs):
    """200k draws in batches of 100: each test function within 4 SE of its target mean."""
    sampler = build_sampler(name, **kwargs)
    lo, hi = sampler.target_interval()
    means = _batch_means(sampler, *TEST_FUNCTIONS.values())
    for col, (fname, f) in enumerate(TEST_FUNCTIONS.items()):
        truth = integrate.quad(lambda t: f(t) * _target_pdf(sampler, t), lo, hi, limit=200)[0]
        se = means[:, col].std(ddof=1) / math.sqrt(len(means))
        estimate = means[:, col].mean()
        assert abs(estimate - truth) < 4 * se + 1e-9, (name, fname, estimate, truth, se)


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_shapes_dtypes_and_range(name, kwargs):
    sampler = build_sampler(name, **kwargs)
    t, w = sampler.sample(37, torch.Generator().manual_seed(1))
    assert t.shape == w.shape == (37,) and t.dtype == w.dtype == torch.float32
    lo, hi = sampler.target_interval()
    assert float(t.min()) >= lo - 1e-6 and float(t.max()) <= hi + 1e-6
    assert torch.all(w > 0)


def test_uniform_is_the_affine_map():
    u = torch.tensor([0.0, 0.5, 0.999], dtype=torch.float64)
    t, w = Uniform(eps=0.01).sample_at(u, torch.arange(3), 3, torch.Generator())
    assert torch.allclose(t, torch.tensor([0.01, 0.505, 0.01 + 0.99 * 0.999]))
    assert torch.all(w == 1)


def test_window_floors_zero_at_eps_and_clipped_defaults():
    assert Window(0.0, 0.1).target_interval() == (1e-3, 0.1)
    assert Clipped().target_interval() == (0.45, 0.95)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 16, 17, 63, 64, 100, 1000])
def test_stratum_counts_exactly_as_spec(n):
    layout, k = stratum_layout(n, torch.Generator().manual_seed(n))
    assert k == math.ceil(math.sqrt(n))
    counts = torch.bincount(layout, minlength=k)
    base = n // k
    assert counts.sum() == n
    assert set(counts.tolist()) <= {base, base + 1}
    assert int((counts == base + 1).sum()) == n - base * k


def test_stratified_rates_lie_in_their_strata():
    gen = torch.Generator().manual_seed(3)
    eps, n = 1e-3, 50
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    layout, k = stratum_layout(n, torch.Generator().manual_seed(9))
    t, _ = Stratified(eps=eps).sample_at(u, torch.arange(n), n, torch.Generator().manual_seed(9))
    v = (t.double() - eps) / (1 - eps)
    assert torch.all(torch.floor(v * k + 1e-6).long().clamp(max=k - 1) == layout)


def test_stratified_reduces_batch_mean_variance_for_monotone_f():
    f = lambda t: t  # noqa: E731
    strat = _batch_means(Stratified(), f, n_batches=4000, batch=16, seed=1)
    unif = _batch_means(Uniform(), f, n_batches=4000, batch=16, seed=2)
    # Uniform: Var(t)/16 = 1/192; stratified with k=4 strata is about 1/16 of that.
    assert strat.var(ddof=1) < 0.25 * unif.var(ddof=1)
    assert unif.var(ddof=1) == pytest.approx((1 - 1e-3) ** 2 / 12 / 16, rel=0.1)


def test_importance_proportional_to_f_has_zero_variance():
    f = lambda t: 1.0 + 3.0 * t ** 2  # noqa: E731
    sampler = Importance(lambda t: f(t), mix=0.0)
    t, w = sampler.sample(100_000, torch.Generator().manual_seed(0))
    values = w.double() * f(t.double())
    truth = integrate.quad(f, 1e-3, 1)[0] / (1 - 1e-3)
    assert float(values.std()) < 1e-4 * truth
    assert float(values.mean()) == pytest.approx(truth, rel=1e-5)


def test_importance_variance_matches_closed_form():
    """p ∝ 1 + t on [eps, 1], f = 1: Var(w) = Z·ln(2/(1+eps))/(1-eps)² - 1, Z = ∫(1+t)."""
    eps = 1e-3
    sampler = Importance(lambda t: 1.0 + t, mix=0.0, eps=eps)
    _, w = sampler.sample(400_000, torch.Generator().manual_seed(5))
    w = w.double().numpy()
    z = (1 - eps) + (1 - eps ** 2) / 2
    truth = z * math.log(2 / (1 + eps)) / (1 - eps) ** 2 - 1
    dev = (w - w.mean()) ** 2
    se = dev.std(ddof=1) / math.sqrt(len(w))
    assert abs(dev.mean() - truth) < 4 * se, (dev.mean(), truth, se)


def test_importance_mix_bounds_weights():
    sampler = Importance(lambda t: torch.exp(-20 * t), mix=0.1)
    _, w = sampler.sample(50_000, torch.Generator().manual_seed(0))
    assert float(w.max()) <= 1 / 0.1 + 1e-4


def test_importance_pdf_is_normalised_and_state_round_trips():
    sampler = Importance(([0.0, 1.0], [1.0, 5.0]), mix=0.05)
    grid = torch.linspace(1e-3, 1, 20001, dtype=torch.float64)
    assert float(torch.trapezoid(sampler.pdf(grid), grid)) == pytest.approx(1.0, abs=1e-6)
    other = Importance(lambda t: torch.ones_like(t))
    other.load_state_dict(sampler.state_dict())
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(sampler.sample(10, gen_a)[0], other.sample(10, gen_b)[0])
    rebuilt = build_sampler("importance", **sampler.config())
    assert torch.equal(sampler.sample(10, torch.Generator().manual_seed(1))[1],
                       rebuilt.sample(10, torch.Generator().manual_seed(1))[1])


@pytest.mark.parametrize("make,match", [
    (lambda: Uniform(eps=0.0), "eps"),
    (lambda: Uniform(eps=1.5), "eps"),
    (lambda: Window(0.5, 0.5), "t_min"),
    (lambda: Window(0.6, 0.2), "t_min"),
    (lambda: Window(-0.1, 0.2), "t_min"),
    (lambda: Clipped(low=0.9, high=0.5), "low"),
    (lambda: Stratified(eps=-1), "eps"),
    (lambda: Importance(lambda t: t - 0.5), "non-negative"),
    (lambda: Importance(lambda t: 0 * t), "integrates to 0"),
    (lambda: Importance(([0.0, 1.0], [1.0, float("nan")])), "non-negative"),
    (lambda: Importance(([0.0, 1.0], [1.0, 2.0, 3.0])), "equal length"),
    (lambda: Importance(lambda t: t, mix=1.0), "mix"),
    (lambda: Importance("uniform"), "density must be"),
    (lambda: build_sampler("nope"), "unknown sampler"),
])
def test_bad_arguments_raise_named_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
