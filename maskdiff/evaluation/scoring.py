"""Conditional likelihoods and decoding on text for any :class:`EvalModel` (docs/method.md §8).

:func:`loglikelihoods` scores ``(context, continuation)`` pairs: the continuation's tokens are the
only eligible (maskable, scored) positions, the context stays visible, and the per-request value
is the Monte-Carlo ELBO ``E_t[(1/t) Σ_{masked} log p(x_i | x_t)]`` summed over the continuation
(normalizer ``"none"``; for a block-diffusion run the block ELBO, docs/method.md §12): a lower
bound on ``log p(continuation | context)``, estimated by the evaluator's scheme
(:data:`maskdiff.training.evaluate.ELBO_SCHEMES`) with its per-request standard error. Draws are
keyed on (seed, draw, request index): common random numbers, so two checkpoints scored on the
same requests share every mask.

:func:`generate` decodes with the low-confidence block decoder
(:func:`maskdiff.training.generate.generate_diffusion`) and cuts the text at stop sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.blocks import BlockLayout
from maskdiff.evaluation.model import EvalModel
from maskdiff.training.evaluate import (
    default_scheme, draws_se, elbo_draws, elbo_scheme, fit_elbo_density, rates_for,
)
from maskdiff.training.generate import block_decoding_steps, generate_diffusion

# Forward passes per request unless ``rates`` is given (README: the SE benchmark); the rates
# (draws) they buy depend on the scheme (a *-mirror scheme spends 2 per draw).
DEFAULT_PASSES = 32
DEFAULT_RATES = None  # rates unset: DEFAULT_PASSES forward passes
DEFAULT_GEN_LENGTH = 64  # a HF model's generated positions unless told (native runs: to max_len)


@dataclass(frozen=True)
class Score:
    """One request: the ELBO of the continuation (nats, a lower bound on the log-likelihood),
    its Monte-Carlo standard error, the forward passes spent, the continuation's token count and
    whether greedy decoding of the continuation's positions reproduces it (None: not checked)."""

    loglikelihood: float
    se: float
    passes: int
    n_tokens: int
    is_greedy: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def _fit(model: EvalModel, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    """Drop context tokens from the left until context + continuation fit ``max_length``."""
    limit = model.max_length
    if limit is None or len(context) + len(continuation) <= limit:
        return context, continuation
    if len(continuation) > limit:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's "
                         f"max_length={limit}")
    return context[len(context) + len(continuation) - limit:], continuation


def _encode_pair(model: EvalModel, context: str | Sequence[int],
                 continuation: str | Sequence[int]) -> tuple[list[int], list[int]]:
    """Text is encoded (context with special tokens, continuation without); ids pass through."""
    c = model.encode_context(context) if isinstance(context, str) else [int(i) for i in context]
    x = (model.encode_continuation(continuation) if isinstance(continuation, str)
         else [int(i) for i in continuation])
    return c, x


def _groups(keys: Sequence[object]) -> dict[object, list[int]]:
    out: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


@torch.no_grad()
def loglikelihoods(model: EvalModel, pairs: Sequence[tuple[str | Sequence[int], str | Sequence[int]]], *,
                   scheme: str | None = None, rates: int | None = None, seed: int = 1234,
                   batch_size: int = 16, greedy_check: bool = True, device="cpu",
                   first_index: int = 0) -> list[Score]:
    """The Monte-Carlo ELBO of each continuation given its context (module docstring); a
    context or continuation given as token ids is used as it is.

    Requests are batched by total length (no padding: a request's number never depends on its
    batch). Request ``k`` draws with index ``first_index + k``. ``greedy_check`` decodes each
    continuation's positions greedily (one token per step, as many passes as tokens) and
    compares. ``scheme=None``: :func:`~maskdiff.training.evaluate.default_scheme` of the model's
    layout; ``rates=None``: :data:`DEFAULT_PASSES` forward passes per request. A fitted scheme (``ppots-*``) fits its density on the first batch of requests
    (:func:`~maskdiff.training.evaluate.fit_elbo_density`, draws independent of the scores').
    """
    scheme = scheme or default_scheme(model.layout)
    chosen = elbo_scheme(scheme)
    rates = rates or rates_for(scheme, DEFAULT_PASSES)
    estimators = None if chosen.fitted else chosen.estimators(
        mask_token_id=model.mask_token_id, rates=rates, normalizer="none", layout=model.layout)
    encoded = [_fit(model, *_encode_pair(model, c, x)) for c, x in pairs]
    scores: list[Score | None] = [None] * len(pairs)
    was_training = model.model.training
    model.model.eval()
    try:
        for length, members in _groups([len(c) + len(x) for c, x in encoded]).items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                x0 = torch.tensor([encoded[i][0] + encoded[i][1] for i in chunk], device=device)
                eligible = torch.zeros(x0.shape, dtype=torch.bool, device=device)
                for row, i in enumerate(chunk):
                    eligible[row, len(encoded[i][0]):] = True
                batch = Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                              example_index=torch.tensor([first_index + i for i in chunk]))
                if estimators is None:  # a fitted scheme: its density from the first batch
                    estimators = chosen.estimators(
                        mask_token_id=model.mask_token_id, rates=rates, normalizer="none",
                        layout=model.layout, density=fit_elbo_density(
                            model.model, batch, mask_token_id=model.mask_token_id, seed=seed,
                            normalizer="none"))
                draws = elbo_draws(model.model, batch, estimators, seed).cpu()
                ses = draws_se(draws, chosen.stratified)
                for row, i in enumerate(chunk):
                    n = len(encoded[i][1])
                    scores[i] = Score(loglikelihood=-float(draws[row].mean()) if n else 0.0,
                                      se=float(ses[row]) if n else 0.0,
                                      passes=chosen.passes(rates), n_tokens=n, is_greedy=None)
    finally:
        model.model.train(was_training)
    if greedy_check:
        greedy = _greedy_matches(model, encoded, device)
        scores = [Score(**{**s.to_dict(), "is_greedy": g}) for s, g in zip(scores, greedy)]
    return scores


def _greedy_matches(model: EvalModel, encoded: list[tuple[list[int], list[int]]],
                    device) -> list[bool]:
    """Whether greedy decoding of each continuation's positions reproduces it."""
    out = [True] * len(encoded)
    for (p, n), members in _groups([(len(c), len(x)) for c, x in encoded]).items():
        if n == 0:
            continue
        prompt = torch.tensor([encoded[i][0] for i in members], dtype=torch.long, device=device)
        if model.layout is None:
            ids = generate_diffusion(model.model, prompt, gen_length=n, steps=n, block_length=n,
                                     mask_token_id=model.mask_token_id)
        else:  # a block run: block decoding, one token per step
            ids = generate_diffusion(model.model, prompt, gen_length=n,
                                     steps=block_decoding_steps(p, n, model.layout),
                                     mask_token_id=model.mask_token_id, layout=model.layout)
        for row, i in enumerate(members):
            out[i] = ids[row, p:].tolist() == encoded[i][1]
    return out


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest of the stop sequences ``until`` (empty strings ignored)."""
    cuts = [text.index(stop) for stop in until if stop and stop in text]
    return text[:min(cuts)] if cuts else text


@torch.no_grad()
def generate(model: EvalModel, contexts: Sequence[str], *, gen_length: int | None = None,
             steps: int | None = None, block_length: int | None = None,
             until: Sequence[Sequence[str]] | None = None, max_new_tokens: int | None = None,
             batch_size: int = 16, device="cpu", layout: BlockLayout | None = None) -> list[str]:
    """Greedy low-confidence block decoding of each context (docs/method.md §8), cut at EOS and
    at the first of the context's stop sequences ``until[k]``.

    ``gen_length`` defaults, for a native run, to what it has room for after the context (up
    to its ``max_len``, as in training), for a HF model to ``DEFAULT_GEN_LENGTH`` (or less if
    ``max_length`` leaves less room), at most ``max_new_tokens`` (a harness request's
    ``max_gen_toks``); a ``block_length`` that does not divide it rounds
    it up to a whole number of blocks; ``steps`` defaults to one token per step and is
    rounded up to a multiple of the number of blocks. A block-diffusion run (``layout``, default
    ``model.layout``) decodes in its own blocks with the KV cache (docs/method.md §8), which
    replace ``block_length``.
    """
    layout = layout or model.layout
    encoded = [model.encode_context(c) for c in contexts]
    texts = [""] * len(contexts)
    for p, members in _groups([len(ids) for ids in encoded]).items():
        room = (model.max_length or p + DEFAULT_GEN_LENGTH) - p
        n_new = gen_length or (room if model.native else min(room, DEFAULT_GEN_LENGTH))
        if gen_length is None and max_new_tokens is not None:
            n_new = min(n_new, max_new_tokens)
        if n_new < 1:
            raise ValueError(f"a context of {p} tokens leaves no room to generate within "
                             f"max_length={model.max_length}")
        block = block_length or n_new
        n_new = n_new if layout is not None else _round_up(n_new, block)
        if model.max_length is not None and p + n_new > model.max_length:
            raise ValueError(f"a context of {p} tokens leaves no room for {n_new} generated "
                             f"tokens within max_length={model.max_length}")
        n_steps = (_round_up(steps or n_new, n_new // block) if layout is None
                   else block_decoding_steps(p, n_new, layout, steps))
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            prompt = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            ids = generate_diffusion(model.model, prompt, gen_length=n_new, steps=n_steps,
                                     block_length=block if layout is None else None,
                                     mask_token_id=model.mask_token_id, layout=layout)
            for row, i in enumerate(chunk):
                text = model.decode(ids[row, p:].tolist())
                texts[i] = cut_at_stops(text, until[i] if until else ())
    return texts
