"""Scoring one ``maskdiff compare`` run on its test items (docs/method.md §8, §11).

Every run is scored on the *same* items with the *same* draws: pass@1 on the first ``n_test``
test problems with one fixed greedy decoder, and the test ELBO on the first ``n_test_elbo``
test examples × ``elbo_rates`` stratified rates with masks keyed on (``elbo_seed``, stratum,
example) — common random numbers across methods and seeds, so a paired difference between two
runs carries no masking noise. The per-item scores are kept (``hits``, ``elbo_items``): the
evaluation floor (bootstrap over items, split-half) is computed from them.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

import torch

from maskdiff.experiments.compare_presets import Decoding
from maskdiff.models.transformer import causal_lm_loss
from maskdiff.training.answers import answers_match, extract_answer
from maskdiff.training.evaluate import pass_at_1, per_example_elbo

ITEM_DIGITS = 6  # per-item ELBO values are stored rounded to this many decimals


@torch.no_grad()
def per_example_causal_nll(model, examples: Sequence, collate, *, batch_size: int = 64,
                           device="cpu") -> torch.Tensor:
    """Each example's next-token NLL per eligible token under the causal twin (exact)."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(examples), batch_size):
            items = [(start + k, ex) for k, ex in enumerate(examples[start:start + batch_size])]
            b = collate(items).to(device)
            out.append(causal_lm_loss(model(b.x0, b.attention_mask), b.x0, b.eligible).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def has_gold(examples: Sequence) -> bool:
    """Whether the examples carry a gold answer (a ``#### answer`` line or a ``\\boxed{}``):
    then pass@1 is defined; plain text rows have none."""
    return any(extract_answer(ex.response) is not None for ex in examples)


def block_decoding() -> bool:
    """Whether :func:`pass_at_1` decodes a block model under its layout (``layout=``): a block
    model's pass@1 is scored with block decoding when it does, else not at all (recorded in
    each run's scoring key: such a run is rescored once it does)."""
    return "layout" in inspect.signature(pass_at_1).parameters


def score_pass_at_1(model, examples: Sequence, tokenizer, *, max_len: int, causal: bool,
                    decoding, device, layout=None) -> dict:
    """pass@1 with the preset's decoder (under a block ``layout``: block decoding), and the
    per-problem hits as a '0'/'1' string."""
    length = decoding.gen_length
    if length is not None:  # a region past max_len (a long prompt) falls back to what is left
        longest = max(len(tokenizer.encode(ex.prompt)) for ex in examples)
        length = length if longest + length <= max_len else None
    extra = {"layout": layout} if layout is not None and block_decoding() else {}
    result = pass_at_1(model, examples, tokenizer, max_len=max_len, gen_length=length,
                       steps=decoding.steps if length else None,
                       block_length=decoding.block_length if length else None,
                       causal=causal, device=device, **extra)
    hits = [answers_match(extract_answer(p), g) for p, g in zip(result.predictions, result.golds)]
    return {"pass_at_1": result.pass_at_1, "n_test": result.n,
            "decoding_layout": extra["layout"].to_dict() if extra else None,
            "hits": "".join("1" if h else "0" for h in hits),
            "examples": [{"prompt": ex.prompt, "gold": g, "prediction": p} for ex, g, p in
                         list(zip(examples, result.golds, result.predictions))[:5]]}


def score_run(trainer, preset, decoding=None) -> dict:
    """The test scores of a trained run (its best validation checkpoint loaded): pass@1 (when
    the test rows carry gold answers; ``decoding``, default the preset's) and the test ELBO /
    causal NLL, with per-item values."""
    t0 = time.perf_counter()
    task, cfg, layout = trainer.task, trainer.config, getattr(trainer, "layout", None)
    test = list(task.test)
    elbo_items = test[: preset.n_test_elbo]
    if trainer.causal:
        values = per_example_causal_nll(trainer.model, elbo_items, trainer.collate,
                                        batch_size=cfg.eval.batch_size, device=trainer.device)
    else:
        values = per_example_elbo(trainer.model, elbo_items, trainer.collate,
                                  mask_token_id=task.tokenizer.mask_id,
                                  rates_per_example=preset.elbo_rates, seed=preset.elbo_seed,
                                  batch_size=cfg.eval.batch_size,
                                  normalizer=cfg.estimator.normalizer, device=trainer.device,
                                  layout=layout)
    n = len(values)
    record = {"test_loss": float(values.mean()),
              "test_loss_se": float(values.std(unbiased=True)) / n ** 0.5 if n > 1 else None,
              # a block model's ELBO is the block ELBO (compared only within one block size)
              "test_loss_kind": "causal NLL" if trainer.causal else "ELBO",
              "block_size": None if layout is None else layout.block_size,
              "n_test_elbo": n, "elbo_items": [round(float(v), ITEM_DIGITS) for v in values]}
    problems = test[: preset.n_test]
    if layout is not None and not block_decoding():
        # A block model decoded without its layout would be scored on inputs it never saw
        # ([xt] with full attention): no pass@1 until pass_at_1 takes layout= (then rescored).
        record.update(pass_at_1=None, n_test=0, hits="", examples=[], decoding_layout=None)
    elif has_gold(problems):
        record.update(score_pass_at_1(trainer.model, problems, task.tokenizer,
                                      max_len=cfg.data.max_len, causal=trainer.causal,
                                      decoding=decoding or preset.decoding,
                                      device=trainer.device, layout=layout))
    else:
        record.update(pass_at_1=None, n_test=0, hits="", examples=[])
    record["eval_seconds"] = time.perf_counter() - t0
    return record


def gradient_noise(model, pool, estimators: dict, *, n_draws: int, seed: int = 0) -> dict:
    """The gradient noise scale of each estimator on ``model`` (docs/method.md §2, §11).

    Per estimator: ``tr Σ`` of the per-example gradient (one example, its rate, its masks; all
    views of a multi-view estimator) over ``n_draws`` draws, and ``|G|²`` unbiased
    (``|ḡ|² − tr Σ / n``). The estimators whose sampler targets the same interval as the first
    (the unbiased ones, for the full-range ELBO) share one ``G``: their ``|G|²`` is pooled
    (mean), and ``B_noise = tr Σ / |G|²`` (McCandlish et al. 2018, the "simple" noise scale)
    is taken against it, so the methods differ only through ``tr Σ``.
    """
    from maskdiff.diagnostics.measure import estimator_gradient_variance

    out, reference = {}, None
    for name, estimator in estimators.items():
        gv = estimator_gradient_variance(model, pool, estimator, n_draws=n_draws, batch_size=1,
                                         seed=seed)
        target = estimator.rate_sampler.target()  # a biased sampler (bell) has its own
        reference = reference or target
        out[name] = {"trace_cov": gv.trace_cov.value, "trace_cov_se": gv.trace_cov.se,
                     "g_norm_sq": gv.mean_norm_sq_unbiased, "n_draws": n_draws,
                     "forward_passes": estimator.forward_passes, "shares_g": target == reference}
    shared = [v["g_norm_sq"] for v in out.values() if v["shares_g"]]
    pooled = sum(shared) / len(shared) if shared else None
    for v in out.values():
        g2 = pooled if v["shares_g"] else v["g_norm_sq"]
        v["b_noise"] = v["trace_cov"] / g2 if g2 and g2 > 0 else None
    return {"methods": out, "g_norm_sq_pooled": pooled}


def predicted_multiplier(b_noise_base: float, b_noise: float, batch: int, cost: float) -> float:
    """The compute multiplier the noise scales predict at batch ``batch``: steps to a target
    scale as ``1 + B_noise / B`` (McCandlish et al. 2018), compute as steps × B × cost, so
    ``(1 + B_std / B) / ((1 + B_m / B) · cost)``."""
    return (1 + b_noise_base / batch) / ((1 + b_noise / batch) * cost)


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def mean_loss_per_bin(metrics: Path) -> list[float | None]:
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


# ----------------------------------------------------------------------------- run records
RECORD_FIELDS = ("method", "seed", "test_loss", "steps", "history", "elbo_items")


def check_record(record: dict) -> None:
    """A run's ``compare.json`` holds what the summary reads, of the right types (a
    ``TypeError`` / ``ValueError`` naming the field marks it damaged: it is recomputed)."""
    kinds = {"method": str, "seed": int, "steps": int, "history": list, "elbo_items": list,
             "test_loss": (int, float)}
    for name, kind in kinds.items():
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            raise TypeError(f"field {name!r} holds {type(record[name]).__name__}")
    if record.get("pass_at_1") is not None and not isinstance(record["pass_at_1"], (int, float)):
        raise TypeError(f"field 'pass_at_1' holds {type(record['pass_at_1']).__name__}")


def rescore_outdated_block_run(path: Path) -> None:
    """A block run's ``compare.json`` scored without block decoding, once :func:`pass_at_1`
    has it, is set aside (named on stderr): the run is scored again from its trained
    checkpoint (a finished run resumes at its last step: nothing is retrained)."""
    from maskdiff.jobs import KEY_FIELD, read_record, set_aside

    if not block_decoding():
        return
    record, _ = read_record(path)
    score = ((record or {}).get(KEY_FIELD) or {}).get("score") or {}
    if score.get("block_decoding") is False:
        set_aside(path, "was scored without block decoding", label="replaced")


def scoring_key(preset, main: bool = True, block: bool = False) -> dict:
    """How a run is scored (part of its record's key): the test items, draws and decoder; for
    a block model (``block``) also whether pass@1 decoded under its layout."""
    key = {"n_test": preset.n_test, "n_test_elbo": preset.n_test_elbo,
           "elbo_rates": preset.elbo_rates, "elbo_seed": preset.elbo_seed,
           "decoding": asdict(preset.decoding if main else Decoding())}
    if block:
        key["block_decoding"] = block_decoding()
    return key
