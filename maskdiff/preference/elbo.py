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
from maskdiff.core.masking import View, build_masker
from maskdiff.core.objective import masked_token_losses
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.core.seeding import STREAM_PREFERENCE_REFERENCE, BatchRandomness, derive_seed
from maskdiff.training.evaluate import elbo_scheme

ROLES = ("policy", "reference")


@dataclass(frozen=True)
class PreferenceEstimator:
    """How ``B̂`` spends its budget and whether the policy and the reference share draws.

    ``scheme`` names an :data:`~maskdiff.training.evaluate.ELBO_SCHEMES` entry (rates and
    masks), or is ``"lowvar"``: LLaDA's low-variance estimator (exactly ``l ~ U{1..L}`` of the
    ``L`` response tokens masked, :func:`lowvar_view`).
    """

    name: str
    scheme: str
    shared: bool
    description: str
    stratified: bool = False  # lowvar: draw j's l from stratum j of the n draws

    @property
    def views(self) -> int:
        """Forward passes per draw of ``t`` (2 for MIRROR's complementary pair)."""
        return 1 if self.scheme == "lowvar" else build_masker(elbo_scheme(self.scheme).masker).n_views

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
        if self.scheme == "lowvar":
            for j in range(n):
                view = lowvar_view(batch, BatchRandomness.for_batch(key, j, indices),
                                   mask_token_id, eps, stratum=(j, n) if self.stratified else None)
                logits = model(view.xt, batch.attention_mask)
                total = total + masked_token_losses(logits, batch.x0, view).sum(dim=1)
            return -total / n
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
    PreferenceEstimator("lowvar-stratified", "lowvar", True,
                        "lowvar with l stratified: draw j of n takes u in [j/n, (j+1)/n); shared",
                        stratified=True),
    PreferenceEstimator("sqrt-stratified", "sqrt-stratified", True,
                        "rates in the quantile strata of p(t) ∝ t^-1/2, importance-weighted; shared"),
    PreferenceEstimator("sqrt-stratified-mirror", "sqrt-stratified-mirror", True,
                        "sqrt-stratified rates with MIRROR's complementary masks; shared "
                        "(maskdiff's evaluation default)"),
)}
DEFAULT_ESTIMATOR = "sqrt-stratified-mirror"


def preference_estimator(name: str) -> PreferenceEstimator:
    if name not in PREFERENCE_ESTIMATORS:
        raise ValueError(f"unknown ELBO estimator {name!r}; known: {sorted(PREFERENCE_ESTIMATORS)}")
    return PREFERENCE_ESTIMATORS[name]


def _binomial_cdf_below(n: torch.Tensor, eps: float, max_l: int) -> torch.Tensor:
    """``P(Bin(n_b, eps) ≤ l − 1)`` for ``l = 1..max_l``: float64 (B, max_l)."""
    n = n.double()[:, None]
    if eps <= 0:  # Bin(n, 0) is 0 surely
        return torch.ones(n.shape[0], max_l, dtype=torch.float64, device=n.device)
    k = torch.arange(max_l, dtype=torch.float64, device=n.device)[None, :]
    rest = (n - k).clamp(min=0)
    log_pmf = (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(rest + 1)
               + k * math.log(eps) + rest * math.log1p(-eps))
    pmf = torch.where(k <= n, log_pmf.exp(), torch.zeros_like(log_pmf))
    return pmf.cumsum(dim=1).clamp(max=1.0)


def count_weights(n_tokens: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``c(l)`` for ``l = 1..max L``, float64 (B, max L) (zero where ``l > L``): the weight the
    eps-floored ELBO puts on the loss of ``l`` uniformly chosen masked tokens out of ``L``,

        ELBO = Σ_l c(l) · E_{|S| = l}[Σ_{i∈S} −log p(x_i | x with S masked)],
        c(l) = (1/(1 − eps)) · (1/l) · P(Bin(L, eps) ≤ l − 1)

    (docs/method.md §13); at ``eps = 0``, ``c(l) = 1/l``."""
    n_tokens = n_tokens.long()
    max_l = max(int(n_tokens.max()) if n_tokens.numel() else 0, 1)
    l = torch.arange(1, max_l + 1, dtype=torch.float64, device=n_tokens.device)[None, :]
    c = _binomial_cdf_below(n_tokens, eps, max_l) / (l * (1.0 - eps))
    return torch.where(l <= n_tokens.double()[:, None], c, torch.zeros_like(c))


def lowvar_view(batch: Batch, randomness: BatchRandomness, mask_token_id: int,
                eps: float = DEFAULT_EPS, stratum: tuple[int, int] | None = None) -> View:
    """LLaDA's low-variance draw: ``l = 1 + ⌊u·L⌋`` (uniform on 1..L) of the example's ``L``
    eligible tokens masked, the ``l`` with the smallest seeded uniforms; each masked token
    weighted ``L · c(l)`` (:func:`count_weights`, LLaDA's ``L/l`` at ``eps = 0``), stored as
    the view's ``inclusion_prob = 1/(L · c(l))`` so that the objective's division applies it.
    ``stratum=(j, n)``: ``u`` is drawn in ``[j/n, (j+1)/n)`` (the mean over the ``n`` strata is
    unbiased: ``l`` is a function of ``u``)."""
    eligible, x0 = batch.eligible, batch.x0
    n_tokens = eligible.sum(dim=1)
    u = randomness.rate_uniforms().to(x0.device)
    if stratum is not None:
        u = (stratum[0] + u) / stratum[1]
    count = torch.minimum((u * n_tokens.double()).floor().long() + 1, n_tokens)
    scores = randomness.mask_uniforms(1, x0.shape[1])[0].to(x0.device)
    scores = scores.masked_fill(~eligible, 2.0)
    rank = torch.empty_like(x0)
    rank.scatter_(1, scores.argsort(dim=1),
                  torch.arange(x0.shape[1], device=x0.device).expand_as(x0).contiguous())
    masked = eligible & (rank < count[:, None])
    c = count_weights(n_tokens, eps)
    picked = c.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)
    weight = n_tokens.double() * picked
    prob = torch.where(weight > 0, 1.0 / weight.clamp(min=1e-300), torch.ones_like(weight))
    xt = torch.where(masked, torch.full_like(x0, mask_token_id), x0)
    return View(xt=xt, masked=masked, inclusion_prob=prob.float()[:, None].expand_as(x0))


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
