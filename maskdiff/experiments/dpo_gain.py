"""The preference benchmark (docs/method.md §13, "What the estimator does to DPO's pass@1"):
DPO from fine-tuned runs on pairs each run decodes itself, scored by pass@1, per ELBO estimator
at equal forward passes, paired over seeds.

For every fine-tuned run (one per seed, e.g. a compare job's ``standard`` runs):

1. **Pairs without labels.** The run samples ``samples`` answers (temperature ``temperature``,
   the pass@1 decoder's region) to each of the first ``n_prompts`` training prompts; a prompt
   whose samples hold both a correct and a wrong final answer gives one pair (chosen: its first
   correct sample; rejected: its first wrong one). No hand label and no gold text enters a pair,
   only the task's answer check.
2. **DPO per estimator**, from the run's best checkpoint, on the same pairs in the same order
   (``seed``) with the same budget of forward passes per response per model: the estimators
   differ only in how each ELBO is drawn.
3. **pass@1** of the starting checkpoint and of every tuned policy on the same test problems
   with the same greedy decoder.

:func:`summarise` reports, per estimator, the pass@1 gain over the start and the difference from
``naive`` (paired over seeds, t intervals), the seed spread of pass@1 and its ratio to
``naive``'s (Pitman–Morgan), and the forward passes spent.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.core.checks import int_at_least
from maskdiff.data.setup import load_task
from maskdiff.experiments import stats
from maskdiff.experiments.compare_eval import score_pass_at_1
from maskdiff.experiments.compare_presets import PRESETS, Decoding
from maskdiff.experiments.pool import worker_pool
from maskdiff.experiments.report_md import interval
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run
from maskdiff.preference import DPOConfig, train_dpo
from maskdiff.training.answers import answers_match, extract_answer, gold_answer
from maskdiff.training.fill import fill_masked
from maskdiff.training.generate import by_prompt_length, response_text
from maskdiff.training.runs import load_run

ESTIMATORS = ("naive", "vrpo", "lowvar-stratified", "sqrt-stratified-mirror")
BASELINE = "naive"


@dataclass(frozen=True, kw_only=True)
class GainConfig:
    """One benchmark: the pair sampling, the DPO run every estimator shares, and the test."""

    estimators: tuple[str, ...] = ESTIMATORS
    n_prompts: int = 256
    samples: int = 4
    temperature: float = 1.0
    budget: int = 8
    beta: float = 0.5
    lr: float = 3e-4
    steps: int = 30
    batch_size: int = 8
    n_test: int = 1000
    decoding: Decoding = field(default_factory=lambda: PRESETS["full"].decoding)

    def __post_init__(self) -> None:
        if BASELINE not in self.estimators:
            raise ValueError(f"estimators must include {BASELINE!r} (the baseline), got "
                             f"{list(self.estimators)}")
        for name in ("n_prompts", "samples", "n_test"):
            int_at_least(getattr(self, name), name)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (pairs need varied samples), got "
                             f"{self.temperature}")

    def dpo(self, run: Path, pairs: Path, out: Path, estimator: str, seed: int) -> DPOConfig:
        return DPOConfig(run=str(run), pairs=str(pairs), out_dir=str(out), estimator=estimator,
                         budget=self.budget, beta=self.beta, lr=self.lr, steps=self.steps,
                         batch_size=self.batch_size, seed=seed)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sample_answers(model, examples: Sequence, tokenizer, *, gen_length: int, steps: int | None,
                   samples: int, temperature: float, seed: int) -> list[list[str]]:
    """``samples`` decoded responses per example (``gen_length`` positions after its prompt in
    ``steps`` steps, None: one token per step; each proposal sampled at ``temperature``, the
    most confident committed); sample ``j`` of example ``i`` is seeded by
    ``(seed, i, j)`` alone, so it does not depend on the batch."""
    out: list[list[str]] = [[] for _ in examples]
    encoded = [tokenizer.encode(ex.prompt) for ex in examples]
    mask = tokenizer.mask_id
    for length, members in by_prompt_length(encoded).items():
        rows = [(i, j) for i in members for j in range(samples)]
        ids = torch.full((len(rows), length + gen_length), mask, dtype=torch.long)
        ids[:, :length] = torch.tensor([encoded[i] for i, _ in rows], dtype=torch.long)
        seeds = [(seed * 1_000_003 + i) * 64 + j for i, j in rows]
        filled = fill_masked(model, ids, mask_token_id=mask, steps=steps,
                             temperature=temperature, seeds=seeds)
        for (i, _), row in zip(rows, filled.tolist()):
            out[i].append(response_text(tokenizer, row[length:]))
    return out


def build_pairs(examples: Sequence, answers: Sequence[Sequence[str]]) -> list[dict]:
    """One ``{"prompt", "chosen", "rejected"}`` row per example whose sampled answers hold a
    correct and a wrong one (judged by the final answer against the example's gold)."""
    rows = []
    for ex, texts in zip(examples, answers):
        gold = gold_answer(ex.response)
        right = [t for t in texts if t.strip() and answers_match(extract_answer(t), gold)]
        wrong = [t for t in texts if t.strip() and not answers_match(extract_answer(t), gold)]
        if right and wrong:
            rows.append({"prompt": ex.prompt, "chosen": right[0], "rejected": wrong[0]})
    return rows


def _score(model, problems, tokenizer, config: GainConfig, max_len: int) -> dict:
    t0 = time.perf_counter()
    scored = score_pass_at_1(model, problems, tokenizer, max_len=max_len, causal=False,
                             decoding=config.decoding, device="cpu")
    return {"pass_at_1": scored["pass_at_1"], "n_test": scored["n_test"], "hits": scored["hits"],
            "eval_seconds": time.perf_counter() - t0}


def seed_job(job: tuple[int, str, str, GainConfig]) -> dict:
    """Everything of one seed (pairs, the start's pass@1, one DPO run and its pass@1 per
    estimator) under ``out/s<seed>/``; resumable step by step: a finished step is reused, one
    finished under other settings refused (:func:`maskdiff.jobs.reuse_or_run`)."""
    seed, run, out, config = job
    run, out = Path(run), Path(out) / f"s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_run(run)
    task = load_task(loaded.config.data)
    max_len = loaded.config.data.max_len
    problems = list(task.test)[: config.n_test]
    pairs_path = out / "pairs.jsonl"

    def make_pairs() -> dict:
        prompts = list(task.train)[: config.n_prompts]
        answers = sample_answers(loaded.model.eval(), prompts, loaded.tokenizer,
                                 gen_length=config.decoding.gen_length or max_len,
                                 steps=config.decoding.steps,
                                 samples=config.samples, temperature=config.temperature,
                                 seed=seed)
        rows = build_pairs(prompts, answers)
        if not rows:
            raise ValueError(f"{run}: no prompt among {len(prompts)} gave both a correct and a "
                             f"wrong sample; raise --samples or --temperature")
        atomic_write_text(pairs_path, "".join(jsonio.dumps(r) + "\n" for r in rows))
        n_right = sum(answers_match(extract_answer(t), gold_answer(ex.response))
                      for ex, texts in zip(prompts, answers) for t in texts)
        return {"pairs": len(rows), "prompts": len(prompts),
                "sample_accuracy": n_right / (len(prompts) * config.samples)}

    test_key = {"run": str(run), "n_test": config.n_test, "decoding": asdict(config.decoding)}
    pairs_key = {"run": str(run), "seed": seed, "n_prompts": config.n_prompts,
                 "samples": config.samples, "temperature": config.temperature,
                 "decoding": test_key["decoding"]}
    record = {"seed": seed, "run": str(run),
              "pairs": reuse_or_run(out / "pairs.json", pairs_key, make_pairs, what="pairs"),
              "start": reuse_or_run(out / "start.json", test_key, lambda: _score(
                  loaded.model.eval(), problems, loaded.tokenizer, config, max_len),
                  what="start's pass@1")}
    for estimator in config.estimators:
        dpo = config.dpo(run, pairs_path, out / estimator, estimator, seed)

        def tune(dpo=dpo) -> dict:
            t0 = time.perf_counter()
            result = train_dpo(dpo, quiet=True)
            seconds = time.perf_counter() - t0
            tuned = load_run(dpo.out_dir, "latest")
            return {**_score(tuned.model.eval(), problems, loaded.tokenizer, config, max_len),
                    "dpo_seconds": seconds, **{k: result.get(k) for k in (
                        "final_loss", "reward_margin", "accuracy", "policy_forward_passes",
                        "reference_forward_passes")}}
        record[estimator] = reuse_or_run(
            out / f"{estimator}.json", {**test_key, "pairs": pairs_key, "dpo": dpo.to_dict()},
            tune, what=f"{estimator}'s DPO run")
    return record


def run_benchmark(runs: dict[int, Path], out: Path, config: GainConfig, *, workers: int = 1,
                  progress=None) -> dict:
    """Every seed's :func:`seed_job` (``workers`` processes of one thread), then
    :func:`summarise`, written to ``out/results.json``."""
    t0 = time.perf_counter()
    jobs = [(seed, str(path), str(out), config) for seed, path in sorted(runs.items())]
    records = []
    with worker_pool(workers, 1) as pool:
        for record in pool.map(seed_job, jobs):
            records.append(record)
            if progress is not None:
                progress(record)
    doc = summarise(records, config)
    doc["wall_seconds"] = time.perf_counter() - t0
    doc["machine"] = (f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                      f"{workers} worker(s) × 1 thread")
    atomic_write_text(out / "results.json", jsonio.dumps(doc, indent=2) + "\n")
    return doc


def summarise(records: Sequence[dict], config: GainConfig) -> dict:
    """Per estimator: pass@1 after DPO, its gain over the start and its difference from
    ``naive`` (paired t intervals over seeds), the spread ratio to ``naive`` and the passes."""
    start = [r["start"]["pass_at_1"] for r in records]
    base = [r[BASELINE]["pass_at_1"] for r in records]
    rows = {}
    for estimator in config.estimators:
        after = [r[estimator]["pass_at_1"] for r in records]
        row = {"pass_at_1": stats.mean_ci(after), "gain": stats.paired_difference(after, start),
               "passes_per_step": 4 * config.budget * config.batch_size,
               "policy_forward_passes": records[0][estimator]["policy_forward_passes"],
               "reference_forward_passes": records[0][estimator]["reference_forward_passes"],
               "reward_margin": stats.mean_ci([r[estimator]["reward_margin"] for r in records]),
               "dpo_seconds": sum(r[estimator]["dpo_seconds"] for r in records) / len(records)}
        if estimator != BASELINE:
            row["vs_naive"] = stats.paired_difference(after, base)
            row["spread_vs_naive"] = stats.spread_ratio(after, base)
        rows[estimator] = row
    return {"benchmark": "dpo-gain", "config": config.to_dict(),
            "seeds": [r["seed"] for r in records],
            "start": stats.mean_ci(start),
            "pairs": stats.mean_ci([r["pairs"]["pairs"] for r in records]),
            "sample_accuracy": stats.mean_ci([r["pairs"]["sample_accuracy"] for r in records]),
            "estimators": rows, "records": list(records)}


def _ci(d: dict, signed: bool = True) -> str:
    """In points (× 100), one decimal."""
    return interval(d, scale=100.0, digits=1, sign="+" if signed else "")


def gain_table(doc: dict) -> list[str]:
    """The README table: one row per estimator (pass@1 in points)."""
    lines = ["| estimator | pass@1 after DPO | gain over the start | vs `naive` | p | "
             "seed sd (ratio to `naive` [CI]) | reward margin | passes per step |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in doc["estimators"].items():
        after = row["pass_at_1"]
        vs = row.get("vs_naive")
        spread = row.get("spread_vs_naive")
        ratio = ("—" if spread is None or spread["ratio"] is None else
                 f"{spread['ratio']:.2f} [{spread['lo']:.2f}, {spread['hi']:.2f}]")
        lines.append(
            f"| `{name}` | {_ci(after, signed=False)} | {_ci(row['gain'])} | "
            f"{'—' if vs is None else _ci(vs)} | {'—' if vs is None else format(vs['p'], '.2f')} | "
            f"{100 * after['sd']:.1f} ({ratio}) | {row['reward_margin']['mean']:+.2f} | "
            f"{row['passes_per_step']} |")
    return lines


def gain_setup(doc: dict) -> list[str]:
    """The README line above the table: what ran, on what, how long."""
    c = doc["config"]
    return [f"{len(doc['seeds'])} paired seeds (one fine-tuned run each; start pass@1 "
            f"{_ci(doc['start'], signed=False)}); pairs per run "
            f"{doc['pairs']['mean']:.0f} (of {c['n_prompts']} prompts × {c['samples']} samples at "
            f"temperature {c['temperature']:g}; sample accuracy "
            f"{100 * doc['sample_accuracy']['mean']:.0f}%); DPO β {c['beta']:g}, lr "
            f"{c['lr']:g}, {c['steps']} steps × {c['batch_size']} pairs, budget {c['budget']} "
            f"passes per response per model; pass@1 on {c['n_test']} test problems; "
            f"{doc['machine']}; {doc['wall_seconds'] / 60:.1f} min."]
