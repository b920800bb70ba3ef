"""k-parity closed forms and the signal-rich window (docs/method.md §9, §10).

Parity paper (arXiv 2601.22450) references:

- Thm. 4.3: the signal share ``P_S = (k+1) E_{t~U[t0,t1]}[t (1-t)^k]`` -- the probability that
  exactly one of the ``k+1`` positions of the extended secret set is masked.
- Cor. 4.8 / App. E: ``P_S`` over all ``U[t0, t1]`` is maximised by the fixed rate
  ``t0 = t1 = 1/(k+1)``.
- §4.5: with ``t0 = 0`` fixed, the window ``U[0, t1]`` maximising ``P_S`` (0.246 for ``k = 6``).
- Thm. 4.2 / App. B.1: ``N >= 4 ln(4n/delta) / (E[t] * E[(1-t)^k]^2)``.
- Cor. 4.7 / App. B.2: for ``k > 1`` the bound is smallest for ``U[0, t1]`` with ``y = 1 - t1`` the
  root in (0,1) of ``(2k+1) y^{k+1} - (2k+2) y^k + 1``.
- App. F.4: ``Signal(t) ∝ Σ_i w_i t (1-t)^{i-1}`` over n-gram orders ``i`` (an order-``i``
  dependency is a parity over ``k = i-1`` context tokens plus the target), ``t* = argmax``.

Everything here is deterministic float64 arithmetic on Python floats / numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
from scipy.optimize import brentq

from maskdiff.core.checks import int_at_least
from maskdiff.memory import require

__all__ = [
    "signal_probability",
    "signal_optimal_rate",
    "ps_optimal_t1",
    "sample_complexity_t1",
    "sample_complexity_objective",
    "sample_complexity_bound",
    "window_signal",
    "window_signal_curve",
    "window_t_star",
]

WindowWeights = Union[Mapping[int, float], Sequence[float]]

# Below this width the closed-form difference of antiderivatives loses digits to cancellation;
# Gauss-Legendre with enough nodes is exact for these polynomials and stable at any width.
_NARROW_WINDOW = 1e-3


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_window(t0: float, t1: float) -> tuple[float, float]:
    for name, value in (("t0", t0), ("t1", t1)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    t0, t1 = float(t0), float(t1)
    if t0 > t1:
        raise ValueError(f"t0 must be <= t1, got t0={t0!r}, t1={t1!r}")
    return t0, t1


# --------------------------------------------------------------------------------------------
# expectations under t ~ U[t0, t1]
# --------------------------------------------------------------------------------------------


def _gauss_legendre_mean(f, t0: float, t1: float, degree: int) -> float:
    """Exact mean of a polynomial ``f`` of the given degree over ``[t0, t1]`` (t0 < t1)."""
    n = degree // 2 + 1
    # leggauss builds and diagonalises an n × n companion matrix (two float64 copies).
    require(16.0 * n * n, f"Gauss-Legendre integration of degree {degree} ({n} nodes)")
    nodes, weights = np.polynomial.legendre.leggauss(n)
    t = 0.5 * (t1 - t0) * nodes + 0.5 * (t1 + t0)
    return float(0.5 * np.sum(weights * f(t)))


def _uniform_mean(f, antiderivative, t0: float, t1: float, degree: int) -> float:
    if t1 == t0:  # a fixed rate: U[t0, t0] is the point mass at t0
        return float(f(t0))
    if t1 - t0 < _NARROW_WINDOW:
        return _gauss_legendre_mean(f, t0, t1, degree)
    return float((antiderivative(t1) - antiderivative(t0)) / (t1 - t0))


def _mean_t_one_minus_t_pow(k: int, t0: float, t1: float) -> float:
    """E_{t~U[t0,t1]}[t (1-t)^k]; antiderivative (1-t)^{k+2}/(k+2) - (1-t)^{k+1}/(k+1)."""
    return _uniform_mean(
        lambda t: t * (1.0 - t) ** k,
        lambda t: (1.0 - t) ** (k + 2) / (k + 2) - (1.0 - t) ** (k + 1) / (k + 1),
        t0,
        t1,
        k + 1,
    )


def _mean_one_minus_t_pow(k: int, t0: float, t1: float) -> float:
    """rho_k = E_{t~U[t0,t1]}[(1-t)^k]; antiderivative -(1-t)^{k+1}/(k+1)."""
    return _uniform_mean(
        lambda t: (1.0 - t) ** k,
        lambda t: -((1.0 - t) ** (k + 1)) / (k + 1),
        t0,
        t1,
        k,
    )


# --------------------------------------------------------------------------------------------
# P_S and its optima (Thm. 4.3, Cor. 4.8, §4.5)
# --------------------------------------------------------------------------------------------


def signal_probability(k: int, t0: float = 0.0, t1: float = 1.0) -> float:
    """``P_S = (k+1) E_{t~U[t0,t1]}[t(1-t)^k]`` (docs/method.md §9; parity paper Thm. 4.3), exactly.

    ``t0 == t1`` is the fixed rate ``t0``. Over ``U[0,1]``: ``(k+1) B(2, k+1) = 1/(k+2)``.
    """
    k = int_at_least(k, "k")
    t0, t1 = _check_window(t0, t1)
    return (k + 1) * _mean_t_one_minus_t_pow(k, t0, t1)


def signal_optimal_rate(k: int) -> float:
    """The signal-optimal masking rate ``1/(k+1)`` (docs/method.md §9; parity paper Cor. 4.8, App. E).

    Cor. 4.8 states the optimum over all ``U[t0, t1]`` as the degenerate window
    ``t0 = t1 = 1/(k+1)``: a fixed rate, where ``P_S = (k/(k+1))^k`` (→ 1/e as k → ∞).
    """
    k = int_at_least(k, "k")
    return 1.0 / (k + 1)


def _deflate_at_one(coefficients: list[int], times: int) -> list[int]:
    """Divide an integer polynomial (highest degree first) by ``(y - 1)^times``, exactly."""
    for _ in range(times):
        quotient = [coefficients[0]]
        for a in coefficients[1:-1]:
            quotient.append(a + quotient[-1])
        if coefficients[-1] + quotient[-1] != 0:
            raise AssertionError("y = 1 is not a root")  # guards the derivation, never input
        coefficients = quotient
    return coefficients


def _horner(coefficients: list[int], y: float) -> float:
    value = 0.0
    for a in coefficients:
        value = value * y + a
    return value


def _root_in_unit_interval(coefficients: list[int]) -> float:
    """The unique root in (0, 1) of a polynomial negative at 0 and positive at 1."""
    return float(
        brentq(
            lambda y: _horner(coefficients, y), 0.0, 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps
        )
    )


def ps_optimal_t1_polynomial(k: int) -> list[int]:
    """Coefficients (highest degree first) of the first-order condition of ``max_t1 P_S(U[0,t1])``.

    With ``y = 1 - t1`` the condition ``d/dt1 [(1/t1) ∫_0^{t1} t(1-t)^k dt] = 0``, i.e.
    ``t1 (1-t1)^k = (1/t1) ∫_0^{t1} t(1-t)^k dt`` (the integrand at the edge equals its mean), is

        p(y) = (k+1)^2 y^{k+2} - (k+2)(2k+1) y^{k+1} + (k+1)(k+2) y^k - 1 = 0.
    """
    k = int_at_least(k, "k")
    coefficients = [0] * (k + 3)
    coefficients[0] = (k + 1) ** 2
    coefficients[1] = -(k + 2) * (2 * k + 1)
    coefficients[2] = (k + 1) * (k + 2)
    coefficients[-1] -= 1
    return coefficients


def ps_optimal_t1(k: int) -> float:
    """The ``t1`` maximising ``P_S`` over windows ``U[0, t1]`` (docs/method.md §9; parity paper §4.5).

    ``p(y)`` of :func:`ps_optimal_t1_polynomial` has a double root at ``y = 1`` (``t1 = 0``) and,
    by Descartes' rule (three sign changes), exactly one more positive root; the deflated
    polynomial ``q = p / (y-1)^2`` has ``q(0) = -1`` and ``q(1) = (k+1)(k+2)/2``, so that root lies
    in (0, 1) and is found by bracketing to ~1e-15. Closed forms: ``k=1``: 3/4;
    ``k=2``: ``1 - (1+√10)/9``. The paper quotes 0.246 for ``k = 6``.
    """
    k = int_at_least(k, "k")
    deflated = _deflate_at_one(ps_optimal_t1_polynomial(k), times=2)
    return 1.0 - _root_in_unit_interval(deflated)


# --------------------------------------------------------------------------------------------
# sample complexity (Thm. 4.2, Cor. 4.7)
# --------------------------------------------------------------------------------------------


def sample_complexity_polynomial(k: int) -> list[int]:
    """``(2k+1) y^{k+1} - (2k+2) y^k + 1`` of Cor. 4.7 (highest degree first), ``y = 1 - t1``."""
    k = int_at_least(k, "k")
    coefficients = [0] * (k + 2)
    coefficients[0] = 2 * k + 1
    coefficients[1] = -(2 * k + 2)
    coefficients[-1] += 1
    return coefficients


def sample_complexity_t1(k: int) -> float:
    """The sample-complexity-optimal ``t1`` of ``U[0, t1]`` (docs/method.md §9; parity paper Cor. 4.7).

    ``y = 1 - t1`` is the root in (0,1) of ``(2k+1) y^{k+1} - (2k+2) y^k + 1``. ``y = 1`` is a
    simple root; dividing it out leaves ``s(y) = (2k+1) y^k - Σ_{j<k} y^j`` with ``s(0) = -1``,
    ``s(1) = k+1``, and Descartes' rule (two sign changes) makes the root in (0,1) unique.

    For ``k = 1`` this gives ``t1 = 2/3`` (``y = 1/3``), one of the optima of Cor. 4.7(i): every
    ``U[t0, t1]`` with ``t0 + t1 = 2/3`` is optimal there. For ``k > 1`` the paper proves the
    optimal window is anchored at ``t0 = 0``.
    """
    k = int_at_least(k, "k")
    deflated = _deflate_at_one(sample_complexity_polynomial(k), times=1)
    return 1.0 - _root_in_unit_interval(deflated)


def sample_complexity_objective(k: int, t0: float = 0.0, t1: float = 1.0) -> float:
    """``J = E[t] · E[(1-t)^k]^2`` for ``t ~ U[t0, t1]`` (parity paper App. B.2, eq. 4).

    The Thm. 4.2 bound is ``4 ln(4n/δ) / J``: larger ``J`` means fewer samples needed.
    """
    k = int_at_least(k, "k")
    t0, t1 = _check_window(t0, t1)
    return 0.5 * (t0 + t1) * _mean_one_minus_t_pow(k, t0, t1) ** 2


def sample_complexity_bound(
    k: int, n: int, delta: float, t0: float = 0.0, t1: float = 1.0
) -> float:
    """Thm. 4.2 (docs/method.md §9): ``N >= 4 ln(4n/δ) / (E[t] · E[(1-t)^k]^2)`` for ``t ~ U[t0, t1]``.

    The paper fixes every constant (the 4 from Hoeffding with tolerance Δ/2 plus Chernoff at
    half the mean, ``4n`` from the two union bounds, the natural log); only the task size ``n``
    (input bits, ``n >= k``) and the failure probability ``δ ∈ (0, 1)`` are free, so they are the
    parameters. Returns ``math.inf`` when ``E[t] = 0`` or ``E[(1-t)^k] = 0`` (never identifiable).
    This is the paper's sufficient condition for identification from the marginal loss gap.
    """
    k = int_at_least(k, "k")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < k:
        raise ValueError(f"n must be an integer >= k = {k}, got {n!r}")
    if not (isinstance(delta, (int, float, np.floating)) and 0.0 < float(delta) < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    objective = sample_complexity_objective(k, t0, t1)
    if objective == 0.0:
        return math.inf
    return 4.0 * math.log(4.0 * n / float(delta)) / objective


# --------------------------------------------------------------------------------------------
# the signal-rich window (App. F.4)
# --------------------------------------------------------------------------------------------


def _orders_and_weights(weights: WindowWeights) -> tuple[np.ndarray, np.ndarray]:
    """Orders and weights normalised to sum 1; a sequence is read as orders 2, 3, ..."""
    if isinstance(weights, Mapping):
        orders, values = list(weights.keys()), list(weights.values())
        for order in orders:
            if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 2:
                raise ValueError(f"weights: n-gram orders must be integers >= 2, got {order!r}")
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
        raise ValueError(
            f"weights must be a mapping order -> weight or a sequence, got {weights!r}"
        )
    else:
        values = list(weights)
        orders = list(range(2, 2 + len(values)))
    if not values:
        raise ValueError("weights must not be empty")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be numbers, got {weights!r}") from None
    if not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and sum to > 0, got {weights!r}")
    return np.asarray(orders, dtype=np.int64), array / array.sum()


def window_signal(weights: WindowWeights, t, *, power: int = 1):
    """``Signal(t) = Σ_i w_i (t (1-t)^{i-1})^power`` with weights normalised to sum 1 (docs/method.md §10).

    ``power = 1`` is App. F.4's linear model (the signal ∝ ``P_S`` of an order-``i`` parity up to
    the per-order constant ``i``, which F.4 leaves out; its quoted ``t* ≈ 0.46`` for the WikiText
    weights is reproduced only without it). ``power = 2`` is F.4's quadratic variant
    (energy ∝ ``P_S^2``, Thm. 4.5; quoted ``t* ≈ 0.48``). ``t`` is a float or an array in
    [0, 1]; the result has its shape.
    """
    orders, values = _orders_and_weights(weights)
    power = int_at_least(power, "power")
    t_array = np.asarray(t, dtype=np.float64)
    if not np.all((t_array >= 0.0) & (t_array <= 1.0)):
        raise ValueError(f"t must lie in [0, 1], got {t!r}")
    terms = (t_array[..., None] * (1.0 - t_array[..., None]) ** (orders - 1)) ** power
    signal = terms @ values
    return float(signal) if signal.ndim == 0 else signal


def _window_signal_derivative(
    orders: np.ndarray, values: np.ndarray, power: int, t: float
) -> float:
    # d/dt (t(1-t)^{i-1})^p = p (t(1-t)^{i-1})^{p-1} (1-t)^{i-2} (1 - i t)
    base = t * (1.0 - t) ** (orders - 1)
    terms = power * base ** (power - 1) * (1.0 - t) ** (orders - 2) * (1.0 - orders * t)
    return float(terms @ values)


def window_t_star(weights: WindowWeights, *, power: int = 1) -> float:
    """``t* = argmax_{t∈[0,1]} Signal(t)`` (docs/method.md §10; parity paper App. F.4).

    One order ``i`` with positive weight: ``1/i`` exactly (``t(1-t)^{i-1}`` peaks there). Several:
    the best point of a 4001-point grid, refined by bracketing the root of the analytic
    derivative between its neighbours (to ~1e-12). ``Signal`` vanishes at 0 and 1 and is positive
    inside, so the maximum is interior.
    """
    orders, values = _orders_and_weights(weights)
    power = int_at_least(power, "power")
    active = values > 0
    if active.sum() == 1:
        return 1.0 / float(orders[active][0])
    grid = np.linspace(0.0, 1.0, 4001)
    best = int(
        np.argmax(window_signal(dict(zip(orders.tolist(), values.tolist())), grid, power=power))
    )
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]

    def derivative(t: float) -> float:
        return _window_signal_derivative(orders, values, power, t)

    if derivative(low) > 0 > derivative(high):
        return float(brentq(derivative, low, high, xtol=1e-14, rtol=4 * np.finfo(float).eps))
    return float(grid[best])  # a flat top at grid resolution: the grid point is the answer


def window_signal_curve(
    weights: WindowWeights, *, num: int = 101, power: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(t, Signal(t))`` on ``num`` evenly spaced points of [0, 1] (for tables and plots)."""
    t = np.linspace(0.0, 1.0, int_at_least(num, "num", minimum=2))
    return t, np.asarray(window_signal(weights, t, power=power), dtype=np.float64)
