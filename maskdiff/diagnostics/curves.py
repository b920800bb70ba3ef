"""The conditional curves ``g(t) = E[l | t]`` and ``v(t) = Var(l | t)`` on shared rates
(docs/method.md §4): what a P-POTS density is fitted to.

Pure math on the ``(a, b, c)`` losses of a nested design on a fixed rate grid
(:func:`maskdiff.diagnostics.nested.rates_on_grid`), with bootstrap standard errors over examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskdiff.diagnostics.stats import (
    Seed, as_array, as_generator, bootstrap_counts, bootstrap_se, check_n_boot, json_float,
)

__all__ = ["ConditionalCurves", "conditional_curves"]


@dataclass(frozen=True, eq=False)
class ConditionalCurves:
    """Per-rate estimates at the shared rates ``t`` (arrays of shape (b,)):
    ``g = E[l | t]``, ``v = Var_{x0,xt}(l | t)`` (unbiased, between-example part included),
    ``v_within = E_x0[Var(l | x0, t)]`` (the paper's v̂, which omits the between-example part;
    NaN when c = 1), ``second_moment = E[l² | t] = g² + v`` (what P-POTS uses), each with SE."""

    t: np.ndarray
    g: np.ndarray
    g_se: np.ndarray
    v: np.ndarray
    v_se: np.ndarray
    v_within: np.ndarray
    v_within_se: np.ndarray
    second_moment: np.ndarray
    second_moment_se: np.ndarray
    n_examples: int
    n_masks: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_examples": self.n_examples, "n_masks": self.n_masks}
        for name in ("t", "g", "g_se", "v", "v_se", "v_within", "v_within_se", "second_moment",
                     "second_moment_se"):
            out[name] = [json_float(float(x)) for x in getattr(self, name)]
        return out


def conditional_curves(
    losses: Any, rates: Any, *, n_boot: int = 1000, seed: Seed = 0
) -> ConditionalCurves:
    """``g(t_j)``, ``v(t_j)`` and ``E[l² | t_j]`` from ``losses`` (a, b, c) at the b ``rates``
    shared by all examples (e.g. :func:`maskdiff.diagnostics.nested.rates_on_grid`); docs/method.md §4.

    At each rate the data are a two-level nested design (a examples, c masks). With
    ``s²_ij`` the sample variance over masks and ``ȳ_ij`` the mean:
    ``E var_i(ȳ_ij) = Var_x0(g) + A_t/c`` and ``E mean_i s²_ij = A_t`` (``A_t = E_x0 Var(l|x0,t)``),
    so ``v̂_j = var_i(ȳ_ij) + (1 − 1/c)·mean_i s²_ij`` is unbiased for
    ``Var_x0(g) + A_t = v(t_j)`` (c = 1 is allowed: then ``v̂_j = var_i(l_ij1)``).
    SEs: ``g``, ``v_within`` and ``E[l²|t]`` are means over independent examples (sd/√a);
    ``v`` by bootstrap over examples (``n_boot``, ``seed``; NaN if ``n_boot = 0``).
    """
    check_n_boot(n_boot)
    x = as_array(losses, "losses", 3)
    a, b, c = x.shape
    if a < 2:
        raise ValueError(f"losses axis 0 = a (examples) must be >= 2, got shape {x.shape}")
    t = as_array(rates, "rates", 1)
    if t.shape[0] != b:
        raise ValueError(f"rates has {t.shape[0]} values but losses has b = {b} rates")
    rng = as_generator(seed)

    cell_means = x.mean(axis=2)  # (a, b)
    within = x.var(axis=2, ddof=1) if c >= 2 else np.zeros((a, b))
    shrink = 1.0 - 1.0 / c
    v = cell_means.var(axis=0, ddof=1) + shrink * within.mean(axis=0)
    squares = (x**2).mean(axis=2)
    if n_boot:
        counts = bootstrap_counts(rng, a, n_boot)
        centred = cell_means - cell_means.mean(axis=0)
        boot_mean = counts @ centred / a
        boot_var = (counts @ centred**2 - a * boot_mean**2) / (a - 1)
        v_se = bootstrap_se(boot_var + shrink * (counts @ within) / a)
    else:
        v_se = np.full(b, math.nan)
    root_a = math.sqrt(a)
    return ConditionalCurves(
        t=t,
        g=cell_means.mean(axis=0),
        g_se=cell_means.std(axis=0, ddof=1) / root_a,
        v=v,
        v_se=v_se,
        v_within=within.mean(axis=0) if c >= 2 else np.full(b, math.nan),
        v_within_se=within.std(axis=0, ddof=1) / root_a if c >= 2 else np.full(b, math.nan),
        second_moment=squares.mean(axis=0),
        second_moment_se=squares.std(axis=0, ddof=1) / root_a,
        n_examples=a,
        n_masks=c,
    )
