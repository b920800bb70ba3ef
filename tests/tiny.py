"""The tiny training config the trainer's tests share (seconds per run on a CPU)."""

from dataclasses import replace

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig


def tiny(tmp_path, **overrides) -> TrainConfig:
    """6 steps × batch 8 of a one-layer d_model-32 model on 64 examples, an evaluation every 3
    steps, a log line every step, the run in ``tmp_path / "run"``; ``overrides`` replace fields."""
    base = TrainConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
        data=DataConfig(n_train=64, n_val=8, n_test=8),
        optim=OptimConfig(max_steps=6, warmup_steps=1, batch_size=8),
        eval=EvalConfig(every=3, n_examples=8, rates_per_example=1, patience=0),
        log_every=1, out_dir=str(tmp_path / "run"))
    return replace(base, **overrides)
