"""The named training methods of the benchmarks (SPEC §11), as estimator configurations.

A method is configuration, never a branch in the training loop: each name maps to an
:class:`~maskdiff.training.config.EstimatorConfig` (and, for the autoregressive twin, a causal model).
P-POTS methods need a fitted density: pass it as ``density`` (a ``{"t": [...], "p": [...]}``
table; :func:`density_from_ppots` makes one from a ``ppots.json``). ``ppots_online`` starts from
that density, or from the uniform one when none is given, and refits it during training from
the training losses (SPEC §4 [beyond]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from maskdiff.training.config import ComponentConfig, EstimatorConfig, RefitConfig

C = ComponentConfig

_FIXED: dict[str, EstimatorConfig] = {
    "standard": EstimatorConfig(),
    "clipped": EstimatorConfig(sampler=C(name="clipped")),
    "strats": EstimatorConfig(sampler=C(name="stratified")),
    "ema": EstimatorConfig(control=C(name="ema")),
    "isad": EstimatorConfig(masker=C(name="isad")),  # delimiter ids filled in from the task
    "syrm": EstimatorConfig(syntax_eligible=True),
    "mirror": EstimatorConfig(masker=C(name="mirror")),
    "multisample2": EstimatorConfig(masker=C(name="multisample", params={"k": 2})),
}

DENSITY_METHODS = ("ppots", "ppots_mirror")
ONLINE = "ppots_online"
CAUSAL = "ar"
METHOD_NAMES = (*_FIXED, *DENSITY_METHODS, ONLINE, "window", CAUSAL)


def density_from_ppots(path: str | Path, model: str = "epr", n_points: int = 256) -> dict[str, list[float]]:
    """The fitted density of a ``ppots.json`` as a compact ``{"t", "p"}`` table for a config.

    The fit (EPR by default, or ``poly7``) is tabulated on ``n_points`` rates, denser near
    both ends where EPR bends most; the importance sampler interpolates it linearly.
    """
    from maskdiff.ppots import load_ppots_json

    result = load_ppots_json(path)
    table = result.density(model)
    eps = result.eps
    half = n_points // 2
    ends = np.concatenate([eps + np.geomspace(1e-6, 0.5, half), 1.0 - np.geomspace(1e-6, 0.5 - eps, half)])
    t = np.unique(np.clip(np.concatenate([ends, np.linspace(eps, 1.0, n_points)]), eps, 1.0))
    p = np.interp(t, table.t_grid, table.p_grid)
    return {"t": [float(x) for x in t], "p": [float(x) for x in p]}


def method_estimator(name: str, *, density: dict[str, Any] | None = None,
                     window: tuple[float, float] = (0.45, 0.55),
                     mix: float = 0.05) -> EstimatorConfig:
    """The estimator configuration of method ``name`` (see :data:`METHOD_NAMES`)."""
    if name in _FIXED:
        return _FIXED[name]
    if name in DENSITY_METHODS:
        if density is None:
            raise ValueError(f"method {name!r} needs a fitted P-POTS density (e.g. --ppots ppots.json)")
        sampler = C(name="importance", params={"density": density, "mix": mix})
        masker = C(name="mirror" if name == "ppots_mirror" else "bernoulli")
        return EstimatorConfig(sampler=sampler, masker=masker)
    if name == ONLINE:
        start = density if density is not None else {"t": [0.0, 1.0], "p": [1.0, 1.0]}
        sampler = C(name="importance", params={"density": start, "mix": mix})
        return EstimatorConfig(sampler=sampler, refit=RefitConfig())
    if name == "window":
        return EstimatorConfig(sampler=C(name="window", params={"t_min": window[0], "t_max": window[1]}))
    if name == CAUSAL:
        return EstimatorConfig()  # unused: the causal twin trains with the next-token loss
    raise ValueError(f"unknown method {name!r}; known methods: {list(METHOD_NAMES)}")
