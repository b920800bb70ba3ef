"""The k-parity laboratory (docs/method.md §9; parity paper §3-§4.5).

Task: ``x ~ U{-1,+1}^n``, a secret ``S ⊂ [n]`` with ``|S| = k``, label ``y = Π_{j∈S} x_j``; the
sequence is ``x' = (x_1..x_n, y)``, ``n + 1`` tokens over the vocabulary {-1, +1, MASK}
(token ids: -1 -> 0, +1 -> 1, MASK -> 2). Only a finite training set of ``n_train`` examples is
seen; validation examples are disjoint from it.

Two ways to train the *same* network (maskdiff's bidirectional transformer with learned absolute
positions, nanoGPT-style: pre-norm attention + GELU MLP blocks, residuals, LayerNorm):

- **masked diffusion (MD)**: ``t ~ U[t0, t1]`` (:class:`maskdiff.core.samplers.Window`) or a fixed rate
  (:class:`FixedRate`), every one of the ``n + 1`` positions masked with probability ``t``
  (:class:`maskdiff.core.masking.Bernoulli`), cross-entropy on the masked positions divided by ``t``
  (:func:`maskdiff.core.objective.per_example_loss` with ``normalizer="none"``: eq. 1 with N = 1);
- **supervised**: all ``n`` bits visible, the label position masked, cross-entropy on the label.

Evaluation (both objectives): all bits visible, the label masked, the prediction is the argmax
over {-1, +1} of the logits at the label position; accuracy and label cross-entropy on the
training set and on the validation set. Every random draw takes an explicit generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from maskdiff.core.checks import int_at_least
from maskdiff.core.batch import Batch
from maskdiff.labs.parity_data import (
    MASK_ID, MINUS_ID, PLUS_ID, VOCAB_SIZE, ParityData, make_parity_data, parity_labels,
)
from maskdiff.core.masking import Bernoulli, View
from maskdiff.models import TransformerConfig, build_model
from maskdiff.core.objective import Estimator, per_example_loss
from maskdiff.core.samplers import RateSampler, Window
from maskdiff.core.seeding import (
    STREAM_PARITY_DATA, STREAM_PARITY_INIT, STREAM_PARITY_TRAIN, derive_seed, generator_for,
)

__all__ = [
    "MASK_ID", "MINUS_ID", "PLUS_ID", "VOCAB_SIZE", "FixedRate", "ParityData", "ParityModelConfig",
    "ParityRunConfig", "ParityRunResult", "Objective", "build_parity_model", "evaluate_accuracy",
    "make_parity_data", "md_loss", "md_signal_share", "parity_labels", "steps_to_accuracy",
    "supervised_loss", "train_parity",
]

# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ParityModelConfig:
    """The transformer's shape (nanoGPT-style; learned absolute positions by default)."""

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    positions: str = "learned"

    def __post_init__(self) -> None:
        self.transformer_config(1)  # TransformerConfig validates every field (ValueError)

    def transformer_config(self, n: int) -> TransformerConfig:
        return TransformerConfig(vocab_size=VOCAB_SIZE, max_len=n + 1, d_model=self.d_model,
                                 n_layers=self.n_layers, n_heads=self.n_heads,
                                 mlp_ratio=self.mlp_ratio, mask_token_id=MASK_ID,
                                 positions=self.positions)


def build_parity_model(config: ParityModelConfig, n: int, seed: int) -> torch.nn.Module:
    """The model for ``n`` input bits, initialised from ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, STREAM_PARITY_INIT))
        return build_model(config.transformer_config(n))


# --------------------------------------------------------------------------------------------
# objectives
# --------------------------------------------------------------------------------------------


class FixedRate(RateSampler):
    """The degenerate window ``U[t, t]``: every example masked at rate ``t`` (Cor. 4.8's optimum
    ``1/(k+1)``). Not registered: it exists for the parity laboratory."""

    name = "fixed"

    def __init__(self, t: float) -> None:
        if not (isinstance(t, (int, float)) and 0.0 < t <= 1.0):
            raise ValueError(f"t must lie in (0, 1], got {t!r}")
        self.t = float(t)

    def target_interval(self) -> tuple[float, float]:
        return (self.t, self.t)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        t = torch.full_like(u, self.t)
        return t.float(), torch.ones_like(t, dtype=torch.float32)

    def config(self) -> dict[str, Any]:
        return {"t": self.t}


def _label_masked(tokens: torch.Tensor) -> torch.Tensor:
    xt = tokens.clone()
    xt[:, -1] = MASK_ID
    return xt


def md_loss(model: torch.nn.Module, tokens: torch.Tensor, sampler: RateSampler,
            generator: torch.Generator) -> torch.Tensor:
    """The MD objective (docs/method.md §9; eq. 1 with N = 1): batch mean of
    ``-(1/t) Σ_i 1[masked_i] log p(x0_i | xt)`` over all ``n + 1`` positions: maskdiff's
    :class:`Estimator` with Bernoulli masks on every position, drawing from ``generator``."""
    everything = torch.ones_like(tokens, dtype=torch.bool)
    batch = Batch(x0=tokens, eligible=everything, attention_mask=everything,
                  example_index=torch.arange(tokens.shape[0]))
    estimator = Estimator(rate_sampler=sampler, masker=Bernoulli(), mask_token_id=MASK_ID,
                          normalizer="none")
    return estimator(model, batch, generator).loss


def supervised_loss(model: torch.nn.Module, tokens: torch.Tensor, sampler: Any = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The supervised baseline: all bits visible, cross-entropy on the (masked) label only.

    Written through :func:`per_example_loss` with a view that masks exactly the label with
    inclusion probability 1, so both objectives share one loss function.
    """
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[:, -1] = True
    view = View(xt=_label_masked(tokens), masked=masked,
                inclusion_prob=torch.ones(tokens.shape, dtype=torch.float32))
    logits = model(view.xt, None)
    return per_example_loss(logits, tokens, view, masked, normalizer="none").mean()


Objective = Callable[[torch.nn.Module, torch.Tensor, Any, torch.Generator], torch.Tensor]


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, tokens: torch.Tensor,
                      batch_size: int = 4096) -> tuple[float, float]:
    """``(accuracy, label cross-entropy)`` with all bits visible and the label masked; the
    prediction is the argmax over {-1, +1} (the MASK logit is ignored)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start:start + batch_size]
            logits = model(_label_masked(chunk), None)[:, -1, :MASK_ID].float()
            target = chunk[:, -1]
            correct += int((logits.argmax(dim=1) == target).sum())
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
    finally:
        model.train(was_training)
    m = tokens.shape[0]
    return correct / m, loss_sum / m


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

OBJECTIVES = ("md", "supervised")


@dataclass(frozen=True, kw_only=True)
class ParityRunConfig:
    """One parity training run.

    ``objective="md"`` uses ``U[t0, t1]`` (``t0 == t1``: the fixed rate ``t0``);
    ``objective="supervised"`` ignores the window. ``batch_size=0`` is full-batch training.
    ``data_seed`` fixes the instance (secret, splits) across training ``seed`` s.
    """

    n: int = 20
    k: int = 6
    n_train: int = 5000
    n_val: int = 1000
    data_seed: int = 0
    objective: str = "md"
    t0: float = 0.0
    t1: float = 0.246
    model: ParityModelConfig = field(default_factory=ParityModelConfig)
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # nanoGPT's default; tames the rare 1/t-weighted spikes of small t
    batch_size: int = 256
    max_steps: int = 2000
    eval_every: int = 50
    eval_train_max: int = 2000
    seed: int = 0
    stop_at_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "md" and not (0.0 <= self.t0 <= self.t1 <= 1.0 and self.t1 > 0.0):
            raise ValueError(f"need 0 <= t0 <= t1 <= 1 and t1 > 0, got t0={self.t0}, t1={self.t1}")
        for name in ("max_steps", "eval_every", "eval_train_max"):
            int_at_least(getattr(self, name), name)
        int_at_least(self.batch_size, "batch_size (0: full batch)", minimum=0)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if self.stop_at_accuracy is not None and not 0.0 < self.stop_at_accuracy <= 1.0:
            raise ValueError(f"stop_at_accuracy must lie in (0, 1], got {self.stop_at_accuracy!r}")

    def sampler(self) -> RateSampler | None:
        if self.objective == "supervised":
            return None
        if self.t0 == self.t1:
            return FixedRate(self.t0)
        return Window(self.t0, self.t1)

    def make_data(self) -> ParityData:
        return make_parity_data(n=self.n, k=self.k, n_train=self.n_train, n_val=self.n_val,
                                generator=generator_for(self.data_seed, STREAM_PARITY_DATA))


@dataclass
class ParityRunResult:
    """Accuracy/loss curves of one run; ``history`` rows hold step, train_acc, val_acc,
    train_loss (label CE), val_loss, objective (the training objective's mean since the
    previous row; None at step 0)."""

    config: dict[str, Any]
    history: list[dict[str, float]]
    secret: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_to_accuracy(history: list[dict[str, float]], key: str, threshold: float) -> int | None:
    """The first logged step at which ``history[key] >= threshold`` (None if never)."""
    for row in history:
        if row[key] >= threshold:
            return int(row["step"])
    return None


def train_parity(config: ParityRunConfig, data: ParityData | None = None,
                 progress: Callable[[int], None] | None = None) -> ParityRunResult:
    """Train one model on ``config`` (AdamW, constant learning rate, decoupled weight decay on
    matrices only) and log train/validation accuracy every ``eval_every`` steps.

    ``progress(steps_done)`` is called after each step (a progress bar's ``update``). With
    ``stop_at_accuracy`` the run ends at the first evaluation where *both* accuracies reach it.
    """
    data = data if data is not None else config.make_data()
    model = build_parity_model(config.model, data.n, config.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    generator = generator_for(config.seed, STREAM_PARITY_TRAIN)
    sampler = config.sampler()
    objective: Objective = md_loss if config.objective == "md" else supervised_loss
    train, m = data.train, data.train.shape[0]
    train_eval = train[: config.eval_train_max]
    batch = m if config.batch_size == 0 else min(config.batch_size, m)
    order, cursor = torch.randperm(m, generator=generator), 0
    history: list[dict[str, float]] = []
    start, recent = time.perf_counter(), []

    def log(step: int) -> bool:
        train_acc, train_loss = evaluate_accuracy(model, train_eval)
        val_acc, val_loss = evaluate_accuracy(model, data.val)
        mean_obj = sum(recent) / len(recent) if recent else None  # None at step 0
        history.append({"step": step, "train_acc": train_acc, "val_acc": val_acc,
                        "train_loss": train_loss, "val_loss": val_loss, "objective": mean_obj})
        recent.clear()
        target = config.stop_at_accuracy
        return target is not None and train_acc >= target and val_acc >= target

    log(0)
    for step in range(1, config.max_steps + 1):
        if batch == m:
            idx = torch.arange(m)
        else:
            if cursor + batch > m:  # a fresh permutation every epoch
                order, cursor = torch.randperm(m, generator=generator), 0
            idx, cursor = order[cursor:cursor + batch], cursor + batch
        loss = objective(model, train[idx], sampler, generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite parity loss {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        recent.append(float(loss.detach()))
        if progress is not None:
            progress(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            if log(step):
                break
    config_dict = asdict(config)
    return ParityRunResult(config=config_dict, history=history, secret=data.secret.tolist(),
                           seconds=time.perf_counter() - start)


def md_signal_share(config: ParityRunConfig) -> float:
    """``P_S`` of the run's window (docs/method.md §9), or NaN for the supervised objective."""
    from maskdiff.labs.theory import signal_probability

    if config.objective != "md":
        return math.nan
    return signal_probability(config.k, config.t0, config.t1)
