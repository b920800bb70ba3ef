"""docs/method.md §9, §10: k-parity closed forms, the Cor. 4.7 / 4.8 optima and the window signal."""

from __future__ import annotations

import argparse
import io
import json
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
from scipy.integrate import quad

from maskdiff.labs import theory
from maskdiff.commands import theory as theory_command

PAPER_WEIGHTS = [0.7427, 0.2063, 0.0401, 0.0084, 0.0024]  # parity paper App. F.4 (WikiText)


def _poly(coefficients, y):
    return sum(a * y ** (len(coefficients) - 1 - j) for j, a in enumerate(coefficients))


# ---------------------------------------- P_S


@pytest.mark.parametrize("k", range(1, 11))
def test_signal_probability_full_range_is_one_over_k_plus_2(k):
    # (k+1) B(2, k+1) = (k+1) / ((k+1)(k+2))
    assert theory.signal_probability(k) == pytest.approx(1.0 / (k + 2), abs=1e-13)


def test_signal_probability_k1_is_one_third():
    assert theory.signal_probability(1, 0.0, 1.0) == pytest.approx(1.0 / 3.0, abs=1e-15)


@pytest.mark.parametrize(
    "k,t0,t1",
    [
        (1, 0.2, 0.7),
        (3, 0.0, 0.3),
        (6, 0.1, 0.25),
        (6, 0.4, 0.4005),
        (12, 0.05, 0.95),
        (4, 0.3, 0.3 + 1e-7),
    ],
)
def test_signal_probability_matches_quadrature(k, t0, t1):
    integral, _ = quad(lambda t: t * (1 - t) ** k, t0, t1, epsabs=1e-15, epsrel=1e-13)
    assert theory.signal_probability(k, t0, t1) == pytest.approx(
        (k + 1) * integral / (t1 - t0), rel=1e-9
    )


@pytest.mark.parametrize("k,rate", [(1, 0.5), (3, 0.25), (6, 0.1)])
def test_signal_probability_fixed_rate_and_continuity(k, rate):
    fixed = theory.signal_probability(k, rate, rate)
    assert fixed == pytest.approx((k + 1) * rate * (1 - rate) ** k, abs=1e-15)
    assert theory.signal_probability(k, rate, rate + 1e-10) == pytest.approx(fixed, abs=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3, 6, 10])
def test_signal_optimal_rate_maximises_ps(k):
    rate = theory.signal_optimal_rate(k)
    assert rate == pytest.approx(1.0 / (k + 1), abs=0)
    best = theory.signal_probability(k, rate, rate)
    assert best == pytest.approx((k / (k + 1)) ** k, rel=1e-13)
    grid = np.linspace(0.0, 1.0, 41)
    for t0 in grid:
        for t1 in grid[grid >= t0]:
            assert theory.signal_probability(k, float(t0), float(t1)) <= best + 1e-15
    # ...and every other fixed rate does worse (Cor. 4.8 / App. E).
    for other in (rate - 0.01, rate + 0.01):
        assert theory.signal_probability(k, other, other) < best


# ---------------------------------------- optimal U[0, t1] for P_S


def test_ps_optimal_t1_closed_forms():
    assert theory.ps_optimal_t1(1) == pytest.approx(0.75, abs=1e-14)  # max of t1 - 2 t1^2 / 3
    assert theory.ps_optimal_t1(2) == pytest.approx(1 - (1 + math.sqrt(10)) / 9, abs=1e-14)
    assert theory.ps_optimal_t1(6) == pytest.approx(0.246, abs=5e-4)  # parity paper §4.5


@pytest.mark.parametrize("k", range(1, 13))
def test_ps_optimal_t1_satisfies_first_order_condition(k):
    t1 = theory.ps_optimal_t1(k)
    assert 0.0 < t1 < 1.0
    # d/dt1 of the window mean is zero <=> the integrand at t1 equals the window mean.
    assert theory.signal_probability(k, 0.0, t1) == pytest.approx(
        (k + 1) * t1 * (1 - t1) ** k, abs=1e-10
    )
    coefficients = theory.ps_optimal_t1_polynomial(k)
    assert sum(coefficients) == 0  # y = 1 (t1 = 0) is the trivial root
    assert abs(_poly(coefficients, 1.0 - t1)) < 1e-10
    # and it is the maximum over windows U[0, t1'], not a minimum
    others = np.linspace(0.01, 1.0, 200)
    best = theory.signal_probability(k, 0.0, t1)
    assert all(theory.signal_probability(k, 0.0, float(u)) <= best + 1e-14 for u in others)


# ---------------------------------------- Cor. 4.7 and Thm. 4.2


def test_sample_complexity_t1_closed_forms():
    assert theory.sample_complexity_t1(1) == pytest.approx(2.0 / 3.0, abs=1e-14)  # (3y-1)(y-1)
    assert theory.sample_complexity_t1(2) == pytest.approx(
        1 - (1 + math.sqrt(21)) / 10, abs=1e-14
    )  # (5y^2-y-1)(y-1)


@pytest.mark.parametrize("k", range(1, 16))
def test_sample_complexity_t1_is_the_nontrivial_root(k):
    coefficients = theory.sample_complexity_polynomial(k)
    assert (
        coefficients[0] == 2 * k + 1 and coefficients[1] == -(2 * k + 2) and coefficients[-1] == 1
    )
    assert _poly(coefficients, 1.0) == 0  # the trivial root
    t1 = theory.sample_complexity_t1(k)
    assert 0.0 < t1 < 1.0
    assert abs(_poly(coefficients, 1.0 - t1)) < 1e-10


@pytest.mark.parametrize("k", [2, 3, 6])
def test_sample_complexity_t1_maximises_objective_with_t0_zero(k):
    best_t1 = theory.sample_complexity_t1(k)
    best = theory.sample_complexity_objective(k, 0.0, best_t1)
    grid = np.linspace(0.0, 1.0, 51)
    for t0 in grid:
        for t1 in grid[grid >= t0]:
            assert theory.sample_complexity_objective(k, float(t0), float(t1)) <= best * (1 + 1e-12)


def test_sample_complexity_k1_depends_only_on_the_mean():
    # Cor. 4.7(i): for k = 1 every window with t0 + t1 = 2/3 is optimal.
    values = [
        theory.sample_complexity_objective(1, t0, 2 / 3 - t0) for t0 in (0.0, 0.1, 0.2, 1 / 3)
    ]
    assert max(values) - min(values) < 1e-15
    assert theory.sample_complexity_objective(1, 0.0, 0.5) < values[0]


def test_sample_complexity_bound_formula():
    # k = 2, U[0,1]: E[t] = 1/2, E[(1-t)^2] = 1/3, so N >= 4 ln(4*20/0.1) * 18.
    assert theory.sample_complexity_bound(2, 20, 0.1) == pytest.approx(
        72 * math.log(800), rel=1e-13
    )
    # fixed rate 1/4, k = 3: E[t] = 1/4, rho = (3/4)^3
    expected = 4 * math.log(4 * 10 / 0.05) / (0.25 * (0.75**3) ** 2)
    assert theory.sample_complexity_bound(3, 10, 0.05, 0.25, 0.25) == pytest.approx(
        expected, rel=1e-13
    )
    assert theory.sample_complexity_bound(3, 10, 0.05, 0.0, 0.0) == math.inf
    assert theory.sample_complexity_bound(3, 10, 0.05, 1.0, 1.0) == math.inf
    # the Cor. 4.7 window needs fewer samples than U[0, 1]
    k = 6
    assert theory.sample_complexity_bound(
        k, 20, 0.05, 0.0, theory.sample_complexity_t1(k)
    ) < theory.sample_complexity_bound(k, 20, 0.05)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: theory.signal_probability(0), "k must be an integer >= 1, got 0"),
        (lambda: theory.signal_probability(1.5), "k must be an integer"),
        (lambda: theory.signal_probability(True), "k must be an integer"),
        (lambda: theory.signal_probability(2, 0.6, 0.4), "t0 must be <= t1"),
        (lambda: theory.signal_probability(2, -0.1, 0.4), "t0 must be in"),
        (lambda: theory.signal_probability(2, 0.0, 1.5), "t1 must be in"),
        (lambda: theory.signal_probability(2, 0.0, float("nan")), "t1 must be in"),
        (lambda: theory.ps_optimal_t1(-1), "k must be"),
        (lambda: theory.sample_complexity_t1(0), "k must be"),
        (lambda: theory.sample_complexity_bound(3, 2, 0.1), "n must be an integer >= k"),
        (lambda: theory.sample_complexity_bound(3, 10, 0.0), "delta must be in"),
        (lambda: theory.sample_complexity_bound(3, 10, 1.0), "delta must be in"),
    ],
)
def test_theory_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------- window signal (F.4)


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("power", [1, 2])
def test_window_t_star_single_order_is_one_over_i(order, power):
    assert theory.window_t_star({order: 2.5}, power=power) == 1.0 / order
    weights = [0.0] * 5
    weights[order - 2] = 1.0
    assert theory.window_t_star(weights, power=power) == 1.0 / order


def test_window_t_star_reproduces_paper_values():
    # App. F.4: t* ≈ 0.46 (linear), ≈ 0.48 (quadratic) for the WikiText weights.
    assert theory.window_t_star(PAPER_WEIGHTS) == pytest.approx(0.46, abs=0.005)
    assert theory.window_t_star(PAPER_WEIGHTS, power=2) == pytest.approx(0.48, abs=0.005)


@pytest.mark.parametrize(
    "weights", [PAPER_WEIGHTS, [0.5, 0.0, 0.0, 0.0, 0.5], [0.1, 0.2, 0.3, 0.2, 0.2]]
)
def test_window_t_star_is_the_argmax(weights):
    t_star = theory.window_t_star(weights)
    grid = np.linspace(0.0, 1.0, 200_001)
    signal = theory.window_signal(weights, grid)
    assert t_star == pytest.approx(grid[np.argmax(signal)], abs=1e-5)
    assert theory.window_signal(weights, t_star) >= signal.max() - 1e-15
    # the analytic derivative vanishes there
    eps = 1e-6
    slope = (
        theory.window_signal(weights, t_star + eps) - theory.window_signal(weights, t_star - eps)
    ) / (2 * eps)
    assert abs(slope) < 1e-8
    # scale invariance of the weights
    assert theory.window_t_star([3 * w for w in weights]) == pytest.approx(t_star, abs=1e-12)


def test_window_signal_values():
    t = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(theory.window_signal({3: 4.0}, t), t * (1 - t) ** 2, atol=1e-15)
    mixed = theory.window_signal([1.0, 1.0], 0.5)  # orders 2 and 3, normalised to 1/2 each
    assert mixed == pytest.approx(0.5 * 0.25 + 0.5 * 0.125, abs=1e-15)
    assert theory.window_signal({2: 1.0}, 0.5, power=2) == pytest.approx(0.0625, abs=1e-15)
    t_grid, curve = theory.window_signal_curve(PAPER_WEIGHTS, num=11)
    assert t_grid.shape == curve.shape == (11,)
    assert curve[0] == 0.0 and curve[-1] == 0.0


@pytest.mark.parametrize(
    "weights,match",
    [
        ([], "must not be empty"),
        ([0.0, 0.0], "sum to > 0"),
        ([1.0, -0.5], "non-negative"),
        ([1.0, float("nan")], "finite"),
        ({1: 1.0}, "orders must be integers >= 2"),
        ("0.5,0.5", "mapping order -> weight or a sequence"),
    ],
)
def test_window_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        theory.window_t_star(weights)


def test_window_rejects_bad_t_and_power():
    with pytest.raises(ValueError, match="t must lie in"):
        theory.window_signal([1.0], 1.5)
    with pytest.raises(ValueError, match="power must be an integer >= 1, got 0"):
        theory.window_t_star([1.0, 1.0], power=0)


# ---------------------------------------- CLI


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    theory_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def test_cli_parity_json():
    code, out = _run(["theory", "parity", "--k", "6", "--t0", "0", "--t1", "0.3", "--json"])
    assert code == 0
    report = json.loads(out)
    for key in (
        "signal_probability",
        "signal_optimal_rate",
        "ps_optimal_t1",
        "sample_complexity_t1",
    ):
        assert key in report
    assert report["signal_probability"] == pytest.approx(
        theory.signal_probability(6, 0.0, 0.3), abs=1e-15
    )
    assert report["signal_optimal_rate"] == pytest.approx(1 / 7, abs=1e-15)
    assert report["ps_optimal_t1"] == pytest.approx(0.246, abs=5e-4)
    assert report["sample_complexity_t1"] == pytest.approx(
        theory.sample_complexity_t1(6), abs=1e-15
    )
    assert report["sample_complexity_bound"] == pytest.approx(
        theory.sample_complexity_bound(6, 20, 0.05, 0.0, 0.3)
    )


def test_cli_parity_table():
    code, out = _run(["theory", "parity", "--k", "1"])
    assert code == 0
    assert (
        "signal_probability" in out
        and "0.3333333333" in out
        and "ps_optimal_t1" in out
        and "0.75" in out
    )


def test_cli_window_json_and_table():
    code, out = _run(["theory", "window", "--weights", ",".join(map(str, PAPER_WEIGHTS)), "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["t_star"] == pytest.approx(0.46, abs=0.005)
    assert len(report["t"]) == len(report["signal"]) == 101
    assert report["signal"][0] == 0.0 and max(report["signal"]) > 0
    assert set(report["weights"]) == {"2", "3", "4", "5", "6"}
    code, out = _run(["theory", "window", "--weights", "0,1,0,0,0"])
    assert code == 0 and "t_star   0.333333" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["theory", "parity", "--k", "0"], "--k must be an integer >= 1, got 0"),
        (
            ["theory", "parity", "--k", "3", "--t0", "0.5", "--t1", "0.5"],
            "--t0 and --t1 must satisfy",
        ),
        (["theory", "parity", "--k", "3", "--t0", "0.6", "--t1", "0.2"], "got --t0 0.6 --t1 0.2"),
        (["theory", "window", "--weights", "1,2,3"], "--weights must be 5 .* got '1,2,3'"),
        (["theory", "window", "--weights", "1,2,x,4,5"], "--weights must be 5"),
        (["theory", "window", "--weights", "1,-2,3,4,5"], "--weights must be 5"),
        (["theory", "window", "--weights", "0,0,0,0,0"], "--weights must be 5"),
    ],
)
def test_cli_rejects_bad_input(argv, match):
    with pytest.raises(ValueError, match=match):
        _run(argv)
