"""The presets of ``maskdiff compare`` (docs/method.md §11): what each job trains and scores.

A preset fixes the fine-tuning config every run shares, the seeds (the paired design: seed s
gives every method the same data order, rates and masks stream), the starting checkpoint's
budget, and the evaluation: pass@1 on ``n_test`` problems with a fixed decoder, and the test
ELBO on ``n_test_elbo`` examples × ``elbo_rates`` stratified rates with common random numbers
(the same draws for every run). Why the sizes are what they are is in the README's main-job
section: the seed counts come from the power calculation in the demo's report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from maskdiff.core.methods import METHODS
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig

# The paired seeds, in the order presets take them: seed s is the same seed for every method.
SEEDS = (42, 731, 20231, 7, 99, 1234, 2024, 31337, 5, 17, 123, 4096, 8, 65, 777, 1001, 314,
         2718, 1618, 11)
DEFAULT_SEEDS = SEEDS[:3]  # the 0.1 demo's seeds (kept for the smoke preset and old scripts)
EQUAL_COMPUTE = "standard@2x"  # standard with twice the batch: the two-forward methods' compute
START_DATA_OFFSET = 1000
# The demo's methods: the one-view and the two-view P-POTS against standard, and the causal twin
# (plain MIRROR, the most expensive run, left to `full` so the demo stays within 10 minutes).
DEMO_METHODS = ("standard", "ppots", "ppots_mirror", "ar")
BLOCK_METHODS = ("standard", "mirror", "ppots", "ppots_mirror", "clipped", EQUAL_COMPUTE)
BLOCK_SIZE = 8  # the block preset's block size, chosen before any block result (see below)
# The parity paper's SFT window table (its Table: [0.45, 0.55], [0, 1], [0.2, 1], [0.3, 1],
# [0.5, 1]); [0, 1] is standard (issue 26 item 4, README "Fine-tuning windows").
WINDOW_METHODS = ("standard", "window_0.45_0.55", "window_0.2_1", "window_0.3_1", "window_0.5_1")
BLOCK_SWEEP = (16, 8, 4)  # the block sweep's sizes (with b = L and the causal twin)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """The pass@1 decoder (docs/method.md §8): None = the whole region after the prompt, one
    block, one token per step. The built-in task's answers fit in ``gen_length`` positions."""

    gen_length: int | None = None
    steps: int | None = None
    block_length: int | None = None

    def __post_init__(self) -> None:
        for name in ("gen_length", "steps", "block_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"decoding.{name} must be None or an int >= 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ComparePreset:
    """What a compare job runs. ``base`` is the fine-tuning config of every run; ``methods``
    None means every registered method (:data:`maskdiff.core.methods.METHODS`, read when the
    job plans, so a method registered later is in it).

    ``n_test``: pass@1 problems; ``n_test_elbo`` × ``elbo_rates``: the test ELBO's examples and
    stratified rates (CRN seed ``elbo_seed``); ``pretrain_steps`` / ``pretrain_lr``: the
    starting checkpoint (batch ``base.optim.batch_size`` of the preset, whatever a sweep sets);
    ``grad_noise_draws``: per-example gradients per method on the starting checkpoint for the
    gradient noise scale (0: not measured).
    """

    name: str
    methods: tuple[str, ...] | None
    base: TrainConfig
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    pretrain_steps: int = 600
    pretrain_lr: float | None = None
    pretrain_batch: int | None = None
    equal_compute: bool = False
    n_test: int = 128
    n_test_elbo: int = 128
    elbo_rates: int = 4
    elbo_seed: int = 4321
    decoding: Decoding = Decoding()
    ppots_design: tuple[int, int, int] = (15, 70, 15)  # a examples × b rates × c masks
    window_width: float = 0.4
    grad_noise_draws: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods or ()) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        for name in ("pretrain_steps", "n_test", "n_test_elbo", "elbo_rates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_noise_draws < 0 or self.grad_noise_draws == 1:
            raise ValueError(f"grad_noise_draws must be 0 or >= 2, got {self.grad_noise_draws}")

    @property
    def start_batch(self) -> int:
        return self.pretrain_batch or self.base.optim.batch_size


def finetune_config(max_steps: int, batch_size: int, every: int, *, d_model: int = 64,
                    n_layers: int = 2, n_heads: int = 4, n_train: int = 2000, n_val: int = 128,
                    n_test: int = 256, lr: float = 1e-3, patience: int = 3,
                    rates_per_example: int = 4, device: str = "cpu",
                    difficulty: dict | None = None) -> TrainConfig:
    """The fine-tuning config of a compare preset (arithmetic, char-level, max_len 112)."""
    return TrainConfig(
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads),
        data=DataConfig(task="arithmetic", n_train=n_train, n_val=n_val, n_test=n_test, max_len=112,
                        difficulty=difficulty if difficulty is not None else {"n_ops": 1, "max_value": 10}),
        optim=OptimConfig(lr=lr, warmup_steps=10, max_steps=max_steps, batch_size=batch_size,
                          min_lr_ratio=0.1),
        eval=EvalConfig(every=every, n_examples=n_val, rates_per_example=rates_per_example,
                        patience=patience),
        log_every=10, device=device)


# The 0.2 protocol (README, "The main job"): no early stopping (every run spends the same
# budget; the best validation checkpoint is scored), pass@1 on 1,000 problems decoded in
# 16 positions as 2 blocks of 8 with 2 tokens per step, the test ELBO on 1,000 examples × 4 rates.
_PAIRED = dict(n_test=1000, n_test_elbo=1000, elbo_rates=4,
               decoding=Decoding(gen_length=16, steps=8, block_length=8))
# The task the diffusion model learns within the demo budget (README, "What we tried"):
# one operation on numbers up to 5; the starting checkpoint at lr 3e-3.
DEMO_TASK = {"n_ops": 1, "max_value": 5}
_DEMO_BASE = finetune_config(150, 32, 15, n_val=256, n_test=1000, patience=0,
                             rates_per_example=2, difficulty=DEMO_TASK)

PRESETS: dict[str, ComparePreset] = {
    "smoke": ComparePreset(
        name="smoke", methods=("standard", "mirror", "ppots_mirror", "ar", EQUAL_COMPUTE),
        seeds=DEFAULT_SEEDS, pretrain_steps=8, n_test=8, n_test_elbo=8, ppots_design=(4, 10, 2),
        decoding=Decoding(gen_length=16, steps=8, block_length=8), grad_noise_draws=4,
        base=finetune_config(6, 8, 3, d_model=32, n_layers=1, n_heads=2, n_train=64, n_val=8,
                             n_test=8, patience=0)),
    # P-POTS's up-front design here is 8 × 32 × 4 = 1,024 forward passes (the fit-pots default,
    # 15 × 70 × 15, would cost about as much as the fine-tuning itself at this scale).
    "demo": ComparePreset(name="demo", methods=DEMO_METHODS, seeds=SEEDS[:5],
                          pretrain_steps=1000, pretrain_lr=3e-3, base=_DEMO_BASE,
                          ppots_design=(8, 32, 4),
                          grad_noise_draws=128,
                          # half `full`'s test sets: the demo's 10-minute budget
                          **{**_PAIRED, "n_test": 500, "n_test_elbo": 500}),
    "full": ComparePreset(name="full", methods=None, seeds=SEEDS[:12], pretrain_steps=1000,
                          pretrain_lr=3e-3, base=_DEMO_BASE, equal_compute=True, ppots_design=(8, 32, 4),
                          grad_noise_draws=256, **_PAIRED),
    # Block diffusion (issue 25; README "Block diffusion"): the methods at block size 8, the
    # a-priori choice (max_len 112 = 14 blocks; the response and its EOS tail span ~34
    # positions = 4-5 blocks; 8 is the pass@1 decoder's own block length). The same base as
    # `full`, so the plain starting checkpoint is `full`'s; no gradient-noise measurement.
    "block": ComparePreset(name="block", methods=BLOCK_METHODS, seeds=SEEDS[:10],
                           pretrain_steps=1000, pretrain_lr=3e-3,
                           base=replace(_DEMO_BASE, block_size=BLOCK_SIZE),
                           ppots_design=(8, 32, 4), **_PAIRED),
    # The SFT window table: `full`'s base and starting checkpoint, so its runs are `full`'s.
    "windows": ComparePreset(name="windows", methods=WINDOW_METHODS, seeds=SEEDS[:10],
                             pretrain_steps=1000, pretrain_lr=3e-3, base=_DEMO_BASE,
                             ppots_design=(8, 32, 4), **_PAIRED),
    # Not yet run on a GPU (none was lent to this project's sessions): sizes are estimates.
    "gpu": ComparePreset(name="gpu", methods=None, seeds=SEEDS[:10], pretrain_steps=4000,
                         pretrain_lr=2e-3, equal_compute=True, grad_noise_draws=512,
                         base=finetune_config(400, 64, 40, d_model=192, n_layers=4,
                                              n_train=20000, n_val=512, n_test=2000,
                                              patience=0, device="cuda",
                                              difficulty={"n_ops": 2, "max_value": 10}),
                         **{**_PAIRED, "n_test": 2000, "n_test_elbo": 2000}),
}


def with_base(preset: ComparePreset, *, optim: dict | None = None,
              evaluation: dict | None = None) -> ComparePreset:
    """``preset`` with fields of its fine-tuning config's optimiser and evaluation changed."""
    base = preset.base
    return replace(preset, base=replace(base, optim=replace(base.optim, **(optim or {})),
                                        eval=replace(base.eval, **(evaluation or {}))))
