"""The tables of ``benchmarks/noise_during_training.py`` (docs/method.md §11, "The gradient
noise scale"): the noise measured along fine-tuning, the multiplier it predicts, and the
measured one, per optimiser; ``maskdiff readme-tables`` renders them from the benchmark's JSON
(table ``noise-training``)."""

from __future__ import annotations

import numpy as np

from maskdiff.experiments import stats

METHOD = "mirror"


def curve(history: list[dict], fwd_per_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Forward passes and the best-so-far validation ELBO of a run's history."""
    steps = np.array([h["step"] for h in history], np.float64)
    vals = np.minimum.accumulate(np.array([h["val_loss"] for h in history], np.float64))
    return steps * fwd_per_step, vals


def summarise(records: list[dict]) -> dict:
    """The measured multiplier (seed bootstrap) and, per step, the noise and the prediction."""
    base = [curve(r["standard"]["history"], r["standard"]["fwd_per_step"]) for r in records]
    meth = [curve(r[METHOD]["history"], r[METHOD]["fwd_per_step"]) for r in records]
    measured = stats.compute_multiplier(base[0][0], np.stack([y for _, y in base]), meth[0][0],
                                        np.stack([y for _, y in meth]))
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
