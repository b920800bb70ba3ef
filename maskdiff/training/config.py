"""The training run's configuration: model, data, optimiser, evaluation, and the estimator.

A :class:`TrainConfig` nests the estimator's :class:`~maskdiff.core.config.EstimatorConfig` and
is saved as ``config.json`` in every run; that file reproduces the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from maskdiff.data.sizing import max_len_percentile
from maskdiff.core.blocks import BLOCK_RATES, BlockLayout
from maskdiff.core.checks import int_at_least
from maskdiff.core.config import (  # noqa: F401  (re-exported: a run's config nests them)
    ComponentConfig,
    EstimatorConfig,
    RefitConfig,
    check_fields,
    diff_configs,
    from_dict,
    load_json,
    save_json,
    to_dict,
)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The tiny transformer's shape; vocabulary, length and mask id come from the data."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    positions: str = "rotary"
    causal: bool = False  # True: the autoregressive twin (docs/method.md §11), next-token loss

    def __post_init__(self) -> None:
        check_fields(self, "model")
        for name in ("d_model", "n_layers", "n_heads", "mlp_ratio"):
            int_at_least(getattr(self, name), f"model.{name}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where examples come from and how they become rows (see :mod:`maskdiff.data.collate`).

    ``task`` names a built-in task; ``train_file`` (JSONL) replaces it with the user's data,
    ``val_file`` gives its validation split (else the last 10% of ``train_file`` is held out).
    ``data_seed`` generates the data and stays fixed across training seeds.
    ``max_len`` is a row length, or a rule that derives it from the training data (``"auto"``
    = ``"p99"``, ``"pNN"``: a percentile of the tokenised lengths, :mod:`maskdiff.data.sizing`);
    the trainer resolves a rule to the number, which the run's ``config.json`` records.
    ``tokenizer="bpe"`` without ``vocab_size`` picks the vocabulary from the corpus size.
    """

    task: str = "arithmetic"
    train_file: str | None = None
    val_file: str | None = None
    n_train: int = 2000
    n_val: int = 128
    n_test: int = 128
    data_seed: int = 0
    max_len: int | str = 128
    pad_policy: str = "eos"
    overflow: str = "truncate"
    tokenizer: str = "char"
    vocab_size: int | None = None
    difficulty: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        int_at_least(self.n_train, "data.n_train")
        max_len_percentile(self.max_len, "data.max_len")
        for name in ("n_val", "n_test", "data_seed"):
            int_at_least(getattr(self, name), f"data.{name}", minimum=0)
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"data.tokenizer must be 'char' or 'bpe', got {self.tokenizer!r}")


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW (or SGD with momentum ``beta1``: ``optimizer="sgd"``) with linear warm-up then
    linear decay to ``min_lr_ratio·lr``."""

    lr: float = 3e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 20
    max_steps: int = 300
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    batch_size: int = 32  # the global batch: examples per optimiser step on all ranks together
    grad_accum: int = 1
    optimizer: str = "adamw"  # or "sgd" (maskdiff.training.optimizers)

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optim.optimizer must be one of {OPTIMIZERS}, got "
                             f"{self.optimizer!r}")
        if not (self.lr > 0):
            raise ValueError(f"optim.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not (0 <= getattr(self, name) < 1):
                raise ValueError(f"optim.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        int_at_least(self.warmup_steps, "optim.warmup_steps", minimum=0)
        int_at_least(self.max_steps, "optim.max_steps")
        int_at_least(self.batch_size, "optim.batch_size")
        int_at_least(self.grad_accum, "optim.grad_accum")
        if not (0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (1.0 - (1.0 - self.min_lr_ratio) * frac)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Validation: the full-range ELBO (always U[eps,1], whatever the training sampler).

    ``rates_per_example`` stratified rates per validation example, drawn with fixed seeds
    (common random numbers), so two evaluations differ only through the model.
    ``patience`` evaluations without improvement stop training (docs/method.md §8; 0 disables).
    """

    every: int = 50
    n_examples: int = 128
    rates_per_example: int = 4
    batch_size: int = 64
    patience: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        check_fields(self, "eval")
        for name in ("every", "n_examples", "rates_per_example", "batch_size"):
            int_at_least(getattr(self, name), f"eval.{name}")
        int_at_least(self.patience, "eval.patience", minimum=0)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines a training run; ``config.json`` of a run reproduces it."""

    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bf16: bool = False
    log_every: int = 10
    checkpoint_every: int = 0  # 0: at every evaluation
    out_dir: str = "runs/train"
    device: str = "cpu"
    tensorboard: bool = False  # also write metrics.jsonl's scalars under out_dir/tensorboard/
    # Block diffusion (docs/method.md §12): None trains the plain masked-diffusion model; N
    # trains on [xt ; x0] with blocks of N tokens, one rate per block ("block", BD3-LM) or per
    # sequence ("sequence", LLaDA2.0 / dFactory).
    block_size: int | None = None
    block_rates: str = "block"

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.block_size is not None:
            int_at_least(self.block_size, "train.block_size")
            if self.model.causal:
                raise ValueError("train.block_size needs the diffusion model: the causal twin "
                                 "(model.causal=true) is the block-diffusion sweep's reference, "
                                 "not a block model")
        if self.block_rates not in BLOCK_RATES:
            raise ValueError(f"train.block_rates must be one of {BLOCK_RATES}, got "
                             f"{self.block_rates!r}")
        int_at_least(self.seed, "train.seed", minimum=0)
        int_at_least(self.log_every, "train.log_every")
        int_at_least(self.checkpoint_every, "train.checkpoint_every", minimum=0)
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"train.tensorboard must be true or false, got {self.tensorboard!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"train.device must be cpu, cuda, cuda:N, mps ..., got "
                             f"{self.device!r}") from None


# Fields that may change between a run and its resumption: where it runs and logs, not what it
# computes (a config.json written before a field existed loads with the field's default).
RESUME_FREE_FIELDS = ("out_dir", "device", "tensorboard")


def block_layout(config: TrainConfig) -> BlockLayout | None:
    """The run's block layout (docs/method.md §12), None for plain masked diffusion."""
    if config.block_size is None:
        return None
    return BlockLayout(config.block_size, config.block_rates)


def config_differences(old: dict[str, Any], new: dict[str, Any],
                       free_fields: tuple[str, ...] = RESUME_FREE_FIELDS) -> list[str]:
    """Dotted names of the fields in which two run configs differ, apart from ``free_fields``.

    Both are read back through :class:`TrainConfig` first, so a ``config.json`` written before a
    field existed compares equal to one that holds that field's default (a resume after an
    upgrade is not refused for a field it never used)."""
    def normalized(config: dict[str, Any]) -> dict[str, Any]:
        try:
            return to_dict(from_dict(TrainConfig, config))
        except (ValueError, TypeError):  # not a loadable config: compare it as written
            return config
    return [d for d in diff_configs(normalized(old), normalized(new)) if d not in free_fields]
