"""A registered method as :class:`MaskedDiffusionTrainer` arguments (docs/architecture.md).

The Hugging Face trainer takes its estimator as components (``rate_sampler=``, ``masker=``, ...);
:func:`method_trainer_kwargs` builds them from the method registry, so
``MaskedDiffusionTrainer(..., **method_trainer_kwargs("ppots_mirror", density=table))`` trains
what ``maskdiff train --method ppots_mirror`` trains. Needs no ``transformers``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from maskdiff.core.control import build_control
from maskdiff.core.masking import MASKERS, build_masker
from maskdiff.core.methods import NEEDS, get_method
from maskdiff.core.samplers import build_sampler


def method_trainer_kwargs(name: str, *, density: dict[str, Any] | None = None,
                          window: tuple[float, float] | None = None, mix: float = 0.05,
                          delimiter_ids: Iterable[int] | None = None,
                          loss_convention: str | None = None) -> dict[str, Any]:
    """``rate_sampler``, ``masker``, ``control``, ``normalizer``, ``syntax_eligible`` (and for
    online P-POTS ``ppots_tracker``, ``refit_every``, ``refit_min_count``, ``refit_restarts``,
    and ``grad_proxy`` when it tracks a gradient-norm proxy)
    of method ``name``. ``density`` / ``window`` as in
    :meth:`~maskdiff.core.methods.Method.estimator_config`; ``delimiter_ids`` are the answer
    delimiters a method that needs ``"delimiters"`` (ISAD) masks more often. SyRM also needs a
    collator that marks syntax tokens (``ChatCollator(..., syntax_tokens=...)``).
    ``loss_convention``: a peer's normaliser and weighting by name (``"dream-cart"``, ...;
    :data:`maskdiff.core.weighting.LOSS_CONVENTIONS`), in place of the method's."""
    method = get_method(name)
    if method.causal:
        raise ValueError(f"method {name!r} trains a causal model, not a masked diffusion one")
    if method.base is not None:
        raise ValueError(f"method {name!r} is {method.base!r} with {method.batch_factor}x the "
                         f"batch: use {method.base!r} and scale the batch size in the arguments")
    config = method.estimator_config(density=density, window=window, mix=mix)
    if loss_convention is not None:
        config = config.with_convention(loss_convention)
    provided = {"delimiters": sorted({int(i) for i in delimiter_ids or ()})}
    params = dict(config.masker.params)
    for param, need in MASKERS[config.masker.name].task_params.items():
        if param not in params:
            if not provided.get(need):
                raise ValueError(f"method {name!r} needs {NEEDS[need]}: pass delimiter_ids=[...]")
            params[param] = provided[need]
    sampler = build_sampler(config.sampler.name, **config.sampler.params)
    kwargs: dict[str, Any] = {
        "rate_sampler": sampler, "masker": build_masker(config.masker.name, **params),
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
