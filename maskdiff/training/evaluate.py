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
from maskdiff.core.blocks import BlockLayout
from maskdiff.training.generate import (
    block_decoding_steps, by_prompt_length, generate_causal, generate_diffusion, response_text,
)
from maskdiff.models.transformer import causal_lm_loss
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import DEFAULT_EPS
from maskdiff.core.seeding import BatchRandomness
from maskdiff.training.elbo_schemes import (  # noqa: F401  (re-exported)
    BLOCK_EVAL_SCHEME, ELBO_SCHEMES, EVAL_SCHEME, FIT_EXAMPLES, FIT_FORMS, FIT_MASKS, FIT_RATES, Density,
    ElboScheme, default_scheme, elbo_scheme, fit_elbo_density, rates_for, stratified_estimators,
)

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


def se_text(se: float | None, n: int, what: str = "example") -> str:
    """A standard error as printed: ``0.0123``, or ``n/a (1 validation example)`` where it is
    undefined (fewer than two examples: JSON files hold ``null`` there, never NaN)."""
    if se is not None and math.isfinite(se):
        return f"{se:.4f}"
    return f"n/a ({n} {what}{'' if n == 1 else 's'})"


def summarise_examples(per_example: torch.Tensor) -> EvalResult:
    values = per_example.double()
    n = len(values)
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return EvalResult(mean=float(values.mean()), se=se, n=n)


def example_batches(examples: Sequence, collate: Collate, batch_size: int, device):
    for start in range(0, len(examples), batch_size):
        items = [(start + k, ex) for k, ex in enumerate(examples[start:start + batch_size])]
        yield collate(items).to(device)


@torch.no_grad()
def elbo_draws(model, batch: Batch, estimators: Sequence[Estimator], seed: int) -> torch.Tensor:
    """Each estimator's per-example value (the mean over its views), draw ``j`` keyed on
    ``(seed, j, example index)``: float64 (B, len(estimators)) on the batch's device."""
    indices = batch.example_index.tolist()
    return torch.stack([estimator(model, batch, BatchRandomness.for_batch(seed, j, indices))
                        .example_values.double() for j, estimator in enumerate(estimators)],
                       dim=1)


def draws_se(draws: torch.Tensor, stratified: bool) -> torch.Tensor:
    """Standard error of each row's mean of ``draws`` (B, r), float64 (B,).

    iid draws: ``std / sqrt(r)``. Stratified draws (one per stratum): the collapsed-strata
    estimator, adjacent strata paired (the last group a triple when r is odd), each group of
    ``n`` contributing ``n · s²``; it is conservative (it counts the change of the mean between
    paired strata as noise). NaN for ``r = 1``.
    """
    draws = draws.double()
    r = draws.shape[1]
    if r < 2:
        return torch.full(draws.shape[:1], float("nan"), dtype=torch.float64, device=draws.device)
    if not stratified:
        return draws.std(dim=1, unbiased=True) / math.sqrt(r)
    starts = list(range(0, r - 1, 2))  # r = 5: groups [0, 2) and [2, 5)
    total = torch.zeros(draws.shape[0], dtype=torch.float64, device=draws.device)
    for lo, hi in zip(starts, starts[1:] + [r]):
        group = draws[:, lo:hi]
        total += (hi - lo) * group.var(dim=1, unbiased=True)
    return total.sqrt() / r


@torch.no_grad()
def stratified_elbo(model, batch: Batch, estimators: Sequence[Estimator],
                    seed: int) -> torch.Tensor:
    """Each example's full-range ELBO term: the mean over the strata of ``estimators``
    (:func:`stratified_estimators`), stratum ``j``'s draws keyed on ``(seed, j, example index)``.
    Float64 (B,) on the batch's device."""
    draws = elbo_draws(model, batch, estimators, seed)
    total = torch.zeros(len(batch), dtype=torch.float64, device=batch.x0.device)
    for stratum in range(draws.shape[1]):
        total += draws[:, stratum]
    return total / len(estimators)


@dataclass(frozen=True)
class ElboEstimate:
    """Per-example ELBO terms (float64 (n,)), their Monte-Carlo standard errors (the masking
    noise of each estimate, :func:`draws_se`) and the forward passes per example."""

    mean: torch.Tensor
    se: torch.Tensor
    passes: int
    scheme: str


@torch.no_grad()
def elbo_estimate(model, examples: Sequence, collate: Collate, *, mask_token_id: int,
                  scheme: str | None = None, rates: int = 8, seed: int = 1234,
                  batch_size: int = 64, normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                  device="cpu", layout: BlockLayout | None = None,
                  density: Density | None = None, fit_examples: Sequence | None = None,
                  density_cache=None, density_key=None) -> ElboEstimate:
    """Each example's full-range ELBO term under ``scheme`` (:data:`ELBO_SCHEMES`) with its
    Monte-Carlo standard error; draws are common random numbers keyed on (seed, draw, example)
    (docs/method.md §8); ``scheme=None``: :func:`default_scheme` of ``layout``. A fitted scheme (``ppots-*``) uses ``density``, else fits it
    (:func:`fit_elbo_density`, cached in ``density_cache`` under ``density_key``) on the first
    few of ``fit_examples`` (held-out examples; default: ``examples``, with draws independent
    of the evaluation's)."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    scheme = scheme or default_scheme(layout)
    chosen = elbo_scheme(scheme)
    was_training = model.training
    model.eval()
    try:
        if chosen.fitted and density is None:
            held = list(fit_examples if fit_examples is not None else examples)
            batch = next(example_batches(held[:FIT_EXAMPLES], collate, FIT_EXAMPLES, device))
            density = fit_elbo_density(model, batch, mask_token_id=mask_token_id, seed=seed,
                                       normalizer=normalizer, eps=eps, cache_dir=density_cache,
                                       key=density_key)
        estimators = chosen.estimators(mask_token_id=mask_token_id, rates=rates,
                                       normalizer=normalizer, eps=eps, layout=layout,
                                       density=density)
        draws = torch.cat([elbo_draws(model, batch, estimators, seed).cpu()
                           for batch in example_batches(examples, collate, batch_size, device)])
    finally:
        model.train(was_training)
    return ElboEstimate(mean=draws.mean(dim=1), se=draws_se(draws, chosen.stratified),
                        passes=chosen.passes(rates), scheme=scheme)


@torch.no_grad()
def per_example_elbo(model, examples: Sequence, collate: Collate, *, mask_token_id: int,
                     rates_per_example: int = 4, seed: int = 1234, batch_size: int = 64,
                     normalizer: str = "eligible", eps: float = DEFAULT_EPS,
                     device="cpu", layout: BlockLayout | None = None) -> torch.Tensor:
    """Each example's full-range ELBO term over U[eps, 1] (docs/method.md §1, §8), float64 (n,):
    stratified rates and common random numbers. Two models scored on the same examples share
    every draw, so their per-example difference gives a *paired* standard error."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    estimators = stratified_estimators(mask_token_id=mask_token_id,
                                       rates_per_example=rates_per_example,
                                       normalizer=normalizer, eps=eps, layout=layout)
    was_training = model.training
    model.eval()
    try:
        per_example = [stratified_elbo(model, batch, estimators, seed).cpu()
                       for batch in example_batches(examples, collate, batch_size, device)]
    finally:
        model.train(was_training)
    return torch.cat(per_example)


def elbo(model, examples: Sequence, collate: Collate, *, mask_token_id: int,
         rates_per_example: int = 4, seed: int = 1234, batch_size: int = 64,
         normalizer: str = "eligible", eps: float = DEFAULT_EPS, device="cpu",
         scheme: str = "stratified", layout: BlockLayout | None = None,
         **fitted) -> EvalResult:
    """The full-range objective over U[eps, 1] (docs/method.md §1, §8) with common random
    numbers: the mean over examples and its standard error. ``scheme="stratified"`` (training
    validation's, the default here) is :func:`per_example_elbo`; the other
    :data:`ELBO_SCHEMES` spend ``rates_per_example`` rates as they say (``fitted``: a fitted
    scheme's ``density`` / ``fit_examples`` / ``density_cache`` / ``density_key``, as
    :func:`elbo_estimate` takes them)."""
    if scheme == "stratified":
        return summarise_examples(per_example_elbo(
            model, examples, collate, mask_token_id=mask_token_id,
            rates_per_example=rates_per_example, seed=seed, batch_size=batch_size,
            normalizer=normalizer, eps=eps, device=device, layout=layout))
    return summarise_examples(elbo_estimate(
        model, examples, collate, mask_token_id=mask_token_id, scheme=scheme,
        rates=rates_per_example, seed=seed, batch_size=batch_size, normalizer=normalizer,
        eps=eps, device=device, layout=layout, **fitted).mean)


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
                  for b in example_batches(examples, collate, batch_size, device)]
    finally:
        model.train(was_training)
    return summarise_examples(torch.cat(losses))


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
              device="cpu", layout: BlockLayout | None = None) -> GenerationResult:
    """Greedy generation for each prompt and exact match of the extracted answer (docs/method.md §8).

    By default the generated region is what training saw after the prompt: ``max_len - P``
    positions (under the EOS pad policy the model learned to fill them with the answer and then
    EOS), decoded as one block with one token per step. Give ``gen_length``, ``steps`` and
    ``block_length`` for semi-autoregressive block decoding. A block-diffusion model (its
    ``layout``) decodes in its own blocks with the KV cache (docs/method.md §8 "Block
    decoding"): its blocks replace ``block_length``, and ``steps`` is rounded up to a multiple
    of the decoded blocks and defaults to one token per step. Prompts are grouped by length, so that any data set works with the
    equal-length batches the decoder takes.
    """
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    encoded = [tokenizer.encode(ex.prompt) for ex in examples]
    texts: list[str] = [""] * len(examples)
    for length, members in by_prompt_length(encoded).items():
        n_new = gen_length or max_len - length
        if n_new < 1 or length + n_new > max_len:
            raise ValueError(f"a prompt of {length} tokens leaves no room to generate "
                             f"{n_new} tokens within max_len={max_len}")
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            prompt = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            if causal:
                out = generate_causal(model, prompt, max_new_tokens=n_new, eos_id=tokenizer.eos_id)
            elif layout is not None:
                n_steps = block_decoding_steps(length, n_new, layout, steps)
                out = generate_diffusion(model, prompt, gen_length=n_new, steps=n_steps,
                                         mask_token_id=tokenizer.mask_id, layout=layout)
            else:
                out = generate_diffusion(model, prompt, gen_length=n_new, steps=steps or n_new,
                                         block_length=block_length or n_new,
                                         mask_token_id=tokenizer.mask_id)
            for row, i in enumerate(chunk):
                texts[i] = response_text(tokenizer, out[row, length:].tolist())
    golds = [gold_answer(ex.response) or "" for ex in examples]
    hits = [answers_match(extract_answer(text), gold) for text, gold in zip(texts, golds)]
    return GenerationResult(pass_at_1=sum(hits) / len(hits), n=len(hits),
                            predictions=texts, golds=golds)
