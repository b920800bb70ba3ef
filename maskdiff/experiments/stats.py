"""The statistics of the paired multi-seed benchmark (docs/method.md §11): pure numpy/SciPy.

Every ``maskdiff compare`` number that carries an uncertainty comes from here:

- :func:`mean_ci` — a method's mean over seeds with its Student-t interval;
- :func:`paired_difference` — a method minus standard over the *same* seeds (same data order,
  same starting checkpoint): mean, t interval and p-value (``scipy.stats.ttest_rel``), and the
  Wilcoxon signed-rank p-value as a distribution-free check;
- :func:`sd_ci` — the seed-to-seed standard deviation with a bootstrap interval over seeds
  (``scipy.stats.bootstrap``) and the normal-theory chi-square interval;
- :func:`spread_ratio` — sd(method) / sd(standard) with the interval that inverts the
  Pitman–Morgan test (exact for paired normal samples: var(a) = var(b) iff
  corr(a + b, a − b) = 0) and a paired bootstrap interval, the Brown–Forsythe test of equal
  variances (``scipy.stats.levene(center="median")``, which treats the samples as
  independent) and the Pitman–Morgan test;
- :func:`item_se` / :func:`split_half` — the evaluation floor: the precision of one run's score
  from its finite test set, and how much of a seed spread is training and how much test set;
- :func:`ratio_of_means` — a paired ratio of means with Fieller's interval (a method's
  gain as a share of the noise ceiling's);
- :func:`power_paired_t`, :func:`detectable_difference`, :func:`power_variance_ratio`,
  :func:`detectable_sd_ratio` — the power calculation behind the number of seeds.

Intervals are two-sided at ``level`` (0.95 unless given); bootstrap draws take an explicit seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
N_BOOT = 4000


def _array(values: Sequence[float], name: str, minimum: int = 2) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < minimum:
        raise ValueError(f"{name} must be a 1-d sequence of at least {minimum} values, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def _f(x) -> float | None:
    """A JSON-safe float: None for NaN or inf."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def mean_ci(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean with the Student-t interval ``mean ± t_{n-1} · sd / sqrt(n)``."""
    _check_level(level)
    x = _array(values, "values")
    n, mean, sd = x.size, float(x.mean()), float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n, "level": level}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """``a − b`` over paired seeds: mean, t interval, the paired t-test's p-value and the
    Wilcoxon signed-rank p-value (None when every difference is 0)."""
    _check_level(level)
    x, y = _array(a, "a"), _array(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired samples must have equal length, got {x.size} and {y.size}")
    d = x - y
    out = mean_ci(d, level)
    if np.all(d == d[0]):  # no spread: the t statistic is undefined
        p = 1.0 if d[0] == 0 else 0.0
        return {**out, "p": p, "p_wilcoxon": None if d[0] == 0 else p}
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(confidence_level=level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nonzero = np.count_nonzero(d)
        p_w = float(stats.wilcoxon(x, y).pvalue) if nonzero else None
    return {**out, "lo": float(ci.low), "hi": float(ci.high), "p": float(res.pvalue),
            "p_wilcoxon": _f(p_w)}


def _bootstrap(data: tuple, statistic, *, paired: bool, level: float, n_boot: int,
               seed: int) -> tuple[float | None, float | None]:
    """``scipy.stats.bootstrap`` (BCa, falling back to percentile when BCa is undefined)."""
    rng = np.random.default_rng(seed)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = stats.bootstrap(data, statistic, paired=paired, vectorized=True,
                                      confidence_level=level, n_resamples=n_boot,
                                      method=method, random_state=rng)
            except (ValueError, FloatingPointError):
                continue
        lo, hi = _f(res.confidence_interval.low), _f(res.confidence_interval.high)
        if lo is not None and hi is not None:
            return lo, hi
    return None, None


def _sd(x, axis=-1):
    return np.std(x, ddof=1, axis=axis)


def sd_ci(values: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT,
          seed: int = 0) -> dict:
    """The seed sd with a bootstrap interval over seeds and the chi-square interval
    ``sd · sqrt((n−1) / χ²_{n−1})`` (exact for normal samples)."""
    _check_level(level)
    x = _array(values, "values")
    n, sd = x.size, float(x.std(ddof=1))
    chi_lo, chi_hi = stats.chi2.ppf([0.5 + level / 2, 0.5 - level / 2], n - 1)
    lo, hi = (None, None) if sd == 0 else _bootstrap((x,), _sd, paired=False, level=level,
                                                       n_boot=n_boot, seed=seed)
    return {"sd": sd, "lo": lo, "hi": hi, "chi2_lo": sd * math.sqrt((n - 1) / chi_lo),
            "chi2_hi": sd * math.sqrt((n - 1) / chi_hi), "n": n, "level": level}


def _ratio(a, b, axis=-1):
    """sd(a) / sd(b); a resample without spread in either (one seed drawn n times) counts as
    ratio 1 (0/0) or inf (x/0), so that the bootstrap quantiles stay defined."""
    sa, sb = _sd(a, axis), _sd(b, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((sa == 0) & (sb == 0), 1.0, sa / sb)


def pitman_morgan(a: Sequence[float], b: Sequence[float]) -> float:
    """p-value of the Pitman–Morgan test of var(a) = var(b) for paired samples: the Pearson
    correlation of ``a + b`` and ``a − b`` (t with n − 2 degrees of freedom)."""
    x, y = _array(a, "a", 3), _array(b, "b", 3)
    s, d = x + y, x - y
    if np.all(s == s[0]) or np.all(d == d[0]):
        return 1.0
    return float(stats.pearsonr(s, d).pvalue)


def pitman_morgan_interval(a: Sequence[float], b: Sequence[float],
                           level: float = LEVEL) -> tuple[float, float] | tuple[None, None]:
    """The interval for sd(a) / sd(b) that inverts the Pitman–Morgan test (exact for paired
    normal samples): the variance ratio lies in ``F (K ∓ sqrt(K² − 1))`` with ``F`` the sample
    variance ratio, ``K = 1 + 2 (1 − r²) t² / (n − 2)``, ``r`` the sample correlation of a and
    b and ``t`` the two-sided t quantile with n − 2 degrees of freedom."""
    _check_level(level)
    x, y = _array(a, "a", 3), _array(b, "b", 3)
    va, vb = x.var(ddof=1), y.var(ddof=1)
    if va == 0 or vb == 0:
        return None, None
    n = x.size
    r2 = min(1.0, np.cov(x, y, ddof=1)[0, 1] ** 2 / (va * vb))  # rounding can pass 1
    t = stats.t.ppf(0.5 + level / 2, n - 2)
    k = 1 + 2 * (1 - r2) * t ** 2 / (n - 2)
    f = va / vb
    return math.sqrt(f * (k - math.sqrt(k * k - 1))), math.sqrt(f * (k + math.sqrt(k * k - 1)))


def spread_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
                 n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """sd(a) / sd(b) over paired seeds: the interval inverting the Pitman–Morgan test
    (``lo``, ``hi``; exact for paired normal seeds), a paired bootstrap interval (``boot_lo``,
    ``boot_hi``; wide with few seeds), the F interval (normal, independent samples), the
    Brown–Forsythe p-value and the Pitman–Morgan p-value."""
    _check_level(level)
    x, y = _array(a, "a", 3), _array(b, "b", 3)
    if x.size != y.size:
        raise ValueError(f"paired samples must have equal length, got {x.size} and {y.size}")
    sa, sb = float(x.std(ddof=1)), float(y.std(ddof=1))
    ratio = sa / sb if sb > 0 else None
    lo = hi = f_lo = f_hi = None
    if ratio is not None and sa > 0:
        lo, hi = _bootstrap((x, y), _ratio, paired=True, level=level, n_boot=n_boot, seed=seed)
        df = x.size - 1
        f_hi_q, f_lo_q = stats.f.ppf([0.5 + level / 2, 0.5 - level / 2], df, df)
        f_lo, f_hi = ratio / math.sqrt(f_hi_q), ratio / math.sqrt(f_lo_q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf = stats.levene(x, y, center="median").pvalue
    pm_lo, pm_hi = pitman_morgan_interval(x, y, level)
    return {"ratio": ratio, "lo": pm_lo, "hi": pm_hi, "boot_lo": lo, "boot_hi": hi,
            "f_lo": f_lo, "f_hi": f_hi, "p_brown_forsythe": _f(bf),
            "p_pitman_morgan": pitman_morgan(x, y), "level": level}


def item_se(scores: Sequence[float]) -> float:
    """The bootstrap standard error over test items of a run's mean score: the ideal
    (infinite-resample) bootstrap SE, ``sd_pop / sqrt(n)``; for 0/1 scores ``sqrt(p(1−p)/n)``."""
    x = _array(scores, "scores", 1)
    return float(x.std(ddof=0) / math.sqrt(x.size))


def split_half(items: np.ndarray) -> dict:
    """How much of the seed-to-seed variance of a score is the test set's.

    ``items`` is (seeds, test items): every seed scored on the same items. With the items cut
    into the even and odd halves A and B, the seed covariance of the half scores estimates the
    variance shared by all items (training: the models differ), and the rest of the variance of
    the full score is the seed × item interaction that a finite test set adds (the evaluation
    floor). Both are unbiased; with few seeds either can come out negative (reported as is).
    """
    x = np.asarray(items, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"items must be (seeds >= 2, items >= 2), got shape {x.shape}")
    full, a, b = x.mean(1), x[:, 0::2].mean(1), x[:, 1::2].mean(1)
    total = float(np.var(full, ddof=1))
    training = float(np.cov(a, b, ddof=1)[0, 1])
    floor = total - training
    return {"total_var": total, "training_var": training, "eval_var": floor,
            "training_sd": math.sqrt(training) if training > 0 else 0.0,
            "eval_sd": math.sqrt(floor) if floor > 0 else 0.0,
            "training_share": training / total if total > 0 else None}


# ------------------------------------------------------------------------- compute to target
def first_crossing(x: Sequence[float], y: Sequence[float], target: float) -> float:
    """The first ``x`` at which the curve ``y(x)`` reaches ``target`` from above, linearly
    interpolated between points; ``inf`` when it never does."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"x and y must be 1-d of equal length, got {xs.shape} and {ys.shape}")
    below = np.nonzero(ys <= target)[0]
    if below.size == 0:
        return math.inf
    k = int(below[0])
    if k == 0 or ys[k - 1] == ys[k]:
        return float(xs[k])
    frac = (ys[k - 1] - target) / (ys[k - 1] - ys[k])
    return float(xs[k - 1] + frac * (xs[k] - xs[k - 1]))


def seed_bootstrap(n: int, statistic, *, level: float = LEVEL, n_boot: int = 2000,
                   seed: int = 0) -> tuple[float | None, float | None]:
    """The percentile interval of ``statistic(idx)`` over ``n`` seeds resampled with
    replacement: ``idx`` indexes every paired array the statistic reads, so pairs stay together
    (``scipy.stats.bootstrap``); None where a bound is not finite."""
    _check_level(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(n),), statistic, vectorized=False,
                              confidence_level=level, n_resamples=n_boot, method="percentile",
                              random_state=np.random.default_rng(seed))
    return _f(res.confidence_interval.low), _f(res.confidence_interval.high)


def _multiplier(x_base, base, x_m, curves, idx) -> np.ndarray:
    idx = np.atleast_2d(idx)
    out = []
    for rows in idx:
        mean_base, mean_m = base[rows].mean(0), curves[rows].mean(0)
        target = mean_base[-1]
        f_m = first_crossing(x_m, mean_m, target)
        out.append(first_crossing(x_base, mean_base, target) / f_m)
    return np.asarray(out)


def compute_multiplier(x_base: Sequence[float], base: np.ndarray, x_m: Sequence[float],
                       curves: np.ndarray, level: float = LEVEL, n_boot: int = 2000,
                       seed: int = 0) -> dict:
    """The effective compute multiplier of a method against the baseline (docs/method.md §11).

    ``base`` and ``curves`` are (seeds, evaluations) validation losses, paired by row (seed),
    best-so-far (non-increasing) at cumulative forward passes ``x_base`` / ``x_m``. The target is
    the baseline's mean final value; the multiplier is the forward passes the baseline's mean
    curve needs to reach it over those the method's mean curve needs (> 1: the method gets
    there with less compute; 0: it never does within its budget, and ``upper_bound`` is what
    reaching it at the last evaluation would give). The interval resamples seeds, keeping the
    pairs (``scipy.stats.bootstrap``, percentile).
    """
    _check_level(level)
    base, curves = np.asarray(base, np.float64), np.asarray(curves, np.float64)
    if base.ndim != 2 or curves.ndim != 2 or base.shape[0] != curves.shape[0]:
        raise ValueError(f"base and curves must be (seeds, points) with the same seeds, got "
                         f"{base.shape} and {curves.shape}")
    n = base.shape[0]
    value = float(_multiplier(x_base, base, x_m, curves, np.arange(n))[0])
    target = float(base.mean(0)[-1])
    fwd_base = first_crossing(x_base, base.mean(0), target)
    lo = hi = None
    if n >= 3:
        lo, hi = seed_bootstrap(n, lambda i: _multiplier(x_base, base, x_m, curves, i)[0],
                                level=level, n_boot=n_boot, seed=seed)
    return {"multiplier": value, "lo": lo, "hi": hi, "target": target, "fwd_base": fwd_base,
            "fwd_method": _f(first_crossing(x_m, curves.mean(0), target)),
            "reached": value > 0,
            # Not reached: the multiplier is below what reaching it at the last point would give.
            "upper_bound": None if value > 0 else fwd_base / float(np.asarray(x_m)[-1]),
            "level": level}


# ----------------------------------------------------------------------------- ratio of means
def ratio_of_means(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """``mean(a) / mean(b)`` for paired samples with Fieller's interval: the set of ``θ`` the
    one-sample t-test of ``a − θ·b`` does not reject (exact for paired normal samples). When
    ``mean(b)`` is itself not significantly non-zero the set is unbounded: ``lo``/``hi`` are
    then None and ``bounded`` False (the ratio's denominator could be 0)."""
    _check_level(level)
    x, y = _array(a, "a"), _array(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired samples must have equal length, got {x.size} and {y.size}")
    n = x.size
    mx, my = float(x.mean()), float(y.mean())
    cov = np.cov(x, y, ddof=1) / n  # the covariance matrix of the two means
    t2 = float(stats.t.ppf(0.5 + level / 2, n - 1)) ** 2
    qa = my * my - t2 * cov[1, 1]
    qb = -2.0 * (mx * my - t2 * cov[0, 1])
    qc = mx * mx - t2 * cov[0, 0]
    ratio = mx / my if my != 0 else None
    disc = qb * qb - 4.0 * qa * qc
    if qa <= 0 or disc < 0:
        return {"ratio": ratio, "lo": None, "hi": None, "bounded": False, "n": n, "level": level}
    root = math.sqrt(disc)
    lo, hi = sorted(((-qb - root) / (2 * qa), (-qb + root) / (2 * qa)))
    return {"ratio": ratio, "lo": lo, "hi": hi, "bounded": True, "n": n, "level": level}


# ----------------------------------------------------------------------------------- power
def power_paired_t(effect: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test to detect a mean difference ``effect`` when the
    per-seed differences have sd ``sd_diff``, with ``n`` seeds (noncentral t, exact)."""
    if n < 2 or sd_diff <= 0:
        raise ValueError(f"need n >= 2 and sd_diff > 0, got n={n}, sd_diff={sd_diff}")
    df, nc = n - 1, abs(effect) / sd_diff * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else 1.0  # SciPy's nct gives NaN far in the tail


def detectable_difference(sd_diff: float, n: int, power: float = 0.8,
                          alpha: float = 0.05) -> float:
    """The smallest mean difference the paired t-test detects with ``power``."""
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    return float(optimize.brentq(lambda e: power_paired_t(e, sd_diff, n, alpha) - power,
                                 1e-12 * sd_diff, 100 * sd_diff))


def power_variance_ratio(sd_ratio: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided F test of equal variances (two normal samples of ``n`` each) when
    the true sd ratio is ``sd_ratio``."""
    if n < 2 or sd_ratio <= 0:
        raise ValueError(f"need n >= 2 and sd_ratio > 0, got n={n}, sd_ratio={sd_ratio}")
    df, r2 = n - 1, sd_ratio ** 2
    lo, hi = stats.f.ppf([alpha / 2, 1 - alpha / 2], df, df)
    return float(stats.f.sf(hi / r2, df, df) + stats.f.cdf(lo / r2, df, df))


def detectable_sd_ratio(n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest sd ratio (> 1) the F test detects with ``power`` at ``n`` seeds each."""
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    return float(optimize.brentq(lambda r: power_variance_ratio(r, n, alpha) - power,
                                 1.0 + 1e-9, 1e3))


def seeds_needed(target, *, power: float = 0.8, maximum: int = 1000) -> int | None:
    """The smallest n >= 2 with ``target(n) >= power`` (None when none up to ``maximum``)."""
    for n in range(2, maximum + 1):
        if target(n) >= power:
            return n
    return None
