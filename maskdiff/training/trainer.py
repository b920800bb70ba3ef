"""The trainer: optimiser, schedule, evaluation, early stopping, logs, checkpoints, DDP.

One :class:`Trainer` trains the masked-diffusion model with any estimator, and its causal twin
with the next-token loss, on a built-in task or a user's JSONL file. Determinism contract
(docs/architecture.md §3): the examples of step ``s`` follow a seeded per-epoch permutation, and each example's
rates and masks come from ``(seed, example index, step)``; a run resumed from a checkpoint
computes exactly what the uninterrupted run computes, and ``torchrun`` with any number of ranks
computes the same global batch and gradient as one process.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text
from maskdiff.training import distributed, rundir
from maskdiff.training.checkpoint import (CheckpointError, find_checkpoint, latest_checkpoint,
                                          load_checkpoint, save_checkpoint)
from maskdiff.training.errors import TrainingError, note_checkpoint
from maskdiff.training.config import (RESUME_FREE_FIELDS, TrainConfig, block_layout,
                                      config_differences, to_dict)
from maskdiff.core.control import VarianceProxy
from maskdiff.data import TaskData
from maskdiff.data.setup import load_task
from maskdiff.training.evaluate import EvalResult, causal_nll, elbo
from maskdiff.training.needs import resolve_estimator
from maskdiff.models import TransformerConfig, build_model
from maskdiff.training.objective import build_objective
from maskdiff.training.optimizers import build_optimizer
from maskdiff.training.data_sizes import resolve_data_sizes
from maskdiff.training.extend import extension_of, fresh_start
from maskdiff.training.runs import (TOKENIZER_FILE, check_step_memory, checked_weights,
                                    make_collator, start_notes, truncation_counts,
                                    weights_fit_config)
from maskdiff.training.metrics_log import LogWindow, open_metrics, plain_line, truncate_metrics
from maskdiff.training.stats import StepStats, finish_step
from maskdiff.core.seeding import BatchRandomness
from maskdiff.training.data_order import DataOrder


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run reports; also written to ``results.json``."""

    steps: int
    best_val: float | None
    best_val_se: float | None
    best_step: int | None
    final_val: float | None
    stopped_early: bool
    variance_proxy: float
    forward_passes: int
    tokens: int
    seconds: float
    out_dir: str
    n_parameters: int
    history: list[dict] = field(default_factory=list)
    threads: int = 0  # torch's intra-op threads: float results depend on it
    truncated: dict = field(default_factory=dict)  # per split: examples/tokens cut to max_len
    val_examples: int = 0  # the validation examples each evaluation scores
    duplicates: dict = field(default_factory=dict)  # repeated rows of a train_file (data.holdout)
    extended_from: list = field(default_factory=list)  # old max_steps of each --extend

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Trainer:
    """Trains one run described by a :class:`TrainConfig` into ``config.out_dir``.

    Args:
        config: the run's configuration.
        task: the data, if already loaded (else built from ``config.data``).
        init_weights: a state dict to start from (a shared starting checkpoint).
        quiet: no progress bar and no printed lines.
    """

    def __init__(self, config: TrainConfig, task: TaskData | None = None,
                 init_weights: dict[str, torch.Tensor] | None = None, quiet: bool = False) -> None:
        distributed.init_from_env(config.device)
        self.rank, self.world = distributed.rank_and_world()
        self.device = distributed.local_device(config.device)
        self.task = task if task is not None else load_task(config.data)
        tok = self.task.tokenizer
        config, notes = resolve_data_sizes(config, self.task)  # data.max_len="auto" -> a number
        if notes and self.rank == 0:  # said even when quiet, as truncation is
            print("\n".join(f"maskdiff: {line}" for line in notes), file=sys.stderr, flush=True)
        self.config = replace(config, estimator=resolve_estimator(config.estimator, self.task))
        self.quiet = quiet or self.rank != 0
        optim = config.optim
        per_rank, rem = divmod(optim.batch_size, self.world * optim.grad_accum)
        if rem or per_rank == 0:
            raise ValueError(
                f"optim.batch_size={optim.batch_size} must be a positive multiple of "
                f"world size ({self.world}) × grad_accum ({optim.grad_accum})")
        self.micro_batch = per_rank
        self.collate = make_collator(config, self.task)
        self.causal = config.model.causal
        model_cfg = TransformerConfig(
            vocab_size=tok.vocab_size, max_len=config.data.max_len, mask_token_id=tok.mask_id,
            **{k: v for k, v in to_dict(config.model).items()})
        with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
            torch.manual_seed(config.seed)
            self.model = build_model(model_cfg).to(self.device)
        if init_weights is not None:
            self.model.load_state_dict(checked_weights(self.model, init_weights, "init_weights"))
        self.layout = block_layout(config)
        self.estimator, self.refitter = build_objective(
            self.config.estimator, causal=self.causal, mask_token_id=tok.mask_id,
            layout=self.layout, max_steps=optim.max_steps)
        check_step_memory(config, tok.vocab_size, per_rank, self.estimator.forward_passes)
        self.ddp = distributed.wrap(self.model, self.device)
        self.optimizer = build_optimizer(self.model.parameters(), optim)
        self.order = DataOrder(len(self.task.train), config.seed)
        self.proxy = VarianceProxy()
        self.out_dir = Path(config.out_dir)
        self.step, self.best, self.best_se, self.best_step, self.bad_evals = 0, None, None, None, 0
        self.forward_passes, self.tokens, self.history = 0, 0, []
        self.window, self.window_state = LogWindow(), None  # the steps since the last log line
        self.extended_from, self.extension, self.truncated = [], None, {}  # training.extend
        # Training time over all sessions of the run (a resumed run adds to what it had).
        self.prior_seconds, self.session_start = 0.0, time.perf_counter()

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "step": self.step, "optimizer": self.optimizer.state_dict(),
            **self.estimator.state_dict(),  # "sampler" and "control" of an estimator
            "proxy": self.proxy.state_dict(),
            "refit": self.refitter.state_dict() if self.refitter else {},
            "early_stopping": {"best": self.best, "best_se": self.best_se,
                               "best_step": self.best_step, "bad_evals": self.bad_evals},
            "log_window": self.window.state_dict(),
            "counters": {"forward_passes": self.forward_passes, "tokens": self.tokens,
                         "seconds": self._seconds()},
            "history": jsonio.dumps(self.history), "extended_from": list(self.extended_from),
        }

    def _resume(self, extend: bool = False) -> bool:
        root = self.out_dir / "checkpoints"
        fits = weights_fit_config(self.task.tokenizer)

        def usable(ckpt) -> None:  # loads it: one that does not fit this run is damaged
            fits(ckpt)
            self._load(ckpt, extend)
        found = find_checkpoint(root, validate=usable)
        if found.checkpoint is None and found.skipped:
            raise CheckpointError(f"no valid checkpoint under {root} ({found.note()}); "
                                  f"use --overwrite to start the run over")
        if found.checkpoint is None:
            return fresh_start(root, extend)  # False; --extend without a checkpoint: refused
        if found.skipped and self.rank == 0:
            print(f"maskdiff: {found.note()}", file=sys.stderr, flush=True)
        note_checkpoint(found.checkpoint.path)
        return True

    def _load(self, ckpt, extend: bool) -> None:
        """The run's state from ``ckpt``: a refused config is a ValueError; a state file that
        does not fit this run (keys, optimiser groups) a CheckpointError (damaged: skipped)."""
        state, differ = ckpt.state, config_differences(ckpt.config, to_dict(self.config))
        if not isinstance(state.get("step"), int):
            raise CheckpointError(f"{ckpt.path / 'state.pt'} holds no step")
        old = extension_of(ckpt.path, differ, ckpt.config, self.config, state["step"], extend)
        try:
            self._load_state(ckpt.weights, state, old)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{ckpt.path / 'state.pt'} does not fit this run "
                                  f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]})"
                                  ) from None

    def _load_state(self, weights, state: dict, old: int | None) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict({key: state[key] for key in self.estimator.state_dict()})
        self.proxy.load_state_dict(state["proxy"])
        if self.refitter is not None:
            self.refitter.load_state_dict(state["refit"])
        stop = state["early_stopping"]
        self.best, self.best_se = stop["best"], stop["best_se"]
        self.best_step, self.bad_evals = stop["best_step"], int(stop["bad_evals"])
        self.forward_passes = int(state["counters"]["forward_passes"])
        self.tokens = int(state["counters"]["tokens"])
        self.prior_seconds = float(state["counters"].get("seconds", 0.0))
        self.history = json.loads(state["history"])
        self.window_state = state.get("log_window")
        self.extended_from = list(state.get("extended_from", []))
        if old is not None:  # an extension: recorded, and the patience count restarts
            self.extended_from.append(old)
            self.extension, self.bad_evals = {"from_max_steps": old,
                                              "to_max_steps": self.config.optim.max_steps}, 0

    def _checkpoint(self) -> None:
        if self.rank == 0:
            try:
                note_checkpoint(save_checkpoint(
                    self.out_dir / "checkpoints", self.step, self.model.state_dict(),
                    self._state(), to_dict(self.config)))
            except CheckpointError as err:  # non-finite weights: keep the last good one
                raise TrainingError(f"{err}. Last good checkpoint: {self._last_good()}") from err

    def _last_good(self) -> Path | str:
        return latest_checkpoint(self.out_dir / "checkpoints") or "none written yet"

    # -- evaluation -----------------------------------------------------------------------
    def validate(self, examples=None) -> EvalResult:
        cfg = self.config.eval
        examples = list(self.task.val if examples is None else examples)[: cfg.n_examples]
        if self.causal:
            return causal_nll(self.model, examples, self.collate, batch_size=cfg.batch_size,
                              device=self.device)
        return elbo(self.model, examples, self.collate, mask_token_id=self.task.tokenizer.mask_id,
                    rates_per_example=cfg.rates_per_example, seed=cfg.seed,
                    batch_size=cfg.batch_size, normalizer=self.config.estimator.normalizer,
                    device=self.device, layout=self.layout)

    # -- the loop -------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, step = self.config, self.step
        lr = cfg.optim.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = self.order.global_batch(step, cfg.optim.batch_size)
        local = cfg.optim.batch_size // self.world
        positions = list(range(self.rank * local, (self.rank + 1) * local))
        self.optimizer.zero_grad(set_to_none=True)
        outputs, tokens = [], []
        for m in range(cfg.optim.grad_accum):
            pos = positions[m * self.micro_batch:(m + 1) * self.micro_batch]
            idx = [indices[p] for p in pos]
            batch = self.collate([(i, self.task.train[i]) for i in idx]).to(self.device)
            randomness = BatchRandomness.for_batch(cfg.seed, step, idx, pos, cfg.optim.batch_size)
            last = m == cfg.optim.grad_accum - 1
            sync = nullcontext() if last or self.ddp is self.model else self.ddp.no_sync()
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16
                        else nullcontext())
            with sync, autocast:
                out = self.estimator(self.ddp, batch, randomness, update_control=False)
            if not torch.isfinite(out.loss):
                raise TrainingError(
                    f"the loss is {float(out.loss.detach())} at step {step} (examples {idx[:8]}...); "
                    f"training stopped before the update. Last good checkpoint: "
                    f"{self._last_good()}")
            with sync:
                (out.loss * (len(idx) / local)).backward()
            outputs.append(out)
            tokens.append(int(batch.attention_mask.sum()))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
        self.optimizer.step()
        stats, refit = finish_step(StepStats.collect(outputs, tokens), step=step + 1,
                                   objective=self.estimator, proxy=self.proxy,
                                   refitter=self.refitter)
        self.forward_passes += self.estimator.forward_passes * int(stats.examples)
        self.tokens += int(stats.tokens)
        return {"stats": stats, "loss": float(stats.values.mean()), "lr": lr,
                "grad_norm": float(grad_norm), "refit": refit}

    def fit(self, resume: bool = True, stop_after: int | None = None,
            overwrite: bool = False, extend: bool = False) -> TrainResult:
        """Train until ``optim.max_steps`` or early stopping.

        ``resume`` continues from the newest valid checkpoint in ``out_dir`` (refusing one
        written by a different config). ``stop_after`` ends the call after that many steps with
        a checkpoint, as an interruption would (tests use it to check exact resumption).
        The run directory is locked meanwhile; a fresh start in a directory holding another run
        is refused unless ``overwrite`` (:mod:`maskdiff.training.rundir`). ``extend`` lets a
        resume raise ``optim.max_steps`` (:mod:`maskdiff.training.extend` says what it does).
        """
        free = RESUME_FREE_FIELDS + (("optim.max_steps",) if extend else ())
        with rundir.claim(self.out_dir, rank=self.rank, config=to_dict(self.config),
                          resume=resume and not overwrite, overwrite=overwrite, free_fields=free):
            return self._fit(resume and not overwrite, stop_after, extend)

    def _fit(self, resume: bool, stop_after: int | None, extend: bool = False) -> TrainResult:
        cfg = self.config
        resumed = resume and self._resume(extend)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json",  # parallel resumers read it
                              jsonio.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
            self.task.tokenizer.save(self.out_dir / TOKENIZER_FILE)
        metrics_path = self.out_dir / "metrics.jsonl"
        if self.rank == 0:
            truncate_metrics(metrics_path, self.step if resumed else -1)
        self.truncated = truncation_counts(self.collate, {
            "train": self.task.train, "val": list(self.task.val)[: cfg.eval.n_examples]})
        if self.rank == 0:
            for line in start_notes(self.task, self.truncated, cfg, self.step, self.extension):
                print(f"maskdiff: {line}", file=sys.stderr, flush=True)
        self.session_start, self.window = time.perf_counter(), LogWindow()
        self.window.load_state_dict(self.window_state if resumed else None)
        window = self.window
        bar = tqdm(total=cfg.optim.max_steps, initial=self.step, desc=Path(cfg.out_dir).name,
                   disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        stopped_early = False
        board = self.out_dir / "tensorboard" if cfg.tensorboard else None
        with bar, open_metrics(metrics_path, self.rank, board, self.step if resumed else 0) as log:
            if not resumed:  # the first line: what max_len cut, per split
                log({"step": 0, "truncated": self.truncated})
            if self.extension is not None:
                log({"step": self.step, "extended": self.extension})
            while self.step < cfg.optim.max_steps:
                with distributed.timed(f"step {self.step + 1} (DDP's gradient all-reduce)"):
                    stats = self.train_step()
                self.step += 1
                window.add(stats)
                bar.update(1)
                if stats["refit"] is not None:
                    log({"step": self.step, "ppots_refit": stats["refit"]})
                record = None
                if self.step % cfg.log_every == 0 or self.step == cfg.optim.max_steps:
                    record = window.flush(self.step, self.proxy.variance())
                if self.step % cfg.eval.every == 0 or self.step == cfg.optim.max_steps:
                    record = record or window.flush(self.step, self.proxy.variance())
                    stopped_early = self._evaluate(record)
                if record is not None:
                    log(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    if not self.quiet and not sys.stderr.isatty():
                        print(plain_line(record, cfg.optim.max_steps), flush=True)
                every = cfg.checkpoint_every or cfg.eval.every
                if (self.step % every == 0 or stopped_early or self.step == cfg.optim.max_steps
                        or (stop_after is not None and self.step >= stop_after)):
                    self._checkpoint()
                if stopped_early or (stop_after is not None and self.step >= stop_after):
                    break
        return self._result(stopped_early, self._seconds())

    def _seconds(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.session_start

    def _evaluate(self, record: dict) -> bool:
        result = self.validate()
        if not math.isfinite(result.mean):
            raise TrainingError(f"the validation loss is {result.mean} at step {self.step}; "
                                f"training stopped. Last good checkpoint: {self._last_good()}")
        record.update(val_loss=result.mean, val_se=result.se)
        self.history.append({"step": self.step, "val_loss": result.mean, "val_se": result.se})
        if self.best is None or result.mean < self.best:
            self.best, self.best_se, self.best_step, self.bad_evals = (
                result.mean, result.se, self.step, 0)
            if self.rank == 0:
                save_checkpoint(self.out_dir / "best", self.step, self.model.state_dict(),
                                {"step": self.step}, to_dict(self.config), keep=1)
        else:
            self.bad_evals += 1
        patience = self.config.eval.patience
        return patience > 0 and self.bad_evals >= patience

    def _result(self, stopped_early: bool, seconds: float) -> TrainResult:
        from maskdiff.models import count_parameters

        result = TrainResult(
            steps=self.step, best_val=self.best, best_val_se=self.best_se,
            best_step=self.best_step,
            final_val=self.history[-1]["val_loss"] if self.history else None,
            stopped_early=stopped_early, variance_proxy=self.proxy.variance(),
            forward_passes=self.forward_passes, tokens=self.tokens, seconds=seconds,
            out_dir=str(self.out_dir), n_parameters=count_parameters(self.model),
            history=list(self.history), threads=torch.get_num_threads(),
            truncated=self.truncated, val_examples=self.truncated.get("val", {}).get("of", 0),
            duplicates=self.task.params.get("duplicates", {}), extended_from=self.extended_from)
        if self.rank == 0:
            atomic_write_text(self.out_dir / "results.json",
                              jsonio.dumps(result.to_dict(), indent=2) + "\n")
        return result

    def load_best(self) -> None:
        """Load the weights of the best validation checkpoint (early stopping's model)."""
        path = latest_checkpoint(self.out_dir / "best")
        if path is None:
            raise ValueError(f"no best checkpoint under {self.out_dir / 'best'}")
        ckpt = load_checkpoint(path)
        weights_fit_config(self.task.tokenizer)(ckpt)
        self.model.load_state_dict(ckpt.weights)


def train(config: TrainConfig, *, resume: bool = True, **trainer_kwargs) -> TrainResult:
    """Train one run (resuming from its out_dir if a checkpoint is there)."""
    return Trainer(config, **trainer_kwargs).fit(resume=resume)
