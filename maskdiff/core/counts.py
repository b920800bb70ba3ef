"""LLaDA's low-variance ELBO estimator: mask a uniformly drawn *number* of tokens (docs/method.md §8, §13).

The eps-floored ELBO over ``t ~ U[eps, 1]`` of an example with ``L`` eligible tokens is a
mixture over the number ``l`` of masked tokens,

    ELBO = Σ_l c(l) · E_{|S| = l}[Σ_{i∈S} −log p(x_i | x with S masked)],
    c(l) = (1/(1 − eps)) · (1/l) · P(Bin(L, eps) ≤ l − 1)

(:func:`count_weights`; ``c(l) = 1/l`` at ``eps = 0``). Drawing ``l`` uniformly on ``1..L``
and weighting the masked tokens ``L · c(l)`` (LLaDA's ``L/l``) is unbiased for it and removes
the Bernoulli noise in the number of masked tokens. ``MIRROR``'s form pairs the ``l`` masked
tokens with the complementary ``L − l``: ``l`` uniform on ``0..L`` so that both halves have the
same uniform size law, each weighted ``(L + 1) · c(size)`` (``c(0) = 0``).

:class:`CountEstimator` is an :class:`~maskdiff.core.objective.Estimator` whose draw is one of
these views (or pair): the evaluation schemes ``lowvar``, ``lowvar-stratified`` and
``lowvar-mirror`` and the preference estimators use it.
"""

from __future__ import annotations

import math

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.masking import Bernoulli, View
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS, Uniform
from maskdiff.core.seeding import BatchRandomness


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
    eps-floored ELBO puts on the loss of ``l`` uniformly chosen masked tokens out of ``L``
    (module docstring); at ``eps = 0``, ``c(l) = 1/l``."""
    n_tokens = n_tokens.long()
    max_l = max(int(n_tokens.max()) if n_tokens.numel() else 0, 1)
    l = torch.arange(1, max_l + 1, dtype=torch.float64, device=n_tokens.device)[None, :]
    c = _binomial_cdf_below(n_tokens, eps, max_l) / (l * (1.0 - eps))
    return torch.where(l <= n_tokens.double()[:, None], c, torch.zeros_like(c))


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    rank = torch.empty_like(scores, dtype=torch.long)
    positions = torch.arange(scores.shape[1], device=scores.device)
    rank.scatter_(1, scores.argsort(dim=1), positions.expand_as(rank).contiguous())
    return rank


def _view(x0, masked, weight, mask_token_id) -> View:
    prob = torch.where(weight > 0, 1.0 / weight.clamp(min=1e-300), torch.ones_like(weight))
    xt = torch.where(masked, torch.full_like(x0, mask_token_id), x0)
    return View(xt=xt, masked=masked, inclusion_prob=prob.float()[:, None].expand_as(x0))


def _picked(c: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """``c(size)`` per row, 0 where ``size = 0``."""
    got = c.gather(1, (size - 1).clamp(min=0)[:, None]).squeeze(1)
    return torch.where(size > 0, got, torch.zeros_like(got))


def count_views(x0: torch.Tensor, eligible: torch.Tensor, randomness: BatchRandomness,
                mask_token_id: int, eps: float = DEFAULT_EPS,
                stratum: tuple[int, int] | None = None, mirror: bool = False) -> list[View]:
    """The low-variance draw (module docstring): ``u`` the example's seeded rate uniform (in
    ``[j/k, (j+1)/k)`` for ``stratum=(j, k)``: the mean over the k strata stays unbiased, the
    count being a function of ``u``), the masked tokens the ``l`` eligible ones with the
    smallest seeded mask uniforms. Plain: ``l = 1 + ⌊u·L⌋``, weight ``L · c(l)``, one view.
    ``mirror``: ``l = ⌊u·(L + 1)⌋``, the view and its complement, each weighted
    ``(L + 1) · c(size)``. The weight is stored as ``inclusion_prob = 1/weight``."""
    n_tokens = eligible.sum(dim=1)
    u = randomness.rate_uniforms().to(x0.device)
    if stratum is not None:
        u = (stratum[0] + u) / stratum[1]
    u = u.double()
    scores = randomness.mask_uniforms(1, x0.shape[1])[0].to(x0.device)
    rank = _ranks(scores.masked_fill(~eligible, 2.0))
    c = count_weights(n_tokens, eps)
    n = n_tokens.double()
    if not mirror:
        count = torch.minimum((u * n).floor().long() + 1, n_tokens)
        masked = eligible & (rank < count[:, None])
        return [_view(x0, masked, n * _picked(c, count), mask_token_id)]
    count = torch.minimum((u * (n + 1)).floor().long(), n_tokens)
    masked = eligible & (rank < count[:, None])
    rest = eligible & ~masked
    return [_view(x0, masked, (n + 1) * _picked(c, count), mask_token_id),
            _view(x0, rest, (n + 1) * _picked(c, n_tokens - count), mask_token_id)]


def lowvar_view(batch: Batch, randomness: BatchRandomness, mask_token_id: int,
                eps: float = DEFAULT_EPS, stratum: tuple[int, int] | None = None) -> View:
    """LLaDA's low-variance draw on ``batch``'s eligible tokens: :func:`count_views`' one view."""
    return count_views(batch.x0, batch.eligible, randomness, mask_token_id, eps, stratum)[0]


class CountEstimator(Estimator):
    """:func:`count_views` as an :class:`Estimator` (rate uniforms and mask uniforms keyed by
    :class:`BatchRandomness`, per-example seeded draws only): ``w = 1``, ``t`` the masked
    fraction of the first view. ``stratum=(j, k)`` draws the count's uniform in stratum j of
    k; ``mirror`` adds the complementary view (two forward passes)."""

    def __init__(self, *, mask_token_id: int, normalizer: str = "eligible",
                 eps: float = DEFAULT_EPS, stratum: tuple[int, int] | None = None,
                 mirror: bool = False, syntax_eligible: bool = False, layout=None) -> None:
        if layout is not None:
            raise ValueError("the count (lowvar) ELBO schemes have no block-diffusion form: "
                             "use a rate scheme (e.g. sqrt-stratified-mirror) under a block layout")
        super().__init__(rate_sampler=Uniform(eps), masker=Bernoulli(),
                         mask_token_id=mask_token_id, normalizer=normalizer,
                         syntax_eligible=syntax_eligible)
        self.eps, self.stratum, self.mirror = float(eps), stratum, bool(mirror)

    @property
    def forward_passes(self) -> int:
        return 2 if self.mirror else 1

    def draw(self, batch: Batch, randomness: BatchRandomness | torch.Generator,
             eligible: torch.Tensor | None = None):
        if not isinstance(randomness, BatchRandomness):
            raise ValueError("CountEstimator draws from per-example seeded BatchRandomness only")
        eligible = self.eligible(batch) if eligible is None else eligible
        views = count_views(batch.x0, eligible, randomness, self.mask_token_id, self.eps,
                            self.stratum, self.mirror)
        t = (views[0].masked.sum(dim=1) / eligible.sum(dim=1).clamp(min=1)).float()
        return t, torch.ones_like(t), views

    def __repr__(self) -> str:
        return (f"CountEstimator(eps={self.eps}, stratum={self.stratum}, mirror={self.mirror}, "
                f"normalizer={self.normalizer!r})")
