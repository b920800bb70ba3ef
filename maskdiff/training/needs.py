"""What a method needs from the task, filled in or checked by need, never by method name
(docs/architecture.md; the vocabulary is :data:`maskdiff.core.methods.NEEDS`).

A masker declares the constructor arguments the task supplies in
:attr:`~maskdiff.core.masking.Masker.task_params` (ISAD: ``token_ids`` meet ``"delimiters"``);
SyRM's ``syntax_eligible`` needs ``"syntax"``: the task's syntax tokens, which the collator
turns into the batch's syntax mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from maskdiff.core.config import ComponentConfig, EstimatorConfig
from maskdiff.core.masking import MASKERS
from maskdiff.core.methods import Method, get_method
from maskdiff.training.config import TrainConfig

__all__ = ["apply_method", "resolve_estimator", "task_value", "unmet_need"]


def task_value(need: str, task: Any) -> list[int] | tuple[str, ...]:
    """What ``task`` provides for ``need`` (empty when it provides nothing)."""
    if need == "delimiters":
        return sorted(task.delimiter_ids())
    if need == "syntax":
        return tuple(task.syntax_tokens)
    raise ValueError(f"need {need!r} is not one a task provides (delimiters, syntax)")


def unmet_need(needs: Iterable[str], task: Any) -> str | None:
    """Why ``task`` cannot serve ``needs`` (the first task-provided need it lacks), or None."""
    reasons = {
        "delimiters": f"task {task.name!r} declares no answer delimiters (ISAD needs them)",
        "syntax": (f"task {task.name!r} has no syntax tokens (SyRM needs markup, e.g. "
                   f"--task table)"),
    }
    for need in sorted(set(needs) & set(reasons), reverse=True):  # syntax first, as before
        if not task_value(need, task):
            return reasons[need]
    return None


def resolve_estimator(config: EstimatorConfig, task: Any) -> EstimatorConfig:
    """Check that ``task`` serves what ``config`` needs and fill in the masker's
    :attr:`~maskdiff.core.masking.Masker.task_params` it leaves out (ISAD's delimiter ids from
    the task's answer marker); ValueError naming what the task lacks."""
    masker = config.masker
    missing = {param: need for param, need in MASKERS[masker.name].task_params.items()
               if param not in masker.params}
    reason = unmet_need({*missing.values(), *({"syntax"} if config.syntax_eligible else ())}, task)
    if reason is not None:
        raise ValueError(reason)
    if missing:
        params = {**masker.params, **{param: task_value(need, task) for param, need in missing.items()}}
        masker = ComponentConfig(name=masker.name, params=params)
    return replace(config, masker=masker)


def apply_method(config: TrainConfig, method: "Method | str", *,
                 density: dict[str, list[float]] | None = None,
                 window: tuple[float, float] | None = None, mix: float | None = None,
                 eps: float | None = None) -> TrainConfig:
    """``config`` trained by ``method``: the one place a method meets a run's configuration
    (``maskdiff train``, ``compare``, ``compare --hf``, ``image``). It sets the estimator
    (:meth:`~maskdiff.core.methods.Method.estimator_config` with ``density`` / ``window``;
    the importance sampler's ``mix`` / ``eps`` are the fitted density's unless given),
    the model kind (``causal``) and, for an equal-compute variant, the batch it is given times
    ``batch_factor``; every other field (``optim.beta2``, ``min_lr_ratio``, ``grad_accum``, …)
    is kept as it is."""
    method = get_method(method) if isinstance(method, str) else method
    config = replace(config, estimator=method.estimator_config(density=density, window=window,
                                                                 mix=mix, eps=eps),
                     model=replace(config.model, causal=method.causal))
    if method.batch_factor != 1:
        config = replace(config, optim=replace(
            config.optim, batch_size=method.batch_factor * config.optim.batch_size))
    return config
