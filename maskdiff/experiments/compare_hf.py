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

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from maskdiff.core.methods import get_method
from maskdiff.experiments.compare import RunSpec, plan
from maskdiff.experiments.compare_presets import ComparePreset
from maskdiff.training.answers import answers_match, extract_answer, gold_answer
from maskdiff.training.evaluate import per_example_elbo
from maskdiff.training.generate import generate_diffusion
from maskdiff.fileio import atomic_write_text

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
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    if len(rows) < 4:
        raise ValueError(f"{path}: need at least 4 rows to hold out a test split, got {len(rows)}")
    n_test = max(2, int(len(rows) * HOLDOUT))
    return rows[:-n_test], rows[-n_test:]


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
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.train_rows, self.test_rows = rows_of(self.train_file, self.preset)

    def load(self):
        from maskdiff.hf import load_hf_model

        return load_hf_model(self.hf, mask_token_id=self.mask_token_id, device=self.device,
                             trust_remote_code=self.trust_remote_code)

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

        return cached_density(self.out_dir / ("ppots" if target == "loss" else "gpots"), estimate)

    def run_one(self, spec: RunSpec) -> dict:
        run_dir = self.out_dir / "runs" / spec.dirname
        done = run_dir / "compare.json"
        if done.exists():
            return json.loads(done.read_text())
        from maskdiff.hf import encode_row, method_trainer_kwargs

        method, base = get_method(spec.method), self.preset.base
        name = method.base or method.name
        density = (self.density(get_method(name).density_target)
                   if "density" in get_method(name).needs else None)
        model, tok, mask_id = self.load()
        encode = lambda rows: [encode_row(tok, r) for r in rows]  # noqa: E731
        trainer = _trainer(model, tok, self.preset, spec, run_dir, encode(self.train_rows),
                           encode(self.test_rows[: base.eval.n_examples]),
                           method_trainer_kwargs(name, density=density), mask_id, self.device)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        batch = base.optim.batch_size * method.batch_factor
        fwd_step = batch * method.forward_passes
        history = [{"step": h["step"], "val_loss": h["eval_loss"], "fwd": h["step"] * fwd_step}
                   for h in trainer.state.log_history if "eval_loss" in h]
        steps = int(trainer.state.global_step)
        record = {"method": spec.method, "label": spec.label, "task": spec.task,
                  "seed": spec.seed, **self.score(model, tok, mask_id),
                  "best_val": min((h["val_loss"] for h in history), default=None),
                  "best_val_se": None, "best_step": None, "steps": steps, "stopped_early": False,
                  "variance_proxy": None, "forward_passes": steps * fwd_step,
                  "fwd_per_step": fwd_step, "train_seconds": seconds,
                  "threads": torch.get_num_threads(), "history": history, "loss_per_t_bin": []}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(done, json.dumps(record, indent=1) + "\n")
        return record

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
        atomic_write_text(self.out_dir / "results.json", json.dumps(results, indent=1) + "\n")
        write_report(self.out_dir, results)
        return results


def _trainer(model, tok, preset, spec, run_dir, train, val, kwargs, mask_id, device):
    import transformers

    from maskdiff.hf import MaskedDiffusionTrainer

    base, method = preset.base, get_method(spec.method)
    args = transformers.TrainingArguments(
        output_dir=str(run_dir / "hf"), max_steps=base.optim.max_steps,
        per_device_train_batch_size=base.optim.batch_size * method.batch_factor,
        learning_rate=base.optim.lr, warmup_steps=base.optim.warmup_steps,
        weight_decay=base.optim.weight_decay, max_grad_norm=base.optim.grad_clip or 1e9,
        lr_scheduler_type="linear", seed=spec.seed, data_seed=spec.seed,
        logging_steps=base.log_every, eval_strategy="steps", eval_steps=base.eval.every,
        per_device_eval_batch_size=base.eval.batch_size, save_strategy="no", report_to=[],
        use_cpu=device == "cpu", disable_tqdm=True, dataloader_num_workers=0)
    return MaskedDiffusionTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                  mask_token_id=mask_id, seed=spec.seed,
                                  eval_rates_per_example=base.eval.rates_per_example, **kwargs)


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
