"""Preference losses on ELBO estimates (docs/method.md §13).

Sign convention: every ``*_elbo`` argument is ``B̂``, an estimate of the ELBO *as a lower bound
on* ``log p(y | x)`` (nats, higher = more likely), i.e. minus the masked-diffusion loss
(:meth:`~maskdiff.preference.elbo.PreferenceEstimator.log_likelihood`). The implicit reward of
a response is ``r = β · (B̂_π(y) − B̂_ref(y))``. Reference values are detached here, so gradients
reach the policy only, whatever the caller passes. Every loss is per pair (or per response for
KTO), shape (B,); the caller takes the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("dpo", "kto")


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return float(beta)


def dpo_margin(policy_elbo_w: torch.Tensor, policy_elbo_l: torch.Tensor,
               ref_elbo_w: torch.Tensor, ref_elbo_l: torch.Tensor) -> torch.Tensor:
    """``(B̂_π(y_w) − B̂_ref(y_w)) − (B̂_π(y_l) − B̂_ref(y_l))``, reference values detached."""
    return (policy_elbo_w - ref_elbo_w.detach()) - (policy_elbo_l - ref_elbo_l.detach())


def dpo_loss(policy_elbo_w: torch.Tensor, policy_elbo_l: torch.Tensor,
             ref_elbo_w: torch.Tensor, ref_elbo_l: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO on ELBOs (LLaDA 1.5, eq. of docs/method.md §13), per pair:

        −log σ(β · [(B̂_π(y_w) − B̂_ref(y_w)) − (B̂_π(y_l) − B̂_ref(y_l))])

    ``y_w`` is the chosen response, ``y_l`` the rejected one."""
    margin = dpo_margin(policy_elbo_w, policy_elbo_l, ref_elbo_w, ref_elbo_l)
    return -F.logsigmoid(_check_beta(beta) * margin)


def kto_reference_point(rewards: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z0`` from a batch's log-ratios ``B̂_π − B̂_ref`` (all responses,
    desirable and undesirable): ``max(0, mean)``, detached: the in-batch estimate of
    ``KL(π ‖ π_ref)`` (docs/method.md §13)."""
    return rewards.detach().mean().clamp(min=0.0)


def kto_loss(policy_elbo: torch.Tensor, ref_elbo: torch.Tensor, desirable: torch.Tensor,
             beta: float, reference_point: torch.Tensor | float | None = None,
             lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0) -> torch.Tensor:
    """ELBO-KTO (unpaired), per response: with ``r = B̂_π(y) − B̂_ref(y)`` and ``z0`` the
    reference point (default :func:`kto_reference_point` of this batch's ``r``),

        desirable:   λ_D · (1 − σ(β (r − z0)))
        undesirable: λ_U · (1 − σ(β (z0 − r)))

    ``desirable`` is a bool tensor (B,)."""
    beta = _check_beta(beta)
    desirable = torch.as_tensor(desirable, dtype=torch.bool, device=policy_elbo.device)
    if desirable.shape != policy_elbo.shape:
        raise ValueError(f"desirable has shape {tuple(desirable.shape)}, policy_elbo has "
                         f"{tuple(policy_elbo.shape)}")
    reward = policy_elbo - ref_elbo.detach()
    z0 = (kto_reference_point(reward) if reference_point is None
          else torch.as_tensor(reference_point, dtype=reward.dtype, device=reward.device).detach())
    good = lambda_desirable * (1 - torch.sigmoid(beta * (reward - z0)))
    bad = lambda_undesirable * (1 - torch.sigmoid(beta * (z0 - reward)))
    return torch.where(desirable, good, bad)


def pair_kto_loss(policy_elbo_w: torch.Tensor, policy_elbo_l: torch.Tensor,
                  ref_elbo_w: torch.Tensor, ref_elbo_l: torch.Tensor, beta: float) -> torch.Tensor:
    """ELBO-KTO on a batch of pairs, per pair: the chosen response desirable, the rejected one
    undesirable, one reference point for the batch's 2B responses; the mean of the two."""
    policy = torch.cat([policy_elbo_w, policy_elbo_l])
    ref = torch.cat([ref_elbo_w, ref_elbo_l])
    desirable = torch.arange(len(policy), device=policy.device) < len(policy_elbo_w)
    per_response = kto_loss(policy, ref, desirable, beta)
    return per_response.view(2, -1).mean(dim=0)


def preference_loss(name: str, policy_elbo_w: torch.Tensor, policy_elbo_l: torch.Tensor,
                    ref_elbo_w: torch.Tensor, ref_elbo_l: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """The per-pair loss ``name`` (:data:`LOSSES`)."""
    if name == "dpo":
        return dpo_loss(policy_elbo_w, policy_elbo_l, ref_elbo_w, ref_elbo_l, beta)
    if name == "kto":
        return pair_kto_loss(policy_elbo_w, policy_elbo_l, ref_elbo_w, ref_elbo_l, beta)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
