"""How an ELBO evaluation spends its forward passes: the named schemes (docs/method.md §8).

Every scheme is unbiased for the same eps-floored ELBO over U[eps, 1]: rate schemes draw
``t`` (iid, one per equal stratum, or one per quantile stratum of an importance density with
weights ``1/((1-eps)·p(t))``) and mask with Bernoulli or MIRROR; count schemes
(:mod:`maskdiff.core.counts`) draw the *number* of masked tokens (LLaDA's low-variance
estimator). The ``ppots-*`` schemes' density is fitted to the model being evaluated
(:func:`fit_elbo_density`): ``p(t) ∝ sqrt(E[l_t² | t])``, the variance-optimal importance
density of the ELBO integrand, estimated with the P-POTS machinery (:mod:`maskdiff.ppots`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.counts import CountEstimator
from maskdiff.core.masking import Bernoulli, Masker, build_masker
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS, Importance, RateSampler, Uniform, Window
from maskdiff.core.seeding import STREAM_ELBO_DENSITY, derive_seed
from maskdiff.jobs import reuse_or_run
from maskdiff.ppots import (
    cached_density, density_table, estimate_ppots, inverse_rate_density, model_p_hat,
)

Density = Mapping[str, list[float]]
# The fitted schemes' nested design: examples × rates × masks forward passes, once per model.
FIT_EXAMPLES, FIT_RATES, FIT_MASKS = 8, 32, 8
FIT_FORMS = ("moment", "epr")


def stratified_estimators(*, mask_token_id: int, rates_per_example: int = 4,
                          normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                          syntax_eligible: bool = False, masker: Masker | None = None,
                          layout: BlockLayout | None = None) -> list[Estimator]:
    """One estimator per stratum: ``U`` over the j-th of ``rates_per_example`` equal strata of
    [eps, 1], ``masker`` masks (default Bernoulli), no weights, no control variate
    (docs/method.md §8). Under a block ``layout`` each block draws its own rate in the stratum
    and the terms are the block ELBO's (docs/method.md §12)."""
    if rates_per_example < 1:
        raise ValueError(f"rates_per_example must be >= 1, got {rates_per_example}")
    masker = Bernoulli() if masker is None else masker
    edges = [eps + (1 - eps) * j / rates_per_example for j in range(rates_per_example + 1)]
    return [Estimator(rate_sampler=Window(edges[j], edges[j + 1], eps=eps), masker=masker,
                      mask_token_id=mask_token_id, normalizer=normalizer,
                      syntax_eligible=syntax_eligible, layout=layout)
            for j in range(rates_per_example)]


class _QuantileStratum(RateSampler):
    """Stratum ``j`` of ``k`` equal strata in the quantile space of an importance sampler:
    ``t = F^-1((j + u)/k)``, ``w = 1/((1 - eps)·p(t))``; the mean over the k strata is unbiased
    for U[eps, 1] (docs/method.md §8)."""

    name = "quantile_stratum"

    def __init__(self, inner: Importance, j: int, k: int) -> None:
        self.inner, self.j, self.k, self.eps = inner, j, k, inner.eps

    def target_interval(self) -> tuple[float, float]:
        return self.inner.target_interval()

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        return self.inner.sample_at((self.j + u) / self.k, positions, global_batch_size,
                                    batch_generator)


def _sqrt_density(t: torch.Tensor) -> torch.Tensor:
    """p(t) ∝ t^(-1/2): the ELBO's per-rate variance grows like 1/t, so sampling small rates
    more often (with weights 1/p) bounds the weights the plain estimator spends on them."""
    return t.rsqrt()


@dataclass(frozen=True)
class ElboScheme:
    """How the ELBO spends its forward passes (docs/method.md §8): ``rates`` draws per
    example — of ``t`` (iid U[eps, 1], or one per equal stratum of [eps, 1] or of the quantiles
    of ``density`` with importance weights), or with ``count`` of the number of masked tokens
    (:mod:`maskdiff.core.counts`) — each with ``masker``'s views (``"mirror"``: two).
    ``fitted``: the density is fitted to the model (:func:`fit_elbo_density`) and given to
    :meth:`estimators`."""

    name: str
    stratified: bool
    masker: str
    description: str
    density: Callable[[torch.Tensor], torch.Tensor] | None = None
    count: bool = False
    fitted: bool = False

    def estimators(self, *, mask_token_id: int, rates: int, normalizer: str = "eligible",
                   eps: float = DEFAULT_EPS, syntax_eligible: bool = False,
                   layout: BlockLayout | None = None,
                   density: Density | None = None) -> list[Estimator]:
        if rates < 1:
            raise ValueError(f"rates must be >= 1, got {rates}")
        common = dict(mask_token_id=mask_token_id, normalizer=normalizer,
                      syntax_eligible=syntax_eligible, layout=layout)
        if self.count:
            mirror = self.masker == "mirror"
            if not self.stratified:
                return [CountEstimator(eps=eps, mirror=mirror, **common)] * rates
            return [CountEstimator(eps=eps, stratum=(j, rates), mirror=mirror, **common)
                    for j in range(rates)]
        masker = build_masker(self.masker)
        if self.fitted and density is None:
            raise ValueError(f"ELBO scheme {self.name!r} needs its fitted density: "
                             f"density=fit_elbo_density(model, batch, ...)")
        shape = density if self.fitted else self.density
        if shape is not None:
            inner = Importance(shape, eps=eps)
            return [Estimator(rate_sampler=_QuantileStratum(inner, j, rates), masker=masker,
                              **common) for j in range(rates)]
        if self.stratified:
            return stratified_estimators(rates_per_example=rates, eps=eps, masker=masker,
                                         **common)
        one = Estimator(rate_sampler=Uniform(eps), masker=masker, **common)
        return [one] * rates  # draw j is keyed on (seed, j, example): independent draws

    def passes(self, rates: int) -> int:
        """Forward passes per example for ``rates`` draws."""
        return rates * build_masker(self.masker).n_views


ELBO_SCHEMES: dict[str, ElboScheme] = {s.name: s for s in (
    ElboScheme("mc", False, "bernoulli",
               "plain Monte Carlo as LLaDA evaluates: iid U[eps,1] rates, independent masks"),
    ElboScheme("stratified", True, "bernoulli",
               "one rate per equal stratum of [eps,1], Bernoulli masks (training validation)"),
    ElboScheme("stratified-mirror", True, "mirror",
               "one rate per stratum, MIRROR's two complementary masks per rate"),
    ElboScheme("sqrt-stratified", True, "bernoulli",
               "one rate per quantile stratum of p(t) ∝ t^-1/2, importance-weighted", _sqrt_density),
    ElboScheme("sqrt-stratified-mirror", True, "mirror",
               "sqrt-stratified rates with MIRROR's two complementary masks", _sqrt_density),
    ElboScheme("lowvar", False, "bernoulli",
               "LLaDA's low-variance estimator: exactly l ~ U{1..L} tokens masked, weight L·c(l)",
               count=True),
    ElboScheme("lowvar-stratified", True, "bernoulli",
               "lowvar with l stratified over the draws", count=True),
    ElboScheme("lowvar-mirror", True, "mirror",
               "stratified l ~ U{0..L} and the complementary L-l tokens, weights (L+1)·c(size)",
               count=True),
    ElboScheme("ppots-stratified", True, "bernoulli",
               "one rate per quantile stratum of a density fitted to the model, "
               "p(t) ∝ sqrt(E[l_t²|t]), importance-weighted", fitted=True),
    ElboScheme("ppots-stratified-mirror", True, "mirror",
               "ppots-stratified rates with MIRROR's two complementary masks", fitted=True),
)}
# The evaluation entry points' default (maskdiff evaluate, the lm-evaluation-harness model):
# the lowest standard error per forward pass in benchmarks/elbo_se.py (README, docs/evaluation.md);
# a block-diffusion run, which the count schemes do not cover, gets the best rate scheme.
EVAL_SCHEME = "lowvar-stratified"
BLOCK_EVAL_SCHEME = "sqrt-stratified-mirror"


def default_scheme(layout: BlockLayout | None = None) -> str:
    """:data:`EVAL_SCHEME`, or :data:`BLOCK_EVAL_SCHEME` under a block ``layout``."""
    return EVAL_SCHEME if layout is None else BLOCK_EVAL_SCHEME


def rates_for(scheme: str, passes: int) -> int:
    """The draws that spend ``passes`` forward passes per example under ``scheme`` (≥ 1)."""
    return max(1, passes // elbo_scheme(scheme).passes(1))


def elbo_scheme(name: str) -> ElboScheme:
    if name not in ELBO_SCHEMES:
        raise ValueError(f"unknown ELBO scheme {name!r}; known: {sorted(ELBO_SCHEMES)}")
    return ELBO_SCHEMES[name]


def fit_elbo_density(model, batch: Batch, *, mask_token_id: int, seed: int,
                     normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                     n_rates: int = FIT_RATES, n_masks: int = FIT_MASKS, mix: float = 0.05,
                     form: str = "moment", cache_dir: str | Path | None = None,
                     key: Mapping | None = None) -> Density:
    """The fitted schemes' importance density for ``model`` (docs/method.md §8): P-POTS's
    nested design on ``batch`` (a few held-out examples × ``n_rates`` midpoint rates ×
    ``n_masks`` Bernoulli masks) measures ``E[l_t² | t]``; the density is ``p ∝ sqrt`` of its
    fit — ``form="moment"`` (default): ``a/t + b + c·t``
    (:func:`~maskdiff.ppots.inverse_rate_density`, which keeps the integrand's ``1/t`` tail
    below the grid), ``"epr"``: P-POTS's EPR fit of ``p̂`` as training uses it — mixed with
    ``mix`` of the uniform (weights ≤ 1/mix). Draws seeded by
    ``derive_seed(seed, STREAM_ELBO_DENSITY)``: independent of an evaluation under ``seed``, so
    the evaluation stays unbiased (whatever the fit, the weights are exactly ``1/p``).
    ``cache_dir``: reused from ``cache_dir/elbo_density.json`` (``ppots.json`` for EPR) when
    fitted under the same ``key`` and settings, else fitted and written there."""
    if form not in FIT_FORMS:
        raise ValueError(f"form must be one of {FIT_FORMS}, got {form!r}")
    fit_seed = derive_seed(int(seed), STREAM_ELBO_DENSITY)
    settings = {"what": "elbo-density", "form": form, "examples": len(batch),
                "n_rates": n_rates, "n_masks": n_masks, "seed": fit_seed, "eps": eps, "mix": mix,
                "normalizer": normalizer, **dict(key or {})}
    common = dict(mask_token_id=mask_token_id, n_rates=n_rates, n_masks=n_masks, eps=eps,
                  normalizer=normalizer, seed=fit_seed, progress=False)
    if form == "epr":
        def estimate():
            return estimate_ppots(model, batch, mix=mix, **common)

        if cache_dir is None:
            return density_table(estimate())
        return cached_density(cache_dir, estimate, settings)

    def moment() -> dict:
        measured = model_p_hat(model, batch, **common)
        table, coef = inverse_rate_density(measured.phat.t, measured.phat.second_moment, eps=eps)
        return {**table, "mix": mix, "eps": eps, "coefficients": coef,
                "rates": measured.phat.t.tolist(),
                "second_moment": measured.phat.second_moment.tolist(),
                "forward_passes": measured.forward_passes, "seconds": measured.seconds}

    doc = (moment() if cache_dir is None else
           reuse_or_run(Path(cache_dir) / "elbo_density.json", settings, moment,
                        on_change="recompute", what="fitted ELBO density",
                        required=("t", "p", "mix", "eps")))
    return {k: doc[k] for k in ("t", "p", "mix", "eps")}
