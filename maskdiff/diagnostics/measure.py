"""Measurements of a training estimator on a model (docs/method.md §2; variance paper eq. 2).

:mod:`maskdiff.diagnostics.variance`, :mod:`.gradient` and :mod:`.curves` are the math on
numbers; this module produces the numbers for one (model, examples, estimator) triple, always
through the estimator's own code so that what is measured is what the trainer averages
(``w·l``, the MIRROR mean, the EMA-adjusted loss). :mod:`maskdiff.diagnostics.estimators` runs
them all as one diagnostics suite.

- :func:`decompose_estimator`: the per-example A/B/C decomposition from the nested design
  (a examples × b rates × c masks) run by :func:`maskdiff.diagnostics.nested.nested_losses` with
  :func:`maskdiff.diagnostics.probe.estimator_loss_fn`. Rates are the sampler's *marginal* draws
  (:func:`marginal_rate_draw`), i.i.d. as the random-rate ANOVA needs. A batch-level layout
  such as StraTS's stratification therefore cannot show here: per example, a stratified rate is
  just a uniform rate. It shows in :func:`estimator_batch_variance`.
- :func:`estimator_batch_variance`: the spread of the mini-batch estimate at batch size n over
  repeated batches, each drawn by the estimator itself with a :class:`BatchRandomness`
  (so StraTS acts on the batch).
- :func:`estimator_gradient_variance`: ``tr Cov`` of the gradient of the per-example (n = 1) or
  per-batch estimate over repeated draws, for all parameters or a named subset.
- :func:`estimator_curves`: ``g(t)``, ``v(t)`` on the midpoint grid.
- :func:`warm_up_control`: a control variate (EMA, docs/method.md §6) starts with zero statistics, so its
  adjustment is zero; it must see training-like values first or the diagnostic shows nothing.

Every random draw derives from an explicit integer seed (:mod:`maskdiff.core.seeding`); with the
same seed, different estimators see the same examples and uniforms (common random numbers),
which sharpens the comparison between configurations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maskdiff.core.checks import int_at_least
from maskdiff.core.batch import Batch
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import RateSampler
from maskdiff.core.seeding import (
    STREAM_BATCH_PICK, STREAM_GRAD_PICK, STREAM_WARMUP, BatchRandomness, derive_seed, generator_for,
)
from maskdiff.diagnostics.curves import ConditionalCurves, conditional_curves
from maskdiff.diagnostics.gradient import GradientVariance, GradientVarianceAccumulator
from maskdiff.diagnostics.nested import RateDraw, nested_losses, rates_on_grid
from maskdiff.diagnostics.probe import estimator_loss_fn
from maskdiff.diagnostics.variance import BatchVariance, Decomposition, batch_variance, decompose

__all__ = [
    "decompose_estimator", "decompose_loss_fn", "estimator_batch_variance", "estimator_curves",
    "estimator_gradient_variance", "marginal_rate_draw", "select_parameters", "take_examples",
    "warm_up_control",
]


def marginal_rate_draw(sampler: RateSampler) -> RateDraw:
    """``draw(n, generator) -> (t, w)``: n i.i.d. draws of the sampler's marginal rate.

    Each rate is drawn as if it were a batch of one (``sample_at`` with global batch size 1),
    so a stratified sampler (StraTS, stratified importance) degenerates to its marginal: one
    stratum. That is what the random-rate design of :func:`maskdiff.diagnostics.variance.decompose`
    needs (rates i.i.d. within an example); the batch-level effect of stratification is
    measured by :func:`estimator_batch_variance` instead.
    """
    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return sampler.sample_at(u, torch.zeros(n, dtype=torch.long), 1, generator)

    return draw


def take_examples(batch: Batch, index: Sequence[int] | torch.Tensor) -> Batch:
    """The rows ``index`` of ``batch`` (repeats allowed), as a new :class:`Batch`."""
    idx = torch.as_tensor(index, dtype=torch.long)
    pick = lambda v: None if v is None else v[idx.to(v.device)]  # noqa: E731
    return Batch(x0=pick(batch.x0), eligible=pick(batch.eligible),
                 attention_mask=pick(batch.attention_mask),
                 example_index=pick(batch.example_index), syntax=pick(batch.syntax))


class _eval_mode:
    """Eval mode for the probe (no dropout noise), restored afterwards."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        self.was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        if hasattr(self.model, "train"):
            self.model.train(self.was_training)


def _random_batch(pool: Batch, n: int, seed: int, stream: int, draw: int) -> tuple[Batch, BatchRandomness]:
    """n examples drawn with replacement from ``pool`` and the randomness of repeated batch
    ``draw``. Each row gets its own virtual example id ``draw·n + position`` for its seeds, so
    a pool example drawn twice in one batch still gets independent rates and masks."""
    rows = torch.randint(len(pool), (n,), generator=generator_for(seed, stream, draw))
    ids = [draw * n + p for p in range(n)]
    return take_examples(pool, rows), BatchRandomness.for_batch(seed, draw, ids)


def warm_up_control(model, pool: Batch, estimator: Estimator, *, n_samples: int = 2048,
                    batch_size: int = 64, seed: int = 0) -> int:
    """Feed a control variate the values of ``n_samples`` training-like draws (docs/method.md §6).

    A :class:`~maskdiff.core.control.BinEMA` starts with zero statistics, so its adjustment
    ``c_j·b_j`` is zero until it has seen losses: a diagnostic on a fresh control would measure
    the plain estimator. This runs the estimator without gradient on batches of ``batch_size``
    examples drawn with replacement from ``pool`` (rates and masks as in training, from streams
    disjoint from the measurement draws) and lets it update its control. Returns the number of
    samples fed (0 when the estimator has no control).
    """
    n_samples = int_at_least(n_samples, "n_samples")
    batch_size = int_at_least(batch_size, "batch_size")
    if estimator.control is None:
        return 0
    warm_seed = derive_seed(seed, STREAM_WARMUP)
    fed = 0
    with _eval_mode(model), torch.no_grad():
        draw = 0
        while fed < n_samples:
            n = min(batch_size, n_samples - fed)
            sub, randomness = _random_batch(pool, n, warm_seed, STREAM_WARMUP, draw)
            estimator(model, sub.to(_device(model, pool)), randomness, update_control=True)
            fed += n
            draw += 1
    return fed


def _device(model, batch: Batch) -> torch.device:
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return params[0].device if params else batch.x0.device


def decompose_loss_fn(loss_fn, *, n_examples: int, rate_draw: RateDraw, n_rates: int,
                      n_masks: int, seed: int = 0, n_boot: int = 1000, batch_size: int = 256,
                      progress: bool = False) -> tuple[Decomposition, np.ndarray]:
    """The nested design of docs/method.md §2 for any ``loss_fn`` (see :func:`maskdiff.diagnostics.nested.nested_losses`)
    with i.i.d. rates from ``rate_draw``: returns the random-design decomposition and the
    ``(a, b, c)`` values ``w·loss_fn``."""
    losses = nested_losses(loss_fn, n_examples=n_examples, rates=rate_draw, n_rates=n_rates,
                           n_masks=n_masks, batch_size=batch_size, seed=seed, progress=progress)
    return decompose(losses, rate_design="random", n_boot=n_boot, seed=seed), losses


def decompose_estimator(model, batch: Batch, estimator: Estimator, *, n_rates: int, n_masks: int,
                        seed: int = 0, n_boot: int = 1000, batch_size: int = 256,
                        progress: bool = False) -> tuple[Decomposition, np.ndarray]:
    """A/B/C of the per-example value ``estimator`` averages, over the examples of ``batch``
    (a = ``len(batch)``), ``n_rates`` i.i.d. marginal rates each and ``n_masks`` masks per rate
    (docs/method.md §2 [fix]: unbiased ANOVA, plug-in values, bootstrap SEs over examples).

    The value is the estimator's: the mean over its views (MIRROR, MultiSample), times the
    sampler's weight ``w`` (importance sampling), minus the control's *current* adjustment
    (call :func:`warm_up_control` first). Returns the decomposition and the raw ``(a, b, c)``
    array.
    """
    loss_fn = estimator_loss_fn(model, batch, estimator, device=_device(model, batch))
    with _eval_mode(model):
        return decompose_loss_fn(loss_fn, n_examples=len(batch),
                                 rate_draw=marginal_rate_draw(estimator.rate_sampler),
                                 n_rates=n_rates, n_masks=n_masks, seed=seed, n_boot=n_boot,
                                 batch_size=batch_size, progress=progress)


def estimator_curves(model, batch: Batch, estimator: Estimator, *, n_rates: int, n_masks: int,
                     eps: float = 1e-3, seed: int = 0, n_boot: int = 200,
                     batch_size: int = 256) -> ConditionalCurves:
    """``g(t)``, ``v(t)``, ``E[l²|t]`` of the estimator's per-example value (without ``w``: the
    curves are conditional on t) on the midpoint grid of ``n_rates`` points (docs/method.md §4)."""
    grid = rates_on_grid(n_rates, eps)
    loss_fn = estimator_loss_fn(model, batch, estimator, device=_device(model, batch))
    with _eval_mode(model):
        losses = nested_losses(loss_fn, n_examples=len(batch), rates=grid, n_masks=n_masks,
                               batch_size=batch_size, seed=seed, progress=False)
    return conditional_curves(losses, grid.double(), n_boot=n_boot, seed=seed)


def estimator_batch_variance(model, pool: Batch, estimator: Estimator, *, batch_size: int,
                             n_batches: int, seed: int = 0) -> BatchVariance:
    """Variance of the mini-batch estimate ``mean(values)`` over ``n_batches`` repeated batches.

    Each batch holds ``batch_size`` examples drawn with replacement from ``pool`` and is passed
    to the estimator with a :class:`BatchRandomness` of its own (positions ``0..n-1`` of a
    global batch of n), exactly as the trainer calls it, so StraTS's stratification acts on
    the batch. The control variate is not updated. ``per_example`` (= n × variance) estimates
    the per-example variance including the data noise of the pool (its empirical
    distribution), comparable with the decomposition's total.
    """
    n = int_at_least(batch_size, "batch_size")
    repeats = int_at_least(n_batches, "n_batches", minimum=2)
    device = _device(model, pool)
    estimates = np.empty(repeats)
    with _eval_mode(model), torch.no_grad():
        for r in range(repeats):
            sub, randomness = _random_batch(pool, n, seed, STREAM_BATCH_PICK, r)
            out = estimator(model, sub.to(device), randomness, update_control=False)
            estimates[r] = float(out.values.double().mean())
    return batch_variance(estimates, batch_size=n)


def select_parameters(model: torch.nn.Module,
                      names: Sequence[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` pairs: all trainable ones, or those whose name equals or starts
    with one of ``names`` (e.g. ``["blocks.0"]``, ``["head.weight"]``)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is None:
        return params
    chosen = []
    for prefix in names:
        hits = [(n, p) for n, p in params if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ValueError(f"parameter name {prefix!r} matches no trainable parameter; "
                             f"names are e.g. {[n for n, _ in params][:8]}")
        chosen += [h for h in hits if all(h[0] != c[0] for c in chosen)]
    return chosen


def estimator_gradient_variance(model, pool: Batch, estimator: Estimator, *, n_draws: int,
                                batch_size: int = 1, seed: int = 0,
                                parameters: Sequence[str] | None = None) -> GradientVariance:
    """``tr Cov`` of the gradient of the estimator's loss over ``n_draws`` fresh draws (docs/method.md §2).

    ``batch_size = 1``: the per-example gradient estimator (one example drawn from ``pool``,
    its rate from the sampler's marginal, its masks); ``batch_size = n``: the mini-batch
    gradient, with the batch drawn as in :func:`estimator_batch_variance`. ``parameters``
    restricts the gradient to the named parameters (see :func:`select_parameters`). The control
    variate is not updated (its adjustment is detached, so it cannot change the gradient).
    """
    draws = int_at_least(n_draws, "n_draws", minimum=2)
    n = int_at_least(batch_size, "batch_size")
    named = select_parameters(model, parameters)
    params = [p for _, p in named]
    device = _device(model, pool)
    stream = STREAM_GRAD_PICK if n == 1 else STREAM_BATCH_PICK
    acc = GradientVarianceAccumulator()
    with _eval_mode(model):
        for r in range(draws):
            sub, randomness = _random_batch(pool, n, derive_seed(seed, stream), stream, r)
            out = estimator(model, sub.to(device), randomness, update_control=False)
            # Nothing masked (a tiny rate on a short example): the loss is a constant 0.
            grads = (torch.autograd.grad(out.loss, params, allow_unused=True)
                     if out.loss.requires_grad else [None] * len(params))
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double().cpu()
                              for g, p in zip(grads, params)])
            acc.update(flat)
    return acc.result()
