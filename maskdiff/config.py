"""Frozen, nested, keyword-only configuration dataclasses with a JSON round trip (DESIGN §3).

Each config validates itself in ``__post_init__`` with a ``ValueError`` naming the field, the bad
value and what is allowed, and builds the object it describes with ``build()``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from maskdiff.control import CONTROLS, build_control
from maskdiff.masking import MASKERS, build_masker
from maskdiff.objective import NORMALIZERS, Estimator
from maskdiff.samplers import SAMPLERS, build_sampler

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if _is_dataclass_type(tp):
        return from_dict(tp, value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if _is_dataclass_type(arg) and isinstance(value, dict):
                return from_dict(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config dataclass from :func:`to_dict`'s output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[C], path: str | Path) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return from_dict(cls, data)


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


@dataclass(frozen=True, kw_only=True)
class ComponentConfig:
    """A registered component by name plus its keyword arguments."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def _positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RefitConfig:
    """Online P-POTS (SPEC §4 [beyond]): refit the importance density during training.

    The trainer tracks ``E[l² | t]`` per bin of t from its own training losses (no extra
    forward passes; :class:`maskdiff.ppots.SecondMomentTracker`, all-reduced across ranks) and
    every ``refit_every`` steps fits EPR to the tracked p̂ and hands it to the sampler. Bins with
    fewer than ``min_count`` draws are left out of the fit; ``decay`` < 1 forgets old losses.
    """

    refit_every: int = 50
    n_bins: int = 20
    min_count: float = 8.0
    decay: float = 1.0
    restarts: int = 4

    def __post_init__(self) -> None:
        _positive_int("estimator.refit", "refit_every", self.refit_every)
        _positive_int("estimator.refit", "n_bins", self.n_bins, minimum=8)
        _positive_int("estimator.refit", "restarts", self.restarts)
        if not self.min_count > 0:
            raise ValueError(f"estimator.refit.min_count must be > 0, got {self.min_count!r}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"estimator.refit.decay must lie in (0, 1], got {self.decay!r}")


@dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """Sampler + masker + optional control variate (DESIGN §3 "Estimator").

    P-POTS+MIRROR is ``EstimatorConfig(sampler=ComponentConfig(name="importance",
    params={"density": {...}}), masker=ComponentConfig(name="mirror"))``.
    """

    sampler: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="uniform"))
    masker: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="bernoulli"))
    control: ComponentConfig | None = None
    normalizer: str = "eligible"
    syntax_eligible: bool = False
    fuse_views: bool = True
    refit: RefitConfig | None = None  # online P-POTS: needs the "importance" sampler

    def __post_init__(self) -> None:
        if self.refit is not None and self.sampler.name != "importance":
            raise ValueError(f"estimator.refit (online P-POTS) needs sampler 'importance', "
                             f"got {self.sampler.name!r}")
        if self.sampler.name not in SAMPLERS:
            raise ValueError(f"sampler.name={self.sampler.name!r} is not one of {sorted(SAMPLERS)}")
        if self.masker.name not in MASKERS:
            raise ValueError(f"masker.name={self.masker.name!r} is not one of {sorted(MASKERS)}")
        if self.control is not None and self.control.name not in CONTROLS:
            raise ValueError(f"control.name={self.control.name!r} is not one of {sorted(CONTROLS)}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer={self.normalizer!r} is not one of {NORMALIZERS}")

    def build(self, *, mask_token_id: int) -> Estimator:
        control = None
        if self.control is not None:
            control = build_control(self.control.name, **self.control.params)
        return Estimator(
            rate_sampler=build_sampler(self.sampler.name, **self.sampler.params),
            masker=build_masker(self.masker.name, **self.masker.params),
            mask_token_id=mask_token_id,
            control=control,
            normalizer=self.normalizer,
            syntax_eligible=self.syntax_eligible,
            fuse_views=self.fuse_views,
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
    causal: bool = False  # True: the autoregressive twin (SPEC §11), next-token loss

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "mlp_ratio"):
            _positive_int("model", name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where examples come from and how they become rows (see :mod:`maskdiff.data.collate`).

    ``task`` names a built-in task; ``train_file`` (JSONL) replaces it with the user's data,
    ``val_file`` gives its validation split (else the last 10% of ``train_file`` is held out).
    ``data_seed`` generates the data and stays fixed across training seeds.
    """

    task: str = "arithmetic"
    train_file: str | None = None
    val_file: str | None = None
    n_train: int = 2000
    n_val: int = 128
    n_test: int = 128
    data_seed: int = 0
    max_len: int = 128
    pad_policy: str = "eos"
    overflow: str = "truncate"
    tokenizer: str = "char"
    vocab_size: int | None = None
    difficulty: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_train", "max_len"):
            _positive_int("data", name, getattr(self, name))
        for name in ("n_val", "n_test", "data_seed"):
            _positive_int("data", name, getattr(self, name), minimum=0)
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"data.tokenizer must be 'char' or 'bpe', got {self.tokenizer!r}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up then linear decay to ``min_lr_ratio·lr``."""

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

    def __post_init__(self) -> None:
        if not (self.lr > 0):
            raise ValueError(f"optim.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not (0 <= getattr(self, name) < 1):
                raise ValueError(f"optim.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        _positive_int("optim", "warmup_steps", self.warmup_steps, minimum=0)
        _positive_int("optim", "max_steps", self.max_steps)
        _positive_int("optim", "batch_size", self.batch_size)
        _positive_int("optim", "grad_accum", self.grad_accum)
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
    ``patience`` evaluations without improvement stop training (SPEC §8; 0 disables).
    """

    every: int = 50
    n_examples: int = 128
    rates_per_example: int = 4
    batch_size: int = 64
    patience: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("every", "n_examples", "rates_per_example", "batch_size"):
            _positive_int("eval", name, getattr(self, name))
        _positive_int("eval", "patience", self.patience, minimum=0)


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

    def __post_init__(self) -> None:
        _positive_int("train", "seed", self.seed, minimum=0)
        _positive_int("train", "log_every", self.log_every)
        _positive_int("train", "checkpoint_every", self.checkpoint_every, minimum=0)


# Fields that may change between a run and its resumption: where it runs, not what it computes.
RESUME_FREE_FIELDS = ("out_dir", "device")
