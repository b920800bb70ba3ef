"""Model probes for the nested loss engine: the per-example value a training estimator
averages, at given rates and mask seeds, without gradient.

:func:`maskdiff.diagnostics.nested.nested_losses` knows nothing about models; :func:`estimator_loss_fn`
turns (model, collated examples, estimator) into the ``loss_fn`` it calls. Both the P-POTS
estimation (docs/method.md §4) and the variance decomposition (docs/method.md §2) use it, so they measure exactly
what :class:`maskdiff.core.objective.Estimator` trains on.
"""

from __future__ import annotations

import torch

from maskdiff.core.batch import Batch
from maskdiff.diagnostics.nested import LossFn
from maskdiff.core.objective import GRAD_PROXIES, Estimator, logit_gradient_norms, normalizer_counts

__all__ = ["GRADIENT_STATISTICS", "estimator_gradient_fn", "estimator_loss_fn",
           "estimator_unit_loss_fn"]

# Per-example gradient statistics a probe can return: the exact parameter-gradient norm
# ``‖∇θ l‖`` (one backward pass per row) or a free logit-gradient proxy (docs/method.md §4 [beyond]).
GRADIENT_STATISTICS = ("gradient",) + GRAD_PROXIES


def _mask_uniforms(mask_seeds: torch.Tensor, n_sets: int, length: int) -> torch.Tensor:
    """(n_sets, n, length) uniforms; row r from a generator seeded by ``mask_seeds[r]``."""
    out = torch.empty(n_sets, len(mask_seeds), length, dtype=torch.float32)
    gen = torch.Generator()
    for row, seed in enumerate(mask_seeds.tolist()):
        gen.manual_seed(int(seed))
        out[:, row] = torch.rand((n_sets, length), generator=gen)
    return out


def estimator_loss_fn(model, batch: Batch, estimator: Estimator, *,
                      device: torch.device | str | None = None,
                      apply_control: bool = True) -> LossFn:
    """A ``loss_fn(example_ids, t, mask_seeds) -> (n,)`` for :func:`nested_losses`.

    Row r evaluates example ``example_ids[r]`` of ``batch`` at rate ``t[r]`` with the
    estimator's masker driven by uniforms seeded by ``mask_seeds[r]``: the mean over the
    masker's views of the per-example loss (docs/method.md §1), i.e. the estimator's ``raw_loss``,
    computed by the estimator itself (:meth:`Estimator.view_losses`); only the draws differ.
    The rate weight ``w`` is applied by the engine. With a control variate and
    ``apply_control`` the control's *current* adjustment ``−c_j b_j`` is added (docs/method.md §6), so
    the value is what the trainer averages at that state; the control is never updated.

    The model is put in eval mode for the probe and restored afterwards by the caller's
    context; dropout would otherwise add noise that training does not see at evaluation.
    """
    device = torch.device(device) if device is not None else batch.x0.device
    eligible_all = estimator.eligible(batch).to(device)
    x0_all = batch.x0.to(device)
    attention_all = batch.attention_mask.to(device)
    counts_all = normalizer_counts(eligible_all, estimator.normalizer)
    masker, mask_id = estimator.masker, estimator.mask_token_id

    def loss_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        ids = example_ids.to(device)
        x0, eligible, attention = x0_all[ids], eligible_all[ids], attention_all[ids]
        rates = t.to(device=device, dtype=torch.float32)
        uniforms = _mask_uniforms(mask_seeds, masker.n_uniform_sets, x0.shape[1]).to(device)
        views = masker.views_from_uniforms(x0, eligible, rates, uniforms, mask_id)
        values, _ = estimator.view_losses(model, x0, views, attention, counts_all[ids])
        if apply_control and estimator.control is not None:
            values = estimator.control.adjust(values, rates)
        return values.float().cpu()

    return loss_fn


def estimator_unit_loss_fn(model, batch: Batch, estimator: Estimator, *,
                           device: torch.device | str | None = None) -> LossFn:
    """:func:`estimator_loss_fn` under the estimator's block layout (docs/method.md §12): row r
    returns the (units,) per-(example, block) values the trainer weights one rate each, every
    block of example ``example_ids[r]`` masked at rate ``t[r]``. A block's loss depends on its
    own rate and mask only (its noisy tokens see their block and the clean earlier blocks), so
    the units of a row are independent draws at ``t[r]``: one forward pass gives them all.
    For :func:`~maskdiff.diagnostics.nested.nested_losses` with ``units=layout.units(L)``."""
    layout = estimator.layout
    if layout is None:
        raise ValueError("estimator_unit_loss_fn needs an estimator with a block layout")
    device = torch.device(device) if device is not None else batch.x0.device
    eligible_all = estimator.eligible(batch).to(device)
    x0_all = batch.x0.to(device)
    attention_all = batch.attention_mask.to(device)
    counts_all = normalizer_counts(eligible_all, estimator.normalizer)
    masker, mask_id = estimator.masker, estimator.mask_token_id
    units = layout.units(x0_all.shape[1])

    def loss_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        ids = example_ids.to(device)
        x0, eligible, attention = x0_all[ids], eligible_all[ids], attention_all[ids]
        rates = t.to(device=device, dtype=torch.float32)
        uniforms = _mask_uniforms(mask_seeds, masker.n_uniform_sets, x0.shape[1]).to(device)
        views = masker.views_from_uniforms(x0, eligible, rates, uniforms, mask_id)
        _, token_losses = estimator.view_losses(model, x0, views, attention, counts_all[ids])
        scale = counts_all[ids][:, None] / units  # the trainer's units · l_k (Estimator)
        values = torch.stack([layout.unit_sums(losses) / scale for losses in token_losses])
        return values.mean(dim=0).float().cpu()

    return loss_fn


def estimator_gradient_fn(model, batch: Batch, estimator: Estimator, *, statistic: str = "gradient",
                          device: torch.device | str | None = None) -> LossFn:
    """A ``loss_fn`` for :func:`nested_losses` that returns a per-example *gradient norm* of the
    estimator's ``raw_loss`` ``l`` instead of ``l`` (docs/method.md §4 [beyond] "Gradient-targeted
    densities"), with the same draws as :func:`estimator_loss_fn` for the same seeds.

    ``statistic="gradient"``: the exact ``‖∇θ l‖`` over the model's trainable parameters, one
    forward and backward pass per row (the ground truth; small models). ``"logits"`` /
    ``"bias"``: the free proxies of :func:`maskdiff.core.objective.logit_gradient_norms`, from
    the forward pass alone. The nested engine's ``w`` multiplies the value as it does a loss.
    """
    if statistic not in GRADIENT_STATISTICS:
        raise ValueError(f"statistic must be one of {GRADIENT_STATISTICS}, got {statistic!r}")
    device = torch.device(device) if device is not None else batch.x0.device
    eligible_all = estimator.eligible(batch).to(device)
    x0_all, attention_all = batch.x0.to(device), batch.attention_mask.to(device)
    counts_all = normalizer_counts(eligible_all, estimator.normalizer)
    masker, mask_id = estimator.masker, estimator.mask_token_id
    params = [p for p in model.parameters() if p.requires_grad] if statistic == "gradient" else []

    def exact_norm(x0, views, attention, counts) -> float:
        with torch.enable_grad():
            raw, _ = estimator.view_losses(model, x0, views, attention, counts)
            if not raw.requires_grad:  # nothing masked: l is the constant 0
                return 0.0
            grads = torch.autograd.grad(raw.sum(), params, allow_unused=True)
        return float(sum(g.double().pow(2).sum() for g in grads if g is not None)) ** 0.5

    def gradient_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        ids = example_ids.to(device)
        x0, eligible, attention = x0_all[ids], eligible_all[ids], attention_all[ids]
        rates = t.to(device=device, dtype=torch.float32)
        uniforms = _mask_uniforms(mask_seeds, masker.n_uniform_sets, x0.shape[1]).to(device)
        counts = counts_all[ids]
        if statistic != "gradient":
            views = masker.views_from_uniforms(x0, eligible, rates, uniforms, mask_id)
            logits = estimator.forward_views(model, views, attention)
            return logit_gradient_norms(logits, x0, views, counts, statistic).float().cpu()
        out = torch.empty(len(ids))
        for r in range(len(ids)):  # one example per backward: per-example gradients
            row = slice(r, r + 1)
            row_views = masker.views_from_uniforms(x0[row], eligible[row], rates[row],
                                                   uniforms[:, row], mask_id)
            out[r] = exact_norm(x0[row], row_views, attention[row], counts[row])
        return out

    return gradient_fn
