"""``maskdiff evaluate --judge CAUSAL_RUN``: the generation section of evaluate's report — a
masked-diffusion run's samples and partial-mask probe scored by a causal judge
(:mod:`maskdiff.training.judge`, docs/evaluation.md "Generation: a judge that is not the model")."""

from __future__ import annotations

import sys

from maskdiff.commands import positive
from maskdiff.training.evaluate import se_text
from maskdiff.training.judge import DEFAULT_PROBE_RATES, SOURCES, JudgeConfig, judge_generation


def parse_rates(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``, each in [0, 1]; a one-line error otherwise."""
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--probe-rates must be comma-separated numbers in [0, 1], got {text!r}") \
            from None
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if not rates or bad:
        raise ValueError(f"--probe-rates must be comma-separated numbers in [0, 1], got {text!r}")
    return rates


def add_judge_arguments(parser) -> None:
    group = parser.add_argument_group(
        "generation judged by a causal run (docs/evaluation.md: generative perplexity, "
        "distinct-n, the partial-mask probe)")
    group.add_argument("--judge", metavar="CAUSAL_RUN",
                       help="a causal run (maskdiff train --method ar) on the same corpus and "
                            "tokenizer: adds a 'generation' section to eval.json")
    group.add_argument("--samples", type=positive, default=32,
                       help="test examples sampled from (unconditional and continuation)")
    group.add_argument("--probe-rates", type=parse_rates, default=DEFAULT_PROBE_RATES,
                       metavar="R,R,...",
                       help="masked shares of the partial-mask probe (default: "
                            + ",".join(f"{r:g}" for r in DEFAULT_PROBE_RATES) + ")")
    group.add_argument("--probe-examples", type=positive,
                       help="test examples the probe decodes (default: --samples)")
    group.add_argument("--temperature", type=float, default=1.0,
                       help="the samples' temperature (0: greedy); the probe decodes greedily")
    group.add_argument("--prompt-fraction", type=float, default=0.5,
                       help="the share of each test example a continuation keeps")


def run_judge(args, loaded, examples, collate, layout) -> dict:
    """Score the run's samples with ``args.judge_run`` (loaded and checked before any other
    work); print the table; return the report's dict (per-sample values included)."""
    note_judge_data(args, loaded)
    config = JudgeConfig(samples=args.samples, probe_examples=args.probe_examples,
                         probe_rates=args.probe_rates, prompt_fraction=args.prompt_fraction,
                         temperature=args.temperature, steps=args.steps, seed=args.seed)
    report = judge_generation(loaded.model, args.judge_run.model, examples, collate,
                              layout=layout, config=config, device=args.device, progress=True)
    out = report.to_dict(items=True)
    out["judge"] = {"run": str(args.judge), "checkpoint": str(args.judge_run.checkpoint)}
    print_generation(out, args.judge)
    return out


JUDGE_DATA_FIELDS = ("task", "train_file", "data_seed", "difficulty")


def note_judge_data(args, loaded) -> None:
    """A note on stderr when the judge was trained on other data than the run (its tokenizer
    matched: :func:`~maskdiff.training.judge.load_judge` refused otherwise)."""
    ours, theirs = loaded.config.data, args.judge_run.config.data
    differ = [f"data.{name}: {getattr(ours, name)!r} vs {getattr(theirs, name)!r}"
              for name in JUDGE_DATA_FIELDS if getattr(ours, name) != getattr(theirs, name)]
    if differ:
        print(f"maskdiff evaluate: note: --judge {args.judge} was trained on other data than "
              f"--run {args.run} ({'; '.join(differ)}): its perplexities measure closeness to "
              f"its corpus", file=sys.stderr)


def _distinct(div: dict) -> str:
    return "/".join("n/a" if div[f"distinct_{n}"] is None else f"{div[f'distinct_{n}']:.3f}"
                    for n in (1, 2, 3))


def _nll(summary: dict) -> str:
    return f"{summary['mean']:.4f} ± {se_text(summary['se'], summary['n'], 'sample'):<7}"


def print_generation(doc: dict, judge) -> None:
    """The generation section as a table: the judge's NLL per token, perplexity, distinct-n."""
    cfg = doc["config"]
    print(f"generation judged by {judge} (causal), temperature {cfg['temperature']:g}, "
          f"seed {cfg['seed']}:")
    print(f"  {'text':<14} {'judge NLL/token':<18} {'ppl':>8}  {'real NLL':>8}  "
          f"{'distinct-1/2/3':<17} {'real at same length':<19} {'length':>6}")
    ref = doc["reference"]
    print(f"  {'real test text':<14} {_nll(ref['judge_nll']):<18} "
          f"{ref['judge_nll']['perplexity']:8.2f}  {'':>8}  {_distinct(ref['diversity']):<17} "
          f"{'':<19} {ref['diversity']['mean_length']:6.1f}")
    for source in SOURCES:
        row = doc["sources"][source]
        print(f"  {source:<14} {_nll(row['judge_nll']):<18} "
              f"{row['judge_nll']['perplexity']:8.2f}  {row['real_nll']['mean']:8.4f}  "
              f"{_distinct(row['diversity']):<17} {_distinct(row['real_diversity']):<19} "
              f"{row['diversity']['mean_length']:6.1f}")
    print("  partial-mask probe (greedy): rate, masked tokens, judge NLL/token, token accuracy "
          "(all / masked)")
    for row in doc["probe"]:
        masked = row["masked_accuracy"]
        print(f"    r={row['rate']:<5g} {row['masked_tokens']:>6}/{row['eligible_tokens']:<6} "
              f"{_nll(row['judge_nll'])}  {row['accuracy']['mean']:.3f} / "
              f"{'n/a' if masked is None else format(masked['mean'], '.3f')}")
