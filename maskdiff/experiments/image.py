"""``maskdiff image``: class-to-image masked diffusion on 8×8 digits, one score table per method.

Protocol (issue 10):

1. Data: :mod:`maskdiff.data.digits` -- prompt "a handwritten seven", response the 64 grey-level
   tokens of the image, only those eligible. The held-out ``test`` split trains and tests the
   evaluator's classifier (:mod:`maskdiff.experiments.image_eval`); the diffusion model trains on
   ``train`` and early-stops on the validation ELBO of ``val``.
2. A **starting checkpoint** is trained once with the standard objective (seed 0, not one of
   the compared seeds) on the same training split, and cached under ``start/``: a CPU budget
   buys far more learning when the slow first phase (positions, then class conditioning) is
   paid once. P-POTS's density is estimated on it (nested design); both costs are reported.
3. Every (method, seed) run fine-tunes that checkpoint; the seed drives the data order, the
   rates and the masks (not the weights). Every method gets the same steps and batch, so the
   two-forward methods (MIRROR, P-POTS+MIRROR) spend twice the forward passes; ``standard@2x``
   (standard with twice the batch) is the equal-compute control.
4. Each run's best checkpoint draws ``samples_per_class`` images per class with the
   low-confidence decoder (:func:`maskdiff.training.generate.generate_diffusion`). The decoder is greedy;
   to draw *samples* the model is wrapped by :class:`GumbelSampling`, which adds Gumbel noise of
   temperature ``T`` to its logits (Gumbel-max: the argmax is a draw from ``softmax(logits/T)``)
   and restricts them to the grey-level tokens. The noised logits also set the decoder's
   confidence, so the unmasking order is itself random (with ``T = 0`` the decoder is greedy and
   gives one image per class).
5. Scores: class accuracy, mean probability of the requested class, Fréchet distance to real
   held-out images in the classifier's feature space; mean ± sd over seeds per method.

A finished run leaves ``image.json`` in its directory and is reused when the job restarts, the
starting checkpoint ``start/finished.json`` too (:mod:`maskdiff.jobs`: only under the
configuration they were made under); an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.experiments.compare_presets import EQUAL_COMPUTE
from maskdiff.jobs import load_record
from maskdiff.training.needs import apply_method
from maskdiff.training.runs import finished_weights, reuse_run_result
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, to_dict
from maskdiff.data.digits import (
    N_PIXELS, PROMPT_WIDTH, digits_task, image_collator, image_to_text, text_to_image,
)
from maskdiff.experiments.image_eval import ClassifierConfig, DigitEvaluator
from maskdiff.experiments.image_sampling import sample_images
from maskdiff.core.methods import DEFAULT_WINDOW, METHODS, get_method
from maskdiff.fileio import atomic_write_text

DEFAULT_SEEDS = (42, 731, 20231)
DEFAULT_METHODS = ("standard", "mirror", "ppots", "ppots_mirror", EQUAL_COMPUTE)
START_SEED = 0
IMAGE_FIELDS = ("method", "seed", "steps", "history", "labels", "samples")


@dataclass(frozen=True, kw_only=True)
class ImagePreset:
    """What an image job runs. ``base`` is every run's training config (seed, estimator and
    out_dir are set per run)."""

    name: str
    base: TrainConfig
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    levels: int = 4
    n_train: int = 997
    n_val: int = 100
    n_test: int = 700
    data_seed: int = 0
    pretrain_steps: int = 1000
    pretrain_lr: float = 1e-2
    ppots_design: tuple[int, int, int] = (16, 32, 4)  # a examples × b rates × c masks
    samples_per_class: int = 28
    temperature: float = 1.0
    gen_steps: int = 64
    block_length: int = 64
    grid_columns: int = 8
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        diffusion = [name for name, method in METHODS.items() if not method.causal]
        unknown = sorted(set(self.methods) - set(diffusion))
        if unknown:
            raise ValueError(f"methods must be registered diffusion methods of {diffusion} "
                             f"(not causal ones), got {list(self.methods)}")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct and non-empty, got {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if START_SEED in self.seeds:
            raise ValueError(f"seed {START_SEED} is the starting checkpoint's; pick other seeds")
        for name in ("pretrain_steps", "samples_per_class", "gen_steps", "block_length",
                     "grid_columns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if N_PIXELS % self.block_length or self.gen_steps % (N_PIXELS // self.block_length):
            raise ValueError(f"block_length={self.block_length} must divide {N_PIXELS} and "
                             f"gen_steps={self.gen_steps} be a multiple of the number of blocks")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.base.data.max_len != PROMPT_WIDTH + N_PIXELS:
            raise ValueError(f"base.data.max_len must be {PROMPT_WIDTH + N_PIXELS} (prompt + "
                             f"image), got {self.base.data.max_len}")


def _base(max_steps: int, batch_size: int, every: int, *, d_model: int, n_layers: int,
          n_heads: int, lr: float, n_train: int, n_val: int) -> TrainConfig:
    # Learned absolute positions: with a fixed-width prompt each pixel has its own position,
    # which the model learns in a few dozen steps (rotary, relative positions, took hundreds).
    return TrainConfig(
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, positions="learned"),
        data=DataConfig(task="digits", n_train=n_train, n_val=n_val, n_test=700,
                        max_len=PROMPT_WIDTH + N_PIXELS, pad_policy="exclude", overflow="error",
                        difficulty={"levels": 4}),
        optim=OptimConfig(lr=lr, warmup_steps=10, max_steps=max_steps, batch_size=batch_size,
                          min_lr_ratio=0.1),
        eval=EvalConfig(every=every, n_examples=n_val, rates_per_example=4, patience=0),
        log_every=25)


PRESETS: dict[str, ImagePreset] = {
    # The whole path in seconds: tiny model, a few steps, few samples (tests).
    "smoke": ImagePreset(
        name="smoke", methods=("standard", "mirror", "ppots_mirror"), seeds=(42, 731),
        n_train=64, n_val=16, n_test=200, pretrain_steps=4, ppots_design=(4, 10, 2),
        samples_per_class=2, gen_steps=16, block_length=64, grid_columns=2,
        classifier=ClassifierConfig(epochs=15),
        base=_base(6, 8, 3, d_model=16, n_layers=1, n_heads=2, lr=3e-3, n_train=64, n_val=16)),
    # The documented run: 3 seeds × 4 methods in about 20 minutes on a shared 2-core CPU.
    "default": ImagePreset(
        name="default", pretrain_steps=1500, gen_steps=32,
        base=_base(300, 32, 50, d_model=64, n_layers=2, n_heads=4, lr=3e-3, n_train=997,
                   n_val=100)),
}


# ----------------------------------------------------------------------------- the job
@dataclass
class ImageJob:
    """Runs an :class:`ImagePreset` into ``out_dir`` (resumable)."""

    preset: ImagePreset
    out_dir: Path
    seeds: Sequence[int] | None = None
    device: str | None = None
    progress: bool = True
    _task: object = None
    _evaluator: DigitEvaluator | None = None
    _density: dict | None = None
    _start: dict | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.seeds is not None:
            self.preset = replace(self.preset, seeds=tuple(self.seeds))
        if self.device is not None:
            self.preset = replace(self.preset, base=replace(self.preset.base, device=self.device))

    @property
    def task(self):
        if self._task is None:
            p = self.preset
            self._task = digits_task(n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
                                     seed=p.data_seed, levels=p.levels)
        return self._task

    @property
    def evaluator(self) -> DigitEvaluator:
        """The classifier on the held-out split; floor from real images of the other splits."""
        if self._evaluator is None:
            p = self.preset
            n_floor = 10 * p.samples_per_class  # the same sample size as one run's images
            floor = (list(self.task.val) + list(self.task.train))[:n_floor]
            self._evaluator = DigitEvaluator.fit(self.task.test, p.levels, p.classifier,
                                                 floor_examples=floor if len(floor) >= 2 else None)
        return self._evaluator

    def _trainer(self, config: TrainConfig, init_weights: dict | None = None):
        from maskdiff.training.trainer import Trainer

        trainer = Trainer(config, task=self.task, init_weights=init_weights, quiet=True)
        # Only the 64 image tokens are eligible: no end-of-response EOS (the run's own collator
        # from DataConfig would append and score one).
        trainer.collate = image_collator(self.task.tokenizer, config.data.max_len)
        return trainer

    def _config(self, method: str, seed: int, density: dict | None = None) -> TrainConfig:
        p = self.preset
        base = replace(p.base, data=replace(
            p.base.data, n_train=p.n_train, n_val=p.n_val, n_test=p.n_test, data_seed=p.data_seed,
            difficulty={"levels": p.levels}))
        run_dir = self.out_dir / "runs" / method.replace("@", "_at_") / f"s{seed}"
        return apply_method(replace(base, seed=seed, out_dir=str(run_dir)), method,
                            density=density, window=DEFAULT_WINDOW)

    def start_config(self) -> TrainConfig:
        p = self.preset
        base = self._config("standard", START_SEED)
        return replace(base, optim=replace(base.optim, lr=p.pretrain_lr, max_steps=p.pretrain_steps,
                                           warmup_steps=min(20, p.pretrain_steps)),
                       eval=replace(base.eval, every=max(1, p.pretrain_steps // 4)),
                       out_dir=str(self.out_dir / "start"))

    def start_weights(self) -> dict[str, torch.Tensor]:
        """The cached starting checkpoint: the last step of the standard pre-training run."""
        if self._start is None:
            config = self.start_config()
            # Reused only under this very config: a changed preset trains a new start (refused
            # where its directory holds the old one), never silently reuses the old weights.
            self._start = finished_weights(config, lambda: self._trainer(config).fit(resume=True))
        return self._start

    def run_config(self, method: str, seed: int) -> TrainConfig:
        density = self.density() if "density" in get_method(method).needs else None
        return self._config(method, seed, density)

    def density(self) -> dict:
        """P-POTS's density, estimated on the starting checkpoint (cached in ``ppots/``)."""
        if self._density is not None:
            return self._density
        from maskdiff.ppots import cached_density, estimate_ppots

        def estimate():
            trainer = self._trainer(self.start_config(), init_weights=self.start_weights())
            a, b, c = self.preset.ppots_design
            train = self.task.train
            batch = trainer.collate([(i, train[i]) for i in range(min(a, len(train)))])
            return estimate_ppots(trainer.model, batch, mask_token_id=self.task.tokenizer.mask_id,
                                  n_rates=b, n_masks=c, restarts=8, seed=0, progress=False)

        start = {k: v for k, v in to_dict(self.start_config()).items()
                 if k not in ("device", "out_dir")}  # where it runs and lies: not what it is
        key = {"design": self.preset.ppots_design, "restarts": 8, "seed": 0, "start": start}
        self._density = cached_density(self.out_dir / "ppots", estimate, key=key)
        return self._density

    def run_one(self, method: str, seed: int) -> dict:
        """Train (or resume) one run, draw its images and score them; reuse ``image.json``."""
        config = self.run_config(method, seed)
        p = self.preset

        def compute() -> dict:
            trainer = self._trainer(config, init_weights=self.start_weights())
            result = trainer.fit(resume=True)
            trainer.load_best()
            labels = np.repeat(np.arange(10), p.samples_per_class)
            t0 = time.perf_counter()
            images = sample_images(trainer.model, self.task.tokenizer, labels.tolist(),
                                   levels=p.levels, temperature=p.temperature,
                                   gen_steps=p.gen_steps, block_length=p.block_length, seed=seed,
                                   device=trainer.device)
            gen_seconds = time.perf_counter() - t0
            return {
                "method": method, "seed": seed, **self.evaluator.score(images, labels),
                "best_val": result.best_val, "best_val_se": result.best_val_se,
                "best_step": result.best_step, "steps": result.steps,
                "final_val": result.final_val, "forward_passes": result.forward_passes,
                "train_seconds": result.seconds, "generate_seconds": gen_seconds,
                "history": result.history, "labels": labels.tolist(),
                "samples": [image_to_text(im, p.levels) for im in images],
            }

        score = {"samples_per_class": p.samples_per_class, "temperature": p.temperature,
                 "gen_steps": p.gen_steps, "block_length": p.block_length,
                 "classifier": to_dict(p.classifier)}
        return reuse_run_result(Path(config.out_dir) / "image.json", config, compute,
                                task=self.task, required=IMAGE_FIELDS, score=score)

    def run(self) -> dict:
        """Every run, then ``results.json``, the PNGs and ``report.md``."""
        from maskdiff.experiments.image_report import write_report

        p = self.preset
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        specs = [(m, s) for m in p.methods for s in p.seeds]
        records = []
        with tqdm(total=len(specs), desc=f"image {p.name}", unit="run",
                  disable=not self.progress) as bar:
            for method, seed in specs:
                bar.set_postfix_str(f"{method} s{seed}")
                records.append(self.run_one(method, seed))
                bar.update(1)
        results = summarise(p, records, self.evaluator, seconds=time.perf_counter() - started,
                            ppots=self._ppots_info(), start=self._start_info())
        atomic_write_text(self.out_dir / "results.json", jsonio.dumps(results, indent=1) + "\n")
        write_report(self.out_dir, results, records, self.task)
        return results

    def _ppots_info(self) -> dict | None:
        doc = load_record(self.out_dir / "ppots" / "ppots.json")
        if doc is None:
            return None
        return {k: doc.get(k) for k in ("epr", "forward_passes", "seconds", "mix", "estimator")}

    def _start_info(self) -> dict | None:
        doc = load_record(self.out_dir / "start" / "results.json")
        if doc is None:
            return None
        return {k: doc.get(k) for k in ("steps", "final_val", "forward_passes", "seconds")}


# ----------------------------------------------------------------------------- summary
SCORES = ("accuracy", "mean_prob", "frechet", "best_val")


def stats(values: Sequence[float]) -> dict:
    """mean, sd (n − 1), min, max, n of finite values (sd is None for a single value)."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(vals) == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else None,
            "min": float(vals.min()), "max": float(vals.max()), "n": int(len(vals))}


def summarise(preset: ImagePreset, records: list[dict], evaluator: DigitEvaluator, *,
              seconds: float, ppots: dict | None, start: dict | None = None) -> dict:
    methods = {}
    for method in preset.methods:
        rows = [r for r in records if r["method"] == method]
        methods[method] = {
            **{f"{k}_stats": stats([r[k] for r in rows]) for k in SCORES},
            "per_class_accuracy": np.mean([r["per_class_accuracy"] for r in rows], axis=0).tolist(),
            "forward_passes": float(np.mean([r["forward_passes"] for r in rows])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in rows])),
            "per_seed": [{k: r[k] for k in ("seed", *SCORES, "best_step", "steps",
                                            "train_seconds", "generate_seconds")} for r in rows],
        }
    base = preset.base
    # The whole experiment's compute, whatever number of restarts it took to finish.
    compute = sum(r["train_seconds"] + r["generate_seconds"] for r in records)
    compute += sum((x or {}).get("seconds") or 0.0 for x in (start, ppots))
    return {
        "preset": preset.name, "seeds": list(preset.seeds), "methods": methods,
        "evaluator": evaluator.summary(), "ppots": ppots, "start": start, "seconds": seconds,
        "compute_seconds": compute, "threads": torch.get_num_threads(),
        "runs": len(records), "grid_columns": preset.grid_columns,
        "setup": {
            "levels": preset.levels, "n_train": preset.n_train, "n_val": preset.n_val,
            "n_test": preset.n_test, "data_seed": preset.data_seed,
            "samples_per_class": preset.samples_per_class, "temperature": preset.temperature,
            "gen_steps": preset.gen_steps, "block_length": preset.block_length,
            "pretrain_steps": preset.pretrain_steps, "pretrain_lr": preset.pretrain_lr,
            "ppots_design": list(preset.ppots_design),
            "model": to_dict(base.model), "optim": to_dict(base.optim), "eval": to_dict(base.eval),
            "init": "every run fine-tunes one standard-pretrained starting checkpoint (seed 0); "
                    "the seed drives data order, rates and masks",
        },
    }


def images_of(record: dict, levels: int) -> np.ndarray:
    """A run record's generated images, (N, 8, 8)."""
    return np.stack([text_to_image(s, levels) for s in record["samples"]])
