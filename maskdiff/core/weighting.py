"""Per-token loss weightings and the peers' loss conventions (docs/method.md §1 "Loss conventions").

The objective of §1 divides each masked token's cross-entropy by its inclusion probability
(``weighting="elbo"``). Other training codes weigh masked tokens differently; each is a named
weighting here, a pure function of the mask:

- ``"elbo"``: ``1 / π_i`` (``1/t`` for Bernoulli masks): the ELBO, maskdiff's default and dllm's
  ``loss_weight_type="scheduler"`` with the linear schedule;
- ``"uniform"``: 1 (dllm's ``loss_weight_type="uniform"``): plain masked cross-entropy;
- ``"cart"``: Dream's context-adaptive token-level reweighting (dllm's default for Dream,
  ``loss_weight_type="cart[geo_p:0.3]"``): a masked token weighs
  ``Σ_{j unmasked} g(|i − j|)`` with ``g(1) = 0`` and ``g(d) = ½ p (1 − p)^(d − 2)`` for
  ``d ≥ 2``: tokens with much visible context nearby weigh more, and the weight does not
  depend on ``t``.

:data:`LOSS_CONVENTIONS` names the combinations (normaliser + weighting) that other training
codes use, so that a run reproduces its peer's loss exactly on identical masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHTINGS = ("elbo", "uniform", "cart")
DEFAULT_CART_P = 0.3


def check_weighting(weighting: str, cart_p: float) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got weighting={weighting!r}")
    if not 0.0 < float(cart_p) < 1.0:
        raise ValueError(f"cart_p must lie in (0, 1), got cart_p={cart_p!r}")


def cart_matrix(length: int, p: float, device=None) -> torch.Tensor:
    """(L, L) float32: ``g(|i − j|)`` of the module docstring (0 on the diagonal and at distance 1)."""
    idx = torch.arange(length, device=device)
    d = (idx[None, :] - idx[:, None]).abs()
    exponent = (d - 2).clamp(min=0).float()
    g = 0.5 * p * torch.pow(torch.tensor(1.0 - p, device=device), exponent)
    return torch.where(d >= 2, g, torch.zeros_like(g))


def cart_weights(masked: torch.Tensor, p: float = DEFAULT_CART_P) -> torch.Tensor:
    """(B, L) float32 CART weights: for a masked position, the geometric kernel summed over the
    row's unmasked positions (every unmasked position counts, padding and prompt included, as
    in dllm); 0 on unmasked positions."""
    visible = (~masked).float()
    weights = visible @ cart_matrix(masked.shape[1], p, device=masked.device).T
    return weights * masked.float()


def token_weights(masked: torch.Tensor, inclusion_prob: torch.Tensor, weighting: str = "elbo",
                  cart_p: float = DEFAULT_CART_P) -> torch.Tensor:
    """(B, L) float32: what each masked token's cross-entropy is multiplied by (0 elsewhere)."""
    if weighting == "elbo":
        return torch.where(masked, 1.0 / inclusion_prob.float(), torch.zeros_like(inclusion_prob,
                                                                                dtype=torch.float32))
    if weighting == "uniform":
        return masked.float()
    if weighting == "cart":
        return cart_weights(masked, cart_p)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got weighting={weighting!r}")


@dataclass(frozen=True)
class LossConvention:
    """A peer's loss: the estimator fields that reproduce it, and where it comes from."""

    name: str
    normalizer: str
    weighting: str
    peer: str
    note: str = ""

    def fields(self) -> dict:
        """The ``EstimatorConfig`` fields (``dataclasses.replace(config, **fields)``)."""
        return {"normalizer": self.normalizer, "weighting": self.weighting}


LOSS_CONVENTIONS = {c.name: c for c in (
    LossConvention("maskdiff", "eligible", "elbo", "maskdiff's default (variance paper eq. 1)"),
    LossConvention("dllm-sequence", "eligible", "elbo",
                   "dllm MDLMTrainer, loss_norm_type='sequence'"),
    LossConvention("dllm-token", "token", "elbo",
                   "dllm MDLMTrainer, loss_norm_type='token' (its default)"),
    LossConvention("dllm-batch", "none", "elbo", "dllm MDLMTrainer, loss_norm_type='batch'"),
    LossConvention("dream-cart", "token", "cart",
                   "dllm DreamTrainer (its default: CART, geo_p 0.3, token normaliser)",
                   "with logit_shift=1, as Dream predicts token i at position i - 1"),
    LossConvention("llada-sft", "eligible", "elbo",
                   "LLaDA's SFT guidelines: masked CE / p_mask / answer length, batch mean",
                   "the answer length counts the EOS padding: pad_policy='eos'"),
    LossConvention("llada-pretrain", "sequence", "elbo",
                   "LLaDA's pre-training guidelines: masked CE / p_mask / (B·L)"),
)}


def loss_convention(name: str) -> LossConvention:
    """The named convention; a ``ValueError`` naming the known ones otherwise."""
    try:
        return LOSS_CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"loss convention {name!r} is not one of {sorted(LOSS_CONVENTIONS)}") from None
