"""A registered method as :class:`MaskedDiffusionTrainer`'s estimator (docs/architecture.md).

The Hugging Face trainer takes its estimator as one ``estimator=``: an
:class:`~maskdiff.core.config.EstimatorConfig` (what ``maskdiff train`` resolves a method to) or
a built :class:`~maskdiff.core.objective.Estimator`. :func:`method_estimator` gives a registered
method's, so ``MaskedDiffusionTrainer(..., estimator=method_estimator("ppots_mirror",
density=table))`` trains what ``maskdiff train --method ppots_mirror`` trains.
:func:`trainer_objective` turns ``estimator=`` (or the deprecated component arguments,
``rate_sampler=``, ``masker=``, ...) into the estimator and online refitter the trainer drives.
Needs no ``transformers``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from maskdiff.core.blocks import BlockLayout
from maskdiff.core.config import ComponentConfig, EstimatorConfig
from maskdiff.core.objective import NORMALIZERS, Estimator

from maskdiff.core.control import build_control
from maskdiff.core.masking import MASKERS, build_masker
from maskdiff.core.methods import NEEDS, get_method
from maskdiff.core.samplers import build_sampler


# The component arguments MaskedDiffusionTrainer took before ``estimator=`` (deprecated).
LEGACY_ARGS = ("rate_sampler", "masker", "control", "normalizer", "syntax_eligible",
               "ppots_tracker", "refit_every", "refit_min_count", "refit_restarts", "grad_proxy",
               "weighting", "cart_p")
MIGRATION = ("MaskedDiffusionTrainer(rate_sampler=, masker=, control=, normalizer=, "
             "syntax_eligible=, ppots_tracker=, refit_every=, refit_min_count=, refit_restarts=, "
             "grad_proxy=) is deprecated and will be removed: pass one estimator=EstimatorConfig"
             "(...) (maskdiff.core.config; a registered method's: estimator=method_estimator("
             "name, density=...)) or estimator=Estimator(...)")


def method_estimator(name: str, *, density: dict[str, Any] | None = None,
                     window: tuple[float, float] | None = None, mix: float | None = None,
                     eps: float | None = None, delimiter_ids: Iterable[int] | None = None,
                     loss_convention: str | None = None) -> EstimatorConfig:
    """The :class:`EstimatorConfig` of method ``name`` for ``MaskedDiffusionTrainer(estimator=)``.
    ``density`` / ``window`` / ``mix`` / ``eps`` as in
    :meth:`~maskdiff.core.methods.Method.estimator_config` (a ``density_from_ppots`` table
    brings its file's ``mix`` and ``eps``);
    ``delimiter_ids`` are the answer delimiters a method that needs ``"delimiters"`` (ISAD)
    masks more often. SyRM also needs a collator that marks syntax tokens
    (``ChatCollator(..., syntax_tokens=...)``). ``loss_convention``: a peer's normaliser and
    weighting by name (``"dream-cart"``, ...; :data:`maskdiff.core.weighting.LOSS_CONVENTIONS`),
    in place of the method's."""
    method = get_method(name)
    if method.causal:
        raise ValueError(f"method {name!r} trains a causal model, not a masked diffusion one")
    if method.base is not None:
        raise ValueError(f"method {name!r} is {method.base!r} with {method.batch_factor}x the "
                         f"batch: use {method.base!r} and scale the batch size in the arguments")
    config = method.estimator_config(density=density, window=window, mix=mix, eps=eps)
    if loss_convention is not None:
        config = config.with_convention(loss_convention)
    provided = {"delimiters": sorted({int(i) for i in delimiter_ids or ()})}
    params = dict(config.masker.params)
    for param, need in MASKERS[config.masker.name].task_params.items():
        if param not in params:
            if not provided.get(need):
                raise ValueError(f"method {name!r} needs {NEEDS[need]}: pass delimiter_ids=[...]")
            params[param] = provided[need]
    return replace(config, masker=ComponentConfig(name=config.masker.name, params=params))


def method_trainer_kwargs(name: str, **options) -> dict[str, Any]:
    """Method ``name`` as the deprecated component arguments (``rate_sampler``, ``masker``,
    ``control``, ``normalizer``, ``syntax_eligible``; for online P-POTS ``ppots_tracker``,
    ``refit_every``, ``refit_min_count``, ``refit_restarts`` and ``grad_proxy`` when it tracks
    a gradient-norm proxy). Prefer ``estimator=method_estimator(name, ...)``."""
    config = method_estimator(name, **options)
    sampler = build_sampler(config.sampler.name, **config.sampler.params)
    kwargs: dict[str, Any] = {
        "rate_sampler": sampler,
        "masker": build_masker(config.masker.name, **config.masker.params),
        "control": None if config.control is None else build_control(config.control.name,
                                                                    **config.control.params),
        "normalizer": config.normalizer, "syntax_eligible": config.syntax_eligible,
        "weighting": config.weighting, "cart_p": config.cart_p,
    }
    if config.refit is not None:
        from maskdiff.ppots import SecondMomentTracker

        refit = config.refit
        tracker = SecondMomentTracker(refit.n_bins, eps=sampler.eps, decay=refit.decay)
        kwargs.update(ppots_tracker=tracker,
                      refit_every=refit.refit_every, refit_min_count=refit.min_count,
                      refit_restarts=refit.restarts)
        if refit.statistic != "loss":
            kwargs["grad_proxy"] = refit.statistic
    return kwargs


def trainer_objective(estimator, legacy: Mapping[str, Any], mask_token_id: int,
                      layout: BlockLayout | None = None, max_steps: int | None = None):
    """``(estimator, refitter)`` of a trainer from ``estimator=`` (an :class:`EstimatorConfig`,
    default the standard estimator, or a built :class:`Estimator`) or from the deprecated
    component arguments ``legacy`` (with a :class:`DeprecationWarning` and the migration line);
    ``layout``: block diffusion (docs/method.md §12; a built estimator brings its own);
    ``max_steps``: the run's length, a scheduled sampler's (``annealed``) schedule."""
    if legacy:
        if estimator is not None:
            raise ValueError(f"pass estimator= or the deprecated {sorted(legacy)}, not both")
        warnings.warn(MIGRATION, DeprecationWarning, stacklevel=3)
        return _legacy_objective(dict(legacy), mask_token_id, layout)
    if estimator is None:
        estimator = EstimatorConfig()
    if isinstance(estimator, EstimatorConfig):
        from maskdiff.training.objective import build_objective

        return build_objective(estimator, causal=False, mask_token_id=mask_token_id,
                               layout=layout, max_steps=max_steps)
    if not (callable(estimator) and hasattr(estimator, "state_dict")):
        raise ValueError(f"estimator must be an EstimatorConfig or an Estimator (an Objective), "
                         f"got {type(estimator).__name__}")
    if getattr(estimator, "mask_token_id", mask_token_id) != mask_token_id:
        raise ValueError(f"the estimator's mask_token_id={estimator.mask_token_id} differs from "
                         f"the model's {mask_token_id}")
    if layout is not None and getattr(estimator, "layout", None) != layout:
        raise ValueError(f"block_size={layout.block_size} with a built estimator whose layout is "
                         f"{getattr(estimator, 'layout', None)!r}: build it with layout="
                         f"{layout!r} or pass an EstimatorConfig")
    return estimator, None


def _legacy_objective(args: dict[str, Any], mask_token_id: int, layout: BlockLayout | None):
    from maskdiff.core.masking import Bernoulli
    from maskdiff.core.samplers import Uniform

    sampler = args.get("rate_sampler") or Uniform()
    normalizer = args.get("normalizer", "eligible")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    tracker, every = args.get("ppots_tracker"), args.get("refit_every")
    if tracker is not None:
        if every is None or int(every) < 1:
            raise ValueError(f"ppots_tracker needs refit_every >= 1, got {every!r}")
        if not hasattr(sampler, "set_density"):
            raise ValueError(f"online P-POTS needs an importance sampler, got {sampler!r}")
    elif every is not None:
        raise ValueError("refit_every needs a ppots_tracker (maskdiff.ppots.SecondMomentTracker)")
    grad_proxy = args.get("grad_proxy")
    estimator = Estimator(rate_sampler=sampler, masker=args.get("masker") or Bernoulli(),
                          mask_token_id=mask_token_id, control=args.get("control"),
                          normalizer=normalizer, syntax_eligible=bool(args.get("syntax_eligible")),
                          grad_proxy=grad_proxy, weighting=args.get("weighting", "elbo"),
                          cart_p=float(args.get("cart_p", 0.3)), layout=layout)
    refitter = None
    if tracker is not None:
        from maskdiff.ppots.online import OnlineRefitter

        refitter = OnlineRefitter(sampler, tracker, refit_every=int(every),
                                  min_count=float(args.get("refit_min_count", 8.0)),
                                  restarts=int(args.get("refit_restarts", 4)),
                                  statistic=grad_proxy or "loss")
    return estimator, refitter
