"""``maskdiff compare --regime pretrain``: the rate samplers compared by pretraining from scratch
(docs/method.md §11, "The pretraining protocol"; issue 26).

Protocol:

1. **Data.** The World English Bible's text task (chunks of ``chunk_chars`` characters from
   the fixed train / val / test chapters, :mod:`maskdiff.data.corpus`), or a user's
   ``--train-file`` of ``{"text"}`` rows (its held-out rows are both validation and test split,
   :func:`maskdiff.data.setup.load_task`).
2. **The signal-rich window** is predicted once, on the training split's text
   (:func:`maskdiff.labs.ngram.predict_window`, the ``maskdiff predict-window`` estimator), and
   cached in ``prediction.json``: the ``window`` method trains on ``t* ± width / 2``.
3. **Paired seeds.** Every (method, seed) run starts from the same seeded initialisation and
   reads the data in the same order with the same rate/mask streams (seed s is seed s for every
   method); every method trains the same number of steps at the same batch (``standard@2x``:
   twice the batch) and its forward passes are counted.
4. **The yardstick**: the full-range test ELBO over U[eps, 1] with common random numbers (the
   same ``n_test`` examples × ``test_rates`` stratified rates, seed ``test_seed``, for every
   method, seed and checkpoint), evaluated at initialisation and every ``max_steps /
   curve_points`` steps: each run gives a curve of test ELBO against forward passes
   (:class:`CurveTrainer`). The causal twin (``ar``) trains on the same data and seeds as the
   generation judge (its curve is its exact test NLL, another quantity).
5. The summary (:mod:`maskdiff.experiments.pretrain_summary`): final test ELBO with the paired
   difference to standard, and compute-to-target multipliers with paired bootstrap CIs.

A finished run leaves ``pretrain.json`` in its directory and is reused when the job is rerun
under the same configuration; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.core.methods import get_method
from maskdiff.experiments.pool import Serial, worker_pool
from maskdiff.experiments.pretrain_presets import PretrainPreset
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run
from maskdiff.training.needs import apply_method
from maskdiff.training.runs import reuse_run_result
from maskdiff.training.trainer import Trainer

JUDGE = "ar"  # the causal twin: the generation judge of every diffusion run of its seed
RUN_FIELDS = ("method", "seed", "curve", "forward_passes", "steps")


class CurveTrainer(Trainer):
    """A :class:`~maskdiff.training.trainer.Trainer` that also scores a fixed test set with
    common random numbers at every evaluation; the points are kept in the run's history (and
    so in its checkpoints: a resumed run keeps its curve)."""

    def __init__(self, config, *, test_examples: Sequence, test_rates: int, test_seed: int,
                 **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.test_examples, self.test_rates, self.test_seed = list(test_examples), test_rates, test_seed

    def test_loss(self) -> float:
        """The full-range test ELBO with CRN (the causal twin: its exact test NLL)."""
        from maskdiff.training.evaluate import causal_nll, elbo

        if self.causal:
            return causal_nll(self.model, self.test_examples, self.collate,
                              device=self.device).mean
        return elbo(self.model, self.test_examples, self.collate,
                    mask_token_id=self.task.tokenizer.mask_id, rates_per_example=self.test_rates,
                    seed=self.test_seed, batch_size=64,
                    normalizer=self.config.estimator.normalizer, device=self.device).mean

    def _evaluate(self, record: dict) -> bool:
        stop = super()._evaluate(record)
        record["test_loss"] = self.history[-1]["test_loss"] = self.test_loss()
        return stop


@dataclass(frozen=True)
class PretrainSpec:
    method: str
    seed: int

    @property
    def dirname(self) -> str:
        return f"{self.method.replace('@', '_at_')}/s{self.seed}"


def pretrain_plan(preset: PretrainPreset, seeds: Sequence[int] | None = None) -> list[PretrainSpec]:
    """Every (method, seed) run, seed-major (the first seeds of every method finish first, so
    a partial job already holds complete pairs)."""
    seeds = tuple(seeds) if seeds else preset.seeds
    return [PretrainSpec(m, s) for s in seeds for m in preset.methods]


@dataclass
class PretrainJob:
    """Runs a :class:`PretrainPreset` into ``out_dir`` (resumable). ``judge``, when given, is
    called as ``judge(run_dir, judge_dir)`` for every diffusion run with the causal twin's run
    directory of the same seed; what it returns is stored as the run's ``generation`` (the hook
    for ``maskdiff evaluate --judge``)."""

    preset: PretrainPreset
    out_dir: Path
    seeds: Sequence[int] | None = None
    device: str | None = None
    progress: bool = True
    workers: int = 1
    threads: int | None = None
    judge: Callable[[Path, Path], dict] | None = None

    def __post_init__(self) -> None:
        if self.judge is None and self.preset.judge is not None:
            self.judge = GenerationJudge(self.preset, self.device or self.preset.base.device)
        self.out_dir = Path(self.out_dir)
        if self.device is not None:
            self.preset = replace(self.preset, base=replace(self.preset.base, device=self.device))
        self._task = None

    @property
    def task(self):
        if self._task is None:
            from maskdiff.data.setup import load_task

            self._task = load_task(self.preset.base.data)
        return self._task

    def prediction(self) -> dict:
        """t* of the training split (``prediction.json``, computed once)."""
        from maskdiff.labs.ngram import predict_window

        p = self.preset

        def compute() -> dict:
            text = "\n".join(ex.prompt + ex.response for ex in self.task.train)
            text = text if p.corpus_chars is None else text[: p.corpus_chars]
            pred = predict_window(text, level=p.level, min_count=p.min_count)
            return {"t_star": pred.t_star, "window": list(pred.window(p.window_width)),
                    "level": pred.level, "min_count": pred.min_count, "n_tokens": pred.n_tokens,
                    "corpus": "the training split", "corpus_chars": len(text)}

        key = {"data": _data_key(p), "corpus_chars": p.corpus_chars, "level": p.level,
               "min_count": p.min_count, "width": p.window_width}
        return reuse_or_run(self.out_dir / "prediction.json", key, compute,
                            on_change="recompute", what="window prediction",
                            required=("t_star", "window"))

    def run_config(self, spec: PretrainSpec):
        method = get_method(spec.method)
        window = tuple(self.prediction()["window"]) if "window" in method.needs else None
        config = replace(self.preset.base, seed=spec.seed,
                         out_dir=str(self.out_dir / "runs" / spec.dirname))
        return apply_method(config, method, window=window)

    def run_one(self, spec: PretrainSpec) -> dict:
        """Train (or resume) one run; reuse a finished run's ``pretrain.json``."""
        config, p = self.run_config(spec), self.preset
        test = list(self.task.test)[: p.n_test]

        def compute() -> dict:
            trainer = CurveTrainer(config, task=self.task, quiet=True, test_examples=test,
                                   test_rates=p.test_rates, test_seed=p.test_seed)
            initial = trainer.test_loss()  # the seeded initialisation, before any step
            result = trainer.fit(resume=True)
            per_step = result.forward_passes / max(1, result.steps)
            curve = [{"step": 0, "fwd": 0.0, "test_loss": initial}] + [
                {"step": h["step"], "fwd": h["step"] * per_step, "test_loss": h["test_loss"],
                 "val_loss": h["val_loss"]} for h in result.history]
            return {"method": spec.method, "seed": spec.seed, "causal": config.model.causal,
                    "curve": curve, "forward_passes": result.forward_passes,
                    "fwd_per_step": per_step, "tokens": result.tokens, "steps": result.steps,
                    "train_seconds": result.seconds, "threads": result.threads,
                    "n_parameters": result.n_parameters, "window": _window(config)}

        score = {"n_test": len(test), "test_rates": p.test_rates, "test_seed": p.test_seed}
        record = reuse_run_result(Path(config.out_dir) / "pretrain.json", config, compute,
                                  task=self.task, required=RUN_FIELDS, score=score)
        return {**record, "run_dir": config.out_dir}

    def run(self) -> dict:
        """Every run of the plan, then ``results.json``, ``report.md`` and ``curves.png``."""
        from maskdiff.experiments.pretrain_summary import summarise, write_outputs

        specs = pretrain_plan(self.preset, self.seeds)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        prediction = self.prediction() if any(
            "window" in get_method(s.method).needs for s in specs) else None
        args = (self.preset, str(self.out_dir), self.device)
        records = []
        with worker_pool(self.workers, self.threads) as pool, tqdm(
                total=len(specs), desc=f"compare --regime pretrain {self.preset.name}",
                unit="run", disable=not self.progress, dynamic_ncols=True) as bar:
            for record in pool.map(_run_spec, [(*args, spec) for spec in specs]):
                records.append(record)
                bar.set_postfix_str(f"{record['method']} s{record['seed']}")
                bar.update(1)
            bar.set_postfix_str("generation judge")
            self.apply_judge(records, pool)
        results = summarise(self.preset, records, prediction=prediction,
                            seconds=time.perf_counter() - started, task=self.task_info(),
                            threads=(self.threads or 1) if self.workers > 1
                            else torch.get_num_threads(), workers=self.workers)
        atomic_write_text(self.out_dir / "results.json", jsonio.dumps(results, indent=1) + "\n")
        write_outputs(self.out_dir, results)
        return results

    def apply_judge(self, records: list[dict], pool=None) -> None:
        """The generation hook: ``judge(run_dir, judge_dir)`` per diffusion run (see class),
        in ``pool`` when given (the judge must then pickle)."""
        twins = {r["seed"]: r["run_dir"] for r in records if r["method"] == JUDGE}
        for r in records:
            r["judge_run"] = twins.get(r["seed"]) if r["method"] != JUDGE else None
        todo = [r for r in records if r["judge_run"] is not None]
        if self.judge is None or not todo:
            return
        pairs = [(self.judge, Path(r["run_dir"]), Path(r["judge_run"])) for r in todo]
        for r, generation in zip(todo, (pool or Serial()).map(_judge_pair, pairs)):
            r["generation"] = generation

    def task_info(self) -> dict:
        data = self.preset.base.data
        return {"name": "jsonl" if data.train_file else data.task,
                "train_file": data.train_file, "chunk_chars": data.difficulty.get("chunk_chars"),
                "n_train": len(self.task.train), "n_val": len(self.task.val),
                "n_test": len(self.task.test), "vocab_size": self.task.tokenizer.vocab_size,
                "tokenizer": data.tokenizer}


def _data_key(preset: PretrainPreset) -> dict:
    from maskdiff.training.config import to_dict

    return to_dict(preset.base.data)


def _window(config) -> list[float] | None:
    params = config.estimator.sampler.params
    return ([params["t_min"], params["t_max"]] if config.estimator.sampler.name == "window"
            else None)


@dataclass(frozen=True)
class GenerationJudge:
    """The built-in judge (:mod:`maskdiff.training.judge`): the diffusion run's final model
    decodes from all-masks, continues test prompts and fills partially masked test text; the
    causal twin's final model scores it. Cached in the run's ``generation.json``."""

    preset: PretrainPreset
    device: str = "cpu"

    def __call__(self, run_dir: Path, judge_dir: Path) -> dict:
        from dataclasses import asdict

        from maskdiff.training.judge import judge_generation, load_judge
        from maskdiff.training.runs import load_run, make_collator

        config, n = self.preset.judge, max(self.preset.judge.samples,
                                           self.preset.judge.probe_examples or 0)

        def compute() -> dict:
            from maskdiff.data.setup import load_task

            run = load_run(run_dir, "latest", self.device)
            judge = load_judge(judge_dir, run, run_dir, "latest", self.device)
            task = load_task(run.config.data)
            report = judge_generation(run.model, judge.model, list(task.test)[:n],
                                      make_collator(run.config, task), config=config,
                                      device=self.device)
            return {**report.to_dict(), "judge_run": str(judge_dir)}

        key = {"judge": asdict(config), "judge_run": str(judge_dir), "checkpoint": "latest"}
        return reuse_or_run(Path(run_dir) / "generation.json", key, compute,
                            on_change="recompute", what="generation judge",
                            required=("sources", "probe"))


def _judge_pair(args) -> dict:
    judge, run_dir, judge_dir = args
    return judge(run_dir, judge_dir)


def _run_spec(args) -> dict:
    preset, out_dir, device, spec = args
    return PretrainJob(preset, Path(out_dir), device=device, progress=False).run_one(spec)
