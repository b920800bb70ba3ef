"""P-POTS fits: the EPR model, the degree-7 polynomial comparison, density tables (docs/method.md §4).

The optimal rate density is ``p*(t) ∝ sqrt(E[l² | t])`` (variance paper §3.1.1, A.5.2). A table
``p̂_j`` on a grid ``t_j`` is turned into a sampling density in two steps:

1. fit a smooth shape by minimising ``KL(p̂ ‖ p̃)`` over the grid, where ``p̃_j = f(t_j) / Σ_j f(t_j)``
   (KL sees only the shape, so both ``p̂`` and ``p̃`` are normalised to sum 1 over the grid);
2. tabulate ``f`` on a fine grid of ``[eps, 1]`` and normalise it there by trapezoidal quadrature
   (:class:`DensityTable`), which is what the ``Importance`` sampler inverts.

EPR (eq. 5): ``p_EPR(t) = sqrt(a·t^r + b·(1-t)^q + A²·exp(2κ·t^m))``, ``a, b, A, κ > 0``,
``r, q ≥ 0``, ``m > 1``. Everything is computed in log space (a log-sum-exp of the three terms),
so ``exp(2κ t^m)`` never overflows whatever the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import warnings

import numpy as np
from scipy.optimize import minimize

EPR_KEYS: tuple[str, ...] = ("a", "b", "A", "kappa", "r", "q", "m")
MIN_TABLE_POINTS = 8  # more points than the 7 EPR parameters, so the fit is not interpolation
MIN_GRID_POINTS = 4096  # docs/method.md §3 "Importance": the density is tabulated on >= 4096 points
POLY_DEGREE = 7

# Safety box on the *reparametrised* θ = (log a, log b, log κ, u_r, u_q, u_m). The constraints
# themselves come from the reparametrisation; the box (θ clipped, gradient zeroed outside) only
# keeps line searches away from float overflow (exp(log κ) for log κ > 709) and from directions
# where the shape no longer changes. u_m >= -20 keeps m = 1 + softplus(u_m) > 1 in float64.
_SAFETY_BOX = (np.array([-50.0, -50.0, -25.0, -40.0, -40.0, -20.0]),
               np.array([50.0, 50.0, 8.0, 60.0, 60.0, 60.0]))


def logsumexp(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Plain-numpy log-sum-exp (scipy's is ~20x slower on small arrays; the fit calls it a lot)."""
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True)) + peak
    return out.item() if axis is None else np.squeeze(out, axis=axis)


def _sigmoid(u: float) -> float:
    return float(0.5 * (1.0 + np.tanh(0.5 * u)))


# ----------------------------------------------------------------------------- validation
def check_table(t: np.ndarray, p_hat: np.ndarray, *, name: str = "p_hat") -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(t, p̂)`` table and return it as float64 with ``p̂`` normalised to sum 1.

    Refused with ValueError: not 1-D, mismatched lengths, fewer than 8 points, non-finite
    values, ``t`` outside ``(0, 1]`` or not strictly increasing, negative ``p̂``, all-zero ``p̂``.
    """
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p_hat, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"t and {name} must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"t and {name} must have the same length, got {t.size} and {p.size}")
    if t.size < MIN_TABLE_POINTS:
        raise ValueError(f"{name} needs at least {MIN_TABLE_POINTS} points, got {t.size}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"t must be finite, got {t[~np.isfinite(t)][:3].tolist()}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite, got {p[~np.isfinite(p)][:3].tolist()}")
    if t[0] <= 0.0 or t[-1] > 1.0:
        raise ValueError(f"t must lie in (0, 1], got range [{t[0]}, {t[-1]}]")
    if np.any(np.diff(t) <= 0.0):
        raise ValueError("t must be strictly increasing")
    if np.any(p < 0.0):
        raise ValueError(f"{name} must be non-negative, got min {p.min()}")
    if p.sum() <= 0.0:
        raise ValueError(f"{name} must have a positive sum, got {p.sum()}")
    return t, p / p.sum()


def _kl(p_hat: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p̂ ‖ q) for normalised p̂ and log q; 0·log 0 = 0."""
    pos = p_hat > 0
    return float(np.sum(p_hat[pos] * (np.log(p_hat[pos]) - log_q[pos])))


# ----------------------------------------------------------------------------- EPR model
def epr_log_p(t: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """``log p_EPR(t)`` (unnormalised), stable for any admissible parameters (docs/method.md §4, eq. 5)."""
    t = np.asarray(t, dtype=np.float64)
    a, b, A, kappa, r, q, m = (float(params[k]) for k in EPR_KEYS)
    if min(a, b, A, kappa) <= 0 or min(r, q) < 0 or m <= 1:
        raise ValueError(f"EPR parameters out of range (a,b,A,kappa>0, r,q>=0, m>1): {params}")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = np.log(t)
        log_1mt = np.log1p(-t)
        # 0**0 = 1: with q = 0 the (1-t)^q term is b even at t = 1 (avoid 0·(-inf) = nan)
        term_r = np.log(a) + (r * log_t if r > 0 else np.zeros_like(t))
        term_q = np.log(b) + (q * log_1mt if q > 0 else np.zeros_like(t))
        term_g = 2.0 * np.log(A) + 2.0 * kappa * np.exp(m * log_t)
    stacked = np.stack(np.broadcast_arrays(term_r, term_q, term_g))
    return 0.5 * logsumexp(stacked, axis=0)


def epr_p(t: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """``p_EPR(t)`` (unnormalised). May overflow to inf for extreme parameters; prefer log."""
    return np.exp(epr_log_p(t, params))


def _softplus(u: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, u)


def _inv_softplus(y: float) -> float:
    # log(exp(y) - 1), stable for large and small y
    return float(y + np.log(-np.expm1(-y))) if y > 0 else -40.0


def _unpack(theta: np.ndarray) -> tuple[float, ...]:
    """Reparametrised θ = (log a, log b, log κ, u_r, u_q, u_m) with A fixed to 1 (see fit_epr)."""
    log_a, log_b, log_kappa, u_r, u_q, u_m = theta
    return log_a, log_b, np.exp(log_kappa), _softplus(u_r), _softplus(u_q), 1.0 + _softplus(u_m)


def _epr_objective(theta: np.ndarray, log_t: np.ndarray, log_1mt: np.ndarray,
                   p_hat: np.ndarray) -> tuple[float, np.ndarray]:
    """KL(p̂ ‖ p̃) and its analytic gradient in the reparametrised space.

    With ``s_j = log p_EPR(t_j) = ½ log S_j`` and ``S_j`` a sum of three exponentials
    ``exp(c_kj)``: ``dKL/ds_j = p̃_j − p̂_j`` and ``dS_j``-shares ``π_kj = exp(c_kj)/S_j``.
    """
    log_a, log_b, kappa, r, q, m = _unpack(theta)
    t_m = np.exp(m * log_t)
    comps = np.stack([log_a + r * log_t, log_b + q * log_1mt, 2.0 * kappa * t_m])
    peak = comps.max(axis=0)
    share = np.exp(comps - peak)
    total = share.sum(axis=0)
    share /= total
    s = 0.5 * (np.log(total) + peak)  # log p_EPR(t_j)
    s_peak = s.max()
    p_tilde = np.exp(s - s_peak)
    norm = p_tilde.sum()
    p_tilde /= norm
    log_q = s - s_peak - np.log(norm)
    pos = p_hat > 0
    kl = float(np.dot(p_hat[pos], np.log(p_hat[pos]) - log_q[pos]))
    coef = 0.5 * (p_tilde - p_hat)  # dKL/ds_j · ds_j/dlogS_j
    g_slope = share[2] * (2.0 * kappa * t_m)
    # at t = 1 the (1-t)^q share is 0 and log(1-t) = -inf: their product is 0, not nan
    q_slope = np.where(share[1] > 0, share[1] * log_1mt, 0.0)
    features = np.stack([share[0], share[1], g_slope, share[0] * log_t, q_slope, g_slope * log_t])
    chain = np.array([1.0, 1.0, 1.0, _sigmoid(theta[3]), _sigmoid(theta[4]), _sigmoid(theta[5])])
    # (features * coef).sum, not features @ coef: a BLAS gemv on a 6x70 matrix goes multi-
    # threaded and, on a busy machine, costs 10-50x more than the whole rest of the objective
    return kl, (features * coef).sum(axis=1) * chain


@dataclass(frozen=True)
class EPRFit:
    """Fitted EPR parameters (keys ``a, b, A, kappa, r, q, m``) and ``KL(p̂ ‖ p̃)`` on the grid.

    Scale convention: KL fixes only the shape, so the parameters are scaled such that
    ``Σ_j p_EPR(t_j) = 1`` over the fit grid, i.e. ``p_EPR(t_j)`` *is* the fitted ``p̃_j`` and
    can be compared to ``p̂_j`` directly. ``restarts`` holds every start's final KL.
    """

    params: dict[str, float]
    kl: float
    restarts: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        missing = set(EPR_KEYS) - set(self.params)
        if missing:
            raise ValueError(f"params is missing EPR keys {sorted(missing)}")
        object.__setattr__(self, "params", {k: float(self.params[k]) for k in EPR_KEYS})

    def log_p(self, t: np.ndarray) -> np.ndarray:
        return epr_log_p(t, self.params)


def _theta_from_params(params: dict[str, float]) -> np.ndarray:
    scale = 2.0 * np.log(params["A"])  # divide (a, b, A²) by A² so that A = 1
    return np.array([
        np.log(params["a"]) - scale, np.log(params["b"]) - scale,
        np.log(params["kappa"]), _inv_softplus(params["r"]), _inv_softplus(params["q"]),
        _inv_softplus(params["m"] - 1.0),
    ])


def _starts(restarts: int, seed: int, init: dict[str, float] | None) -> list[np.ndarray]:
    """Deterministic starting points: a given warm start, a neutral one, then seeded draws."""
    starts = []
    if init is not None:
        starts.append(_theta_from_params(init))
    starts.append(_theta_from_params(dict(a=1.0, b=1.0, A=1.0, kappa=1.0, r=1.0, q=1.0, m=2.0)))
    rng = np.random.default_rng(seed)
    while len(starts) < restarts + (init is not None):
        draw = dict(a=np.exp(rng.uniform(-4, 4)), b=np.exp(rng.uniform(-4, 4)), A=1.0,
                    kappa=np.exp(rng.uniform(-2, 2.5)), r=rng.uniform(0.05, 6.0),
                    q=rng.uniform(0.05, 6.0), m=rng.uniform(1.1, 8.0))
        starts.append(_theta_from_params(draw))
    return starts


def fit_epr(t: np.ndarray, p_hat: np.ndarray, *, restarts: int = 16, seed: int = 0,
            init: dict[str, float] | None = None, max_iter: int = 2000) -> EPRFit:
    """Fit EPR to ``(t, p̂)`` by minimising ``KL(p̂ ‖ p̃)`` over the grid (docs/method.md §4).

    Constraints by reparametrisation (log for a, b, κ; softplus for r, q; 1 + softplus for m);
    ``A`` is not a free variable during the fit because ``(a, b, A²) → c·(a, b, A²)`` leaves the
    shape unchanged — fixing ``A = 1`` removes that flat direction (which slows quasi-Newton
    down), and the scale is set afterwards in closed form (see :class:`EPRFit`). BFGS with the
    analytic gradient (not L-BFGS-B: SciPy's L-BFGS-B calls multi-threaded BLAS on tiny
    matrices and ran 10-30x slower on a busy 2-core machine), from ``restarts`` deterministic
    starts (``seed``; plus ``init`` as a warm start when given, e.g. the previous online refit).
    The best KL wins.
    """
    t, p = check_table(t, p_hat)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    with np.errstate(divide="ignore"):
        log_t, log_1mt = np.log(t), np.log1p(-t)
    lower, upper = _SAFETY_BOX

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inside = np.clip(theta, lower, upper)
        kl, grad = _epr_objective(inside, log_t, log_1mt, p)
        return kl, grad * (inside == theta)

    def run(theta0: np.ndarray, gtol: float, iterations: int) -> tuple[float, np.ndarray]:
        with warnings.catch_warnings():  # "precision loss" near a flat optimum is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            res = minimize(objective, np.clip(theta0, lower, upper), jac=True, method="BFGS",
                           options=dict(maxiter=iterations, gtol=gtol))
        return (float(res.fun) if np.isfinite(res.fun) else np.inf), np.clip(res.x, lower, upper)

    # Stage 1: every start to a moderate gradient tolerance; stage 2: polish the two best
    # tightly. Most iterations of a tight run crawl along flat valleys of the best basins, so
    # this costs a fraction of running every start tightly. (gtol 1e-6 in stage 1 mis-ranked
    # basins on 2 of 12 noisy tables in our checks; 1e-8 on none.)
    coarse = sorted((run(theta0, 1e-8, max_iter // 4) for theta0 in _starts(restarts, seed, init)),
                    key=lambda pair: pair[0])
    finals = [kl for kl, _ in coarse]
    best_kl, best_theta = np.inf, None
    for kl0, theta in coarse[:2]:
        kl, theta_fine = run(theta, 1e-12, max_iter)
        kl, theta = (kl, theta_fine) if kl <= kl0 else (kl0, theta)
        if kl < best_kl:
            best_kl, best_theta = kl, theta
    if best_theta is None:
        raise ValueError("EPR fit failed from every start (non-finite KL)")
    log_a, log_b, kappa, r, q, m = _unpack(best_theta)
    unit = dict(a=np.exp(log_a), b=np.exp(log_b), A=1.0, kappa=kappa, r=r, q=q, m=m)
    # rescale (a, b, A²) by 1/Z² so that Σ_j p_EPR(t_j) = 1 on the fit grid
    log_z = float(logsumexp(epr_log_p(t, unit)))
    params = dict(unit, a=float(np.exp(log_a - 2 * log_z)), b=float(np.exp(log_b - 2 * log_z)),
                  A=float(np.exp(-log_z)))
    return EPRFit(params=params, kl=max(best_kl, 0.0), restarts=tuple(finals))


# ----------------------------------------------------------------------------- polynomial
@dataclass(frozen=True)
class PolyFit:
    """Degree-7 polynomial ``P(t) = Σ_k coeffs[k]·t^k`` (lowest degree first), used clamped:
    ``max(P(t), floor)``; ``kl`` is ``KL(p̂ ‖ p̃)`` of the clamped polynomial on the fit grid.
    The comparison model of variance paper A.8.2."""

    coeffs: tuple[float, ...]
    kl: float
    floor: float

    def __post_init__(self) -> None:
        if len(self.coeffs) != POLY_DEGREE + 1:
            raise ValueError(f"coeffs must have {POLY_DEGREE + 1} entries, got {len(self.coeffs)}")
        if not self.floor > 0:
            raise ValueError(f"floor must be > 0, got {self.floor}")
        object.__setattr__(self, "coeffs", tuple(float(c) for c in self.coeffs))

    def p(self, t: np.ndarray) -> np.ndarray:
        values = np.polynomial.polynomial.polyval(np.asarray(t, dtype=np.float64), self.coeffs)
        return np.maximum(values, self.floor)


def fit_poly7(t: np.ndarray, p_hat: np.ndarray, *, floor_fraction: float = 1e-3,
              max_iter: int = 2000) -> PolyFit:
    """Fit a degree-7 polynomial to ``(t, p̂)``, clamped at ``floor_fraction · max p̂`` (A.8.2).

    Least squares in the Legendre basis on [0, 1] (well conditioned) gives the start; BFGS
    then minimises the same KL as the EPR fit, so the two KLs are comparable.
    """
    t, p = check_table(t, p_hat)
    if not 0 < floor_fraction < 1:
        raise ValueError(f"floor_fraction must be in (0, 1), got {floor_fraction}")
    floor = floor_fraction * float(p.max())
    basis = np.polynomial.legendre.legvander(2.0 * t - 1.0, POLY_DEGREE)  # (n, 8)
    coef0 = np.linalg.lstsq(basis, p, rcond=None)[0]

    def objective(coef: np.ndarray) -> tuple[float, np.ndarray]:
        raw = (basis * coef).sum(axis=1)  # no BLAS on tiny arrays (see _epr_objective)
        clamped = np.maximum(raw, floor)
        total = clamped.sum()
        kl = _kl(p, np.log(clamped) - np.log(total))
        dkl_dp = (-p / clamped + 1.0 / total) * (raw > floor)
        return kl, (basis * dkl_dp[:, None]).sum(axis=0)

    with warnings.catch_warnings():  # the clamp makes the KL kinked: "precision loss" is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(objective, coef0, jac=True, method="BFGS", options=dict(maxiter=max_iter, gtol=1e-12))
    coef = res.x if res.fun <= objective(coef0)[0] else coef0
    power = np.polynomial.Legendre(coef, domain=[0.0, 1.0]).convert(kind=np.polynomial.Polynomial)
    coeffs = np.zeros(POLY_DEGREE + 1)
    coeffs[: power.coef.size] = power.coef
    return PolyFit(coeffs=tuple(coeffs), kl=max(float(objective(coef)[0]), 0.0), floor=floor)


# ----------------------------------------------------------------------------- density table
@dataclass(frozen=True, eq=False)  # holds arrays: no element-wise ==
class DensityTable:
    """A density tabulated on ``t_grid`` (covering ``[eps, 1]``), normalised by trapezoidal
    quadrature so that ``∫ p dt = 1`` over the grid's range. What ``Importance`` inverts.

    The table is *not* mixed with the uniform density: the sampler does that (``mix``);
    :meth:`mixed` exists for plots and weight bounds, never feed a mixed table to a mixing sampler.
    """

    t_grid: np.ndarray
    p_grid: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.t_grid, dtype=np.float64)
        p = np.asarray(self.p_grid, dtype=np.float64)
        if t.ndim != 1 or t.shape != p.shape or t.size < 2:
            raise ValueError(f"t_grid and p_grid must be 1-D of equal length >= 2, got {t.shape}, {p.shape}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
            raise ValueError("t_grid and p_grid must be finite")
        if np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1:
            raise ValueError(f"t_grid must be strictly increasing in (0, 1], got [{t[0]}, {t[-1]}]")
        if np.any(p < 0):
            raise ValueError(f"p_grid must be non-negative, got min {p.min()}")
        mass = float(np.trapezoid(p, t))
        if not mass > 0:
            raise ValueError(f"p_grid must have positive mass, got {mass}")
        object.__setattr__(self, "t_grid", t)
        object.__setattr__(self, "p_grid", p / mass)

    @property
    def eps(self) -> float:
        return float(self.t_grid[0])

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray]:
        """``(t_grid, p_grid)`` copies, the form ``Importance(density=...)`` accepts."""
        return self.t_grid.copy(), self.p_grid.copy()

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(t, dtype=np.float64), self.t_grid, self.p_grid)

    def mixed(self, mix: float) -> "DensityTable":
        """``(1-λ)·p + λ·u`` with ``u`` uniform on the grid's range, so ``1/p ≤ (1-eps)/λ``
        (docs/method.md §4 "Safety"; u = 1/(1-eps) rather than 1 keeps the mixture normalised)."""
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        uniform = 1.0 / (self.t_grid[-1] - self.t_grid[0])
        return DensityTable(self.t_grid, (1.0 - mix) * self.p_grid + mix * uniform)


def _grid(eps: float, n_grid: int) -> np.ndarray:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if n_grid < MIN_GRID_POINTS:
        raise ValueError(f"n_grid must be >= {MIN_GRID_POINTS} (docs/method.md §3), got {n_grid}")
    return np.linspace(eps, 1.0, n_grid)


def epr_density(params: dict[str, float], eps: float = 1e-3, n_grid: int = MIN_GRID_POINTS) -> DensityTable:
    """EPR tabulated on ``n_grid`` points of ``[eps, 1]``, normalised there (docs/method.md §4)."""
    t = _grid(eps, n_grid)
    log_p = epr_log_p(t, params)
    return DensityTable(t, np.exp(log_p - log_p.max()))  # shift: no overflow for large κ


def poly_density(fit: PolyFit, eps: float = 1e-3, n_grid: int = MIN_GRID_POINTS) -> DensityTable:
    """The clamped polynomial tabulated on ``n_grid`` points of ``[eps, 1]``, normalised there."""
    t = _grid(eps, n_grid)
    return DensityTable(t, fit.p(t))
