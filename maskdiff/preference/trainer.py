"""DPO (and ELBO-KTO) of a native run on preference pairs (docs/method.md §13; ``maskdiff dpo``).

The policy starts from a run's checkpoint; the reference is a frozen copy of those weights, or
their ELBOs precomputed once under the shared seeds (:mod:`maskdiff.preference.reference`).
Pairs are visited in a seeded per-epoch order; each response's draws are keyed by (seed,
example index, draw), so a resumed run computes exactly what an uninterrupted one computes. The
output directory is itself a run directory (``config.json``, ``tokenizer.json``,
``checkpoints/``): ``maskdiff evaluate --run OUT --checkpoint latest`` scores the tuned policy.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.data.collate import Collator, CollatorConfig
from maskdiff.fileio import atomic_write_text
from maskdiff.preference.elbo import DEFAULT_ESTIMATOR, preference_estimator
from maskdiff.preference.losses import LOSSES, dpo_margin, preference_loss
from maskdiff.preference.pairs import check_pairs_fit, load_pairs, pair_batches
from maskdiff.preference.reference import (
    REFERENCE_FILE, file_digest, load_or_compute, reference_elbos, weights_digest,
)
from maskdiff.training import rundir
from maskdiff.training.checkpoint import CheckpointError, find_checkpoint, save_checkpoint
from maskdiff.training.config import to_dict
from maskdiff.training.data_order import DataOrder
from maskdiff.training.errors import TrainingError, note_checkpoint
from maskdiff.training.metrics_log import truncate_metrics
from maskdiff.training.runs import TOKENIZER_FILE, load_run

DPO_FILE = "dpo.json"
# Fields a resume may change: they do not change what a step computes.
FREE_FIELDS = ("steps", "checkpoint_every", "device", "out_dir")


@dataclass(frozen=True)
class DPOConfig:
    """One preference run. ``budget``: forward passes per response per model; ``steps``:
    optimiser steps of ``batch_size`` pairs; ``checkpoint_every`` 0: at the end only."""

    run: str
    pairs: str
    out_dir: str
    checkpoint: str = "best"
    loss: str = "dpo"
    estimator: str = DEFAULT_ESTIMATOR
    budget: int = 8
    beta: float = 0.1
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    precompute_reference: bool = False
    checkpoint_every: int = 0
    eps: float = DEFAULT_EPS
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        preference_estimator(self.estimator).draws(self.budget)  # a bad name or budget: refused
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("beta", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def config_changes(old: dict, new: DPOConfig) -> list[str]:
    """The fields (outside :data:`FREE_FIELDS`) in which a checkpoint's config differs."""
    return [f.name for f in fields(DPOConfig) if f.name not in FREE_FIELDS
            and old.get(f.name, getattr(DPOConfig, f.name, None)) != getattr(new, f.name)]


class DPOTrainer:
    """Preference-tunes the run ``config.run`` into ``config.out_dir``."""

    def __init__(self, config: DPOConfig, quiet: bool = False) -> None:
        self.config, self.quiet = config, quiet
        if Path(config.out_dir).resolve() == Path(config.run).resolve():
            raise ValueError(f"--out {config.out_dir} is the starting run itself; give another "
                             f"directory (the run's checkpoints stay the reference)")
        loaded = load_run(config.run, config.checkpoint, config.device)
        run = loaded.config
        if run.model.causal:
            raise ValueError(f"{config.run} is a causal (autoregressive) run: it has no ELBO; "
                             f"give a masked-diffusion run")
        if run.block_size is not None:
            raise ValueError(f"{config.run} is a block-diffusion run (block_size="
                             f"{run.block_size}): maskdiff dpo does not support it yet")
        self.run_config, self.tokenizer, self.start = run, loaded.tokenizer, loaded.checkpoint
        self.device = torch.device(config.device)
        self.collate = Collator(loaded.tokenizer, CollatorConfig(
            max_len=run.data.max_len, pad_policy=run.data.pad_policy, overflow="error"))
        self.pairs = load_pairs(config.pairs)
        check_pairs_fit(self.pairs, self.collate, config.pairs)
        self.estimator = preference_estimator(config.estimator)
        self.policy = loaded.model.eval()  # no dropout: the ELBO draws are the only noise
        self.start_digest = weights_digest(self.policy.state_dict())
        self.reference = None
        if not config.precompute_reference:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.table = None
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.order = DataOrder(len(self.pairs), config.seed)
        self.out_dir = Path(config.out_dir)
        self.step, self.policy_passes, self.reference_passes = 0, 0, 0
        self.prior_seconds, self.session_start = 0.0, time.perf_counter()

    # -- the reference --------------------------------------------------------------------
    def _reference_key(self) -> dict:
        cfg = self.config
        return {"start_weights": self.start_digest, "pairs": file_digest(cfg.pairs),
                "estimator": cfg.estimator, "budget": cfg.budget, "seed": cfg.seed,
                "eps": cfg.eps, "max_len": self.run_config.data.max_len,
                "pad_policy": self.run_config.data.pad_policy}

    def _precompute(self) -> None:
        cfg = self.config

        def compute() -> torch.Tensor:
            return reference_elbos(self.policy, self.pairs, self.collate, self.estimator,
                                   budget=cfg.budget, seed=cfg.seed,
                                   mask_token_id=self.tokenizer.mask_id, eps=cfg.eps,
                                   batch_size=max(cfg.batch_size, 16), device=self.device)
        self.table, fresh = load_or_compute(self.out_dir, self._reference_key(), compute)
        if fresh:
            self.reference_passes += 2 * len(self.pairs) * cfg.budget
        if not self.quiet:
            how = "computed" if fresh else "reused"
            print(f"maskdiff dpo: reference ELBOs {how} ({self.out_dir / REFERENCE_FILE})",
                  file=sys.stderr, flush=True)

    def _reference_elbos(self, indices, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if self.table is not None:
            rows = self.table[indices].to(device=self.device, dtype=torch.float32)
            return rows[:, 0], rows[:, 1]
        with torch.no_grad():
            values = [self.estimator.log_likelihood(
                self.reference, batch, seed=cfg.seed, budget=cfg.budget,
                mask_token_id=self.tokenizer.mask_id, role="reference", eps=cfg.eps)
                for batch in (chosen, rejected)]
        self.reference_passes += 2 * len(indices) * cfg.budget
        return values[0], values[1]

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.config
        indices = self.order.global_batch(self.step, cfg.batch_size)
        chosen, rejected = (b.to(self.device) for b in pair_batches(self.pairs, indices,
                                                                    self.collate))
        policy = [self.estimator.log_likelihood(
            self.policy, batch, seed=cfg.seed, budget=cfg.budget,
            mask_token_id=self.tokenizer.mask_id, role="policy", eps=cfg.eps)
            for batch in (chosen, rejected)]
        self.policy_passes += 2 * len(indices) * cfg.budget
        ref_w, ref_l = self._reference_elbos(indices, chosen, rejected)
        losses = preference_loss(cfg.loss, policy[0], policy[1], ref_w, ref_l, cfg.beta)
        loss = losses.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"the {cfg.loss} loss is {float(loss.detach())} at step "
                                f"{self.step + 1} (pairs {indices[:8]}); stopped before the update")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.policy.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        margin = dpo_margin(policy[0].detach(), policy[1].detach(), ref_w, ref_l)
        return {"step": self.step + 1, "loss": float(loss.detach()),
                "reward_margin": float(cfg.beta * margin.mean()),
                "accuracy": float((margin > 0).float().mean()),
                "reward_chosen": float(cfg.beta * (policy[0].detach() - ref_w).mean()),
                "reward_rejected": float(cfg.beta * (policy[1].detach() - ref_l).mean()),
                "grad_norm": float(grad_norm), "lr": cfg.lr,
                "policy_forward_passes": self.policy_passes,
                "reference_forward_passes": self.reference_passes}

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "dpo": jsonio.dumps(self.config.to_dict()), "start_weights": self.start_digest,
                "counters": {"policy_forward_passes": self.policy_passes,
                             "reference_forward_passes": self.reference_passes,
                             "seconds": self._seconds()}}

    def _seconds(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.session_start

    def _checkpoint(self) -> None:
        note_checkpoint(save_checkpoint(self.out_dir / "checkpoints", self.step,
                                        self.policy.state_dict(), self._state(),
                                        to_dict(self.run_config)))

    def _resume(self) -> bool:
        found = find_checkpoint(self.out_dir / "checkpoints")
        ckpt = found.checkpoint
        if ckpt is None:
            if found.skipped:
                raise CheckpointError(f"no valid checkpoint under {self.out_dir / 'checkpoints'}"
                                      f" ({found.note()}); use --overwrite to start over")
            return False
        state = ckpt.state
        if "dpo" not in state:
            raise ValueError(f"{self.out_dir} holds checkpoints of a training run, not of a "
                             f"preference run ({ckpt.path}); use another --out")
        old = json.loads(state["dpo"])
        changed = config_changes(old, self.config)
        if state.get("start_weights") != self.start_digest:
            changed.append(f"the starting weights of {self.config.run}")
        if changed:
            raise ValueError(f"{ckpt.path} was written by another preference run (it differs "
                             f"in {', '.join(changed)}); use --overwrite or another --out")
        self.policy.load_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        counters = state["counters"]
        self.policy_passes = int(counters["policy_forward_passes"])
        self.reference_passes = int(counters["reference_forward_passes"])
        self.prior_seconds = float(counters["seconds"])
        note_checkpoint(ckpt.path)
        return True

    # -- the loop -------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None, overwrite: bool = False) -> dict:
        """Train to ``config.steps`` (resuming from ``out_dir``'s newest checkpoint);
        ``stop_after`` ends the call after that many steps with a checkpoint, as an
        interruption would. Returns (and writes) ``results.json``'s content."""
        with rundir.claim(self.out_dir, rank=0, config=to_dict(self.run_config), resume=True,
                          overwrite=overwrite, free_fields=()):
            return self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> dict:
        cfg = self.config
        resumed = self._resume()
        atomic_write_text(self.out_dir / "config.json",
                          jsonio.dumps(to_dict(self.run_config), indent=2, sort_keys=True) + "\n")
        self.tokenizer.save(self.out_dir / TOKENIZER_FILE)
        atomic_write_text(self.out_dir / DPO_FILE, jsonio.dumps(
            {**cfg.to_dict(), "start_checkpoint": str(self.start),
             "estimator_description": self.estimator.description}, indent=2) + "\n")
        if cfg.precompute_reference:
            self._precompute()
        metrics = self.out_dir / "metrics.jsonl"
        truncate_metrics(metrics, self.step if resumed else -1)
        every = cfg.checkpoint_every or cfg.steps
        with metrics.open("a") as log:
            while self.step < cfg.steps:
                record = self.train_step()
                self.step += 1
                log.write(jsonio.dumps(record) + "\n")
                log.flush()
                if not self.quiet:
                    print(f"step {self.step}/{cfg.steps} {cfg.loss} {record['loss']:.4f} "
                          f"margin {record['reward_margin']:+.4f} acc {record['accuracy']:.2f}",
                          flush=True)
                stop = stop_after is not None and self.step >= stop_after
                if self.step % every == 0 or self.step == cfg.steps or stop:
                    self._checkpoint()
                if stop:
                    break
        return self._result()

    def _result(self) -> dict:
        rows = [json.loads(line) for line in
                (self.out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = rows[-1] if rows else {}
        result = {"steps": self.step, "final_loss": last.get("loss"),
                  "reward_margin": last.get("reward_margin"), "accuracy": last.get("accuracy"),
                  "policy_forward_passes": self.policy_passes,
                  "reference_forward_passes": self.reference_passes,
                  "seconds": self._seconds(), "pairs": len(self.pairs),
                  "start_checkpoint": str(self.start), "out_dir": str(self.out_dir),
                  **{k: getattr(self.config, k) for k in (
                      "loss", "estimator", "budget", "beta", "precompute_reference", "seed")}}
        atomic_write_text(self.out_dir / "results.json", jsonio.dumps(result, indent=2) + "\n")
        return result


def train_dpo(config: DPOConfig, *, stop_after: int | None = None, overwrite: bool = False,
              quiet: bool = False) -> dict:
    """Run (or resume) one preference run; its ``results.json``."""
    return DPOTrainer(config, quiet=quiet).fit(stop_after=stop_after, overwrite=overwrite)
