"""``maskdiff evaluate --hf MODEL --data FILE.jsonl``: the ELBO (± SE) and pass@1 of a HF model on
rows, with the evaluator and decoder that score native runs (docs/method.md §8)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from maskdiff.evaluation.model import EvalModel
from maskdiff.evaluation.scoring import generate
from maskdiff.hf.collate import hf_batch
from maskdiff.hf.source import check_context, read_numbered_rows
from maskdiff.training.answers import answers_match, extract_answer, gold_answer
from maskdiff.training.evaluate import default_scheme, elbo


def evaluate_rows(model: EvalModel, data: str | os.PathLike, *, n: int | None = None,
                  scheme: str | None = None, rates: int = 8, seed: int = 1234,
                  pass_at_1: bool = False, gen_length: int | None = None,
                  steps: int | None = None, block_length: int | None = None,
                  batch_size: int = 16, device="cpu") -> dict[str, Any]:
    """The first ``n`` rows of ``data`` (:func:`maskdiff.hf.collate.encode_row` formats): the
    full-range ELBO per eligible token with its SE over rows (``"loss_result"``, an
    :class:`~maskdiff.training.evaluate.EvalResult`), and with ``pass_at_1`` the exact match of
    the answer extracted from each generated response against the ``response``'s
    (``"pass_at_1"``, ``"predictions"``, ``"golds"``)."""
    if model.native:
        raise ValueError("evaluate_rows scores a Hugging Face model; a run evaluates on its task")
    numbered = read_numbered_rows(data)[:n]
    tok = model.tokenizer
    check_context(tok, numbered, model.max_length, data, model.name)
    rows = [row for _, row in numbered]

    options = getattr(model.model, "options", None)

    def collate(items):
        batch = hf_batch(tok, [row for _, row in items], first_index=items[0][0]).to(device)
        if options is None:
            return batch
        return dataclasses.replace(batch, eligible=options.eligible(batch.eligible))

    report: dict[str, Any] = {"loss_result": elbo(
        model.model, rows, collate, mask_token_id=model.mask_token_id, rates_per_example=rates,
        seed=seed, batch_size=batch_size, scheme=scheme or default_scheme(), device=device)}
    if pass_at_1:
        missing = [k for k, row in enumerate(rows) if "prompt" not in row or "response" not in row]
        if missing:
            raise ValueError(f"pass@1 needs rows with 'prompt' and 'response'; row {missing[0]} "
                             f"has keys {sorted(rows[missing[0]])}")
        texts = generate(model, [row["prompt"] for row in rows], gen_length=gen_length,
                         steps=steps, block_length=block_length, batch_size=batch_size,
                         device=device)
        golds = [gold_answer(row["response"]) or "" for row in rows]
        hits = [answers_match(extract_answer(t), g) for t, g in zip(texts, golds)]
        report.update(pass_at_1=sum(hits) / len(hits), predictions=texts, golds=golds)
    return report
