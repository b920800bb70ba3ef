"""The benchmark statistics (maskdiff.experiments.stats) against closed forms, textbook values,
SciPy's own tests and seeded Monte-Carlo checks with stated tolerances."""

import math

import numpy as np
import pytest
from scipy import stats as st

from maskdiff.experiments import stats


def test_mean_ci_is_the_student_t_interval():
    out = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert out["mean"] == 3.0 and out["sd"] == pytest.approx(math.sqrt(2.5))
    assert (out["lo"], out["hi"]) == pytest.approx((3 - half, 3 + half), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_ci([1.0])
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci([1.0, 2.0], level=1.5)


def test_paired_difference_is_the_paired_t_test_on_the_differences():
    a = np.array([0.31, 0.35, 0.29, 0.40, 0.33, 0.36, 0.30, 0.38, 0.34, 0.37])
    b = np.array([0.30, 0.31, 0.30, 0.35, 0.31, 0.33, 0.27, 0.36, 0.30, 0.35])
    out = stats.paired_difference(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(10))
    assert out["mean"] == pytest.approx(d.mean())
    assert out["p"] == pytest.approx(2 * st.t.sf(abs(t), 9), rel=1e-10)
    half = st.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
    assert (out["lo"], out["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["p_wilcoxon"] == pytest.approx(st.wilcoxon(a, b).pvalue)
    same = stats.paired_difference([1, 2, 3], [1, 2, 3])
    assert same["mean"] == 0 and same["p"] == 1.0 and same["p_wilcoxon"] is None
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_difference([1, 2, 3], [1, 2])


def test_sd_interval_chi_square_textbook_factors_and_bootstrap_agreement():
    rng = np.random.default_rng(0)
    x = rng.normal(size=10)
    out = stats.sd_ci(x)
    s = x.std(ddof=1)
    # textbook factors for n = 10: sqrt(9 / 19.0228) = 0.6878, sqrt(9 / 2.7004) = 1.8256
    assert out["chi2_lo"] == pytest.approx(0.6878 * s, rel=1e-3)
    assert out["chi2_hi"] == pytest.approx(1.8256 * s, rel=1e-3)
    assert out["lo"] < s < out["hi"]
    # For a large normal sample the bootstrap interval approaches the exact chi-square one.
    big = stats.sd_ci(rng.normal(size=2000), n_boot=2000)
    assert big["lo"] == pytest.approx(big["chi2_lo"], rel=0.02)
    assert big["hi"] == pytest.approx(big["chi2_hi"], rel=0.02)
    const = stats.sd_ci([2.0, 2.0, 2.0])
    assert const["sd"] == 0 and const["lo"] is None


def test_spread_ratio_f_interval_brown_forsythe_and_pitman_morgan():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 10), rng.normal(0, 2, 10)
    out = stats.spread_ratio(a, b)
    r = a.std(ddof=1) / b.std(ddof=1)
    f = st.f.ppf(0.975, 9, 9)  # 4.026
    assert f == pytest.approx(4.026, abs=1e-3)
    assert out["ratio"] == pytest.approx(r)
    assert (out["f_lo"], out["f_hi"]) == pytest.approx((r / math.sqrt(f), r * math.sqrt(f)))
    assert out["lo"] < r < out["hi"] and out["boot_lo"] < r < out["boot_hi"]
    # Brown-Forsythe = one-way ANOVA on absolute deviations from each group's median.
    dev = [np.abs(a - np.median(a)), np.abs(b - np.median(b))]
    assert out["p_brown_forsythe"] == pytest.approx(st.f_oneway(*dev).pvalue, rel=1e-10)
    # Pitman-Morgan: t = r sqrt(n-2) / sqrt(1-r^2) on corr(a+b, a-b).
    rho = np.corrcoef(a + b, a - b)[0, 1]
    t = rho * math.sqrt(8) / math.sqrt(1 - rho ** 2)
    assert out["p_pitman_morgan"] == pytest.approx(2 * st.t.sf(abs(t), 8), rel=1e-8)


def test_pitman_morgan_holds_its_level_on_correlated_pairs():
    """Under equal variances with strongly correlated pairs (the paired design), the test
    rejects at its nominal 5%: 4,000 simulated 10-seed experiments, within 4 standard errors."""
    rng = np.random.default_rng(2)
    n_sim, rejections = 4000, 0
    for _ in range(n_sim):
        z = rng.normal(size=(2, 10))
        a, b = z[0], 0.8 * z[0] + 0.6 * z[1]  # var 1 each, correlation 0.8
        rejections += stats.pitman_morgan(a, b) < 0.05
    se = math.sqrt(0.05 * 0.95 / n_sim)
    assert abs(rejections / n_sim - 0.05) < 4 * se


def test_item_se_is_the_binomial_se_and_matches_scipys_bootstrap():
    scores = np.r_[np.ones(26), np.zeros(102)]  # 20.3% of 128 problems
    p = 26 / 128
    assert stats.item_se(scores) == pytest.approx(math.sqrt(p * (1 - p) / 128))
    assert stats.item_se(np.r_[np.ones(20), np.zeros(80)]) == pytest.approx(0.04)
    boot = st.bootstrap((scores,), np.mean, n_resamples=20000,
                        random_state=np.random.default_rng(3)).standard_error
    assert boot == pytest.approx(stats.item_se(scores), rel=0.03)


def test_split_half_separates_training_from_test_set_variance():
    rng = np.random.default_rng(4)
    seeds, items = 4000, 200
    training = rng.normal(0, 0.02, size=(seeds, 1))  # a per-seed shift shared by all items
    noise = rng.normal(0, 0.3, size=(seeds, items))  # seed x item interaction
    out = stats.split_half(training + noise)
    assert out["training_var"] == pytest.approx(0.02 ** 2, rel=0.15)
    assert out["eval_var"] == pytest.approx(0.3 ** 2 / items, rel=0.1)
    flat = stats.split_half(np.repeat(rng.normal(size=(5, 1)), 8, axis=1))
    assert flat["eval_var"] == pytest.approx(0, abs=1e-15) and flat["training_share"] == 1.0


def test_power_matches_textbook_sample_sizes_and_simulation():
    # Cohen's d = 0.5, alpha 0.05 two-sided, power 0.8: 34 pairs (G*Power: 34, power 0.808).
    assert stats.seeds_needed(lambda n: stats.power_paired_t(0.5, 1.0, n)) == 34
    assert stats.power_paired_t(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-3)
    # A simulation of the paired t-test at d = 1, n = 10.
    rng = np.random.default_rng(5)
    d = rng.normal(1.0, 1.0, size=(20000, 10))
    sim = np.mean(st.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
    assert stats.power_paired_t(1.0, 1.0, 10) == pytest.approx(sim, abs=4 * math.sqrt(0.2 / 20000))
    assert stats.power_paired_t(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-3)  # G*Power
    dd = stats.detectable_difference(1.0, 10)
    assert 0.99 < dd < 1.0 and stats.power_paired_t(dd, 1.0, 10) == pytest.approx(0.8, abs=1e-6)
    # The F test of variances, by simulation: sd ratio 2 with 10 seeds each.
    a = rng.normal(0, 2, size=(20000, 10))
    b = rng.normal(0, 1, size=(20000, 10))
    ratio = a.var(ddof=1, axis=1) / b.var(ddof=1, axis=1)
    sim = np.mean((ratio > st.f.ppf(0.975, 9, 9)) | (ratio < st.f.ppf(0.025, 9, 9)))
    assert stats.power_variance_ratio(2.0, 10) == pytest.approx(sim, abs=4 * math.sqrt(0.25 / 20000))
    r10 = stats.detectable_sd_ratio(10)
    assert stats.power_variance_ratio(r10, 10) == pytest.approx(0.8, abs=1e-6)


def test_first_crossing_interpolates_and_reports_never():
    assert stats.first_crossing([1, 2, 3], [3.0, 2.0, 1.0], 1.5) == pytest.approx(2.5)
    assert stats.first_crossing([1, 2, 3], [3.0, 2.0, 1.0], 3.5) == 1.0
    assert stats.first_crossing([1, 2, 3], [3.0, 2.0, 1.0], 0.5) == math.inf


def test_compute_multiplier_is_two_for_a_method_twice_as_fast():
    rng = np.random.default_rng(6)
    x = np.arange(1, 11) * 100.0
    base = 1.0 / np.arange(1, 11)[None, :] + rng.normal(0, 0.01, size=(8, 1))
    out = stats.compute_multiplier(x, base, x / 2, base)  # same curve, half the compute
    assert out["multiplier"] == pytest.approx(2.0)
    assert out["lo"] == pytest.approx(2.0) and out["hi"] == pytest.approx(2.0)
    slower = stats.compute_multiplier(x, base, x, base + 1.0)  # never reaches the target
    assert slower["multiplier"] == 0.0 and slower["fwd_method"] is None
    assert not slower["reached"] and slower["upper_bound"] == pytest.approx(1.0)
    assert out["reached"] and out["upper_bound"] is None


def test_spread_ratio_interval_survives_degenerate_resamples_of_few_seeds():
    """With 5 seeds, ~1 resample in 600 draws one seed five times (no spread): the interval
    must still exist and contain the estimate."""
    a = [0.451, 0.477, 0.431, 0.438, 0.430]
    b = [0.403, 0.453, 0.454, 0.447, 0.411]
    out = stats.spread_ratio(a, b)
    assert out["lo"] is not None and out["lo"] < out["ratio"] < out["hi"]


def test_the_pitman_morgan_interval_inverts_the_test():
    """At either end of the interval the Pitman-Morgan test of var(a) = var(rho b) has p = 5%."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(2, 12))
    a, b = z[0] * 2.0, 0.6 * z[0] + 0.8 * z[1]
    lo, hi = stats.pitman_morgan_interval(a, b)
    assert lo < a.std(ddof=1) / b.std(ddof=1) < hi
    assert stats.pitman_morgan(a, lo * b) == pytest.approx(0.05, abs=1e-9)
    assert stats.pitman_morgan(a, hi * b) == pytest.approx(0.05, abs=1e-9)
    # A sample against itself (standard vs standard): the ratio is exactly 1.
    assert stats.pitman_morgan_interval(a, a) == pytest.approx((1.0, 1.0))
