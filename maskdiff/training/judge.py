"""Generation, not only likelihood: a masked-diffusion model's samples scored by a judge that is
not the model (docs/evaluation.md "Generation: a judge that is not the model").

The judge is a causal model trained on the same corpus with the same tokenizer (the native
Transformer's causal twin, ``--method ar``). Every measurement starts from the collated rows of
test examples and masks some of their eligible tokens (docs/method.md §1), which the masked
diffusion model then decodes (:func:`~maskdiff.training.fill.fill_masked`):

- ``unconditional``: every eligible token masked — for pretraining text, a sample from
  all-masks — sampled at ``temperature``; the judge's NLL per token over the eligible positions;
- ``continuation``: the first ``prompt_fraction`` of each example's text tokens (eligible, not
  EOS or PAD) kept, its other eligible positions (EOS padding included) sampled; the judge's NLL
  per token of the sampled tail given the kept head;
- ``probe``: at each rate ``r`` of ``probe_rates``, ``round(r·n)`` of an example's ``n``
  eligible tokens masked uniformly at random (nested across rates: one seeded permutation per
  example) and decoded greedily; the judge's NLL of the result over all eligible tokens, the
  token accuracy against the original over all eligible tokens (1 at r = 0) and over the
  masked ones. It tests directly whether a model never trained near t = 1 decodes badly from
  heavily masked input.

Each per-token NLL is a mean over the samples (one per test example) with its standard error;
the perplexity is ``exp`` of the mean. The judge's NLL of the real test text gives the scale.
Diversity (:func:`diversity`): distinct-n, pooled over the samples (distinct n-grams / all
n-grams) and per sample, of each sample's content (its decoded tokens up to the first EOS or
PAD), next to the real text of the same rows cut to the same lengths — repetition cannot win.
Everything is seeded per example: the same seed gives the same report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from maskdiff.core.blocks import BlockLayout
from maskdiff.core.seeding import STREAM_JUDGE_PROBE, STREAM_JUDGE_SAMPLING, derive_seed, generator_for
from maskdiff.models.transformer import causal_lm_loss
from maskdiff.training.evaluate import Collate, example_batches, summarise_examples
from maskdiff.training.fill import fill_masked
from maskdiff.training.runs import LoadedRun, load_run

SOURCES = ("unconditional", "continuation")
DEFAULT_PROBE_RATES = (0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class JudgeConfig:
    """How the generation judge samples (docs/evaluation.md).

    Attributes:
        samples: test examples whose rows seed the samples (one sample per source each).
        probe_examples: test examples the partial-mask probe decodes (default: ``samples``).
        probe_rates: the masked shares of the probe, each in [0, 1].
        prompt_fraction: the share of each example's text tokens a continuation keeps.
        temperature: the samples' temperature (0: greedy; the probe always decodes greedily).
        steps: denoising steps per region (None: one token per step).
        seed: the root of the sampling noise and of the probe's masks.
        batch_size: rows decoded at once.
    """

    samples: int = 32
    probe_examples: int | None = None
    probe_rates: tuple[float, ...] = DEFAULT_PROBE_RATES
    prompt_fraction: float = 0.5
    temperature: float = 1.0
    steps: int | None = None
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe_rates", tuple(float(r) for r in self.probe_rates))
        for rate in self.probe_rates:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"probe rates must lie in [0, 1], got {rate}")
        if not 0.0 <= self.prompt_fraction < 1.0:
            raise ValueError(f"prompt_fraction must lie in [0, 1), got {self.prompt_fraction}")
        if self.samples < 1 or self.batch_size < 1 or (
                self.probe_examples is not None and self.probe_examples < 1):
            raise ValueError("samples, probe_examples and batch_size must be >= 1")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float | None:
    """Distinct n-grams over all n-grams, pooled over ``sequences``; None when there is none."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def diversity(sequences: Sequence[Sequence[int]], orders: Sequence[int] = (1, 2, 3)) -> dict:
    """distinct-n pooled (``distinct_n``) and the mean of each sequence's own
    (``distinct_n_per_sample``, over sequences with an n-gram), with the token counts."""
    out: dict = {"sequences": len(sequences), "tokens": sum(len(s) for s in sequences),
                 "mean_length": sum(len(s) for s in sequences) / max(len(sequences), 1)}
    for n in orders:
        out[f"distinct_{n}"] = distinct_n(sequences, n)
        own = [d for d in (distinct_n([seq], n) for seq in sequences) if d is not None]
        out[f"distinct_{n}_per_sample"] = sum(own) / len(own) if own else None
    return out


@torch.no_grad()
def judge_nll(judge: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor | None,
              targets: torch.Tensor) -> torch.Tensor:
    """The causal judge's next-token NLL per target token of each row, float64 (B,) on the CPU
    (``targets`` (B, L) bool; position 0 is never a target; a row with none scores 0)."""
    was_training = judge.training
    judge.eval()
    try:
        return causal_lm_loss(judge(ids, attention), ids, targets).double().cpu()
    finally:
        judge.train(was_training)


def nll_summary(values: torch.Tensor) -> dict:
    """Mean NLL per token over samples with its standard error, and the perplexity exp(mean)
    with its delta-method standard error."""
    result = summarise_examples(values)
    ppl = math.exp(result.mean)
    return {**result.to_dict(), "perplexity": ppl,
            "perplexity_se": ppl * result.se if math.isfinite(result.se) else None}


def continuation_mask(eligible: torch.Tensor, fraction: float,
                      content: torch.Tensor | None = None) -> torch.Tensor:
    """The eligible positions after the first ``round(fraction · n)`` of each row, ``n`` its
    ``content`` tokens (default: its eligible ones): the kept head is a share of the text, and
    the masked tail includes any EOS padding (the model decides where the text ends)."""
    content = eligible if content is None else content & eligible
    rank = eligible.long().cumsum(dim=1)  # 1-based rank of each eligible position
    keep = torch.round(content.sum(dim=1, keepdim=True) * fraction).long()
    return eligible & (rank > keep)


def probe_mask(eligible: torch.Tensor, example_index: Sequence[int], rate: float,
               seed: int) -> torch.Tensor:
    """Exactly ``round(rate · n)`` of each row's ``n`` eligible positions, uniformly at random:
    the first of one seeded permutation per example (so the masks nest as ``rate`` grows)."""
    out = torch.zeros_like(eligible)
    for row, index in enumerate(example_index):
        positions = eligible[row].nonzero().squeeze(1).cpu()
        order = torch.randperm(len(positions), generator=generator_for(
            seed, STREAM_JUDGE_PROBE, int(index)))
        chosen = positions[order[:round(rate * len(positions))]]
        out[row, chosen.to(out.device)] = True
    return out


def _stops(ids: torch.Tensor, stops) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(sorted(stops), device=ids.device))


def contents(ids: torch.Tensor, region: torch.Tensor, stops: Sequence[int]) -> list[list[int]]:
    """Each row's tokens in ``region`` (B, L) bool, up to the first of ``stops`` (EOS, PAD)."""
    out = []
    for row in range(ids.shape[0]):
        tokens = ids[row][region[row]].tolist()
        cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        out.append(tokens[:cut])
    return out


@dataclass
class _Tally:
    """What one source or probe rate accumulates over the batches."""

    nll: list = field(default_factory=list)
    real_nll: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    reference: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    masked_correct: list = field(default_factory=list)
    masked: list = field(default_factory=list)
    texts: list = field(default_factory=list)


@dataclass
class GenerationReport:
    """The judge's verdict: the real text's NLL, each source's NLL and diversity, the probe."""

    config: JudgeConfig
    reference: dict
    sources: dict
    probe: list
    items: dict = field(default_factory=dict)

    def to_dict(self, items: bool = False) -> dict:
        out = {"config": asdict(self.config), "reference": self.reference,
               "sources": self.sources, "probe": self.probe}
        if items:
            out["items"] = self.items
        return out


def judge_generation(model: torch.nn.Module, judge: torch.nn.Module, examples: Sequence,
                     collate: Collate, *, layout: BlockLayout | None = None,
                     config: JudgeConfig = JudgeConfig(), device="cpu",
                     progress: bool = False) -> GenerationReport:
    """The masked-diffusion ``model``'s samples and probe decodes on the first test
    ``examples``, scored by the causal ``judge`` (module docstring). ``collate`` is the
    model's collator (its tokenizer gives MASK, EOS and PAD); ``layout`` a block model's."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("the generation judge needs at least one test example")
    n_samples = min(config.samples, len(examples))
    n_probe = min(config.probe_examples or config.samples, len(examples))
    tallies = {name: _Tally() for name in ("reference", *SOURCES)}
    rates = {rate: _Tally() for rate in config.probe_rates}
    total = 2 * n_samples + n_probe * len(rates)
    with tqdm(total=total, desc="judge", unit="row", disable=not progress) as bar:
        for batch in example_batches(examples[:n_samples], collate, config.batch_size, device):
            _sample_batch(model, judge, batch, collate.tokenizer, tallies, layout, config, bar)
        for batch in example_batches(examples[:n_probe], collate, config.batch_size, device):
            _probe_batch(model, judge, batch, collate.tokenizer, rates, layout, config, bar)
    return _report(tallies, rates, config)


def _sample_batch(model, judge, batch, tok, tallies: dict, layout, config: JudgeConfig,
                  bar) -> None:
    """The real text's NLL, then each source's samples of one batch."""
    stops = {tok.eos_id, tok.pad_id}
    x0, attention, eligible = batch.x0, batch.attention_mask, batch.eligible
    indices = batch.example_index.tolist()
    tallies["reference"].nll.append(judge_nll(judge, x0, attention, eligible))
    tallies["reference"].samples += contents(x0, eligible, stops)
    for code, source in enumerate(SOURCES):
        region = eligible if source == "unconditional" else continuation_mask(
            eligible, config.prompt_fraction, ~_stops(x0, stops))
        seeds = [derive_seed(config.seed, STREAM_JUDGE_SAMPLING, code, i) for i in indices]
        out = fill_masked(model, x0.masked_fill(region, tok.mask_id), mask_token_id=tok.mask_id,
                          attention=attention, steps=config.steps,
                          temperature=config.temperature, seeds=seeds, layout=layout)
        tally = tallies[source]
        tally.nll.append(judge_nll(judge, out, attention, region))
        tally.real_nll.append(judge_nll(judge, x0, attention, region))
        samples, real = contents(out, region, stops), contents(x0, region, stops)
        tally.samples += samples
        tally.reference += [r[:len(s)] for r, s in zip(real, samples)]
        tally.texts += [tok.decode(s, skip_special=True) for s in samples]
        bar.update(len(indices))


def _probe_batch(model, judge, batch, tok, rates: dict, layout, config: JudgeConfig,
                 bar) -> None:
    """The partial-mask probe of one batch at every rate: greedy decoding."""
    x0, attention, eligible = batch.x0, batch.attention_mask, batch.eligible
    indices = batch.example_index.tolist()
    for rate, tally in rates.items():
        region = probe_mask(eligible, indices, rate, config.seed)
        out = fill_masked(model, x0.masked_fill(region, tok.mask_id), mask_token_id=tok.mask_id,
                          attention=attention, steps=config.steps, layout=layout)
        same = out == x0
        tally.nll.append(judge_nll(judge, out, attention, eligible))
        tally.correct.append(((same & eligible).sum(1) / eligible.sum(1).clamp_min(1)).double()
                             .cpu())
        n_masked = region.sum(1)
        share = (same & region).sum(1).double() / n_masked.clamp_min(1)
        tally.masked_correct.append(share[n_masked > 0].cpu())
        tally.masked.append(torch.stack([n_masked, eligible.sum(1)], dim=1).cpu())
        bar.update(len(indices))


def _mean_se(values: torch.Tensor) -> dict | None:
    if len(values) == 0:
        return None
    result = summarise_examples(values)
    return {"mean": result.mean, "se": result.se if math.isfinite(result.se) else None,
            "n": result.n}


def _report(tallies: dict, rates: dict, config: JudgeConfig) -> GenerationReport:
    reference = tallies["reference"]
    items = {"reference": torch.cat(reference.nll).tolist()}
    sources = {}
    for source in SOURCES:
        tally = tallies[source]
        values = torch.cat(tally.nll)
        items[source] = values.tolist()
        sources[source] = {"judge_nll": nll_summary(values),
                           "real_nll": nll_summary(torch.cat(tally.real_nll)),
                           "diversity": diversity(tally.samples),
                           "real_diversity": diversity(tally.reference),
                           "examples": tally.texts[:3]}
    probe = []
    for rate, tally in rates.items():
        counts = torch.cat(tally.masked)
        values = torch.cat(tally.nll)
        items[f"probe_{rate:g}"] = values.tolist()
        probe.append({"rate": rate, "masked_tokens": int(counts[:, 0].sum()),
                      "eligible_tokens": int(counts[:, 1].sum()),
                      "masked_share": float(counts[:, 0].sum() / counts[:, 1].sum().clamp_min(1)),
                      "judge_nll": nll_summary(values),
                      "accuracy": _mean_se(torch.cat(tally.correct)),
                      "masked_accuracy": _mean_se(torch.cat(tally.masked_correct))})
    return GenerationReport(config=config,
                            reference={"judge_nll": nll_summary(torch.cat(reference.nll)),
                                       "diversity": diversity(reference.samples)},
                            sources=sources, probe=probe, items=items)


def load_judge(path, model_run: LoadedRun, model_path, checkpoint: str = "best",
               device="cpu") -> LoadedRun:
    """The causal run at ``path`` as a judge of ``model_run`` (a :class:`LoadedRun` of the
    masked-diffusion run at ``model_path``), or a one-line ValueError naming what differs."""
    if model_run.config.model.causal:
        raise ValueError(f"--run {model_path} is a causal run: the generation judge scores a "
                         f"masked-diffusion run's samples (give the causal run as --judge)")
    judge = load_run(path, checkpoint, device)
    if not judge.config.model.causal:
        raise ValueError(f"--judge {path} is not a causal run (model.causal is false): the judge "
                         f"must be an autoregressive model, e.g. `maskdiff train --method ar` "
                         f"on the same data")
    if judge.tokenizer != model_run.tokenizer:
        raise ValueError(f"--judge {path}: its tokenizer ({judge.tokenizer.vocab_size} tokens) "
                         f"differs from --run {model_path}'s ({model_run.tokenizer.vocab_size} "
                         f"tokens): train the judge on the same corpus with the same tokenizer")
    if judge.config.data.max_len < model_run.config.data.max_len:
        raise ValueError(f"--judge {path}: data.max_len={judge.config.data.max_len} is shorter "
                         f"than --run {model_path}'s rows ({model_run.config.data.max_len})")
    return judge
