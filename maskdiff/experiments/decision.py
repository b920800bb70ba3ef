"""The README's decision table (``maskdiff readme-tables``, table ``decision``): what to use in
which regime, from the paired compare jobs stored under ``docs/results/``.

Per regime (one results file each, :data:`REGIMES`; a missing file is skipped) and method,
the compute multiplier to standard's final validation ELBO (forward passes, so a two-view
method pays for its second view) and the pass@1 difference to standard, both with their 95%
intervals, and a verdict read off the intervals only:

- **faster** — the multiplier's interval lies above 1 and pass@1 is not significantly worse;
- **faster likelihood, worse generation** — the multiplier's interval lies above 1, pass@1 is
  significantly worse (the biased objectives: they optimise another ELBO);
- **more compute** — the multiplier's interval lies below 1 (the seeds resampled, a method
  that never reaches standard's final ELBO counts 0) and pass@1 is not significantly worse;
- **worse generation** — pass@1 is significantly worse and the method is not faster;
- otherwise no measurable effect: such methods share one row per regime, so the table stays
  small and every method the regime ran is named.
"""

from __future__ import annotations

from pathlib import Path

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.experiments.compare_report import multiplier
from maskdiff.jobs import read_record

# (results file under docs/results/, the regime as the table names it)
REGIMES = (
    ("compare-full", "fine-tuning (`--preset full`)"),
    ("compare-windows", "fine-tuning windows (`--preset windows`)"),
    ("compare-block", "block diffusion, b = 8 (`--preset block`)"),
    ("compare-pretrain", "pretraining from scratch (`--regime pretrain`)"),
)
NO_EFFECT = "no measurable effect"


def _interval(d: dict | None, scale: float = 1.0, signed: bool = False) -> str:
    if not d or d.get("lo") is None:
        return "–"
    f = (lambda x: f"{scale * x:+.1f}") if signed else (lambda x: f"{scale * x:.2f}")
    return f"{f(d.get('mean', d.get('multiplier')))} [{f(d['lo'])}, {f(d['hi'])}]"


def verdict(vs: dict) -> str:
    """The verdict of one method's ``vs_standard`` entry (module docstring)."""
    comp = vs.get("compute") or {}
    pass_d = (vs.get("pass_at_1") or {}).get("difference") or {}
    worse_pass = pass_d.get("hi") is not None and pass_d["hi"] < 0
    faster = comp.get("lo") is not None and comp.get("reached", True) and comp["lo"] > 1
    slower = comp.get("hi") is not None and comp["hi"] < 1
    if faster:
        return "faster likelihood, worse generation" if worse_pass else "faster"
    if worse_pass:
        return "worse generation"
    return "more compute" if slower else NO_EFFECT


def regime_rows(results: dict, regime: str) -> list[str]:
    """The table rows of one regime: a row per method with a verdict, one for the rest."""
    rows, quiet = [], []
    for label, m in results["methods"].items():
        vs = m.get("vs_standard")
        if (label == BASELINE or not vs or m["test_loss_kind"] != "ELBO"
                or label != m["method"] or get_method(m["method"]).base == BASELINE):
            continue
        said = verdict(vs)
        if said == NO_EFFECT:
            quiet.append(label)
            continue
        pass_d = (vs.get("pass_at_1") or {}).get("difference")
        rows.append(f"| {regime} | {label} | {vs['fwd_ratio']:.0f} | "
                    f"{multiplier(vs.get('compute'))} | {_interval(pass_d, 100, True)} | "
                    f"**{said}** |")
    if quiet:
        rows.append(f"| {regime} | {', '.join(quiet)} | | | | {NO_EFFECT} |")
    return rows


def decision_table(results_dir: Path) -> list[str]:
    """The decision table over every regime whose results file exists."""
    lines = ["| regime | method | compute / standard's per step | compute multiplier [95% CI] | "
             "pass@1 Δ, points [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for name, regime in REGIMES:
        path = Path(results_dir) / f"{name}.json"
        if not path.exists():
            continue
        record, why = read_record(path)
        if why is not None:
            raise ValueError(f"{path}: {why}")
        lines += regime_rows(record, regime)
    return lines
