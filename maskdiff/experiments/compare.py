"""``maskdiff compare``: the paired multi-seed stability benchmark of the training methods
(docs/method.md §11).

Protocol (as in fine-tuning a pretrained model):

1. A **starting checkpoint** is trained once per model kind (bidirectional for the diffusion
   methods, causal for the autoregressive twin) with the standard objective on *another sample
   of the task's own distribution* (``data_seed + 1000``), and cached under ``start/``.
2. **P-POTS** is estimated once on the starting checkpoint (nested design on fine-tuning
   examples) and fitted; its cost is recorded next to the runs it serves. The **gradient noise
   scale** tr Σ / |G|² of every diffusion method is measured there too (``grad_noise.json``).
3. **Paired seeds.** Every (method, seed) run starts from that checkpoint; seed s gives every
   method the same data order and the same per-example rate/mask streams, so methods are
   compared seed by seed. Every method gets the same steps and batch (the same token budget);
   the equal-compute variant ``standard@2x`` doubles standard's batch, so it spends what the
   two-forward methods spend. The validation ELBO is logged against cumulative forward passes
   (compute-to-target).
4. Each run's best validation checkpoint is scored on fixed test items
   (:mod:`maskdiff.experiments.compare_eval`): pass@1 and the test ELBO with common random
   numbers, per item.
5. The summary (:mod:`maskdiff.experiments.compare_summary`): every method's mean with its
   95% CI, the paired difference to standard, the seed sd and spread ratio with CIs and tests,
   the evaluation floor, the compute multiplier, the noise ceiling and the operator prior.

A finished run leaves ``compare.json`` in its directory and is reused when the job restarts
(:mod:`maskdiff.jobs`: only under the configuration it was made under, else refused in one line;
a damaged one is named, set aside and recomputed); an interrupted run resumes from its last
checkpoint; a killed job rerun with the same command continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.core.methods import BASELINE, METHODS, get_method
from maskdiff.data.setup import load_task
from maskdiff.experiments.compare_summary import invocations
from maskdiff.experiments.compare_eval import (
    RECORD_FIELDS, check_record, finite, gradient_noise, mean_loss_per_bin,
    rescore_outdated_block_run, score_run, scoring_key,
)
from maskdiff.experiments.pool import worker_pool
from maskdiff.experiments.prior_policy import operator_prior
from maskdiff.experiments.compare_presets import (  # noqa: F401  (re-exported)
    DEFAULT_SEEDS, DEMO_METHODS, EQUAL_COMPUTE, PRESETS, SEEDS, START_DATA_OFFSET, ComparePreset,
    Decoding, finetune_config)
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import load_record, reuse_or_run
from maskdiff.training.config import DataConfig, TrainConfig, block_layout, to_dict
from maskdiff.training.needs import apply_method, resolve_estimator
from maskdiff.training.objective import build_objective
from maskdiff.training.runs import example_batch, finished_weights, reuse_run_result


@dataclass(frozen=True)
class RunSpec:
    """One training run of the job (``main``: on the job's main task, labelled by the method
    alone; else on a method's own task, labelled ``method (task)``)."""

    method: str  # a registered method's name
    seed: int
    task: str
    main: bool = True

    @property
    def label(self) -> str:
        return self.method if self.main else f"{self.method} ({self.task})"

    @property
    def dirname(self) -> str:
        return f"{self.task}/{self.method.replace('@', '_at_')}/s{self.seed}"


def main_task(preset: ComparePreset) -> str:
    """The name of the job's main task: the built-in task, or ``jsonl`` for ``--train-file``."""
    return "jsonl" if preset.base.data.train_file else preset.base.data.task


def plan(preset: ComparePreset, seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """The runs of a job, standard first (every seed), in a stable order. A method with its own
    task (SyRM: the table task) runs there, and the baseline with it; ``equal_compute`` adds
    every registered equal-compute variant."""
    seeds = tuple(seeds) if seeds else preset.seeds
    main = main_task(preset)
    names = list(preset.methods or METHODS)
    if preset.equal_compute:
        names += [m.name for m in METHODS.values() if m.base is not None and m.name not in names]
    methods = [get_method(name) for name in names]
    runs: list[RunSpec] = []
    for method in methods:
        runs += [RunSpec(method.name, s, method.task or main, method.task in (None, main))
                 for s in seeds]
    for task in dict.fromkeys(m.task for m in methods if m.task not in (None, main)):
        runs += [RunSpec(BASELINE, s, task, False) for s in seeds]  # the own-task methods' baseline
    return runs


OTHER_TASK_MAX_LEN = 160  # ------------------------------------------------------------ job


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
    shared_dir: Path | None = None  # where start/, ppots/ and grad_noise.json live (a sweep's)
    runs_root: Path | None = None  # where the run directories live (default OUT/runs)
    _tasks: dict = field(default_factory=dict)
    _starts: dict = field(default_factory=dict)
    _density: dict = field(default_factory=dict)  # density target -> table

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.shared_dir = Path(self.shared_dir) if self.shared_dir is not None else self.out_dir
        self.runs_root = Path(self.runs_root) if self.runs_root is not None else self.out_dir / "runs"
        if self.device is not None:
            self.preset = replace(self.preset, base=replace(self.preset.base, device=self.device))

    # -- pieces ----------------------------------------------------------------------------
    def data_config(self, task: str) -> DataConfig:
        data = self.preset.base.data
        if task == main_task(self.preset):
            return data
        # The table task's rows (prompt, response and the control tokens) run to 141 tokens:
        # at 160 none is cut, so no response loses its answer (tests/test_compare.py).
        return replace(data, task=task, train_file=None, val_file=None, difficulty={},
                       max_len=max(data.max_len, OTHER_TASK_MAX_LEN))

    @property
    def layout(self):
        """The block layout every diffusion run trains under (``--block-size``), or None."""
        return block_layout(self.preset.base)

    @property
    def block_tag(self) -> str:  # "-bN" under a block layout (density and noise files)
        return "" if self.layout is None else f"-b{self.layout.block_size}"

    def task(self, name: str):
        if name not in self._tasks:
            self._tasks[name] = load_task(self.data_config(name))
        return self._tasks[name]

    def start_config(self, task: str, causal: bool) -> TrainConfig:
        """The starting run's config: the standard objective on another sample of the task; a
        block job starts from the plain masked-diffusion checkpoint (no block layout), the
        plain job's own."""
        base = self.preset.base
        data = self.data_config(task)
        return replace(
            base, seed=0, block_size=None, block_rates="block",
            model=replace(base.model, causal=causal),
            data=replace(data, data_seed=data.data_seed + START_DATA_OFFSET),
            optim=replace(base.optim, max_steps=self.preset.pretrain_steps,
                          warmup_steps=min(50, self.preset.pretrain_steps),
                          batch_size=self.preset.start_batch,
                          lr=self.preset.pretrain_lr or base.optim.lr,
                          optimizer="adamw"),  # one start whatever the fine-tuning optimiser
            eval=replace(base.eval, every=max(1, self.preset.pretrain_steps // 4), patience=0),
            out_dir=str(self.shared_dir / "start" / f"{task}-{'causal' if causal else 'diffusion'}"))

    def start_weights(self, task: str, causal: bool) -> dict[str, torch.Tensor]:
        """The cached starting checkpoint (trained on another sample of the task)."""
        key = (task, causal)
        if key in self._starts:
            return self._starts[key]
        from maskdiff.training.trainer import Trainer

        config = self.start_config(task, causal)

        def train() -> None:
            trainer = Trainer(config, quiet=True)
            if trainer.task.tokenizer.vocab_size != self.task(task).tokenizer.vocab_size:
                raise ValueError(f"task {task!r}: the starting data's vocabulary differs from "
                                 "the fine-tuning data's; the protocol needs a shared tokenizer")
            trainer.fit(resume=True)

        self._starts[key] = finished_weights(config, train)  # workers share it: one trains
        return self._starts[key]

    def density(self, target: str = "loss") -> dict:
        """P-POTS's density, estimated on the diffusion starting checkpoint (cached in
        ``ppots/``); ``target="gradient"``: the gradient-targeted one of the ``gpots`` methods,
        from exact per-example gradients on the same design (cached in ``gpots/``)."""
        if target in self._density:
            return self._density[target]
        from maskdiff.ppots import cached_density, estimate_ppots

        def estimate():
            task_name = main_task(self.preset)
            task, base = self.task(task_name), self.preset.base
            model = self._start_model(task_name)
            a, b, c = self.preset.ppots_design
            batch = example_batch(base, task, min(a, len(task.train)))
            return estimate_ppots(model, batch, mask_token_id=task.tokenizer.mask_id,
                                  n_rates=b, n_masks=c, restarts=8, seed=0, progress=False,
                                  target=target, layout=self.layout)

        folder = ("ppots" if target == "loss" else "gpots") + self.block_tag
        key = {"target": target, "design": self.preset.ppots_design, "restarts": 8, "seed": 0,
               "start": self._start_key(main_task(self.preset))}
        if self.layout is not None:  # per-(example, block) units: docs/method.md §12
            key["block"] = self.layout.to_dict()
        self._density[target] = cached_density(self.shared_dir / folder, estimate, key=key)
        return self._density[target]

    def _start_model(self, task_name: str) -> torch.nn.Module:
        """The diffusion starting checkpoint as a model."""
        from maskdiff.models import TransformerConfig, build_model

        task, base = self.task(task_name), self.preset.base
        model = build_model(TransformerConfig(
            vocab_size=task.tokenizer.vocab_size, max_len=base.data.max_len,
            mask_token_id=task.tokenizer.mask_id, **to_dict(base.model)))
        model.load_state_dict(self.start_weights(task_name, causal=False))
        return model

    def gradient_noise(self, specs: list[RunSpec]) -> dict | None:
        """tr Σ / |G|² of every diffusion method of the plan on the starting checkpoint
        (:func:`maskdiff.experiments.compare_eval.gradient_noise`), cached in
        ``grad_noise.json``; None when the preset measures none."""
        n, path = self.preset.grad_noise_draws, self.shared_dir / f"grad_noise{self.block_tag}.json"
        if n == 0:
            return None
        task_name = main_task(self.preset)
        task, estimators = self.task(task_name), {}
        for name in dict.fromkeys(s.method for s in specs if s.task == task_name):
            method = get_method(name)
            if not method.causal and method.base is None:
                config = self.run_config(RunSpec(name, self.preset.seeds[0], task_name)).estimator
                estimators[name] = resolve_estimator(config, task)
        if not estimators:
            return None

        def compute() -> dict:
            t0 = time.perf_counter()
            built = {name: build_objective(config, causal=False, layout=self.layout,
                                           mask_token_id=task.tokenizer.mask_id)[0]
                     for name, config in estimators.items()}
            pool = example_batch(self.preset.base, task, min(256, len(task.train)))
            doc = gradient_noise(self._start_model(task_name), pool, built, n_draws=n)
            return {**doc, "n_draws": n, "seconds": time.perf_counter() - t0}

        key = {"n_draws": n, "start": self._start_key(task_name),
               "estimators": {name: to_dict(c) for name, c in estimators.items()},
               **({} if self.layout is None else {"block": self.layout.to_dict()})}
        return reuse_or_run(path, key, compute, on_change="recompute", required=("n_draws",),
                            what="gradient noise measurement")

    def _start_key(self, task_name: str) -> dict:
        """What identifies the diffusion starting checkpoint: its config."""
        free = ("device", "out_dir")  # where it runs and lies: not what it is
        return {k: v for k, v in to_dict(self.start_config(task_name, False)).items()
                if k not in free}

    def window(self) -> tuple[float, float]:
        """The signal-rich window: width ``window_width`` around t* of the task's responses."""
        from maskdiff.labs.ngram import predict_window

        task = self.task(main_task(self.preset))
        text = "\n".join(ex.prompt + " " + ex.response for ex in task.train)
        return predict_window(text, level="char").window(self.preset.window_width)

    def run_config(self, spec: RunSpec) -> TrainConfig:
        base = self.preset.base
        method = get_method(spec.method)
        density = self.density(method.density_target) if "density" in method.needs else None
        window = self.window() if "window" in method.needs else None
        runs = self.runs_root
        if method.causal and self.layout is not None:  # the causal twin: the plain job's run
            base, runs = replace(base, block_size=None), self.shared_dir / "runs"
        config = replace(base, seed=spec.seed, data=self.data_config(spec.task),
                         out_dir=str(runs / spec.dirname))
        return apply_method(config, method, density=density, window=window)

    def run_one(self, spec: RunSpec) -> dict:
        """Train (or resume) one run and score it; reuse a finished run's ``compare.json``."""
        from maskdiff.training.trainer import Trainer

        config = self.run_config(spec)
        run_dir = Path(config.out_dir)

        def compute() -> dict:
            trainer = Trainer(config, task=self.task(spec.task), quiet=True,
                              init_weights=self.start_weights(spec.task, config.model.causal))
            result = trainer.fit(resume=True)
            trainer.load_best()
            fwd_per_step = result.forward_passes / max(1, result.steps)
            return {
                "method": spec.method, "label": spec.label, "task": spec.task, "seed": spec.seed,
                **score_run(trainer, self.preset, None if spec.main else Decoding()),
                "best_val": result.best_val, "best_val_se": result.best_val_se,
                "best_step": result.best_step, "steps": result.steps,
                "stopped_early": result.stopped_early,
                "variance_proxy": finite(result.variance_proxy),
                "forward_passes": result.forward_passes, "fwd_per_step": fwd_per_step,
                "tokens": result.tokens, "tokens_per_step": result.tokens / max(1, result.steps),
                "train_seconds": result.seconds, "threads": result.threads,
                "history": [{**h, "fwd": h["step"] * fwd_per_step} for h in result.history],
                "loss_per_t_bin": mean_loss_per_bin(run_dir / "metrics.jsonl"),
            }

        if config.block_size is not None:
            rescore_outdated_block_run(run_dir / "compare.json")
        return reuse_run_result(run_dir / "compare.json", config, compute,
                                task=self.task(spec.task), required=RECORD_FIELDS,
                                check=check_record,
                                score=scoring_key(self.preset, spec.main, config.block_size is not None))

    def run(self) -> dict:
        """Every run of the plan, then the summary, ``results.json``, plots and ``report.md``.

        With ``workers > 1`` the starting checkpoints, then the runs, train in that many
        processes at ``threads`` threads each (default one): on a small CPU model this is close
        to ``workers`` times faster than one process with as many threads. Results do not
        depend on ``workers``; they depend on the thread count, which ``results.json`` records.
        """
        from maskdiff.experiments.compare_report import write_report
        from maskdiff.experiments.compare_summary import summarise

        specs = plan(self.preset, self.seeds)
        if self.threads is not None:  # this process: the P-POTS estimate, and every run if serial
            torch.set_num_threads(self.threads)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        starts = sorted({(s.task, get_method(s.method).causal) for s in specs})
        args = (self.preset, str(self.out_dir), self.device, str(self.shared_dir),
                str(self.runs_root))
        with worker_pool(self.workers, self.threads) as pool, tqdm(
                total=len(specs) + len(starts), desc=f"compare {self.preset.name}", unit="run",
                disable=not self.progress, dynamic_ncols=True) as bar:
            bar.set_postfix_str("starting checkpoints")
            for _ in pool.map(_prepare_start, [(*args, task, causal) for task, causal in starts]):
                bar.update(1)
            for target in sorted({get_method(s.method).density_target for s in specs
                                  if "density" in get_method(s.method).needs}):
                bar.set_postfix_str(f"P-POTS estimation ({target})")
                self.density(target)
            bar.set_postfix_str("gradient noise scale")
            noise = self.gradient_noise(specs)
            records = []
            for record in pool.map(_run_spec, [(*args, spec) for spec in specs]):
                records.append(record)
                bar.set_postfix_str(f"{record['label']} s{record['seed']}")
                bar.update(1)
        results = summarise(self.preset, records, seconds=time.perf_counter() - started,
                            ppots=self._ppots_info(), window=self._window_info(specs),
                            grad_noise=noise, task=self._task_info(),
                            workers=self.workers, threads=self.training_threads(),
                            block=None if self.layout is None else self.layout.to_dict())
        results["invocations"] = invocations(self.out_dir / "results.json", results["seconds"])
        atomic_write_text(self.out_dir / "results.json", jsonio.dumps(results, indent=1) + "\n")
        write_report(self.out_dir, results)
        return results

    def training_threads(self) -> int:
        """The intra-op threads each run trains with (per worker, or of this process)."""
        return (self.threads or 1) if self.workers > 1 else torch.get_num_threads()

    def _ppots_info(self) -> dict | None:
        doc = load_record(self.shared_dir / f"ppots{self.block_tag}" / "ppots.json")
        if doc is None:
            return None
        return {k: doc.get(k) for k in ("epr", "poly7", "forward_passes", "seconds", "mix", "estimator")}

    def _task_info(self) -> dict:
        data = self.preset.base.data
        task = self.task(main_task(self.preset))
        return {"name": main_task(self.preset), "train_file": data.train_file,
                "difficulty": None if data.train_file else data.difficulty,
                "n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test),
                "operator_prior": operator_prior(task.train, list(task.test)[:self.preset.n_test])}

    def _window_info(self, specs: list[RunSpec]) -> list[float] | None:
        return list(self.window()) if any("window" in get_method(s.method).needs
                                          for s in specs) else None


def _prepare_start(args) -> None:
    preset, out_dir, device, shared, runs, task, causal = args
    CompareJob(preset, Path(out_dir), device=device, progress=False, shared_dir=shared,
               runs_root=runs).start_weights(task, causal)


def _run_spec(args) -> dict:
    preset, out_dir, device, shared, runs, spec = args
    return CompareJob(preset, Path(out_dir), device=device, progress=False, shared_dir=shared,
                      runs_root=runs).run_one(spec)
