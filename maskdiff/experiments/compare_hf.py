"""``maskdiff compare --hf PATH``: the paired protocol on a Hugging Face masked-diffusion model
(docs/method.md §11, docs/huggingface.md).

The model at PATH is the starting checkpoint: every (method, seed) run fine-tunes a fresh copy
of it with :class:`maskdiff.hf.MaskedDiffusionTrainer` (seed s: the same data order, rates and
masks streams for every method), logs the validation ELBO every ``eval.every`` steps against
forward passes, and scores the final weights on the same test rows with the same draws: the
test ELBO per row (common random numbers), and pass@1 by greedy low-confidence decoding where
the rows carry a ``#### answer``. The rows: ``--train-file`` (the last 10% held out as the
validation = test split), else the preset's built-in task as ``{"prompt", "response"}`` text.
Causal and own-task methods are left out (they need maskdiff's own models and tasks).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.core.methods import get_method
from maskdiff.data.holdout import holdout
from maskdiff.data.jsonl import read_json_lines
from maskdiff.experiments.compare import RunSpec, plan
from maskdiff.experiments.compare_eval import RECORD_FIELDS, check_record, scoring_key
from maskdiff.experiments.compare_presets import ComparePreset
from maskdiff.training.answers import answers_match, extract_answer, gold_answer
from maskdiff.training.evaluate import per_example_elbo
from maskdiff.training.generate import generate_diffusion
from maskdiff.fileio import atomic_write_text
from maskdiff.training.config import TrainConfig
from maskdiff.training.needs import apply_method
from maskdiff.training.optimizers import build_optimizer
from maskdiff.training.runs import reuse_run_result

HOLDOUT = 0.1


def rows_of(train_file: str | None, preset: ComparePreset) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows): the JSONL file's rows with its last 10% held out, or the
    preset's built-in task as prompt/response rows."""
    if train_file is None:
        from maskdiff.data.setup import load_task

        task = load_task(preset.base.data)
        as_row = lambda ex: {"prompt": ex.prompt, "response": ex.response}  # noqa: E731
        return [as_row(e) for e in task.train], [as_row(e) for e in task.test]
    path = Path(train_file)
    if not path.exists():
        raise ValueError(f"--train-file {path}: no such file")
    rows = [row for _, row in read_json_lines(path)]  # names file and line of a bad one
    if len(rows) < 4:
        raise ValueError(f"{path}: need at least 4 rows to hold out a test split, got {len(rows)}")
    split = holdout(rows, key=lambda row: jsonio.dumps(row, sort_keys=True), fraction=HOLDOUT,
                    minimum=2, where=str(path))  # leak-free: repeated rows on one side only
    if split.notes(str(path)):
        print(f"maskdiff: {split.notes(str(path))}", file=sys.stderr, flush=True)
    return split.train, split.val


@dataclass
class HFCompareJob:
    """Runs the diffusion methods of a preset on the Hugging Face model ``hf`` (resumable per run)."""

    preset: ComparePreset
    out_dir: Path
    hf: str
    train_file: str | None = None
    seeds: tuple[int, ...] | None = None
    trust_remote_code: bool = False
    mask_token_id: int | None = None
    device: str = "cpu"
    hf_options: dict | None = None  # more load_hf_model keywords (logit_shift, attention, ...)
    progress: bool = True
    _densities: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.train_rows, self.test_rows = rows_of(self.train_file, self.preset)

    def load(self):
        from maskdiff.hf import load_hf_model
        from maskdiff.hf.source import check_context, context_limit

        options = {"mask_token_id": self.mask_token_id,
                   "trust_remote_code": self.trust_remote_code, **(self.hf_options or {})}
        model, tok, mask_id = load_hf_model(self.hf, device=self.device, **options)
        if self.train_file is not None:  # a row longer than the context: one line naming it
            check_context(tok, read_json_lines(self.train_file), context_limit(model),
                          self.train_file, self.hf)
        return model, tok, mask_id

    def specs(self) -> list[RunSpec]:
        ok = lambda m: not m.causal and m.task is None and not ({"delimiters", "syntax"} & m.needs)  # noqa: E731
        return [s for s in plan(self.preset, self.seeds) if ok(get_method(s.method))]

    def collate(self, tokenizer):
        from maskdiff.hf import hf_batch

        return lambda items: hf_batch(tokenizer, [r for _, r in items], first_index=items[0][0])

    def density(self, target: str = "loss") -> dict:
        """The method's fitted density on the model (``ppots/``, or ``gpots/`` for a
        gradient-targeted one), as :meth:`CompareJob.density`."""
        from maskdiff.hf import hf_batch
        from maskdiff.ppots import cached_density, estimate_ppots

        def estimate():
            model, tok, mask_id = self.load()
            a, b, c = self.preset.ppots_design
            batch = hf_batch(tok, self.train_rows[:a])
            batch = replace(batch, eligible=model.options.eligible(batch.eligible))
            return estimate_ppots(model, batch, mask_token_id=mask_id, n_rates=b, n_masks=c,
                                  restarts=8, seed=0, progress=False, target=target)

        if target not in self._densities:  # read and checked once per job, as CompareJob does
            key = {"hf": self.hf, "train_file": self.train_file,
                   "mask_token_id": self.mask_token_id, "hf_options": self.hf_options,
                   "target": target, "design": self.preset.ppots_design, "restarts": 8, "seed": 0}
            self._densities[target] = cached_density(
                self.out_dir / ("ppots" if target == "loss" else "gpots"), estimate, key=key)
        return self._densities[target]

    def run_config(self, spec: RunSpec) -> TrainConfig:
        """The run's settings: the preset's base with the method applied (the one
        :func:`~maskdiff.training.needs.apply_method`), as ``maskdiff compare`` builds them."""
        method = get_method(spec.method)
        target = get_method(method.base or method.name)
        density = self.density(target.density_target) if "density" in target.needs else None
        config = replace(self.preset.base, seed=spec.seed, device=self.device,
                         out_dir=str(self.out_dir / "runs" / spec.dirname))
        return apply_method(config, method, density=density)

    def run_one(self, spec: RunSpec) -> dict:
        config = self.run_config(spec)
        run_dir = Path(config.out_dir)

        def compute() -> dict:
            return self._train_and_score(spec, config, run_dir)

        return reuse_run_result(run_dir / "compare.json", config, compute, required=RECORD_FIELDS,
                                check=check_record, hf=self.hf, train_file=self.train_file,
                                mask_token_id=self.mask_token_id, hf_options=self.hf_options,
                                score=scoring_key(self.preset))

    def _train_and_score(self, spec: RunSpec, config: TrainConfig, run_dir: Path) -> dict:
        from maskdiff.hf import encode_row

        method = get_method(spec.method)
        model, tok, mask_id = self.load()
        encode = lambda rows: [encode_row(tok, r) for r in rows]  # noqa: E731
        trainer = _trainer(model, config, spec, run_dir, encode(self.train_rows),
                           encode(self.test_rows[: config.eval.n_examples]),
                           {"estimator": config.estimator}, mask_id)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        fwd_step = config.optim.batch_size * method.forward_passes
        history = [{"step": h["step"], "val_loss": h["eval_loss"], "fwd": h["step"] * fwd_step}
                   for h in trainer.state.log_history if "eval_loss" in h]
        steps = int(trainer.state.global_step)
        return {"method": spec.method, "label": spec.label, "task": spec.task,
                "seed": spec.seed, **self.score(model, tok, mask_id),
                "best_val": min((h["val_loss"] for h in history), default=None),
                "best_val_se": None, "best_step": None, "steps": steps, "stopped_early": False,
                "variance_proxy": None, "forward_passes": steps * fwd_step,
                "fwd_per_step": fwd_step, "train_seconds": seconds,
                "threads": torch.get_num_threads(), "history": history, "loss_per_t_bin": []}

    def score(self, model, tok, mask_id: int) -> dict:
        """Test ELBO per row (CRN) and, where rows carry a gold answer, pass@1."""
        t0 = time.perf_counter()
        p = self.preset
        items = self.test_rows[: p.n_test_elbo]
        values = per_example_elbo(model, items, self.collate(tok), mask_token_id=mask_id,
                                  rates_per_example=p.elbo_rates, seed=p.elbo_seed,
                                  batch_size=p.base.eval.batch_size, device=self.device)
        out = {"test_loss": float(values.mean()),
               "test_loss_se": float(values.std()) / len(values) ** 0.5 if len(values) > 1 else None,
               "test_loss_kind": "ELBO", "n_test_elbo": len(values),
               "elbo_items": [round(float(v), 6) for v in values]}
        problems = [r for r in self.test_rows[: p.n_test]
                    if extract_answer(str(r.get("response", ""))) is not None]
        out.update(hf_pass_at_1(model, tok, mask_id, problems) if problems else
                   {"pass_at_1": None, "n_test": 0, "hits": "", "examples": []})
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def run(self) -> dict:
        from maskdiff.experiments.compare_report import write_report
        from maskdiff.experiments.compare_summary import summarise

        self.out_dir.mkdir(parents=True, exist_ok=True)
        started, records = time.perf_counter(), []
        for spec in self.specs():
            records.append(self.run_one(spec))
            if self.progress:
                print(f"compare --hf: {spec.label} s{spec.seed} done", flush=True)
        task = {"name": "jsonl" if self.train_file else self.preset.base.data.task,
                "train_file": self.train_file, "hf": self.hf, "n_train": len(self.train_rows),
                "n_val": len(self.test_rows), "n_test": len(self.test_rows)}
        results = summarise(self.preset, records, seconds=time.perf_counter() - started,
                            ppots=None, window=None, task=task, threads=torch.get_num_threads())
        atomic_write_text(self.out_dir / "results.json", jsonio.dumps(results, indent=1) + "\n")
        write_report(self.out_dir, results)
        return results


def training_arguments(config: TrainConfig, run_dir: Path, **overrides):
    """``transformers.TrainingArguments`` of a run's settings: the batch per device step and
    the accumulation (``optim.batch_size`` = per step × ``grad_accum``), AdamW's betas and weight
    decay, clipping, seeds, evaluation and logging cadence."""
    import transformers

    optim = config.optim
    per_step, rem = divmod(optim.batch_size, optim.grad_accum)
    if rem:
        raise ValueError(f"optim.batch_size ({optim.batch_size}) must be a multiple of "
                         f"optim.grad_accum ({optim.grad_accum})")
    return transformers.TrainingArguments(**{
        "output_dir": str(run_dir / "hf"), "max_steps": optim.max_steps,
        "per_device_train_batch_size": per_step, "gradient_accumulation_steps": optim.grad_accum,
        "learning_rate": optim.lr, "warmup_steps": optim.warmup_steps,
        "weight_decay": optim.weight_decay, "adam_beta1": optim.beta1,
        "adam_beta2": optim.beta2, "max_grad_norm": optim.grad_clip or 1e9,
        "seed": config.seed, "data_seed": config.seed, "logging_steps": config.log_every,
        "eval_strategy": "steps", "eval_steps": config.eval.every,
        "per_device_eval_batch_size": config.eval.batch_size, "save_strategy": "no",
        "report_to": [], "use_cpu": config.device == "cpu", "disable_tqdm": True,
        "dataloader_num_workers": 0, **overrides})


def optimizers(model: torch.nn.Module, config: TrainConfig):
    """The optimiser of maskdiff's own trainer (:func:`build_optimizer`: AdamW or SGD, weight
    decay on matrices only) and its learning rate: linear warm-up, then linear decay to
    ``min_lr_ratio · lr`` (``OptimConfig.lr_at``)."""
    optim = config.optim
    optimizer = build_optimizer(model.parameters(), optim)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda step: optim.lr_at(step) / optim.lr)
    return optimizer, schedule


def _trainer(model, config, spec, run_dir, train, val, kwargs, mask_id):
    from maskdiff.hf import MaskedDiffusionTrainer

    return MaskedDiffusionTrainer(model=model, args=training_arguments(config, run_dir),
                                  train_dataset=train, eval_dataset=val, mask_token_id=mask_id,
                                  seed=spec.seed, optimizers=optimizers(model, config),
                                  eval_rates_per_example=config.eval.rates_per_example, **kwargs)


@torch.no_grad()
def hf_pass_at_1(model, tok, mask_id: int, rows: list[dict]) -> dict:
    """Greedy low-confidence decoding of each prompt (one block over the longest gold response
    + EOS) and exact match of the ``####`` answer (docs/method.md §8)."""
    prompts = [[int(i) for i in tok(r["prompt"])["input_ids"]] for r in rows]
    gen = 1 + max(len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in rows)
    eos = getattr(tok, "eos_token_id", None)
    texts = [""] * len(rows)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        groups.setdefault(len(ids), []).append(i)
    for length, members in groups.items():
        for start in range(0, len(members), 64):
            chunk = members[start:start + 64]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long)
            out = generate_diffusion(model, ids, gen_length=gen, steps=gen, block_length=gen,
                                     mask_token_id=mask_id,
                                     prompt_attention=torch.ones_like(ids, dtype=torch.bool))
            for row, i in enumerate(chunk):
                new = out[row, length:].tolist()
                new = new[:new.index(eos)] if eos is not None and eos in new else new
                texts[i] = tok.decode(new, skip_special_tokens=True)
    golds = [gold_answer(r["response"]) or "" for r in rows]
    hits = [answers_match(extract_answer(t), g) for t, g in zip(texts, golds)]
    return {"pass_at_1": sum(hits) / len(hits), "n_test": len(hits),
            "hits": "".join("1" if h else "0" for h in hits),
            "examples": [{"prompt": r["prompt"], "gold": g, "prediction": t}
                         for r, g, t in list(zip(rows, golds, texts))[:5]]}
