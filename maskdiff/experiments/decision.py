"""The README's decision table (``maskdiff readme-tables``, table ``decision``): what to use in
which regime, from the paired compare jobs stored under ``docs/results/``.

Per regime (one results file each, :data:`REGIMES`; a missing file is skipped) and method,
the compute multiplier to standard's final ELBO (forward passes, so a two-view method pays
for its second view; fine-tuning: the validation ELBO, pretraining: the test ELBO curve) and
the generation effect — fine-tuning: the pass@1 difference to standard; pretraining: the
causal judge's NLL of the method's continuations of test prompts minus standard's (``evaluate
--judge``; higher is worse) — both with their 95% intervals, and a verdict read off the
intervals only:

- **faster** — the multiplier's interval lies above 1 and generation is not significantly worse;
- **faster likelihood, worse generation** — the multiplier's interval lies above 1, generation
  is significantly worse (the biased objectives: they optimise another ELBO);
- **more compute** — the multiplier's interval lies below 1 (the seeds resampled, a method
  that never reaches standard's final ELBO counts 0) and generation is not significantly worse;
- **worse generation** — generation is significantly worse and the method is not faster;
- **unreliable** (pretraining) — the method never reaches standard's final test ELBO on some
  seeds, yet reaching it at its last evaluation there would make it faster (the bound above 1);
- otherwise no measurable effect: such methods share one row per regime, so the table stays
  small and every method the regime ran is named.
"""

from __future__ import annotations

from pathlib import Path

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.experiments.compare_report import multiplier
from maskdiff.experiments.pretrain_report import multiplier_cell
from maskdiff.experiments.report_md import interval
from maskdiff.jobs import read_record

# (results file under docs/results/, the regime as the table names it)
REGIMES = (
    ("compare-full", "fine-tuning (`--preset full`)"),
    ("compare-ceiling", "fine-tuning, the noise-ceiling regime (`ceiling_search.py`)"),
    ("compare-windows", "fine-tuning windows (`--preset windows`)"),
    ("compare-block", "block diffusion, b = 8 (`--preset block`)"),
    ("compare-pretrain", "pretraining from scratch (`--regime pretrain`)"),
)
NO_EFFECT = "no measurable effect"


def _interval(d: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``mean [lo, hi]``, signed, ``scale`` times the values."""
    return interval(d, scale=scale, digits=digits, sign="+")


def verdict(vs: dict) -> str:
    """The verdict of one method's ``vs_standard`` entry of a fine-tuning job (module
    docstring)."""
    pass_d = (vs.get("pass_at_1") or {}).get("difference") or {}
    return _verdict(vs.get("compute") or {}, pass_d.get("hi") is not None and pass_d["hi"] < 0)


def _verdict(comp: dict, worse_pass: bool) -> str:
    faster = comp.get("lo") is not None and comp.get("reached", True) and comp["lo"] > 1
    slower = comp.get("hi") is not None and comp["hi"] < 1
    if faster:
        return "faster likelihood, worse generation" if worse_pass else "faster"
    if worse_pass:
        return "worse generation"
    return "more compute" if slower else NO_EFFECT


def _rows(regime: str, entries) -> list[str]:
    """Table rows from ``(label, compute per step, multiplier cell, effect cell, verdict)``
    entries: a row per method with a verdict, one row naming the rest."""
    rows, quiet = [], []
    for label, ratio, comp, effect, said in entries:
        if said == NO_EFFECT:
            quiet.append(label)
        else:
            rows.append(f"| {regime} | {label} | {ratio:.0f} | {comp} | {effect} | **{said}** |")
    if quiet:
        rows.append(f"| {regime} | {', '.join(quiet)} | | | | {NO_EFFECT} |")
    return rows


def regime_rows(results: dict, regime: str) -> list[str]:
    """The rows of a fine-tuning job: the compute multiplier to standard's final validation
    ELBO, the pass@1 difference as generation."""
    def entries():
        for label, m in results["methods"].items():
            vs = m.get("vs_standard")
            if (label == BASELINE or not vs or m["test_loss_kind"] != "ELBO"
                    or label != m["method"] or get_method(m["method"]).base == BASELINE):
                continue
            pass_d = (vs.get("pass_at_1") or {}).get("difference")
            effect = "–" if not pass_d else f"pass@1 {_interval(pass_d, 100)} points"
            yield label, vs["fwd_ratio"], multiplier(vs.get("compute")), effect, verdict(vs)
    return _rows(regime, entries())


def decision_table(results_dir: Path) -> list[str]:
    """The decision table over every regime whose results file exists."""
    lines = ["| regime | method | compute / standard's per step | compute multiplier [95% CI] | "
             "generation effect [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for name, regime in REGIMES:
        path = Path(results_dir) / f"{name}.json"
        if not path.exists():
            continue
        record, why = read_record(path)
        if why is not None:
            raise ValueError(f"{path}: {why}")
        rows = pretrain_rows if record.get("regime") == "pretrain" else regime_rows
        lines += rows(record, regime)
    return lines


def _pretrain_multiplier(comp: dict | None) -> str:
    return "–" if not comp else multiplier_cell(comp, sep=", ")


def pretrain_rows(results: dict, regime: str) -> list[str]:
    """The rows of a pretraining job (``compare --regime pretrain``): the compute multiplier to
    standard's final test ELBO, the judge's continuation NLL difference as generation."""
    def entries():
        for label, m in results["methods"].items():
            vs = m.get("vs_standard")
            if label == BASELINE or not vs or get_method(label).base == BASELINE:
                continue
            comp = next((c for c in vs.get("compute_to_target") or []
                         if c["fraction"] == 1.0), None)
            gen = ((m.get("generation") or {}).get("continuation_nll") or {}).get("vs_standard")
            worse = bool(gen) and gen.get("lo") is not None and gen["lo"] > 0
            censored = comp is not None and comp.get("multiplier") is None
            said = _verdict({} if comp is None or censored else comp, worse)
            if censored and not worse:  # it never reaches standard's final test ELBO on a seed
                bound = comp.get("upper_bound")
                said = ("more compute" if bound is not None and bound <= 1 else
                        f"unreliable: not reached on {comp['censored']}/{comp['n']} seeds")
            effect = "–" if not gen else f"judge NLL {_interval(gen, digits=3)} nats/token"
            ratio = m["fwd_per_step"] / results["methods"][BASELINE]["fwd_per_step"]
            yield label, ratio, _pretrain_multiplier(comp), effect, said
    return _rows(regime, entries())
