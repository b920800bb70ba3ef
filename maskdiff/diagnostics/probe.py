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


class _Draws:
    """The batch on ``device`` and the estimator's views of rows ``example_ids`` at rates ``t``
    with mask uniforms seeded by ``mask_seeds``: what every probe below evaluates."""

    def __init__(self, batch: Batch, estimator: Estimator, device) -> None:
        self.device = torch.device(device) if device is not None else batch.x0.device
        self.eligible = estimator.eligible(batch).to(self.device)
        self.x0, self.attention = batch.x0.to(self.device), batch.attention_mask.to(self.device)
        self.counts = normalizer_counts(self.eligible, estimator.normalizer)
        self.masker, self.mask_id = estimator.masker, estimator.mask_token_id

    def rows(self, example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor):
        """``(x0, eligible, attention, counts, rates, uniforms)`` of the rows."""
        ids = example_ids.to(self.device)
        x0 = self.x0[ids]
        uniforms = _mask_uniforms(mask_seeds, self.masker.n_uniform_sets, x0.shape[1])
        return (x0, self.eligible[ids], self.attention[ids], self.counts[ids],
                t.to(device=self.device, dtype=torch.float32), uniforms.to(self.device))

    def views(self, x0, eligible, rates, uniforms):
        return self.masker.views_from_uniforms(x0, eligible, rates, uniforms, self.mask_id)


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
    draws = _Draws(batch, estimator, device)

    def loss_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        x0, eligible, attention, counts, rates, uniforms = draws.rows(example_ids, t, mask_seeds)
        views = draws.views(x0, eligible, rates, uniforms)
        values, _ = estimator.view_losses(model, x0, views, attention, counts)
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
    draws = _Draws(batch, estimator, device)
    units = layout.units(draws.x0.shape[1])

    def loss_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        x0, eligible, attention, counts, rates, uniforms = draws.rows(example_ids, t, mask_seeds)
        views = draws.views(x0, eligible, rates, uniforms)
        _, token_losses = estimator.view_losses(model, x0, views, attention, counts)
        # The trainer's per-(example, block) values (Estimator.unit_losses), one row of units.
        return estimator.unit_losses(token_losses, counts, units).view(len(x0), units) \
            .float().cpu()

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
    draws = _Draws(batch, estimator, device)
    params = [p for p in model.parameters() if p.requires_grad] if statistic == "gradient" else []

    def exact_norm(x0, views, attention, counts) -> float:
        with torch.enable_grad():
            raw, _ = estimator.view_losses(model, x0, views, attention, counts)
            if not raw.requires_grad:  # nothing masked: l is the constant 0
                return 0.0
            grads = torch.autograd.grad(raw.sum(), params, allow_unused=True)
        return float(sum(g.double().pow(2).sum() for g in grads if g is not None)) ** 0.5

    def gradient_fn(example_ids: torch.Tensor, t: torch.Tensor, mask_seeds: torch.Tensor) -> torch.Tensor:
        x0, eligible, attention, counts, rates, uniforms = draws.rows(example_ids, t, mask_seeds)
        if statistic != "gradient":
            views = draws.views(x0, eligible, rates, uniforms)
            logits = estimator.forward_views(model, views, attention)
            return logit_gradient_norms(logits, x0, views, counts, statistic).float().cpu()
        out = torch.empty(len(x0))
        for r in range(len(x0)):  # one example per backward: per-example gradients
            row = slice(r, r + 1)
            row_views = draws.views(x0[row], eligible[row], rates[row], uniforms[:, row])
            out[r] = exact_norm(x0[row], row_views, attention[row], counts[row])
        return out

    return gradient_fn
