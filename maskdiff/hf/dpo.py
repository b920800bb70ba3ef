"""``MaskedDiffusionDPOTrainer``: DPO (and ELBO-KTO) on ELBO differences for Hugging Face masked
diffusion models, a ``transformers.Trainer`` (docs/method.md §13).

The loss, the ELBO estimators and the reference table are :mod:`maskdiff.preference`'s, the
ones ``maskdiff dpo`` trains native runs with; this module is the glue to ``transformers``:
TRL's preference rows (:mod:`maskdiff.hf.pairs`), the reference as a frozen copy, as the PEFT
base model with its adapters disabled, or precomputed once, TRL's log names, and maskdiff's
checkpoint state (:class:`~maskdiff.hf.resume.CheckpointedTrainer`). It imports
``transformers``; :mod:`maskdiff.hf` imports it on first use of the name.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskdiff import jsonio
from maskdiff.core.batch import Batch
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.hf.adapter import STATE_FILE, HFAdapter
from maskdiff.hf.checks import check_model
from maskdiff.hf.collate import batch_from_inputs
from maskdiff.hf.pairs import PreferenceCollator, encode_pairs
from maskdiff.hf.resume import CheckpointedTrainer
from maskdiff.hf.setup import model_and_options, trainable_counts
from maskdiff.preference.elbo import DEFAULT_ESTIMATOR, preference_estimator
from maskdiff.preference.losses import LOSSES, preference_loss
from maskdiff.preference.reference import (
    REFERENCE_FILE, load_or_compute, reference_table, weights_digest,
)

__all__ = ["MaskedDiffusionDPOTrainer", "METRICS"]

# TRL's DPOTrainer names; logps/* are the policy's ELBO estimates B̂_π (nats).
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


class MaskedDiffusionDPOTrainer(CheckpointedTrainer):
    """DPO on ELBO differences (LLaDA 1.5's VRPO and maskdiff's estimators, docs/method.md §13).

    Args (besides ``transformers.Trainer``'s own):
        model: a HF masked diffusion model, a PEFT model (LoRA: :func:`maskdiff.hf.lora.apply_lora`)
            or an :class:`HFAdapter`; adapter options as :class:`MaskedDiffusionTrainer`'s
            (``mask_token_id``, ``logit_shift``, ``attention``, ``pad_token_id``,
            ``pad_policy``, ``forward_kwargs``); the mask id defaults to the tokenizer's, else
            the config's.
        ref_model: the reference; default a frozen copy of ``model`` at the start, or, for a
            PEFT model, the same model with its adapters disabled (no copy, as TRL does).
        train_dataset, eval_dataset: rows ``{"prompt", "chosen", "rejected"}``, strings or
            TRL's conversational lists of messages (:mod:`maskdiff.hf.pairs`); tokenised with
            ``processing_class`` (required), ``chat_template_kwargs`` passed to the template.
            ``max_length``: a longer prompt + answer is refused, never truncated.
        loss: ``"dpo"`` or ``"kto"`` (ELBO-KTO on the pairs; its reference point is each
            micro-batch's). ``beta``: the reward scale.
        estimator: a :data:`~maskdiff.preference.elbo.PREFERENCE_ESTIMATORS` name (default
            :data:`~maskdiff.preference.elbo.DEFAULT_ESTIMATOR`); ``budget`` (alias
            ``mc_budget``, default 8): forward passes per answer per model; ``eps`` the rate
            floor. Draw ``j`` of pair ``i``'s chosen answer is keyed ``(seed, 2i, j)``, of its
            rejected one ``(seed, 2i + 1, j)`` (``seed`` default ``args.seed``): the draws do not
            depend on the batch, the world size, the step or a resume, as ``maskdiff dpo``'s.
        precompute_reference: compute the reference's ELBOs once, under the reference's draws,
            before training (``reference_elbos.json`` in ``output_dir``, reused when its key --
            the starting weights, the tokenised rows, estimator, budget, seed, eps -- matches;
            eval sets ``reference_elbos_eval[_name].json``): equal to what the reference computes
            every step, without its forward passes.
        disable_dropout: every dropout of the model to 0 (default; ``nn.Dropout`` as TRL, and
            the ``*dropout*`` rates attention code reads from its config): the draws are the
            only noise, as in ``maskdiff dpo`` (whose policy runs in eval mode).

    Logged: ``loss`` and, per logging window (``eval_`` prefixed in evaluation), TRL's
    ``rewards/chosen``, ``rewards/rejected`` (``β·(B̂_π − B̂_ref)`` means), ``rewards/margins``,
    ``rewards/accuracies`` (share of pairs whose chosen reward is the higher) and
    ``logps/chosen``, ``logps/rejected`` (``B̂_π``). Checkpoints carry the preference settings
    (a resume with other ones is refused) and the open log window, so a resumed run logs what an
    uninterrupted one does.
    """

    def __init__(self, model=None, ref_model=None, args=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, loss: str = "dpo",
                 beta: float = 0.1, estimator: str = DEFAULT_ESTIMATOR,
                 budget: int | None = None, mc_budget: int | None = None,
                 seed: int | None = None, eps: float = DEFAULT_EPS,
                 precompute_reference: bool = False, max_length: int | None = None,
                 disable_dropout: bool = True, mask_token_id: int | None = None,
                 logit_shift: int | None = None, attention: str | None = None,
                 pad_token_id: int | None = None, pad_policy: str = "exclude",
                 forward_kwargs: Mapping[str, Any] | None = None,
                 chat_template_kwargs: Mapping[str, Any] | None = None, **kwargs) -> None:
        if model is None:
            raise ValueError("model is required (model_init is not supported)")
        if processing_class is None:
            raise ValueError("processing_class (the tokenizer) is required: it tokenises the "
                             "preference rows")
        self.loss_name, self.beta, self.eps, self.budget = _settings(loss, beta, eps, budget,
                                                                     mc_budget)
        self.preference_estimator = preference_estimator(estimator)
        self.preference_estimator.draws(self.budget)  # a budget the estimator cannot split
        if mask_token_id is None and not isinstance(model, HFAdapter):
            mask_token_id = getattr(processing_class, "mask_token_id", None)  # as load_hf_model
        model, options = model_and_options(
            model, mask_token_id, processing_class, logit_shift=logit_shift, attention=attention,
            pad_token_id=pad_token_id, pad_policy=pad_policy, forward_kwargs=forward_kwargs)
        check_model(model, mask_token_id=options.mask_token_id, pad_token_id=options.pad_token_id)
        if options.pad_token_id is None:
            raise ValueError("no pad id known: pass pad_token_id= (or a tokenizer with a pad token)")
        if disable_dropout:
            _disable_dropout(model)
        counts = trainable_counts(model)
        collator = PreferenceCollator(options.pad_token_id, pad_policy=options.pad_policy,
                                      max_length=max_length)

        def encode(data):
            return None if data is None else encode_pairs(
                processing_class, data, max_length=max_length,
                chat_template_kwargs=chat_template_kwargs)

        evals = ({name: encode(part) for name, part in eval_dataset.items()}
                 if isinstance(eval_dataset, Mapping) else encode(eval_dataset))
        ref_model = _reference_model(model, ref_model, precompute_reference)
        super().__init__(model=model, args=args, data_collator=collator,
                         train_dataset=encode(train_dataset), eval_dataset=evals,
                         processing_class=processing_class, **kwargs)
        # compute_loss returns a per-micro-batch mean: Trainer divides it by the number of
        # accumulation steps (transformers 5: loss_is_scaled_for_ga; 4.x: no loss kwargs).
        self.loss_is_scaled_for_ga, self.model_accepts_loss_kwargs = False, False
        self.options, self.collator, self.parameter_counts = options, collator, counts
        self.seed = int(self.args.seed if seed is None else seed)
        self.ref_model = None if ref_model is None else ref_model.to(self.args.device)
        self.reference_kind = ("precomputed" if precompute_reference else "model"
                               if ref_model is not None else "adapters-disabled")
        self._metrics: dict[str, defaultdict] = {"train": defaultdict(list),
                                                 "eval": defaultdict(list)}
        if precompute_reference:
            self._precompute_all()

    # -- the reference --------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self, model: nn.Module | None = None) -> Iterator[HFAdapter]:
        """The reference behind the model contract: ``ref_model``, else ``model`` (default the
        trained one) with its PEFT adapters disabled, else ``model`` itself (its starting
        weights: only while precomputing)."""
        model = self.model if model is None else model
        if self.ref_model is not None:
            yield HFAdapter(self.ref_model, self.options)
        elif _is_peft(self.accelerator.unwrap_model(model)):
            with self.accelerator.unwrap_model(model).disable_adapter():
                yield HFAdapter(model, self.options)
        else:
            yield HFAdapter(model, self.options)

    def _draws(self) -> dict:
        return {"seed": self.seed, "budget": self.budget,
                "mask_token_id": self.options.mask_token_id, "eps": self.eps}

    def _precompute_all(self) -> None:
        """The reference table of every data set, put in its rows (``"reference"``)."""
        reference = self.ref_model if self.ref_model is not None else self.model
        digest = weights_digest(self.accelerator.unwrap_model(reference).state_dict())
        sets = {"": self.train_dataset}
        if isinstance(self.eval_dataset, Mapping):
            sets.update({f"eval_{name}": rows for name, rows in self.eval_dataset.items()})
        elif self.eval_dataset is not None:
            sets["eval"] = self.eval_dataset
        for name, rows in sets.items():
            if rows:
                self._precompute(rows, f"reference_elbos_{name}.json" if name else REFERENCE_FILE,
                                 digest)

    def _precompute(self, rows: list[dict], file: str, digest: str) -> None:
        key = {"start_weights": digest, "rows": _rows_digest(rows),
               "estimator": self.preference_estimator.name, "options": _options_key(self.options),
               **self._draws()}

        def batches(indices: list[int]) -> tuple[Batch, Batch]:
            return tuple(self._scored(b) for b in self.collator.pair_batches(rows, indices))

        def compute() -> torch.Tensor:
            with self.reference() as reference:
                return reference_table(
                    reference, len(rows), batches,
                    self.preference_estimator, **self._draws(),
                    batch_size=max(self.args.per_device_eval_batch_size, 1),
                    device=self.args.device)

        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        table, _ = load_or_compute(self.args.output_dir, key, compute, name=file)
        for row, values in zip(rows, table.tolist()):
            row["reference"] = values

    # -- the loss -------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The mean over the micro-batch's pairs of :func:`preference_loss` on ``B̂_π`` and
        ``B̂_ref`` (the batch's first half the chosen answers, its second the rejected)."""
        batch = self._scored(batch_from_inputs(inputs))
        policy = self.preference_estimator.log_likelihood(
            HFAdapter(model, self.options), batch, role="policy", **self._draws())
        if "reference_elbos" in inputs:
            reference = inputs["reference_elbos"].to(device=policy.device, dtype=torch.float32)
        else:
            with torch.no_grad(), self.reference(model) as ref:
                reference = self.preference_estimator.log_likelihood(
                    ref, batch, role="reference", **self._draws())
        n = len(batch) // 2
        losses = preference_loss(self.loss_name, policy[:n], policy[n:], reference[:n],
                                 reference[n:], self.beta)
        loss = losses.mean()
        self._record(policy.detach(), reference, "train" if model.training else "eval")
        if return_outputs:
            return loss, {"policy_elbos": policy.detach(), "reference_elbos": reference,
                          "losses": losses.detach()}
        return loss

    def _scored(self, batch: Batch) -> Batch:
        """``batch`` with the positions a logit shift cannot score removed from the ELBO."""
        return dataclasses.replace(batch, eligible=self.options.eligible(batch.eligible))

    def _record(self, policy: torch.Tensor, reference: torch.Tensor, split: str) -> None:
        n = len(policy) // 2
        rewards = self.beta * (policy - reference)
        chosen, rejected = rewards[:n], rewards[n:]
        values = torch.stack([chosen, rejected, chosen - rejected, (chosen > rejected).float(),
                              policy[:n], policy[n:]], dim=1)
        means = self.accelerator.gather_for_metrics(values).mean(dim=0).tolist()
        for name, value in zip(METRICS, means):
            self._metrics[split][name].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs, start_time=None):
        split, prefix = ("train", "") if "loss" in logs else ("eval", "eval_")
        stored = self._metrics[split]
        logs.update({prefix + name: sum(values) / len(values)
                     for name, values in stored.items() if values})
        stored.clear()
        super().log(logs, start_time)

    # -- checkpoints ----------------------------------------------------------------------
    def settings(self) -> dict:
        """What a step computes: a resume with other values is refused."""
        return {"loss": self.loss_name, "beta": self.beta,
                "estimator": self.preference_estimator.name, "budget": self.budget,
                "seed": self.seed, "eps": self.eps, "reference": self.reference_kind}

    def maskdiff_state(self) -> dict:
        return {"dpo": jsonio.dumps(self.settings()),
                "log_window": jsonio.dumps(dict(self._metrics["train"]))}

    def load_maskdiff_state(self, state: Mapping[str, Any]) -> None:
        if "dpo" not in state:
            raise ValueError(f"{STATE_FILE}: the checkpoint is not a DPO trainer's (it has no "
                             f"preference settings): resume it with MaskedDiffusionTrainer")
        saved, ours = json.loads(state["dpo"]), self.settings()
        changed = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in ours.items()
                   if saved.get(k) != v]
        if changed:
            raise ValueError(f"{STATE_FILE}: the checkpoint was trained with "
                             f"{', '.join(changed)}: resume with its settings or another "
                             f"output_dir")
        self._metrics["train"] = defaultdict(list, json.loads(state["log_window"]))


def _settings(loss, beta, eps, budget, mc_budget) -> tuple[str, float, float, int]:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    if budget is not None and mc_budget is not None and budget != mc_budget:
        raise ValueError(f"budget={budget} and mc_budget={mc_budget} name the same setting: "
                         f"give one")
    budget = next((b for b in (budget, mc_budget) if b is not None), 8)
    return loss, float(beta), float(eps), budget


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _reference_model(model: nn.Module, ref_model, precompute: bool) -> nn.Module | None:
    """The separate reference module, frozen: ``ref_model``, else a copy of ``model`` unless
    the reference is ``model`` itself (PEFT adapters disabled, or a precomputed table)."""
    if isinstance(ref_model, HFAdapter):
        ref_model = ref_model.model
    if ref_model is None and not precompute and not _is_peft(model):
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model = ref_model.eval().requires_grad_(False)
    return ref_model


def _disable_dropout(model: nn.Module) -> None:
    """Every dropout of ``model`` to 0: ``nn.Dropout`` modules (TRL's ``disable_dropout``) and
    float attributes and config fields named ``*dropout*``, which attention implementations read
    in training mode (LLaDA reads ``config.attention_dropout``, Llama-style code copies it to
    ``self.attention_dropout``)."""
    configs = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and all(config is not seen for seen in configs):
            configs.append(config)
    for config in configs:
        for name, value in list(vars(config).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(config, name, 0.0)


def _rows_digest(rows: list[dict]) -> str:
    tokens = [[row[role][k] for role in ("chosen", "rejected") for k in ("input_ids", "eligible")]
              for row in rows]
    return hashlib.sha256(jsonio.dumps(tokens).encode()).hexdigest()


def _options_key(options) -> dict:
    return {"logit_shift": options.logit_shift, "attention": options.attention,
            "pad_token_id": options.pad_token_id, "pad_policy": options.pad_policy}
