"""Continuing a run: a plain resume, or an *extension* to more steps (``train --extend``).

A run resumes only under the configuration its checkpoint was written with. The one change a
resume may make on request is a larger ``optim.max_steps`` (``maskdiff train --out RUN
--extend --steps N``, ``Trainer.fit(extend=True)``): training continues from the newest valid
checkpoint (step ``s``) to step ``N`` with

* the learning-rate schedule recomputed for ``N`` steps: ``OptimConfig.lr_at`` is a function of
  the step and ``max_steps`` alone, so warmup (long over) is unchanged and the linear decay now
  reaches its minimum at step ``N`` instead of at the old ``max_steps``; the learning rate
  therefore rises at step ``s + 1`` from the old schedule's end to ``lr_at(s)`` of the
  ``N``-step schedule, and steps ``s + 1 .. N`` use exactly the rates of an ``N``-step run;
* AdamW's moments, the data order, the per-example randomness (seeded by step), the control
  variate, the best checkpoint and its loss carried over; the early-stopping patience count
  restarts at 0 (the extension gets ``eval.patience`` evaluations before it can stop early).

The weights therefore differ from an ``N``-step run from scratch, whose first ``s`` steps
decayed more slowly. The extension is recorded: a ``{"step": s, "extended": {...}}`` line in
``metrics.jsonl``, ``"extended_from"`` (the old ``max_steps`` of every extension, in order)
in ``results.json`` and the checkpoints, and one line on stderr.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from maskdiff.training.config import TrainConfig

FIELD = "optim.max_steps"


def extension_of(path: Path, differ: list[str], saved: dict, config: TrainConfig, step: int,
                 extend: bool) -> int | None:
    """How a checkpoint at ``step`` written under ``saved`` may be resumed under ``config``:
    None for a plain resume (the configs agree), the old ``max_steps`` for an extension
    (``extend`` and only ``optim.max_steps`` grew); anything else is a ValueError naming the
    checkpoint, the fields and, where it would help, the ``--extend`` flag."""
    if not differ:
        return None
    if differ != [FIELD]:
        hint = " (--extend changes only optim.max_steps)" if extend else ""
        raise ValueError(f"refusing to resume from {path}: its config differs in {differ}"
                         f"{hint}; use another out_dir or the same config")
    old, new = int(saved["optim"]["max_steps"]), config.optim.max_steps
    if not extend:
        raise ValueError(f"refusing to resume from {path}: its config differs in ['{FIELD}'] "
                         f"({old} -> {new}); to train this run on to step {new}, pass --extend "
                         f"(Trainer.fit(extend=True)), or use another out_dir")
    if new <= step:
        raise ValueError(f"--extend: {path} is at step {step} already; --steps (optim.max_steps) "
                         f"must exceed it to extend the run, got {new}")
    return old


def fresh_start(root: Path, extend: bool) -> bool:
    """False (a resume that found no checkpoint starts fresh), unless ``extend``: there is
    nothing to extend, and training from scratch under that flag would be a silent surprise."""
    if extend:
        raise ValueError(f"--extend: {root} holds no checkpoint to extend; start the run "
                         f"without --extend")
    return False


def extension_line(out_dir: Path, step: int, old: int, config: TrainConfig) -> str:
    """The one line an extension prints: what continues and what the schedule does."""
    optim = config.optim
    before = replace(optim, max_steps=old).lr_at(step - 1)
    return (f"extending {out_dir} from step {step} to {optim.max_steps} (optim.max_steps "
            f"{old} -> {optim.max_steps}): the learning-rate schedule is recomputed for "
            f"{optim.max_steps} steps (lr {before:.3g} at step {step} -> {optim.lr_at(step):.3g} "
            f"at step {step + 1}, decaying to {optim.lr * optim.min_lr_ratio:.3g} at step "
            f"{optim.max_steps}); optimizer state and data order continue; results differ from a "
            f"{optim.max_steps}-step run from scratch")
