"""ELBO estimators for a response given its prompt, for preference optimisation (docs/method.md §13).

Each estimator returns ``B̂``, an unbiased estimate of the response's ELBO as a *lower bound on
the log-likelihood* ``log p(y | x)`` in nats (summed over the response's eligible tokens, the
normaliser ``none``): ``B̂ = −l`` with ``l`` the masked-diffusion loss of docs/method.md §1 over
rates ``t ~ U[eps, 1]``. Higher is more likely. ``budget`` is the forward passes per response
and per model.

Draws are keyed by ``(seed, example index, draw)`` through :mod:`maskdiff.core.seeding`
(:class:`BatchRandomness` with the draw as its step): they do not depend on the batch, so a
reference model's estimates can be computed once and reused, and a *shared* estimator gives the
policy and the reference the same rates and masks (common random numbers). An unshared one
(``naive``) keys the reference's draws on a seed of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.counts import count_weights, lowvar_view  # noqa: F401  (re-exported)
from maskdiff.core.masking import build_masker
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.core.seeding import STREAM_PREFERENCE_REFERENCE, BatchRandomness, derive_seed
from maskdiff.training.evaluate import elbo_scheme

ROLES = ("policy", "reference")


@dataclass(frozen=True)
class PreferenceEstimator:
    """How ``B̂`` spends its budget and whether the policy and the reference share draws.

    ``scheme`` names an :data:`~maskdiff.training.evaluate.ELBO_SCHEMES` entry (rates or
    mask counts, and masks): e.g. ``"lowvar"``, LLaDA's low-variance estimator (exactly
    ``l ~ U{1..L}`` of the ``L`` response tokens masked, :mod:`maskdiff.core.counts`).
    """

    name: str
    scheme: str
    shared: bool
    description: str

    @property
    def views(self) -> int:
        """Forward passes per draw of ``t`` (2 for MIRROR's complementary pair)."""
        return build_masker(elbo_scheme(self.scheme).masker).n_views

    def draws(self, budget: int) -> int:
        """Draws (rates, or values of ``l``) a budget of ``budget`` forward passes buys."""
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive int (forward passes per response), "
                             f"got {budget!r}")
        if budget % self.views:
            raise ValueError(f"estimator {self.name!r} spends {self.views} forward passes per "
                             f"rate: budget must be a multiple of {self.views}, got {budget}")
        return budget // self.views

    def seed_for(self, seed: int, role: str) -> int:
        """The seed of ``role``'s draws: the same for both roles when shared."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if self.shared or role == "policy":
            return int(seed)
        return derive_seed(int(seed), STREAM_PREFERENCE_REFERENCE)

    def log_likelihood(self, model, batch: Batch, *, seed: int, budget: int, mask_token_id: int,
                       role: str = "policy", eps: float = DEFAULT_EPS) -> torch.Tensor:
        """``B̂`` per example, float32 (B,), on the autograd graph when ``model`` is.

        Draw ``j`` of example ``i`` is keyed ``(seed_for(seed, role), i, j)``.
        """
        n = self.draws(budget)
        key = self.seed_for(seed, role)
        indices = batch.example_index.tolist()
        total = torch.zeros(len(batch), dtype=torch.float32, device=batch.x0.device)
        estimators = elbo_scheme(self.scheme).estimators(
            mask_token_id=mask_token_id, rates=n, normalizer="none", eps=eps)
        ones = torch.ones(len(batch), dtype=torch.float32, device=batch.x0.device)
        for j, estimator in enumerate(estimators):
            t, w, views = estimator.draw(batch, BatchRandomness.for_batch(key, j, indices))
            raw, _ = estimator.view_losses(model, batch.x0, views, batch.attention_mask, ones)
            total = total + w.float() * raw
        return -total / n


PREFERENCE_ESTIMATORS: dict[str, PreferenceEstimator] = {e.name: e for e in (
    PreferenceEstimator("naive", "mc", False,
                        "LLaDA-style Monte Carlo: iid t ~ U[eps,1], one Bernoulli mask each; "
                        "the policy and the reference draw independently"),
    PreferenceEstimator("shared-mc", "mc", True,
                        "naive's iid rates and masks, shared by the policy and the reference"),
    PreferenceEstimator("vrpo", "stratified", True,
                        "LLaDA 1.5's VRPO: one mask per rate, the rates stratified over [eps,1], "
                        "rates and masks shared by the policy and the reference"),
    PreferenceEstimator("vrpo-mirror", "stratified-mirror", True,
                        "vrpo with antithetic masks: MIRROR's complementary pair per rate"),
    PreferenceEstimator("lowvar", "lowvar", True,
                        "LLaDA's low-variance estimator: l ~ U{1..L} response tokens masked "
                        "uniformly, each weighted L·c(l) (L/l at eps = 0); shared draws"),
    PreferenceEstimator("lowvar-stratified", "lowvar-stratified", True,
                        "lowvar with l stratified: draw j of n takes u in [j/n, (j+1)/n); shared"),
    PreferenceEstimator("lowvar-mirror", "lowvar-mirror", True,
                        "lowvar-stratified with the complementary mask: l ~ U{0..L} and the "
                        "other L - l tokens, each weighted (L+1)·c(size); shared"),
    PreferenceEstimator("sqrt-stratified", "sqrt-stratified", True,
                        "rates in the quantile strata of p(t) ∝ t^-1/2, importance-weighted; shared"),
    PreferenceEstimator("sqrt-stratified-mirror", "sqrt-stratified-mirror", True,
                        "sqrt-stratified rates with MIRROR's complementary masks; shared "
                        "(maskdiff dpo's default; the evaluation default of block-diffusion runs)"),
)}
# Likelihood evaluation's default too (one default for evaluate, lm-eval and DPO): the lowest SE
# of one ELBO and the least-shrunk DPO gradient at 8 passes (benchmarks/dpo_bias.py), the best
# pass@1 after DPO and no collapsed seed in 10 (benchmarks/dpo_gain.py; README "Preference
# optimisation"). sqrt-stratified-mirror has a 10% lower SE of the DPO bracket but collapsed
# 2 of the 10 seeds' DPO runs there.
DEFAULT_ESTIMATOR = "lowvar-stratified"


def preference_estimator(name: str) -> PreferenceEstimator:
    if name not in PREFERENCE_ESTIMATORS:
        raise ValueError(f"unknown ELBO estimator {name!r}; known: {sorted(PREFERENCE_ESTIMATORS)}")
    return PREFERENCE_ESTIMATORS[name]


def exact_log_likelihood(model, batch: Batch, *, mask_token_id: int, eps: float = DEFAULT_EPS,
                         max_tokens: int = 12, chunk: int = 256, grad: bool = False
                         ) -> torch.Tensor:
    """The eps-floored ELBO of each example *exactly*, float64 (B,): every non-empty subset of
    its ``L ≤ max_tokens`` eligible tokens masked once (``2^L − 1`` forward passes), weighted by
    :func:`count_weights`. The ground truth the estimators are tested and benchmarked against;
    ``grad=True`` keeps it on the autograd graph (the exact ELBO's gradient)."""
    with torch.set_grad_enabled(grad):
        values = [_exact_one(model, batch, b, mask_token_id, eps, max_tokens, chunk)
                  for b in range(len(batch))]
    return torch.stack(values)


def _exact_one(model, batch: Batch, b: int, mask_token_id: int, eps: float, max_tokens: int,
               chunk: int) -> torch.Tensor:
    positions = batch.eligible[b].nonzero().flatten()
    n = len(positions)
    if n > max_tokens:
        raise ValueError(f"exact ELBO of example {int(batch.example_index[b])}: {n} eligible "
                         f"tokens, more than max_tokens={max_tokens} (2^L forward passes)")
    total = torch.zeros((), dtype=torch.float64, device=batch.x0.device)
    if n == 0:
        return total
    codes = torch.arange(1, 2 ** n)
    bits = ((codes[:, None] >> torch.arange(n)[None, :]) & 1).bool()
    c = count_weights(torch.tensor([n]), eps)[0]
    sizes = bits.sum(dim=1)
    # mean over the C(L, l) subsets of size l, times c(l)
    per_subset = (c[sizes - 1] / torch.tensor([math.comb(n, int(s)) for s in sizes],
                                              dtype=torch.float64)).to(batch.x0.device)
    x0, attn = batch.x0[b], batch.attention_mask[b]
    for start in range(0, len(codes), chunk):
        sub = bits[start:start + chunk]
        masked = torch.zeros(len(sub), x0.shape[0], dtype=torch.bool, device=x0.device)
        masked[:, positions] = sub.to(x0.device)
        xt = torch.where(masked, torch.full_like(masked, mask_token_id, dtype=x0.dtype),
                         x0.expand_as(masked))
        logits = model(xt, attn.expand_as(masked)).float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), x0.expand_as(masked), reduction="none")
        total = total + ((nll * masked).sum(dim=1).double() * per_subset[start:start + chunk]).sum()
    return -total
