"""The presets of ``maskdiff compare --regime pretrain`` (docs/method.md §11, "The pretraining
protocol"): the model, data, training length, seeds and test yardstick of each job.

Sizes of ``pretrain`` come from the pilot and the power calculation in docs/method.md §11:
a 2-layer, 64-wide char-level transformer on 64-character chunks of the World English Bible,
batch 32, lr 3e-3 (the window sweep's ``cpu`` model), trained a fixed number of steps for every
method, with the test ELBO on 256 test chunks × 8 stratified rates at 8 points along training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from maskdiff.core.methods import METHODS
from maskdiff.experiments.compare_presets import SEEDS
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.judge import JudgeConfig

# The samplers under test (issue 26 item 2) and the causal twin, the generation judge.
PRETRAIN_METHODS = ("standard", "window", "window_0.45_0.55", "bell", "bell_iw", "annealed",
                    "ppots_online", "gpots_online", "mirror", "standard@2x", "ar")
TARGET_FRACTIONS = (0.25, 0.5, 1.0)  # standard's test ELBO at these fractions of training


@dataclass(frozen=True, kw_only=True)
class PretrainPreset:
    """What a pretraining job runs. ``base``: the config every run shares (its estimator and
    model kind are the method's, :func:`maskdiff.training.needs.apply_method`); its
    ``optim.max_steps`` is the training length of every method. The test ELBO is scored on
    ``n_test`` test examples × ``test_rates`` stratified rates (CRN seed ``test_seed``) at
    initialisation and every ``max_steps / curve_points`` steps. The window is predicted at
    ``level`` from the first ``corpus_chars`` characters of the training split (None: all).
    ``judge``: how the causal twin (``ar``) scores every diffusion run's final model
    (:mod:`maskdiff.training.judge`: samples from all-masks, continuations of test prompts, the
    partial-mask probe), when the job has ``ar`` runs."""

    name: str
    base: TrainConfig
    methods: tuple[str, ...] = PRETRAIN_METHODS
    seeds: tuple[int, ...] = SEEDS[:6]
    n_test: int = 256
    test_rates: int = 8
    test_seed: int = 4321
    curve_points: int = 8
    targets: tuple[float, ...] = TARGET_FRACTIONS
    window_width: float = 0.1
    level: str = "char"
    min_count: int = 5
    corpus_chars: int | None = None
    judge: JudgeConfig | None = JudgeConfig(samples=32)  # None: no generation scores

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
        if "standard" not in self.methods:
            raise ValueError(f"preset {self.name!r}: methods must include 'standard' (the "
                             f"baseline of every comparison), got {list(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        for name in ("n_test", "test_rates", "curve_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        steps = self.base.optim.max_steps
        if steps % self.curve_points:
            raise ValueError(f"preset {self.name!r}: optim.max_steps ({steps}) must be a "
                             f"multiple of curve_points ({self.curve_points})")
        bad = [f for f in self.targets if not 0 < f <= 1 or (f * self.curve_points) % 1]
        if bad:
            raise ValueError(f"targets {bad}: each must be a multiple of 1/curve_points in (0, 1]")


def pretrain_config(*, steps: int, curve_points: int, d_model: int = 64, n_layers: int = 2,
                    n_heads: int = 4, chunk_chars: int = 64, n_train: int = 20000,
                    n_val: int = 128, n_test: int = 256, batch_size: int = 32, lr: float = 3e-3,
                    warmup: int = 50, device: str = "cpu") -> TrainConfig:
    """A from-scratch text config (char-level World English Bible chunks), evaluated every
    ``steps / curve_points`` steps, no early stopping."""
    every = max(1, steps // curve_points)
    return TrainConfig(
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads),
        data=DataConfig(task="text", n_train=n_train, n_val=n_val, n_test=n_test,
                        max_len=chunk_chars + 2, difficulty={"chunk_chars": chunk_chars}),
        optim=OptimConfig(lr=lr, max_steps=steps, warmup_steps=min(warmup, steps),
                          batch_size=batch_size, min_lr_ratio=0.1),
        eval=EvalConfig(every=every, n_examples=n_val, rates_per_example=4, batch_size=64,
                        patience=0),
        log_every=every, device=device)


# The training length: what 6 seeds × 11 runs fit in 90 minutes on 2 cores (the pilot measured
# 0.097 CPU-s per step, 3.0 per evaluation point and 12.6 per judged run: ~84 minutes; README
# "Pretraining from scratch", benchmarks/results/pretrain_pilot.json).
PRETRAIN_STEPS = 1000
PRETRAIN_PRESETS: dict[str, PretrainPreset] = {
    "pretrain": PretrainPreset(name="pretrain",
                               base=pretrain_config(steps=PRETRAIN_STEPS, curve_points=8)),
    # The test suite's preset: the whole path in well under a minute (numbers meaningless).
    "pretrain-smoke": PretrainPreset(
        name="pretrain-smoke", methods=("standard", "window", "bell_iw", "standard@2x", "ar"),
        seeds=SEEDS[:2], n_test=8, test_rates=2, curve_points=4, corpus_chars=20_000,
        judge=JudgeConfig(samples=2, probe_rates=(0.5, 1.0), batch_size=2),
        base=pretrain_config(steps=8, curve_points=4, d_model=16, n_layers=1, n_heads=2,
                             chunk_chars=24, n_train=64, n_val=8, n_test=8, batch_size=4,
                             warmup=2)),
}


def with_train_file(preset: PretrainPreset, train_file: str, max_len: int | None) -> PretrainPreset:
    """``preset`` on a user's JSONL of ``{"text"}`` rows (held-out rows: validation and test)."""
    data = replace(preset.base.data, train_file=str(train_file), task="text", difficulty={},
                   max_len=max_len or preset.base.data.max_len)
    return replace(preset, base=replace(preset.base, data=data))
