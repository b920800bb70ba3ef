"""The tables of ``benchmarks/noise_during_training.py`` (docs/method.md §11, "The gradient
noise scale"): the noise measured along fine-tuning, the multiplier it predicts, and the
measured one, per optimiser; ``maskdiff readme-tables`` renders them from the benchmark's JSON
(table ``noise-training``)."""

from __future__ import annotations

from maskdiff.experiments import stats
from maskdiff.experiments.compare_summary import curves

METHOD = "mirror"


def _rows(records: list[dict], method: str) -> list[dict]:
    """A method's runs as :func:`compare_summary.curves` reads them (forward passes per
    evaluation)."""
    return [{"history": [{**h, "fwd": h["step"] * r[method]["fwd_per_step"]}
                         for h in r[method]["history"]]} for r in records]


def summarise(records: list[dict]) -> dict:
    """The measured multiplier (seed bootstrap) and, per step, the noise and the prediction."""
    _, x_base, base = curves(_rows(records, "standard"))
    _, x_m, meth = curves(_rows(records, METHOD))
    measured = stats.compute_multiplier(x_base, base, x_m, meth)
    steps = [p["step"] for p in records[0]["points"]]
    per_step = []
    for i, step in enumerate(steps):
        pts = [r["points"][i] for r in records]
        b_std = [p["b_noise"]["standard"] for p in pts if p["b_noise"]["standard"] is not None]
        per_step.append({
            "step": step, "predicted_limit": stats.mean_ci([p["predicted_limit"] for p in pts]),
            "trace_ratio": stats.mean_ci([p["trace_cov"][METHOD] / p["trace_cov"]["standard"]
                                          for p in pts]),
            "trace_standard": stats.mean_ci([p["trace_cov"]["standard"] for p in pts]),
            # |G|² = |ḡ|² − tr Σ / n is resolved only where positive on every seed
            "b_noise_standard": stats.mean_ci(b_std) if len(b_std) == len(pts) else None})
    return {"measured": measured, "per_step": per_step}


def table(doc: dict) -> list[str]:
    """One row per optimiser and measurement step; the measured multiplier on the first."""
    lines = ["| optimiser | lr | step | tr Σ standard (per example) | B_noise standard | "
             "tr Σ MIRROR / standard | predicted multiplier (B_noise ≫ B) | measured multiplier |",
             "|---|---|---|---|---|---|---|---|"]
    for name, opt in doc["optimizers"].items():
        m = opt["summary"]["measured"]
        measured = (f"{m['multiplier']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]"
                    if m["reached"] and m["lo"] is not None else f"{m['multiplier']:.2f}")
        for i, p in enumerate(opt["summary"]["per_step"]):
            f = lambda d, k=".0f": f"{d['mean']:{k}} [{d['lo']:{k}}, {d['hi']:{k}}]"  # noqa: E731
            b = "unresolved" if p["b_noise_standard"] is None else f(p["b_noise_standard"])
            lines.append(f"| {name} | {opt['lr']:g} | {p['step']} | "
                         f"{f(p['trace_standard'], '.2f')} | {b} | {f(p['trace_ratio'], '.2f')} | "
                         f"{f(p['predicted_limit'], '.2f')} | {measured if i == 0 else ''} |")
    return lines
