"""``maskdiff compare``: the multi-seed stability benchmark of the training methods (docs/method.md §11).

Protocol (as in fine-tuning a pretrained model):

1. A **starting checkpoint** is trained once per model kind (bidirectional for the diffusion
   methods, causal for the autoregressive twin) with the standard objective on *another sample
   of the task's own distribution* (``data_seed + 1000``), and cached under ``start/``.
2. **P-POTS** is estimated once on the starting checkpoint (nested design on fine-tuning
   examples) and fitted; its cost is recorded next to the runs it serves.
3. Every (method, seed) run starts from that checkpoint; the seed drives data order, rates and
   masks only. Every method gets the same steps and batch (the same token budget); the
   equal-compute variant ``standard@2x`` doubles standard's batch, so it spends what the
   two-forward methods (MIRROR, MultiSample(2), P-POTS+MIRROR) spend. Early stopping on the
   validation ELBO (patience from the config).
4. Each run is scored on the test split: pass@1 by low-confidence decoding (docs/method.md §8) and the
   full-range ELBO with its standard error.

A finished run leaves ``compare.json`` in its directory and is reused when the job restarts; an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, to_dict
from maskdiff.data.setup import load_task
from maskdiff.training.evaluate import pass_at_1
from maskdiff.core.methods import BASELINE, METHODS, get_method

DEFAULT_SEEDS = (42, 731, 20231)
EQUAL_COMPUTE = "standard@2x"  # standard with twice the batch: the two-forward methods' compute
START_DATA_OFFSET = 1000


@dataclass(frozen=True, kw_only=True)
class ComparePreset:
    """What a compare job runs. ``base`` is the fine-tuning config of every run; ``methods``
    None means every registered method (:data:`maskdiff.core.methods.METHODS`, read when the
    job plans, so a method registered later is in it)."""

    name: str
    methods: tuple[str, ...] | None
    base: TrainConfig
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    pretrain_steps: int = 600
    equal_compute: bool = False
    n_test: int = 128
    ppots_design: tuple[int, int, int] = (15, 70, 15)  # a examples × b rates × c masks
    window_width: float = 0.4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods or ()) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.pretrain_steps < 1 or self.n_test < 1:
            raise ValueError("pretrain_steps and n_test must be >= 1")


def _finetune(max_steps: int, batch_size: int, every: int, *, d_model: int = 64,
              n_layers: int = 2, n_train: int = 2000, n_val: int = 128, n_test: int = 256,
              device: str = "cpu", difficulty: dict | None = None) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=4),
        data=DataConfig(task="arithmetic", n_train=n_train, n_val=n_val, n_test=n_test, max_len=112,
                        difficulty=difficulty if difficulty is not None else {"n_ops": 1, "max_value": 10}),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, max_steps=max_steps, batch_size=batch_size,
                          min_lr_ratio=0.1),
        eval=EvalConfig(every=every, n_examples=n_val, rates_per_example=4, patience=3),
        log_every=10, device=device)


DEMO_METHODS = ("standard", "mirror", "ppots", "ppots_mirror", "ar")

PRESETS: dict[str, ComparePreset] = {
    "smoke": ComparePreset(
        name="smoke", methods=("standard", "mirror", "ppots_mirror", "ar", EQUAL_COMPUTE),
        seeds=(42, 731), pretrain_steps=8, n_test=8, ppots_design=(4, 10, 2),
        base=replace(_finetune(6, 8, 3, d_model=32, n_layers=1, n_train=64, n_val=8, n_test=8),
                     model=ModelConfig(d_model=32, n_layers=1, n_heads=2))),
    # P-POTS's up-front design here is 8 × 32 × 4 = 1,024 forward passes (the fit-pots default,
    # 15 × 70 × 15, would cost about as much as the fine-tuning itself at this scale).
    "demo": ComparePreset(name="demo", methods=DEMO_METHODS, pretrain_steps=1000,
                          base=_finetune(150, 32, 25), n_test=128, ppots_design=(8, 32, 4)),
    "full": ComparePreset(name="full", methods=None, pretrain_steps=1000,
                          base=_finetune(150, 32, 25), n_test=128, equal_compute=True,
                          ppots_design=(8, 32, 4)),
    "gpu": ComparePreset(name="gpu", methods=None, pretrain_steps=6000, equal_compute=True,
                         seeds=(42, 731, 20231, 1, 2),
                         base=_finetune(600, 64, 50, d_model=256, n_layers=6, n_train=20000,
                                        n_val=256, n_test=512, device="cuda",
                                        difficulty={"n_ops": 2, "max_value": 20}),
                         n_test=512),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the job."""

    method: str  # a registered method's name
    seed: int
    task: str

    @property
    def label(self) -> str:
        return self.method if self.task == "arithmetic" else f"{self.method} ({self.task})"

    @property
    def dirname(self) -> str:
        return f"{self.task}/{self.method.replace('@', '_at_')}/s{self.seed}"


def plan(preset: ComparePreset, seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """The runs of a job, standard first (every seed), in a stable order. A method with its own
    task (SyRM: the table task) runs there, and the baseline with it; ``equal_compute`` adds
    every registered equal-compute variant."""
    seeds = tuple(seeds) if seeds else preset.seeds
    main_task = preset.base.data.task
    names = list(preset.methods or METHODS)
    if preset.equal_compute:
        names += [m.name for m in METHODS.values() if m.base is not None and m.name not in names]
    methods = [get_method(name) for name in names]
    runs: list[RunSpec] = []
    for method in methods:
        runs += [RunSpec(method.name, s, method.task or main_task) for s in seeds]
    for task in dict.fromkeys(m.task for m in methods if m.task is not None):
        runs += [RunSpec(BASELINE, s, task) for s in seeds]  # the own-task methods' baseline
    return runs


# ----------------------------------------------------------------------------- job
@dataclass
class CompareJob:
    """Runs a :class:`ComparePreset` into ``out_dir`` (resumable)."""

    preset: ComparePreset
    out_dir: Path
    seeds: Sequence[int] | None = None
    device: str | None = None
    progress: bool = True
    workers: int = 1
    threads: int | None = None  # per worker process when workers > 1 (None: 1), else unchanged
    _tasks: dict = field(default_factory=dict)
    _starts: dict = field(default_factory=dict)
    _density: dict = field(default_factory=dict)  # density target -> table

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.device is not None:
            self.preset = replace(self.preset, base=replace(self.preset.base, device=self.device))

    # -- pieces ----------------------------------------------------------------------------
    def data_config(self, task: str) -> DataConfig:
        data = self.preset.base.data
        if task == data.task:
            return data
        return replace(data, task=task, difficulty={}, max_len=max(data.max_len, 128))

    def task(self, name: str):
        if name not in self._tasks:
            self._tasks[name] = load_task(self.data_config(name))
        return self._tasks[name]

    def start_weights(self, task: str, causal: bool) -> dict[str, torch.Tensor]:
        """The cached starting checkpoint (trained on another sample of the task)."""
        key = (task, causal)
        if key in self._starts:
            return self._starts[key]
        from maskdiff.training.trainer import Trainer

        base = self.preset.base
        data = self.data_config(task)
        config = replace(
            base, seed=0, model=replace(base.model, causal=causal),
            data=replace(data, data_seed=data.data_seed + START_DATA_OFFSET),
            optim=replace(base.optim, max_steps=self.preset.pretrain_steps,
                          warmup_steps=min(50, self.preset.pretrain_steps)),
            eval=replace(base.eval, every=max(1, self.preset.pretrain_steps // 4), patience=0),
            out_dir=str(self.out_dir / "start" / f"{task}-{'causal' if causal else 'diffusion'}"))
        trainer = Trainer(config, quiet=True)
        if trainer.task.tokenizer.vocab_size != self.task(task).tokenizer.vocab_size:
            raise ValueError(f"task {task!r}: the starting data's vocabulary differs from the "
                             "fine-tuning data's; the protocol needs a shared tokenizer")
        trainer.fit(resume=True)  # a finished start run resumes at its last step: no work
        weights = {name: value.detach().cpu().clone() for name, value in trainer.model.state_dict().items()}
        self._starts[key] = weights
        return weights

    def density(self, target: str = "loss") -> dict:
        """P-POTS's density, estimated on the diffusion starting checkpoint (cached in
        ``ppots/``); ``target="gradient"``: the gradient-targeted one of the ``gpots`` methods,
        from exact per-example gradients on the same design (cached in ``gpots/``)."""
        if target in self._density:
            return self._density[target]
        from maskdiff.models import TransformerConfig, build_model
        from maskdiff.ppots import cached_density, estimate_ppots
        from maskdiff.training.runs import example_batch

        def estimate():
            task_name = self.preset.base.data.task
            task, base = self.task(task_name), self.preset.base
            model = build_model(TransformerConfig(
                vocab_size=task.tokenizer.vocab_size, max_len=base.data.max_len,
                mask_token_id=task.tokenizer.mask_id, **to_dict(base.model)))
            model.load_state_dict(self.start_weights(task_name, causal=False))
            a, b, c = self.preset.ppots_design
            batch = example_batch(base, task, min(a, len(task.train)))
            return estimate_ppots(model, batch, mask_token_id=task.tokenizer.mask_id,
                                  n_rates=b, n_masks=c, restarts=8, seed=0, progress=False,
                                  target=target)

        folder = "ppots" if target == "loss" else "gpots"
        self._density[target] = cached_density(self.out_dir / folder, estimate)
        return self._density[target]

    def window(self) -> tuple[float, float]:
        """The signal-rich window: width ``window_width`` around t* of the task's responses."""
        from maskdiff.labs.ngram import predict_window

        task = self.task(self.preset.base.data.task)
        text = "\n".join(ex.prompt + " " + ex.response for ex in task.train)
        return predict_window(text, level="char").window(self.preset.window_width)

    def run_config(self, spec: RunSpec) -> TrainConfig:
        base = self.preset.base
        method = get_method(spec.method)
        density = self.density(method.density_target) if "density" in method.needs else None
        window = self.window() if "window" in method.needs else None
        config = replace(base, seed=spec.seed, data=self.data_config(spec.task),
                         estimator=method.estimator_config(density=density, window=window),
                         model=replace(base.model, causal=method.causal),
                         out_dir=str(self.out_dir / "runs" / spec.dirname))
        if method.batch_factor != 1:
            batch_size = method.batch_factor * base.optim.batch_size
            config = replace(config, optim=replace(base.optim, batch_size=batch_size))
        return config

    def run_one(self, spec: RunSpec) -> dict:
        """Train (or resume) one run and score it; reuse a finished run's ``compare.json``."""
        from maskdiff.training.trainer import Trainer

        config = self.run_config(spec)
        run_dir = Path(config.out_dir)
        done = run_dir / "compare.json"
        if done.exists():
            return json.loads(done.read_text())
        causal = config.model.causal
        start = self.start_weights(spec.task, causal)
        trainer = Trainer(config, task=self.task(spec.task), init_weights=start, quiet=True)
        result = trainer.fit(resume=True)
        trainer.load_best()
        test = list(trainer.task.test)[: self.preset.n_test]
        t0 = time.perf_counter()
        test_loss = trainer.validate(test)
        generation = pass_at_1(trainer.model, test, trainer.task.tokenizer,
                               max_len=config.data.max_len, causal=causal, device=trainer.device)
        record = {
            "method": spec.method, "label": spec.label, "task": spec.task, "seed": spec.seed,
            "pass_at_1": generation.pass_at_1, "n_test": generation.n,
            "test_loss": test_loss.mean, "test_loss_se": test_loss.se,
            "test_loss_kind": "causal NLL" if causal else "ELBO",
            "best_val": result.best_val, "best_val_se": result.best_val_se,
            "best_step": result.best_step, "steps": result.steps,
            "stopped_early": result.stopped_early, "variance_proxy": _finite(result.variance_proxy),
            "forward_passes": result.forward_passes, "train_seconds": result.seconds,
            "threads": result.threads,
            "eval_seconds": time.perf_counter() - t0, "history": result.history,
            "loss_per_t_bin": _mean_loss_per_bin(run_dir / "metrics.jsonl"),
            "examples": [{"prompt": ex.prompt, "gold": g, "prediction": p} for ex, g, p in
                         list(zip(test, generation.golds, generation.predictions))[:5]],
        }
        done.write_text(json.dumps(record, indent=1) + "\n")
        return record

    def run(self) -> dict:
        """Every run of the plan, then the summary, ``results.json``, plots and ``report.md``.

        With ``workers > 1`` the starting checkpoints, then the runs, train in that many
        processes at ``threads`` threads each (default one): on a small CPU model this is close
        to ``workers`` times faster than one process with as many threads. Results do not
        depend on ``workers``; they depend on the thread count, which ``results.json`` records.
        """
        from maskdiff.experiments.compare_report import summarise, write_report

        specs = plan(self.preset, self.seeds)
        if self.threads is not None:  # this process: the P-POTS estimate, and every run if serial
            torch.set_num_threads(self.threads)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        starts = sorted({(s.task, get_method(s.method).causal) for s in specs})
        args = (self.preset, str(self.out_dir), self.device)
        with _pool(self.workers, self.threads) as pool, tqdm(
                total=len(specs) + len(starts), desc=f"compare {self.preset.name}", unit="run",
                disable=not self.progress, dynamic_ncols=True) as bar:
            bar.set_postfix_str("starting checkpoints")
            for _ in pool.map(_prepare_start, [(*args, task, causal) for task, causal in starts]):
                bar.update(1)
            for target in sorted({get_method(s.method).density_target for s in specs
                                  if "density" in get_method(s.method).needs}):
                bar.set_postfix_str(f"P-POTS estimation ({target})")
                self.density(target)
            records = []
            for record in pool.map(_run_spec, [(*args, spec) for spec in specs]):
                records.append(record)
                bar.set_postfix_str(f"{record['label']} s{record['seed']}")
                bar.update(1)
        results = summarise(self.preset, records, seconds=time.perf_counter() - started,
                            ppots=self._ppots_info(), window=self._window_info(specs),
                            workers=self.workers, threads=self.training_threads())
        (self.out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        write_report(self.out_dir, results)
        return results

    def training_threads(self) -> int:
        """The intra-op threads each run trains with (per worker, or of this process)."""
        return (self.threads or 1) if self.workers > 1 else torch.get_num_threads()

    def _ppots_info(self) -> dict | None:
        path = self.out_dir / "ppots" / "ppots.json"
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        return {k: doc.get(k) for k in ("epr", "poly7", "forward_passes", "seconds", "mix", "estimator")}

    def _window_info(self, specs: list[RunSpec]) -> list[float] | None:
        return list(self.window()) if any("window" in get_method(s.method).needs
                                          for s in specs) else None


class _Serial:
    """The in-process stand-in for a process pool (``workers=1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _pool(workers: int, threads: int | None = None):
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers == 1:
        return _Serial()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads or 1,))


def _prepare_start(args) -> None:
    preset, out_dir, device, task, causal = args
    CompareJob(preset, Path(out_dir), device=device, progress=False).start_weights(task, causal)


def _run_spec(args) -> dict:
    preset, out_dir, device, spec = args
    return CompareJob(preset, Path(out_dir), device=device, progress=False).run_one(spec)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean_loss_per_bin(metrics: Path) -> list[float | None]:
    """Mean over logged windows of the training loss per t-bin (the last half of training)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r["loss_per_t_bin"] for r in rows if "loss_per_t_bin" in r]
    rows = rows[len(rows) // 2:]
    if not rows:
        return []
    out = []
    for j in range(len(rows[0])):
        vals = [r[j] for r in rows if r[j] is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out
