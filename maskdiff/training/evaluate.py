"""Evaluation: the full-range ELBO with a standard error (docs/method.md §8) and pass@1 by generation.

The ELBO evaluator scores every example at ``r`` stratified rates, one in each of ``r`` equal
strata of [eps, 1], with masks and within-stratum offsets seeded by ``(seed, example, stratum)``:
common random numbers, so two checkpoints are compared on exactly the same draws and their
difference is not blurred by masking noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from maskdiff.training.answers import answers_match, extract_answer, gold_answer
from maskdiff.core.batch import Batch
from maskdiff.training.generate import generate_causal, generate_diffusion
from maskdiff.core.masking import Bernoulli
from maskdiff.models.transformer import causal_lm_loss
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS, Window
from maskdiff.core.seeding import BatchRandomness

Collate = Callable[[Sequence[tuple[int, object]]], Batch]


@dataclass(frozen=True)
class EvalResult:
    """Mean per-example loss (nats per eligible token under ``normalizer="eligible"``), its
    standard error over examples, the number of examples, and the mean in bits."""

    mean: float
    se: float
    n: int

    @property
    def bits(self) -> float:
        return self.mean / math.log(2)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "bits": self.bits}


def _summarise(per_example: torch.Tensor) -> EvalResult:
    values = per_example.double()
    n = len(values)
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return EvalResult(mean=float(values.mean()), se=se, n=n)


def _batches(examples: Sequence, collate: Collate, batch_size: int, device):
    for start in range(0, len(examples), batch_size):
        items = [(start + k, ex) for k, ex in enumerate(examples[start:start + batch_size])]
        yield collate(items).to(device)


def stratified_estimators(*, mask_token_id: int, rates_per_example: int = 4,
                          normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                          syntax_eligible: bool = False) -> list[Estimator]:
    """One estimator per stratum: ``U`` over the j-th of ``rates_per_example`` equal strata of
    [eps, 1], Bernoulli masks, no weights, no control variate (docs/method.md §8)."""
    if rates_per_example < 1:
        raise ValueError(f"rates_per_example must be >= 1, got {rates_per_example}")
    edges = [eps + (1 - eps) * j / rates_per_example for j in range(rates_per_example + 1)]
    return [Estimator(rate_sampler=Window(edges[j], edges[j + 1], eps=eps), masker=Bernoulli(),
                      mask_token_id=mask_token_id, normalizer=normalizer,
                      syntax_eligible=syntax_eligible)
            for j in range(rates_per_example)]


@torch.no_grad()
def stratified_elbo(model, batch: Batch, estimators: Sequence[Estimator],
                    seed: int) -> torch.Tensor:
    """Each example's full-range ELBO term: the mean over the strata of ``estimators``
    (:func:`stratified_estimators`), stratum ``j``'s draws keyed on ``(seed, j, example index)``.
    Float64 (B,) on the batch's device."""
    indices = batch.example_index.tolist()
    total = torch.zeros(len(batch), dtype=torch.float64, device=batch.x0.device)
    for stratum, estimator in enumerate(estimators):
        randomness = BatchRandomness.for_batch(seed, stratum, indices)
        total += estimator(model, batch, randomness).values.double()
    return total / len(estimators)


@torch.no_grad()
def per_example_elbo(model, examples: Sequence, collate: Collate, *, mask_token_id: int,
                     rates_per_example: int = 4, seed: int = 1234, batch_size: int = 64,
                     normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                     device="cpu") -> torch.Tensor:
    """Each example's full-range ELBO term over U[eps, 1] (docs/method.md §1, §8), float64 (n,):
    stratified rates and common random numbers. Two models scored on the same examples share
    every draw, so their per-example difference gives a *paired* standard error."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    estimators = stratified_estimators(mask_token_id=mask_token_id,
                                       rates_per_example=rates_per_example,
                                       normalizer=normalizer, eps=eps)
    was_training = model.training
    model.eval()
    try:
        per_example = [stratified_elbo(model, batch, estimators, seed).cpu()
                       for batch in _batches(examples, collate, batch_size, device)]
    finally:
        model.train(was_training)
    return torch.cat(per_example)


def elbo(model, examples: Sequence, collate: Collate, *, mask_token_id: int,
         rates_per_example: int = 4, seed: int = 1234, batch_size: int = 64,
         normalizer: str = "eligible", eps: float = DEFAULT_EPS, device="cpu") -> EvalResult:
    """The full-range objective over U[eps, 1] (docs/method.md §1, §8) with stratified rates and CRN:
    the mean of :func:`per_example_elbo` and its standard error over examples."""
    return _summarise(per_example_elbo(
        model, examples, collate, mask_token_id=mask_token_id,
        rates_per_example=rates_per_example, seed=seed, batch_size=batch_size,
        normalizer=normalizer, eps=eps, device=device))


@torch.no_grad()
def causal_nll(model, examples: Sequence, collate: Collate, *, batch_size: int = 64,
               device="cpu") -> EvalResult:
    """Next-token cross-entropy per eligible token of the causal twin (exact, no sampling)."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    was_training = model.training
    model.eval()
    try:
        losses = [causal_lm_loss(model(b.x0, b.attention_mask), b.x0, b.eligible).cpu()
                  for b in _batches(examples, collate, batch_size, device)]
    finally:
        model.train(was_training)
    return _summarise(torch.cat(losses))


@dataclass(frozen=True)
class GenerationResult:
    pass_at_1: float
    n: int
    predictions: list[str]
    golds: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def pass_at_1(model, examples: Sequence, tokenizer, *, max_len: int,
              gen_length: int | None = None, steps: int | None = None,
              block_length: int | None = None, causal: bool = False, batch_size: int = 64,
              device="cpu") -> GenerationResult:
    """Greedy generation for each prompt and exact match of the extracted answer (docs/method.md §8).

    By default the generated region is what training saw after the prompt: ``max_len - P``
    positions (under the EOS pad policy the model learned to fill them with the answer and then
    EOS), decoded as one block with one token per step. Give ``gen_length``, ``steps`` and
    ``block_length`` for semi-autoregressive block decoding. Prompts are grouped by length, so
    that any data set works with the equal-length batches the decoder takes.
    """
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    by_length: dict[int, list[int]] = {}
    encoded = [tokenizer.encode(ex.prompt) for ex in examples]
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    texts: list[str] = [""] * len(examples)
    for length, members in sorted(by_length.items()):
        n_new = gen_length or max_len - length
        if n_new < 1 or length + n_new > max_len:
            raise ValueError(f"a prompt of {length} tokens leaves no room to generate "
                             f"{n_new} tokens within max_len={max_len}")
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            prompt = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            if causal:
                out = generate_causal(model, prompt, max_new_tokens=n_new, eos_id=tokenizer.eos_id)
            else:
                out = generate_diffusion(model, prompt, gen_length=n_new, steps=steps or n_new,
                                         block_length=block_length or n_new,
                                         mask_token_id=tokenizer.mask_id)
            for row, i in enumerate(chunk):
                generated = out[row, length:].tolist()
                if tokenizer.eos_id in generated:
                    generated = generated[:generated.index(tokenizer.eos_id)]
                texts[i] = tokenizer.decode(generated, skip_special=True)
    golds = [gold_answer(ex.response) or "" for ex in examples]
    hits = [answers_match(extract_answer(text), gold) for text, gold in zip(texts, golds)]
    return GenerationResult(pass_at_1=sum(hits) / len(hits), n=len(hits),
                            predictions=texts, golds=golds)
