"""Tests of maskdiff.diagnostics.variance, .gradient and .curves (docs/method.md §2, §4): closed-form
truths on synthetic nested data, with tolerances stated in standard errors and fixed seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from maskdiff.diagnostics.curves import conditional_curves
from maskdiff.diagnostics.gradient import GradientVarianceAccumulator, gradient_variance
from maskdiff.diagnostics.variance import batch_variance, decompose, total_variance

# Gaussian nested model l = μ + α_i + β_ij + γ_ijk with Var α = C, Var β = B, Var γ = A.
A_TRUE, B_TRUE, C_TRUE = 2.0, 0.5, 1.0


def gaussian_nested(rng, shape, a_var=A_TRUE, b_var=B_TRUE, c_var=C_TRUE, mu=3.0):
    *lead, a, b, c = shape
    alpha = rng.normal(0.0, math.sqrt(c_var), (*lead, a, 1, 1))
    beta = rng.normal(0.0, math.sqrt(b_var), (*lead, a, b, 1))
    gamma = rng.normal(0.0, math.sqrt(a_var), (*lead, a, b, c))
    return mu + alpha + beta + gamma


# A masked-diffusion-like model: heteroscedastic and skewed. Difficulty d ~ Gamma(4, 1/4) (mean 1,
# var 1/4, E d² = 5/4), t ~ U[0,1), g(x0, t) = d (1 + 2t), l = g·ε with ε ~ Gamma(2, 1/2) (mean 1,
# var 1/2). Then A = E[d²] E[(1+2t)²] / 2 = 65/24, B = E[d²] Var(2t) = 5/12,
# C = Var(d) (E[1+2t])² = 1.
MDM_A, MDM_B, MDM_C = 65.0 / 24.0, 5.0 / 12.0, 1.0


def mdm_like(rng, shape, t=None):
    *lead, a, b, c = shape
    d = rng.gamma(4.0, 0.25, (*lead, a, 1, 1))
    rates = rng.uniform(0.0, 1.0, (*lead, a, b, 1)) if t is None else np.reshape(t, (b, 1))
    eps = rng.gamma(2.0, 0.5, (*lead, a, b, c))
    return d * (1.0 + 2.0 * rates) * eps


def mean_and_se(values):
    values = np.asarray(values)
    return values.mean(axis=0), values.std(axis=0, ddof=1) / math.sqrt(values.shape[0])


def fields(decs, names):
    return np.array([[getattr(d, n).value for n in names] for d in decs])


# --------------------------------------------------------------------------------------------
# decompose


def test_unbiased_and_naive_bias_gaussian():
    """Over 2000 replications the MoM estimates average to the truth (3 SE), the plug-in ones
    to their biased expectations (3 SE), which differ from the truth by > 10 SE."""
    rng = np.random.default_rng(1)
    a, b, c = 10, 4, 3
    data = gaussian_nested(rng, (2000, a, b, c))
    decs = [decompose(x, n_boot=0) for x in data]
    truth = np.array([A_TRUE, B_TRUE, C_TRUE, A_TRUE + B_TRUE + C_TRUE])
    mean, se = mean_and_se(fields(decs, ["A", "B", "C", "total"]))
    assert np.all(np.abs(mean - truth) < 3 * se), (mean, truth, se)

    naive_b = B_TRUE + A_TRUE / c
    naive_c = C_TRUE + naive_b / b
    predicted = np.array([A_TRUE, naive_b, naive_c, A_TRUE + naive_b + naive_c])
    naive_mean, naive_se = mean_and_se(fields(decs, ["naive_A", "naive_B", "naive_C",
                                                     "naive_total"]))
    assert np.all(np.abs(naive_mean - predicted) < 3 * naive_se), (naive_mean, predicted)
    # naive A is unbiased; B, C and the total are clearly off.
    assert np.all(np.abs(naive_mean[1:] - truth[1:]) > 10 * naive_se[1:])


def test_unbiased_heteroscedastic_skewed():
    """No normality or equal variances needed: the masked-diffusion-like model's A, B, C."""
    rng = np.random.default_rng(2)
    data = mdm_like(rng, (2000, 8, 3, 2))
    decs = [decompose(x, n_boot=0) for x in data]
    mean, se = mean_and_se(fields(decs, ["A", "B", "C"]))
    truth = np.array([MDM_A, MDM_B, MDM_C])
    assert np.all(np.abs(mean - truth) < 3 * se), (mean, truth, se)


def test_fixed_rate_design():
    """Shared grid rates: the 'fixed' estimators are unbiased for t uniform on the grid; the
    'random' formulas overstate B by b/(b-1) and understate C by B/(b-1), as documented."""
    rng = np.random.default_rng(3)
    reps, a, b, c = 1500, 8, 4, 3
    t = (np.arange(b) + 0.5) / b
    var_alpha, var_delta = 1.0, 0.4
    sd_mask = 0.5 + t  # heteroscedastic in t
    alpha = rng.normal(0.0, math.sqrt(var_alpha), (reps, a, 1, 1))
    delta = rng.normal(0.0, math.sqrt(var_delta), (reps, a, b, 1))
    gamma = rng.normal(0.0, 1.0, (reps, a, b, c)) * sd_mask[:, None]
    data = 1.0 + alpha + (3.0 * t)[:, None] + delta + gamma

    a_true = float(np.mean(sd_mask**2))
    b_true = float(np.var(3.0 * t)) + var_delta * (b - 1) / b
    c_true = var_alpha + var_delta / b
    fixed = fields([decompose(x, rate_design="fixed", n_boot=0) for x in data], ["A", "B", "C"])
    mean, se = mean_and_se(fixed)
    assert np.all(np.abs(mean - [a_true, b_true, c_true]) < 3 * se), (mean, se)

    random = fields([decompose(x, rate_design="random", n_boot=0) for x in data], ["B", "C"])
    mean_r, se_r = mean_and_se(random)
    predicted = np.array([b_true * b / (b - 1), c_true - b_true / (b - 1)])
    assert np.all(np.abs(mean_r - predicted) < 3 * se_r), (mean_r, predicted)
    assert abs(mean_r[1] - c_true) > 10 * se_r[1]


def test_bootstrap_se_is_calibrated():
    """The bootstrap SE over examples matches the spread of the estimates across independent
    replications (within 20%)."""
    rng = np.random.default_rng(4)
    data = gaussian_nested(rng, (300, 30, 4, 3))
    decs = [decompose(x, n_boot=300, seed=s) for s, x in enumerate(data)]
    names = ["A", "B", "C", "total"]
    spread = fields(decs, names).std(axis=0, ddof=1)
    mean_se = np.array([[getattr(d, n).se for n in names] for d in decs]).mean(axis=0)
    assert np.all(np.abs(mean_se / spread - 1.0) < 0.2), mean_se / spread


def test_total_matches_directly_measured_variance():
    """A + B + C of one nested design vs the variance of independent (x0, t, mask) triples."""
    rng = np.random.default_rng(5)
    dec = decompose(mdm_like(rng, (600, 6, 4)), n_boot=500, seed=0)
    direct = total_variance(mdm_like(rng, (20000, 1, 1)).ravel())
    combined = math.hypot(dec.total.se, direct.variance.se)
    assert abs(dec.total.value - direct.variance.value) < 3 * combined
    truth = MDM_A + MDM_B + MDM_C
    assert abs(dec.total.value - truth) < 3 * dec.total.se
    assert abs(direct.variance.value - truth) < 3 * direct.variance.se
    for name, value in (("A", MDM_A), ("B", MDM_B), ("C", MDM_C)):
        est = getattr(dec, name)
        assert abs(est.value - value) < 3 * est.se, (name, est, value)


def test_decompose_reproducible_raw_negative_and_json():
    rng = np.random.default_rng(6)
    x = gaussian_nested(rng, (12, 3, 2), b_var=0.0)  # true B = 0: B̂ < 0 happens often
    d1 = decompose(x, n_boot=50, seed=7)
    d2 = decompose(torch.tensor(x), n_boot=50, seed=np.random.default_rng(7))
    assert d1 == d2
    assert d1.mean.value == pytest.approx(x.mean())
    # point estimates satisfy the mean-square identities exactly
    b, c = 3, 2
    assert d1.B.value == pytest.approx((d1.ms_rates - d1.ms_within) / c)
    assert d1.C.value == pytest.approx((d1.ms_examples - d1.ms_rates) / (b * c))
    assert d1.total.value == pytest.approx(d1.A.value + d1.B.value + d1.C.value)
    negatives = [decompose(y, n_boot=0).B.value < 0
                 for y in gaussian_nested(rng, (40, 12, 3, 2), b_var=0.0)]
    assert any(negatives)  # kept raw, not clipped
    neg = next(decompose(y, n_boot=0) for y in gaussian_nested(rng, (40, 12, 3, 2), b_var=0.0)
               if decompose(y, n_boot=0).B.value < 0)
    assert neg.clipped()["B"] == 0.0
    assert neg.clipped()["total"] == pytest.approx(neg.A.value + max(neg.C.value, 0.0))
    assert sum(neg.shares().values()) == pytest.approx(1.0)
    payload = json.loads(json.dumps(decompose(x, n_boot=0).to_dict()))
    assert payload["B"]["se"] is None and payload["n_boot"] == 0


# --------------------------------------------------------------------------------------------
# total_variance, batch_variance


def test_variance_se_calibrated_non_normal():
    """The distribution-free SE of a sample variance matches the spread over replications
    (exponential data, where the normal formula 2σ⁴/(n-1) would be 3x too small in variance)."""
    rng = np.random.default_rng(8)
    samples = rng.exponential(2.0, (2000, 200))
    results = [total_variance(s) for s in samples]
    values = np.array([r.variance.value for r in results])
    ses = np.array([r.variance.se for r in results])
    assert abs(values.mean() - 4.0) < 3 * values.std(ddof=1) / math.sqrt(len(values))
    assert abs(math.sqrt(np.mean(ses**2)) / values.std(ddof=1) - 1.0) < 0.1
    mean_ses = np.array([r.mean.se for r in results])
    assert np.mean(mean_ses) == pytest.approx(2.0 / math.sqrt(200), rel=0.05)


def test_batch_variance_per_example():
    """Variance of batch means × batch size estimates the per-example variance."""
    rng = np.random.default_rng(9)
    batch_size = 16
    means = rng.normal(1.0, 3.0, (4000, batch_size)).mean(axis=1)
    result = batch_variance(means, batch_size=batch_size)
    assert result.n_batches == 4000
    assert abs(result.variance.value - 9.0 / batch_size) < 3 * result.variance.se
    assert abs(result.per_example.value - 9.0) < 3 * result.per_example.se
    assert result.per_example.se == pytest.approx(result.variance.se * batch_size)
    assert batch_variance(means).per_example is None
    json.dumps(result.to_dict())


# --------------------------------------------------------------------------------------------
# gradient_variance


def _gradients(rng, n, mean, chol):
    # skewed, unit-variance noise: Cov = chol chol^T
    noise = rng.exponential(1.0, (n, chol.shape[1])) - 1.0
    return mean + noise @ chol.T


def test_gradient_trace_cov_within_se_and_calibrated():
    rng = np.random.default_rng(10)
    d = 20
    chol = rng.normal(0.0, 1.0, (d, d)) / math.sqrt(d)
    mean = rng.normal(0.0, 0.5, d)
    trace_true = float(np.sum(chol**2))
    one = gradient_variance(_gradients(rng, 500, mean, chol))
    assert abs(one.trace_cov.value - trace_true) < 3 * one.trace_cov.se
    results = [gradient_variance(_gradients(rng, 100, mean, chol)) for _ in range(400)]
    values = np.array([r.trace_cov.value for r in results])
    ses = np.array([r.trace_cov.se for r in results])
    assert abs(values.mean() - trace_true) < 3 * values.std(ddof=1) / math.sqrt(len(values))
    assert abs(ses.mean() / values.std(ddof=1) - 1.0) < 0.15


def test_gradient_mean_norm_unbiased():
    """‖ḡ‖² is biased up by tr Cov / n; the corrected value is not (n = 8 draws)."""
    rng = np.random.default_rng(11)
    d, n = 10, 8
    chol = np.eye(d)
    mean = np.full(d, 0.3)
    results = [gradient_variance(_gradients(rng, n, mean, chol)) for _ in range(2000)]
    target = float(mean @ mean)
    unbiased, se_u = mean_and_se([r.mean_norm_sq_unbiased for r in results])
    plug_in, se_p = mean_and_se([r.mean_norm_sq for r in results])
    trace, se_t = mean_and_se([r.trace_cov.value for r in results])
    assert abs(unbiased - target) < 3 * se_u
    assert abs(plug_in - (target + d / n)) < 3 * se_p
    assert abs(plug_in - target) > 10 * se_p
    assert abs(trace - d) < 3 * se_t


def test_gradient_streaming_equals_batch():
    rng = np.random.default_rng(12)
    grads = rng.normal(5.0, 2.0, (50, 7))  # large mean: a naive Σ‖g‖² − n‖ḡ‖² would cancel
    full = gradient_variance(grads)
    rows = gradient_variance(iter(list(grads)))
    chunks = gradient_variance(grads[s:s + 6] for s in range(0, 50, 6))
    tensor = gradient_variance(torch.tensor(grads, dtype=torch.float64))
    acc = GradientVarianceAccumulator()
    acc.update(grads[:1])
    acc.update(grads[1:])
    for other in (rows, chunks, tensor, acc.result()):
        assert other.n_draws == 50 and other.dim == 7
        assert other.trace_cov.value == pytest.approx(full.trace_cov.value, rel=1e-12)
        assert other.trace_cov.se == pytest.approx(full.trace_cov.se, rel=1e-10)
        assert other.mean_norm_sq == pytest.approx(full.mean_norm_sq, rel=1e-12)
    assert full.trace_cov.value == pytest.approx(np.trace(np.cov(grads, rowvar=False)), rel=1e-12)
    assert full.mean_norm_sq == pytest.approx(float(grads.mean(0) @ grads.mean(0)), rel=1e-12)
    json.dumps(full.to_dict())


# --------------------------------------------------------------------------------------------
# conditional_curves


def test_conditional_curves_known_g_and_v():
    """MDM-like model on a grid: g(t) = 1+2t, v(t) = 7/8 (1+2t)² (between-example 1/4 (1+2t)²
    plus within 5/8 (1+2t)²), E[l²|t] = 15/8 (1+2t)²; the paper's within-only v̂ is 5/8 (1+2t)²."""
    rng = np.random.default_rng(13)
    t = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    curves = conditional_curves(mdm_like(rng, (3000, 5, 3), t=t), t, n_boot=400, seed=1)
    base = 1.0 + 2.0 * t
    for est, se, truth in ((curves.g, curves.g_se, base),
                           (curves.v, curves.v_se, 0.875 * base**2),
                           (curves.second_moment, curves.second_moment_se, 1.875 * base**2),
                           (curves.v_within, curves.v_within_se, 0.625 * base**2)):
        assert np.all(np.abs(est - truth) < 3.5 * se), (est, truth, se)
    np.testing.assert_array_equal(curves.t, t)
    json.dumps(curves.to_dict())


def test_conditional_v_unbiased_small_design():
    """v̂ is unbiased with only a = 5 examples and c = 2 masks (2000 replications); c = 1 too."""
    rng = np.random.default_rng(14)
    t = np.array([0.2, 0.5, 0.8])
    data = mdm_like(rng, (2000, 5, 3, 2), t=t)
    truth = 0.875 * (1.0 + 2.0 * t) ** 2
    v_mean, v_se = mean_and_se([conditional_curves(x, t, n_boot=0).v for x in data])
    assert np.all(np.abs(v_mean - truth) < 3 * v_se), (v_mean, truth)
    single, single_se = mean_and_se([conditional_curves(x[:, :, :1], t, n_boot=0).v
                                     for x in data])
    assert np.all(np.abs(single - truth) < 3 * single_se)
    assert np.all(np.isnan(conditional_curves(data[0][:, :, :1], t, n_boot=0).v_within))


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: decompose(np.ones((4, 3))), "losses"),
        (lambda: decompose(np.ones((1, 3, 3))), "losses axis 0"),
        (lambda: decompose(np.ones((4, 1, 3))), "losses axis 1"),
        (lambda: decompose(np.ones((4, 3, 1))), "losses axis 2"),
        (lambda: decompose(np.full((4, 3, 2), np.nan)), "losses must be finite"),
        (lambda: decompose(np.ones((4, 3, 2)), rate_design="grid"), "rate_design"),
        (lambda: decompose(np.ones((4, 3, 2)), n_boot=1), "n_boot"),
        (lambda: decompose(np.ones((4, 3, 2)), seed=-1), "seed"),
        (lambda: total_variance([1.0]), "samples"),
        (lambda: total_variance(np.ones((3, 3))), "samples"),
        (lambda: batch_variance([1.0, 2.0], batch_size=0), "batch_size"),
        (lambda: batch_variance([1.0]), "estimates"),
        (lambda: gradient_variance(np.ones((1, 4))), "grads"),
        (lambda: gradient_variance(np.ones(4)), "grads"),
        (lambda: gradient_variance([np.ones(3), np.ones(4)]), "grads"),
        (lambda: conditional_curves(np.ones((4, 3, 2)), [0.1, 0.2]), "rates"),
        (lambda: conditional_curves(np.ones((1, 3, 2)), [0.1, 0.2, 0.3]), "losses axis 0"),
        (lambda: conditional_curves(np.ones((3, 2)), [0.1, 0.2]), "losses"),
    ],
)
def test_bad_input_raises_named_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
