"""``MaskedDiffusionTrainer``: a ``transformers.Trainer`` whose loss is maskdiff's Estimator."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from maskdiff.hf.adapter import (
    STATE_FILE,
    T_BINS,
    AdapterOptions,
    HFAdapter,
    _config_value,
)
from maskdiff.hf.collate import (
    IndexedDataset,
    MaskedDiffusionCollator,
    batch_from_inputs,
)
from maskdiff.core.masking import Bernoulli, Masker
from maskdiff.core.objective import NORMALIZERS, Estimator
from maskdiff.core.samplers import DEFAULT_EPS, RateSampler, Window
from maskdiff.core.seeding import BatchRandomness


# ----------------------------------------------------------------------------- trainer
class _Window:
    """The statistics maskdiff.training.trainer logs between two log lines (loss_per_t_bin, masked_ce)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.raw, self.bins, self.ce_sum, self.ce_count, self.tokens = [], [], 0.0, 0.0, 0.0
        self.start = time.perf_counter()

    def add(self, t: torch.Tensor, raw: torch.Tensor, ce_sum: float, ce_count: float, tokens: float) -> None:
        self.raw.append(raw.double())
        self.bins.append((torch.ceil(t.double() * T_BINS) - 1).long().clamp(0, T_BINS - 1))
        self.ce_sum += ce_sum
        self.ce_count += ce_count
        self.tokens += tokens

    def flush(self) -> dict[str, float]:
        if not self.raw:
            return {}
        raw, bins = torch.cat(self.raw), torch.cat(self.bins)
        sums = torch.zeros(T_BINS, dtype=torch.float64).index_add_(0, bins, raw)
        counts = torch.bincount(bins, minlength=T_BINS)
        out = {f"loss_per_t_bin_{j}": float(sums[j] / counts[j]) for j in range(T_BINS) if counts[j]}
        if self.ce_count:
            out["masked_ce"] = self.ce_sum / self.ce_count
        out["tokens_per_s"] = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return out


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D CPU tensor over ranks in rank order (lengths may differ)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.stack(parts).sum(0)


def _make_trainer_class():
    import transformers

    class _StepEnd(transformers.TrainerCallback):
        """Marks step starts; runs after every optimiser step, before Trainer logs, evaluates
        or saves."""

        def __init__(self, owner) -> None:
            self.owner = owner

        def on_step_begin(self, args, state, control, **kwargs):
            self.owner._micro = (-1, 0)  # the step's first micro-batch has position block 0
            return control

        def on_step_end(self, args, state, control, **kwargs):
            self.owner._finish_step()
            return control

    class MaskedDiffusionTrainer(transformers.Trainer):
        """A ``transformers.Trainer`` whose loss is maskdiff's :class:`Estimator` (SPEC §1).

        Args (besides ``transformers.Trainer``'s own):
            model: a HF model or PEFT model (wrapped in :class:`HFAdapter` with the options
                below), or an :class:`HFAdapter` (its options are used, its ``.model`` trained).
            rate_sampler, masker: the estimator's sampler and masker (maskdiff.core.samplers,
                maskdiff.core.masking); P-POTS+MIRROR is ``Importance(density)`` + ``Mirror()``.
            mask_token_id: the mask id (default: the adapter's, else ``model.config``'s).
            control: optional control variate (:class:`maskdiff.core.control.BinEMA`), updated once
                per optimiser step from the whole global batch, as maskdiff's trainer does.
            normalizer: ``"eligible"``, ``"sequence"`` or ``"none"``; ``syntax_eligible``: SyRM.
            seed: keys the rates and masks with (global step, example index); default
                ``args.seed``.
            ppots_tracker, refit_every: online P-POTS (SPEC §4 [beyond]): the tracker is fed
                every step's ``(t, l, w)`` and every ``refit_every`` steps EPR is refitted and
                handed to ``rate_sampler.set_density``; ``refit_min_count`` and
                ``refit_restarts`` as in :class:`maskdiff.training.config.RefitConfig`.
            logit_shift, attention, pad_token_id, pad_policy, forward_kwargs: adapter options
                (:class:`AdapterOptions`) when ``model`` is not an adapter.
            eval_rates_per_example, eval_seed: evaluation is the full-range objective over
                U[eps, 1] with stratified rates and common random numbers, exactly
                :func:`maskdiff.training.evaluate.elbo`; it never uses the training sampler's weights.

        Data: map-style data sets of rows ``{"input_ids", "eligible", ["syntax"]}`` (or chat
        rows with ``data_collator=ChatCollator(...)``); they are wrapped in
        :class:`IndexedDataset` so each row's index seeds its draws. Logged every
        ``logging_steps``: ``loss`` (the mean of the estimator's values), ``loss_per_t_bin_j``
        (mean raw loss of the examples with ``t`` in ``(j/10, (j+1)/10]``), ``masked_ce``,
        ``variance_proxy`` (SPEC §7) and ``tokens_per_s``, as maskdiff.training.trainer logs them; at a
        refit step ``ppots_refit`` and ``ppots_kl``. Sampler density, control variate, proxy
        and tracker are saved with every checkpoint (``maskdiff_state.pt``) and restored on
        resume, so a resumed run computes what the uninterrupted one does.
        """

        def __init__(self, model=None, args=None, data_collator=None, train_dataset=None,
                     eval_dataset=None, *, rate_sampler: RateSampler, masker: Masker,
                     mask_token_id: int | None = None, control=None, normalizer: str = "eligible",
                     seed: int | None = None, syntax_eligible: bool = False,
                     ppots_tracker=None, refit_every: int | None = None,
                     refit_min_count: float = 8.0, refit_restarts: int = 4,
                     logit_shift: int = 0, attention: str = "2d", pad_token_id: int | None = None,
                     pad_policy: str = "ignore", forward_kwargs: Mapping[str, Any] | None = None,
                     eval_rates_per_example: int = 4, eval_seed: int = 1234, **kwargs) -> None:
            from maskdiff.core.control import VarianceProxy

            if model is None:
                raise ValueError("model is required (model_init is not supported)")
            if normalizer not in NORMALIZERS:
                raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
            if isinstance(model, HFAdapter):
                options, model = model.options, model.model
                if mask_token_id is not None and mask_token_id != options.mask_token_id:
                    raise ValueError(f"mask_token_id={mask_token_id} differs from the adapter's "
                                     f"{options.mask_token_id}")
            else:
                if mask_token_id is None:
                    mask_token_id = _config_value(getattr(model, "config", None), "mask_token_id")
                if mask_token_id is None:
                    raise ValueError("mask_token_id is required (the model's config names none)")
                processing = kwargs.get("processing_class")
                if pad_token_id is None and processing is not None:
                    pad_token_id = (processing.eos_token_id if pad_policy == "eos"
                                    else processing.pad_token_id)
                if pad_token_id is None:
                    pad_token_id = _config_value(getattr(model, "config", None),
                                                 "eos_token_id" if pad_policy == "eos" else "pad_token_id")
                if isinstance(pad_token_id, (list, tuple)):
                    pad_token_id = pad_token_id[0]
                options = AdapterOptions(
                    mask_token_id=int(mask_token_id), logit_shift=logit_shift, attention=attention,
                    pad_token_id=None if pad_token_id is None else int(pad_token_id),
                    pad_policy=pad_policy, forward_kwargs=forward_kwargs or {})
            if data_collator is None:
                if options.pad_token_id is None:
                    raise ValueError("no pad id known for the default collator: pass pad_token_id= "
                                     "or data_collator=")
                data_collator = MaskedDiffusionCollator(options.pad_token_id,
                                                        pad_policy=options.pad_policy)
            if ppots_tracker is not None:
                if refit_every is None or int(refit_every) < 1:
                    raise ValueError(f"ppots_tracker needs refit_every >= 1, got {refit_every!r}")
                if not hasattr(rate_sampler, "set_density"):
                    raise ValueError(f"online P-POTS needs an importance sampler, got {rate_sampler!r}")
            elif refit_every is not None:
                raise ValueError("refit_every needs a ppots_tracker (maskdiff.ppots.SecondMomentTracker)")
            if eval_rates_per_example < 1:
                raise ValueError(f"eval_rates_per_example must be >= 1, got {eval_rates_per_example}")
            train_dataset = _indexed(train_dataset)
            if isinstance(eval_dataset, Mapping):
                eval_dataset = {k: _indexed(v) for k, v in eval_dataset.items()}
            else:
                eval_dataset = _indexed(eval_dataset)
            super().__init__(model=model, args=args, data_collator=data_collator,
                             train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
            # compute_loss returns a per-micro-batch mean: Trainer divides it by the number of
            # accumulation steps, which makes the step's gradient that of the global batch mean.
            self.loss_is_scaled_for_ga = False
            self.options = options
            self.estimator = Estimator(rate_sampler=rate_sampler, masker=masker,
                                       mask_token_id=options.mask_token_id, control=control,
                                       normalizer=normalizer, syntax_eligible=syntax_eligible)
            self.seed = int(self.args.seed if seed is None else seed)
            self.proxy = VarianceProxy()
            self.ppots_tracker, self.refit_every = ppots_tracker, refit_every
            self.refit_min_count, self.refit_restarts = float(refit_min_count), int(refit_restarts)
            self.refit_params: dict[str, float] | None = None
            self.refits, self.refit_history = 0, []
            eps = getattr(rate_sampler, "eps", DEFAULT_EPS)
            edges = [eps + (1 - eps) * j / eval_rates_per_example
                     for j in range(eval_rates_per_example + 1)]
            self.eval_estimators = [
                Estimator(rate_sampler=Window(edges[j], edges[j + 1], eps=eps), masker=Bernoulli(),
                          mask_token_id=options.mask_token_id, normalizer=normalizer,
                          syntax_eligible=syntax_eligible)
                for j in range(eval_rates_per_example)]
            self.eval_seed = int(eval_seed)
            self._pending: list[dict] = []
            self._micro = (-1, 0)
            self._window = _Window()
            self.add_callback(_StepEnd(self))

        # -- data: keep every column (eligible, example_index are not forward arguments) -----
        def _remove_unused_columns(self, dataset, description=None):
            return dataset

        def _get_collator_with_removed_columns(self, data_collator, description=None):
            return data_collator

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
            randomness = self.randomness(batch.example_index.tolist())
            adapter, logits = self.adapter(model), []

            def forward(input_ids, attention_mask):
                logits.append(adapter(input_ids, attention_mask))
                return logits[-1]

            out = self.estimator(forward, batch, randomness, update_control=False)
            loss = out.loss
            if torch.is_grad_enabled() and not loss.requires_grad and logits:
                # Nothing was masked in this micro-batch: the loss is a constant 0. Tie it to
                # the graph (zero gradient) so backward() and DDP's reducer still work.
                loss = loss + 0.0 * logits[0].flatten()[0]
            if model.training:
                self._pending.append({
                    "t": out.t.detach().float().cpu(), "w": out.w.detach().float().cpu(),
                    "raw": out.raw_loss.float().cpu(), "ce_sum": out.masked_ce_sum,
                    "ce_count": out.masked_count,
                    "tokens": int(batch.attention_mask.sum()) * out.forward_passes})
            if return_outputs:
                return loss, {"values": out.values, "raw_loss": out.raw_loss, "t": out.t, "w": out.w}
            return loss

        def _finish_step(self) -> None:
            """After an optimiser step: tracker and refit, control, proxy, log window."""
            pending, self._pending = self._pending, []
            if not pending:
                return
            t, w, raw = (torch.cat([p[k] for p in pending]) for k in ("t", "w", "raw"))
            finite = torch.isfinite(raw)  # Trainer may skip a non-finite loss: keep stats clean
            t, w, raw = t[finite], w[finite], raw[finite]
            if self.ppots_tracker is not None:  # local values: the tracker all-reduces itself
                self.ppots_tracker.update(t, raw, w)  # (an empty update still counts: ranks agree)
                self.ppots_tracker.all_reduce_()
                if self.state.global_step % self.refit_every == 0:
                    self._refit()
            scalars = torch.tensor([sum(p["ce_sum"] for p in pending),
                                    sum(p["ce_count"] for p in pending),
                                    sum(p["tokens"] for p in pending)], dtype=torch.float64)
            t, w, raw = _gather(t), _gather(w), _gather(raw)
            scalars = _all_reduce(scalars)
            if self.estimator.control is not None:
                self.estimator.control.update(w * raw, t)
            self.proxy.update(raw, w)
            self._window.add(t, raw, float(scalars[0]), float(scalars[1]), float(scalars[2]))

        def _refit(self) -> None:
            step = self.state.global_step
            try:
                refit = self.ppots_tracker.refit(min_count=self.refit_min_count,
                                                 restarts=self.refit_restarts, seed=step,
                                                 init=self.refit_params)
            except ValueError as err:  # too few filled bins yet: keep the current density
                self.refit_history.append({"step": step, "refit": None, "reason": str(err)})
                return
            self.estimator.rate_sampler.set_density(refit.density.as_tuple())
            self.refit_params, self.refits = dict(refit.epr.params), self.refits + 1
            self.refit_history.append({"step": step, "refit": self.refits, "kl": refit.epr.kl,
                                       "params": self.refit_params,
                                       "bins_used": int(refit.table.t.size)})

        def log(self, logs, start_time=None):
            if "loss" in logs and not any(k.startswith("eval_") for k in logs):
                logs.update(self._window.flush())
                variance = self.proxy.variance()
                if not math.isnan(variance):
                    logs["variance_proxy"] = variance
                if self.refit_history and self.refit_history[-1]["step"] == self.state.global_step:
                    last = self.refit_history[-1]
                    if last["refit"] is not None:
                        logs["ppots_refit"], logs["ppots_kl"] = last["refit"], last["kl"]
            super().log(logs, start_time)

        # -- evaluation: the full-range objective (maskdiff.training.evaluate.elbo) ------------------
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            batch = batch_from_inputs(inputs)
            adapter, indices = self.adapter(model), batch.example_index.tolist()
            total = torch.zeros(len(batch), dtype=torch.float64, device=batch.x0.device)
            with torch.no_grad():
                for stratum, estimator in enumerate(self.eval_estimators):
                    randomness = BatchRandomness.for_batch(self.eval_seed, stratum, indices)
                    total += estimator(adapter, batch, randomness).values.double()
            loss = (total / len(self.eval_estimators)).mean().float()
            return loss.detach(), None, None

        # -- checkpoints ----------------------------------------------------------------------
        def maskdiff_state(self) -> dict:
            """Sampler density, control variate, proxy and tracker (plain tensors / strings)."""
            sampler = self.estimator.rate_sampler
            return {
                "sampler": getattr(sampler, "state_dict", dict)(),
                "control": self.estimator.control.state_dict() if self.estimator.control else {},
                "proxy": self.proxy.state_dict(),
                "tracker": self.ppots_tracker.state_dict() if self.ppots_tracker else {},
                "refit": json.dumps({"params": self.refit_params, "refits": self.refits,
                                     "history": self.refit_history}),
            }

        def load_maskdiff_state(self, state: Mapping[str, Any]) -> None:
            sampler = self.estimator.rate_sampler
            if hasattr(sampler, "load_state_dict"):
                sampler.load_state_dict(state["sampler"])
            if self.estimator.control is not None:
                self.estimator.control.load_state_dict(state["control"])
            self.proxy.load_state_dict(state["proxy"])
            if self.ppots_tracker is not None:
                self.ppots_tracker.load_state_dict(state["tracker"])
            refit = json.loads(state["refit"])
            self.refit_params, self.refits = refit["params"], int(refit["refits"])
            self.refit_history = list(refit["history"])

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                folder = f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
                torch.save(self.maskdiff_state(), path)

        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None:
                return
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{checkpoint} has no {STATE_FILE}: it was not written by "
                                 f"MaskedDiffusionTrainer, so the sampler, control variate and "
                                 f"tracker cannot be restored")
            self.load_maskdiff_state(torch.load(path, weights_only=True))

    return MaskedDiffusionTrainer


def _indexed(dataset: Any) -> Any:
    if dataset is None or isinstance(dataset, IndexedDataset):
        return dataset
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return dataset  # rows must carry their own example_index (the collator checks)
    return IndexedDataset(dataset)


_TRAINER_CLASS = None


def trainer_class():
    """The ``MaskedDiffusionTrainer`` class, built once (it subclasses ``transformers.Trainer``)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        _TRAINER_CLASS = _make_trainer_class()
    return _TRAINER_CLASS
