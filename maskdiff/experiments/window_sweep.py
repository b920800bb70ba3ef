"""The language-model window sweep (docs/method.md §10; parity paper §5.1, Fig. 3, F.3-F.4).

The tiny maskdiff transformer is trained on the natural-text corpus task (``"text"``) with the
full range U[0,1] (the ``standard`` method) and with the ``window`` method on each of the ten
intervals of width 0.1 ([0,0.1], ..., [0.9,1]) plus the interval of the same width centred on
the corpus' predicted signal-rich rate ``t*`` (:func:`maskdiff.labs.ngram.predict_window`, the
``maskdiff predict-window`` estimator, on the training split, clipped to [0,1]). Every setting
trains for the same number of steps with the same seeds; the test loss is ALWAYS the full-range
ELBO over U[eps,1] (:func:`maskdiff.training.evaluate.elbo`) with its standard error, on the same test
examples with common random numbers.

Outputs in the output directory: ``results.json``, and from it
(:mod:`maskdiff.experiments.window_sweep_report`) ``report.md``, ``test_loss_vs_window.png``
(test loss against the window centre, ``t*`` marked, the U[0,1] baseline as a line with a band)
and ``val_curves.png`` (validation ELBO against steps for every setting). Each (setting, seed)
trains in ``runs/<setting>-s<seed>/``; a finished run (``test.json`` present) is reused and an
interrupted one resumes from its last checkpoint, so a restart loses no finished work.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdiff import jsonio
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, to_dict
from maskdiff.training.evaluate import per_example_elbo
from maskdiff.core.methods import method_config
from maskdiff.experiments.window_sweep_report import write_plots, write_report
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run
from maskdiff.training.runs import reuse_run_result

__all__ = [
    "PRESETS", "Setting", "WindowSweepPreset", "paired_delta", "per_example_elbo",
    "predicted_window", "run_window_sweep", "summarise", "sweep_settings",
]

BASELINE = "U[0,1]"
PREDICTED = "predicted"


@dataclass(frozen=True)
class Setting:
    """One training configuration of the sweep: a label and its window (None: U[0,1])."""

    label: str
    window: tuple[float, float] | None
    kind: str  # "baseline", "interval" or "predicted"

    @property
    def slug(self) -> str:
        if self.window is None:
            return "full"
        lo, hi = self.window
        prefix = "pred" if self.kind == "predicted" else "win"
        return f"{prefix}-{lo:.3f}-{hi:.3f}"

    @property
    def centre(self) -> float | None:
        return None if self.window is None else 0.5 * (self.window[0] + self.window[1])

    def estimator(self):
        if self.window is None:
            return method_config("standard")
        return method_config("window", window=self.window)


def predicted_window(t_star: float, width: float = 0.1) -> tuple[float, float]:
    """The interval of ``width`` centred on ``t*``, clipped to [0, 1] (it may be narrower at an
    edge: clipping, not shifting, keeps its centre as close to ``t*`` as [0, 1] allows)."""
    if not (0.0 <= t_star <= 1.0):
        raise ValueError(f"t_star must lie in [0, 1], got {t_star!r}")
    if not (0.0 < width <= 1.0):
        raise ValueError(f"width must lie in (0, 1], got {width!r}")
    return max(0.0, t_star - width / 2), min(1.0, t_star + width / 2)


def sweep_settings(t_star: float, width: float = 0.1, n_intervals: int = 10) -> list[Setting]:
    """U[0,1], the ``n_intervals`` equal intervals of [0,1], and the predicted window."""
    if n_intervals < 1:
        raise ValueError(f"n_intervals must be >= 1, got {n_intervals}")
    settings = [Setting(BASELINE, None, "baseline")]
    for j in range(n_intervals):
        lo, hi = round(j / n_intervals, 10), round((j + 1) / n_intervals, 10)
        settings.append(Setting(f"U[{lo:g},{hi:g}]", (lo, hi), "interval"))
    lo, hi = predicted_window(t_star, width)
    settings.append(Setting(PREDICTED, (lo, hi), "predicted"))
    return settings


@dataclass(frozen=True, kw_only=True)
class WindowSweepPreset:
    """Sizes of one sweep. ``train`` is the text-task TrainConfig shared by every setting
    (its estimator is replaced per setting; early stopping is off so every run takes
    ``max_steps`` steps). ``corpus_chars`` limits the text the n-gram prediction reads
    (None: the whole training split)."""

    name: str
    train: TrainConfig
    seeds: tuple[int, ...]
    n_test: int
    test_rates: int
    width: float = 0.1
    level: str = "char"
    min_count: int = 5
    corpus_chars: int | None = None
    test_seed: int = 4321
    notes: str = ""


def _text_config(*, d_model: int, n_layers: int, n_heads: int, n_train: int, n_val: int,
                 n_test: int, chunk_chars: int, steps: int, batch_size: int, lr: float,
                 eval_every: int, eval_examples: int, warmup: int) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads),
        data=DataConfig(task="text", n_train=n_train, n_val=n_val, n_test=n_test,
                        max_len=chunk_chars + 2, difficulty={"chunk_chars": chunk_chars}),
        optim=OptimConfig(lr=lr, max_steps=steps, warmup_steps=warmup, batch_size=batch_size),
        eval=EvalConfig(every=eval_every, n_examples=eval_examples, rates_per_example=4,
                        batch_size=64, patience=0),
        log_every=max(1, eval_every // 2),
    )


PRESETS: dict[str, WindowSweepPreset] = {
    # The test suite's preset: the whole path in a few seconds.
    "smoke": WindowSweepPreset(
        name="smoke",
        train=_text_config(d_model=16, n_layers=1, n_heads=2, n_train=32, n_val=8, n_test=8,
                           chunk_chars=24, steps=3, batch_size=4, lr=3e-3, eval_every=3,
                           eval_examples=8, warmup=1),
        seeds=(0,), n_test=8, test_rates=2, corpus_chars=100_000,
        notes="plumbing only: 3 steps, numbers meaningless"),
    # What fits a shared 2-core CPU in ~20 minutes for two seeds (the numbers in the report).
    "cpu": WindowSweepPreset(
        name="cpu",
        train=_text_config(d_model=64, n_layers=2, n_heads=4, n_train=4000, n_val=128,
                           n_test=256, chunk_chars=64, steps=200, batch_size=32, lr=3e-3,
                           eval_every=50, eval_examples=32, warmup=20),
        seeds=(0, 1), n_test=256, test_rates=8),
    # The documented longer sweep: 36 runs x 2000 steps of a 0.8M-parameter model on 128-char
    # chunks. Not run here; meant for a GPU (--device cuda) or a long unattended CPU job.
    "full": WindowSweepPreset(
        name="full",
        train=_text_config(d_model=128, n_layers=4, n_heads=4, n_train=20000, n_val=256,
                           n_test=512, chunk_chars=128, steps=2000, batch_size=64, lr=1e-3,
                           eval_every=200, eval_examples=128, warmup=100),
        seeds=(0, 1, 2), n_test=512, test_rates=16),
}


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def _predict(preset: WindowSweepPreset, task, out_dir: Path, t_star: float | None) -> dict:
    path = out_dir / "prediction.json"
    if t_star is not None:
        record = {"t_star": float(t_star), "source": "given", "weights": None}
        atomic_write_text(path, jsonio.dumps(record, indent=1) + "\n")
        return record

    def compute() -> dict:
        from maskdiff.data.corpus import load_corpus
        from maskdiff.labs.ngram import predict_window

        text = load_corpus("train")
        if preset.corpus_chars is not None:
            text = text[: preset.corpus_chars]
        prediction = predict_window(text, level=preset.level, min_count=preset.min_count)
        return {
            "t_star": prediction.t_star, "source": "corpus", "corpus": "text task, train split",
            "corpus_chars": preset.corpus_chars, "level": prediction.level,
            "min_count": prediction.min_count, "estimator": prediction.estimator,
            "n_tokens": prediction.n_tokens,
            "weights": {str(k): v for k, v in prediction.weights.items()},
        }

    key = {"corpus_chars": preset.corpus_chars, "level": preset.level,
           "min_count": preset.min_count}
    return reuse_or_run(path, key, compute, on_change="recompute", what="window prediction",
                        required=("t_star",), check=lambda r: float(r["t_star"]),
                        legacy=lambda r: ({**key, "corpus_chars": r.get("corpus_chars")}
                                          if r.get("source") == "corpus" else None))


def _run_one(setting: Setting, seed: int, preset: WindowSweepPreset, task, out_dir: Path,
             device: str) -> dict:
    """Train (or resume) one (setting, seed) run and score it on the test set."""
    from maskdiff.training.evaluate import elbo
    from maskdiff.training.trainer import Trainer

    run_dir = out_dir / "runs" / f"{setting.slug}-s{seed}"
    config = replace(preset.train, seed=seed, estimator=setting.estimator(),
                     out_dir=str(run_dir), device=device)

    def compute() -> dict:
        trainer = Trainer(config, task=task, quiet=True)
        result = trainer.fit(resume=True)
        examples = list(task.test)[: preset.n_test]
        test = elbo(trainer.model, examples, trainer.collate,
                    mask_token_id=task.tokenizer.mask_id, rates_per_example=preset.test_rates,
                    seed=preset.test_seed, batch_size=64, normalizer=config.estimator.normalizer,
                    device=trainer.device)
        per_example = per_example_elbo(
            trainer.model, examples, trainer.collate, mask_token_id=task.tokenizer.mask_id,
            rates_per_example=preset.test_rates, seed=preset.test_seed,
            normalizer=config.estimator.normalizer, device=trainer.device)
        return {
            "label": setting.label, "window": setting.window, "kind": setting.kind, "seed": seed,
            "test_loss": test.mean, "test_se": test.se, "test_n": test.n,
            "steps": result.steps, "train_seconds": result.seconds,
            "val_history": result.history, "n_parameters": result.n_parameters,
            "test_per_example": per_example.tolist(),
        }

    score = {"n_test": preset.n_test, "test_rates": preset.test_rates,
             "test_seed": preset.test_seed}
    return reuse_run_result(run_dir / "test.json", config, compute, task=task, score=score,
                            required=("label", "seed", "test_loss", "test_per_example"),
                            check=_check_test_record)


def _check_test_record(record: dict) -> None:
    float(record["test_loss"])
    if not isinstance(record["test_per_example"], list):
        raise TypeError("field 'test_per_example' is not a list")


def paired_delta(records: list[dict], label: str, baseline: str = BASELINE) -> dict | None:
    """Test loss of ``label`` minus the baseline's, paired on seeds and test examples.

    For every seed run by both, the per-example differences (same examples, same masks) are
    averaged over seeds; the mean over examples is the delta and ``se`` (test-set noise only)
    is their sd / sqrt(n). ``per_seed`` holds each seed's delta and ``se_seeds`` their sd /
    sqrt(S), which contains the training-seed noise as well; ``se_total`` is ``se_seeds`` when
    there are two or more seeds, else ``se``. None when no seed has values for both.
    """
    by_seed = {r["seed"]: r for r in records if r["label"] == baseline and "test_per_example" in r}
    diffs, per_seed = [], {}
    for r in records:
        if r["label"] != label or "test_per_example" not in r or r["seed"] not in by_seed:
            continue
        d = (torch.tensor(r["test_per_example"], dtype=torch.float64)
             - torch.tensor(by_seed[r["seed"]]["test_per_example"], dtype=torch.float64))
        diffs.append(d)
        per_seed[str(r["seed"])] = float(d.mean())
    if not diffs:
        return None
    d = torch.stack(diffs).mean(dim=0)
    se = float(d.std(unbiased=True)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    seeds = torch.tensor(list(per_seed.values()), dtype=torch.float64)
    se_seeds = (float(seeds.std(unbiased=True)) / math.sqrt(len(seeds)) if len(seeds) > 1
                else float("nan"))
    return {"delta": float(d.mean()), "se": se, "se_seeds": se_seeds,
            "se_total": se_seeds if len(seeds) > 1 else se,
            "per_seed": per_seed, "n_examples": len(d)}


def summarise(records: list[dict], settings: list[Setting]) -> dict[str, dict]:
    """Per setting: mean test loss over seeds, the seed sd, and an uncertainty ``se``.

    ``se = sqrt(sd_seeds²/S + mean_i(se_i²))``: the seed-to-seed spread of the mean plus the
    test-set sampling error (each run's ELBO SE over test examples; the test examples and their
    masks are shared by all runs, so this term is conservative for differences).
    """
    out = {}
    for s in settings:
        rows = [r for r in records if r["label"] == s.label]
        if not rows:
            continue
        losses = torch.tensor([r["test_loss"] for r in rows], dtype=torch.float64)
        ses = torch.tensor([math.nan if r["test_se"] is None else r["test_se"] for r in rows],
                           dtype=torch.float64)  # null in JSON: undefined (one test example)
        sd = float(losses.std(unbiased=True)) if len(rows) > 1 else 0.0
        se = math.sqrt(sd ** 2 / len(rows) + float((ses ** 2).mean()))
        out[s.label] = {
            "window": s.window, "centre": s.centre, "kind": s.kind,
            "test_loss_mean": float(losses.mean()), "test_loss_sd_seeds": sd, "se": se,
            "test_loss_per_seed": {str(r["seed"]): r["test_loss"] for r in rows},
            "test_se_per_seed": {str(r["seed"]): r["test_se"] for r in rows},
            "paired_vs_baseline": None if s.kind == "baseline" else paired_delta(records, s.label),
        }
    return out


def run_window_sweep(preset: WindowSweepPreset, out_dir: str | Path, *,
                     seeds: tuple[int, ...] | None = None, t_star: float | None = None,
                     device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run (or finish) the sweep into ``out_dir``; returns the results dict also written to
    ``results.json``. ``t_star`` overrides the corpus prediction."""
    from maskdiff.data.setup import load_task

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = tuple(preset.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    start = time.perf_counter()
    task = load_task(preset.train.data)
    prediction = _predict(preset, task, out_dir, t_star)
    settings = sweep_settings(prediction["t_star"], preset.width)
    jobs = [(s, seed) for seed in seeds for s in settings]
    records = []
    bar = tqdm(total=len(jobs), desc="window-sweep", disable=not progress, dynamic_ncols=True)
    with bar:
        for setting, seed in jobs:
            bar.set_postfix_str(f"{setting.label} seed {seed}")
            records.append(_run_one(setting, seed, preset, task, out_dir, device))
            bar.update(1)
    summary = summarise(records, settings)
    intervals = {k: v for k, v in summary.items() if v["kind"] == "interval"}
    best_label = min(intervals, key=lambda k: intervals[k]["test_loss_mean"])
    results = {
        "format": "maskdiff.window_sweep", "version": 1,
        "preset": preset.name, "seeds": list(seeds), "t_star": prediction["t_star"],
        "prediction": prediction,
        "settings": [{"label": s.label, "window": s.window, "kind": s.kind} for s in settings],
        "summary": summary,
        "best_interval": {"label": best_label, "centre": intervals[best_label]["centre"],
                          "distance_to_t_star": abs(intervals[best_label]["centre"]
                                                     - prediction["t_star"])},
        "runs": records,
        "config": {"train": to_dict(preset.train), "n_test": preset.n_test,
                   "test_rates": preset.test_rates, "width": preset.width,
                   "level": preset.level, "min_count": preset.min_count},
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
    }
    atomic_write_text(out_dir / "results.json", jsonio.dumps(results, indent=1) + "\n")
    write_plots(results, out_dir)
    write_report(results, out_dir, preset)
    return results
