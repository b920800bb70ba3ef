"""``MaskedDiffusionTrainer``: a ``transformers.Trainer`` whose loss is maskdiff's Estimator.

This module imports ``transformers``; :mod:`maskdiff.hf` imports it on first use of the name.
Everything but the glue to ``transformers.Trainer`` is maskdiff's training code, shared with the
native trainer: the :class:`~maskdiff.core.objective.Objective` contract, the per-step
statistics and t-bins (:mod:`maskdiff.training.stats`), the tensor collectives
(:mod:`maskdiff.training.distributed`), the online P-POTS refit
(:class:`~maskdiff.ppots.online.OnlineRefitter`) and the stratified ELBO
(:mod:`maskdiff.training.evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from maskdiff.core.config import EstimatorConfig
from maskdiff import jsonio
from maskdiff.core.control import VarianceProxy
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.core.seeding import BatchRandomness
from maskdiff.hf import checkpoints
from maskdiff.hf.adapter import HFAdapter
from maskdiff.hf.blocks import block_layout, check_block_model
from maskdiff.hf.checks import check_model
from maskdiff.hf.collate import batch_from_inputs
from maskdiff.hf.methods import LEGACY_ARGS, trainer_objective
from maskdiff.hf.resume import CheckpointedTrainer
from maskdiff.hf.setup import (default_collator, indexed, indexed_eval, model_and_options,
                               trainable_counts)
from maskdiff.training.evaluate import stratified_elbo, stratified_estimators
from maskdiff.training.stats import StepStats, StepWindow, finish_step

__all__ = ["MaskedDiffusionTrainer", "trainer_class"]


class _StepEnd(transformers.TrainerCallback):
    """Marks step starts; runs after every optimiser step, before Trainer logs, evaluates or
    saves."""

    def __init__(self, owner: "MaskedDiffusionTrainer") -> None:
        self.owner = owner

    def on_step_begin(self, args, state, control, **kwargs):
        self.owner._micro = (-1, 0)  # the step's first micro-batch has position block 0
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.owner._finish_step()
        return control


class MaskedDiffusionTrainer(CheckpointedTrainer):
    """A ``transformers.Trainer`` whose loss is maskdiff's :class:`Estimator` (docs/method.md §1).

    Args (besides ``transformers.Trainer``'s own):
        model: a HF model or PEFT model (wrapped in :class:`HFAdapter` with the options
            below), or an :class:`HFAdapter` (its options are used, its ``.model`` trained).
        estimator: an :class:`~maskdiff.core.config.EstimatorConfig` -- sampler, masker,
            control variate, normalizer, SyRM and online P-POTS (``refit``), exactly what
            ``maskdiff train`` builds; a registered method's is
            ``maskdiff.hf.method_estimator(name, density=...)`` -- or a built
            :class:`~maskdiff.core.objective.Estimator`. Default: the standard estimator
            (uniform rates, Bernoulli masks). The control variate is updated once per optimiser
            step from the whole global batch, as maskdiff's trainer does. The former component
            arguments (``rate_sampler=``, ``masker=``, ``control=``, ``normalizer=``,
            ``syntax_eligible=``, ``ppots_tracker=``, ``refit_every=``, ...) still work, with a
            ``DeprecationWarning`` (:data:`maskdiff.hf.methods.MIGRATION`). A peer's loss
            convention (normaliser and token weighting, docs/huggingface.md "Loss conventions"):
            ``estimator=EstimatorConfig().with_convention("dream-cart")`` or
            ``method_estimator(name, loss_convention=...)``.
        mask_token_id: the mask id (default: the adapter's, else ``model.config``'s).
        seed: keys the rates and masks with (global step, example index); default
            ``args.seed``.
        logit_shift, attention, pad_token_id, pad_policy, forward_kwargs: adapter options
            (:class:`AdapterOptions`) when ``model`` is not an adapter; ``logit_shift`` and
            ``attention`` default to the model family's (:mod:`maskdiff.hf.families`: Dream
            shift 1, LLaDA2 "4d"; otherwise 0 and "2d"), said once on stderr.
        eval_rates_per_example, eval_seed: evaluation is the full-range objective over
            U[eps, 1] with stratified rates and common random numbers, exactly
            :func:`maskdiff.training.evaluate.elbo`; it never uses the training sampler's weights.
        block_size, block_rates: block diffusion (docs/method.md §12, as ``maskdiff train
            --block-size``): the model reads ``[xt ; x0]`` under the three-part attention mask
            with ``position_ids`` (the family must take a 4-D boolean mask, no logit shift:
            :mod:`maskdiff.hf.blocks`, else one line before training), each block draws its own
            rate (``"block"``, BD3-LM) or every block the example's (``"sequence"``, LLaDA2.0 /
            dllm); step statistics count (example, block) draws and evaluation is the block
            ELBO. A built ``estimator=Estimator(..., layout=)`` brings its own layout.

    Data: map-style data sets of rows ``{"input_ids", "eligible", ["syntax"]}`` (or chat
    rows with ``data_collator=ChatCollator(...)``); they are wrapped in
    :class:`IndexedDataset` so each row's index seeds its draws. Logged every
    ``logging_steps``: ``loss`` (the mean of the estimator's values), ``loss_per_t_bin_j``
    (mean raw loss of the examples with ``t`` in ``(j/10, (j+1)/10]``), ``masked_ce``,
    ``variance_proxy`` (docs/method.md §7) and ``tokens_per_s``, as maskdiff.training.trainer logs them; at a
    refit step ``ppots_refit`` and ``ppots_kl``. Sampler density, control variate, proxy
    tracker and the open log window are saved with every checkpoint (``maskdiff_state.pt``)
    and restored on resume, so a resumed run computes and logs what the uninterrupted one does
    (:class:`~maskdiff.hf.resume.CheckpointedTrainer`: ``resume_from_checkpoint=True`` resumes
    from the newest complete checkpoint, saying on stderr which newer ones it skipped).
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, *, estimator: EstimatorConfig | Estimator | None = None,
                 mask_token_id: int | None = None, seed: int | None = None,
                 logit_shift: int | None = None, attention: str | None = None,
                 pad_token_id: int | None = None,
                 pad_policy: str = "exclude", forward_kwargs: Mapping[str, Any] | None = None,
                 eval_rates_per_example: int = 4, eval_seed: int = 1234,
                 block_size: int | None = None, block_rates: str = "block", **kwargs) -> None:
        if model is None:
            raise ValueError("model is required (model_init is not supported)")
        legacy = {name: kwargs.pop(name) for name in LEGACY_ARGS if name in kwargs}
        model, options = model_and_options(
            model, mask_token_id, kwargs.get("processing_class"), logit_shift=logit_shift,
            attention=attention, pad_token_id=pad_token_id, pad_policy=pad_policy,
            forward_kwargs=forward_kwargs)
        check_model(model, mask_token_id=options.mask_token_id, pad_token_id=options.pad_token_id)
        counts = trainable_counts(model)
        data_collator = data_collator if data_collator is not None else default_collator(options)
        steps = getattr(args, "max_steps", -1)  # epochs (-1): an annealed schedule says so
        objective, refitter = trainer_objective(estimator, legacy, options.mask_token_id,
                                                block_layout(block_size, block_rates),
                                                max_steps=steps if steps and steps > 0 else None)
        layout = getattr(objective, "layout", None)
        if layout is not None:
            check_block_model(model, options, layout)
        if eval_rates_per_example < 1:
            raise ValueError(f"eval_rates_per_example must be >= 1, got {eval_rates_per_example}")
        super().__init__(model=model, args=args, data_collator=data_collator,
                         train_dataset=indexed(train_dataset),
                         eval_dataset=indexed_eval(eval_dataset), **kwargs)
        # compute_loss returns a per-micro-batch mean: Trainer divides it by the number of
        # accumulation steps, which makes the step's gradient that of the global batch mean.
        self.loss_is_scaled_for_ga = False
        self.options = options
        self.parameter_counts = counts  # (trainable, total), logged at INFO on "maskdiff.hf"
        self.estimator, self.refitter, self.layout = objective, refitter, layout
        self.seed = int(self.args.seed if seed is None else seed)
        self.proxy = VarianceProxy()
        self.refit_history: list[dict] = []
        self.eval_estimators = stratified_estimators(
            mask_token_id=options.mask_token_id, rates_per_example=eval_rates_per_example,
            normalizer=getattr(objective, "normalizer", "eligible"),
            eps=getattr(getattr(objective, "rate_sampler", None), "eps", DEFAULT_EPS),
            syntax_eligible=bool(getattr(objective, "syntax_eligible", False)), layout=layout)
        self.eval_seed = int(eval_seed)
        self._pending: list[StepStats] = []
        self._micro = (-1, 0)
        self._window = StepWindow()
        self.add_callback(_StepEnd(self))

    # -- the online refit's state, as attributes ------------------------------------------
    @property
    def ppots_tracker(self):
        return None if self.refitter is None else self.refitter.tracker

    @property
    def refits(self) -> int:
        return 0 if self.refitter is None else self.refitter.refits

    @property
    def refit_params(self) -> dict[str, float] | None:
        return None if self.refitter is None else self.refitter.params

    # -- the loss -------------------------------------------------------------------------
    def adapter(self, model: nn.Module) -> HFAdapter:
        """``model`` (as Trainer hands it: maybe DDP- or PEFT-wrapped) behind the contract."""
        return HFAdapter(model, self.options)

    def randomness(self, example_index: Sequence[int], step: int | None = None) -> BatchRandomness:
        """The draws of a training micro-batch: keyed on (seed, step, example index), with
        positions in the global batch for batch-level layouts (StraTS)."""
        step = self.state.global_step if step is None else step
        args = self.args
        micro_size, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
        last_step, count = self._micro
        count = count + 1 if last_step == step else 0
        self._micro = (step, count)
        base = ((count % accum) * args.world_size + args.process_index) * micro_size
        positions = [base + k for k in range(len(example_index))]
        total = micro_size * accum * args.world_size
        return BatchRandomness.for_batch(self.seed, step, example_index, positions,
                                         max(total, positions[-1] + 1))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = batch_from_inputs(inputs)
        batch = dataclasses.replace(batch, eligible=self.options.eligible(batch.eligible))
        randomness = self.randomness(batch.example_index.tolist())
        adapter, logits = self.adapter(model), []

        def forward(input_ids, attention_mask, position_ids=None):
            logits.append(adapter(input_ids, attention_mask, position_ids))
            return logits[-1]

        out = self.estimator(forward, batch, randomness, update_control=False)
        loss = out.loss
        if torch.is_grad_enabled() and not loss.requires_grad and logits:
            # Nothing was masked in this micro-batch: the loss is a constant 0. Tie it to
            # the graph (zero gradient) so backward() and DDP's reducer still work.
            loss = loss + 0.0 * logits[0].flatten()[0]
        if model.training:
            self._pending.append(StepStats.collect([out], [int(batch.attention_mask.sum())]))
        if return_outputs:
            # per (example, block) entries, example-major, when out.units > 1
            return loss, {"values": out.values, "raw_loss": out.raw_loss, "t": out.t, "w": out.w,
                          "units": out.units}
        return loss

    def _finish_step(self) -> None:
        """After an optimiser step: tracker and refit, control, proxy, log window."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        # Trainer may skip a non-finite loss: keep the statistics clean (an empty update of
        # the tracker still counts, so the ranks agree).
        local = StepStats.concat(pending).finite()
        stats, refit = finish_step(local, step=self.state.global_step, objective=self.estimator,
                                   proxy=self.proxy, refitter=self.refitter)
        if refit is not None:
            self.refit_history.append(refit)
        self._window.add(stats)

    def log(self, logs, start_time=None):
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            logs.update(self._window_logs())
        super().log(logs, start_time)

    def _window_logs(self) -> dict[str, float]:
        """The native trainer's step statistics under Trainer's flat log keys."""
        out: dict[str, float] = {}
        window = self._window
        if len(window):
            out.update({f"loss_per_t_bin_{j}": loss
                        for j, loss in enumerate(window.loss_per_t_bin()) if loss is not None})
            masked_ce = window.masked_ce()
            if masked_ce is not None:
                out["masked_ce"] = masked_ce
            out["tokens_per_s"] = window.tokens_per_s()
            window.reset()
        variance = self.proxy.variance()
        if not math.isnan(variance):
            out["variance_proxy"] = variance
        if self.refit_history and self.refit_history[-1]["step"] == self.state.global_step:
            last = self.refit_history[-1]
            if last["refit"] is not None:
                out["ppots_refit"], out["ppots_kl"] = last["refit"], last["kl"]
        return out

    # -- evaluation: the full-range objective (maskdiff.training.evaluate.elbo) ------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        batch = batch_from_inputs(self._prepare_inputs(inputs))
        # the eligible set training uses: under a logit shift position 0 is scored by neither
        batch = dataclasses.replace(batch, eligible=self.options.eligible(batch.eligible))
        values = stratified_elbo(self.adapter(model), batch, self.eval_estimators, self.eval_seed)
        return values.mean().float().detach(), None, None

    # -- checkpoints ----------------------------------------------------------------------
    def maskdiff_state(self) -> dict:
        """Sampler density, control variate, proxy and tracker (plain tensors / strings)."""
        return {
            **self.estimator.state_dict(),  # "sampler", "control"
            "proxy": self.proxy.state_dict(),
            "tracker": self.ppots_tracker.state_dict() if self.refitter is not None else {},
            "refit": jsonio.dumps({"params": self.refit_params, "refits": self.refits,
                                 "history": self.refit_history}),
            "log_window": self._window.state_dict(),  # the steps since the last log line
            "layout": jsonio.dumps(None if self.layout is None else self.layout.to_dict()),
        }

    def load_maskdiff_state(self, state: Mapping[str, Any]) -> None:
        saved = json.loads(state.get("layout", "null"))  # absent from older checkpoints: none
        ours = None if self.layout is None else self.layout.to_dict()
        if saved != ours:
            raise ValueError(f"{checkpoints.STATE_FILE}: the checkpoint was trained with block "
                             f"layout {saved}, this trainer has {ours} (block_size=, block_rates=)")
        self.estimator.load_state_dict({key: state[key] for key in self.estimator.state_dict()})
        self.proxy.load_state_dict(state["proxy"])
        refit = json.loads(state["refit"])
        if self.refitter is not None:
            self.refitter.tracker.load_state_dict(state["tracker"])
            self.refitter.params, self.refitter.refits = refit["params"], int(refit["refits"])
        self.refit_history = list(refit["history"])
        if "log_window" in state:  # absent from older checkpoints
            self._window.load_state_dict(state["log_window"])


def trainer_class() -> type[MaskedDiffusionTrainer]:
    """The ``MaskedDiffusionTrainer`` class (kept for callers of the former lazy builder)."""
    return MaskedDiffusionTrainer
