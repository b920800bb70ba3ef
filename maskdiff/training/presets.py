"""Named training presets: sizes that fit a laptop's CPU."""

from __future__ import annotations

from dataclasses import replace

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # Exercises the whole path (train, evaluate, checkpoint) in well under 30 s on 2 CPU cores.
    "smoke": TrainConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
        data=DataConfig(n_train=128, n_val=16, n_test=16),
        optim=OptimConfig(max_steps=12, warmup_steps=2, batch_size=8),
        eval=EvalConfig(every=6, n_examples=16, rates_per_example=2),
        log_every=3,
    ),
    # The default tiny model: minutes on a laptop CPU.
    "small": TrainConfig(),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
