"""The README tables of the estimator benchmarks, rendered from their JSON under
``docs/results/`` (``maskdiff readme-tables``): ``benchmarks/elbo_se.py``'s standard error per
forward pass (docs/evaluation.md, "Schemes, standard errors and the default") and
``benchmarks/dpo_bias.py``'s noise and bias of the DPO loss per estimator (docs/method.md §13).
The row notes name where a scheme comes from and which one is the library's default, read from
the library (not from the file), so a changed default shows in the README check.
"""

from __future__ import annotations

# Where a scheme or estimator comes from (the README's row notes).
_ORIGIN = {"mc": "LLaDA", "lowvar": "LLaDA's low-variance", "naive": "independent draws",
           "vrpo": "LLaDA 1.5"}


def _name(name: str, default: str) -> str:
    base, _, fit = name.partition(" (")
    notes = [n for n in (_ORIGIN.get(base), "default" if base == default and not fit else None,
                         fit[:-1] if fit else None) if n]
    return f"`{base}`" + (f" ({'; '.join(notes)})" if notes else "")


def _range(point: float, ci: list[float], fmt: str) -> str:
    return f"{point:{fmt}} ({ci[0]:{fmt}}–{ci[1]:{fmt}})"


def elbo_se_table(doc: dict) -> list[str]:
    """Per scheme: the SE at each budget, the passes to reach plain MC's SE at the target budget
    and the saving, with bootstrap intervals, and the paired ratio to the ``paired`` reference."""
    from maskdiff.training.elbo_schemes import default_scheme, elbo_scheme

    default, target = default_scheme(), doc["target"]
    form = (doc.get("density_fit") or {}).get("form")
    against = (doc.get("paired") or {}).get("against")
    head = ("| scheme | " + " | ".join(f"{b} passes" for b in doc["budgets"])
            + f" | passes for MC@{target}'s SE (95% CI) | saving vs MC@{target} |"
            + (f" vs `{against}` (paired) |" if against else ""))
    lines = [head, "|---" * (len(doc["budgets"]) + 3 + bool(against)) + "|"]
    for name, s in doc["schemes"].items():
        label = name if "(" in name or not elbo_scheme(name).fitted else f"{name} ({form} fit)"
        cells = [f"{v:.3f}" for v in s["se"]]
        lo, hi = s["saving_ci95"]
        cells += [_range(s["passes_for_target"], s["passes_for_target_ci95"], ".0f"),
                  f"{s['saving']:.1f}× ({lo:.1f}–{hi:.1f}×)"]
        if against:
            p = doc["paired"].get(name)
            cells.append(_range(p["ratio"], p["ratio_ci95"], ".2f") if p else "")
        lines.append(f"| {_name(label, default)} | " + " | ".join(cells) + " |")
    return lines


def _pm(r: dict, key: str, fmt: str) -> str:
    return f"{r[key]:{fmt}} ± {r[key + '_se']:{fmt.lstrip('+')}}"


def dpo_bias_table(doc: dict) -> list[str]:
    """Per estimator, on the trained policy: the SEs of one ELBO and of the bracket Δ̂, Δ̂'s
    error, and the DPO loss's and gradient's bias (± SE) at the smallest and largest β."""
    from maskdiff.preference.elbo import DEFAULT_ESTIMATOR

    rows = doc["trained"]
    lo, hi = (str(b) for b in (min(doc["betas"]), max(doc["betas"])))
    first = next(iter(rows.values()))["beta"]
    lines = [f"| estimator | SE of one ELBO | SE of Δ̂ | mean Δ̂ − Δ | DPO loss bias, β = {lo} "
             f"| β = {hi} | gradient bias, β = {lo} (true {first[lo]['grad_true']:+.3f}) | "
             f"β = {hi} (true {first[hi]['grad_true']:+.2f}) | gradient SD, β = {hi} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        b0, b1 = r["beta"][lo], r["beta"][hi]
        cells = [f"{r['se_elbo']:.1f}", f"{r['se_delta']:.2f}",
                 f"{r['delta_error']:+.2f} ± {r['delta_error_se']:.2f}",
                 _pm(b0, "loss_bias", "+.3f"), _pm(b1, "loss_bias", "+.2f"),
                 _pm(b0, "grad_bias", "+.3f"), _pm(b1, "grad_bias", "+.2f"), f"{b1['grad_sd']:.2f}"]
        lines.append(f"| {_name(name, DEFAULT_ESTIMATOR)} | " + " | ".join(cells) + " |")
    return lines
