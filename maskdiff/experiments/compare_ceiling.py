"""The noise ceiling of a compare job (docs/method.md §11): what a perfect variance reducer
could buy, and each method's gain as a share of it.

``standard@kx`` trains standard with k times the batch: its gradient noise is 1/k of
standard's at the same steps, and no unbiased estimator of one batch can reduce the noise of
the gradient more than averaging k independent batches does. The job's *ceiling* is the
equal-compute variant of standard with the largest k that the job ran (``standard@4x`` in
the ``full`` preset). For every other method on the main task, per metric (pass@1, the test
ELBO), ``share = mean(method − standard) / mean(ceiling − standard)`` over the seeds all three
ran, with Fieller's interval (:func:`maskdiff.experiments.stats.ratio_of_means`): exact for
paired normal differences, unbounded when the ceiling's own gain is not significant — then no
share can be estimated, which is itself the finding (the regime cannot show estimator noise).
"""

from __future__ import annotations

from maskdiff.core.methods import BASELINE, get_method
from maskdiff.experiments import stats

_KEYS = ("pass_at_1", "test_loss")


def ceiling_label(methods: dict) -> str | None:
    """The label of the job's ceiling: standard with the largest batch factor on the main task
    (a label without a task suffix), or None when the job ran no such control."""
    best, factor = None, 1
    for label, m in methods.items():
        spec = get_method(m["method"])
        if spec.base == BASELINE and label == m["method"] and spec.batch_factor > factor:
            best, factor = label, spec.batch_factor
    return best


def _paired(rows: list[dict], seeds: list[int], key: str) -> list[float]:
    by_seed = {r["seed"]: r[key] for r in rows}
    return [by_seed[s] for s in seeds]


def noise_ceiling(methods: dict, by_label: dict[str, list[dict]]) -> dict | None:
    """Sets ``vs_ceiling`` on every method of the main task (other than standard and the
    ceiling) and returns the ceiling's own gain, ``{"label", "factor", "seeds", key:
    paired_difference(ceiling, standard)}``; None without a ceiling or a standard."""
    label = ceiling_label(methods)
    if label is None or BASELINE not in by_label:
        return None
    base, top = by_label[BASELINE], by_label[label]
    keys = [k for k in _KEYS if k != "pass_at_1" or (methods[label]["has_pass_at_1"]
                                                      and methods[BASELINE]["has_pass_at_1"])]
    seeds = sorted({r["seed"] for r in base} & {r["seed"] for r in top})
    if len(seeds) < 2:
        return None
    out: dict = {"label": label, "factor": get_method(label).batch_factor, "seeds": seeds}
    gain = {k: [c - s for c, s in zip(_paired(top, seeds, k), _paired(base, seeds, k))]
            for k in keys}
    for key in keys:
        out[key] = stats.paired_difference(_paired(top, seeds, key), _paired(base, seeds, key))
    for name, m in methods.items():
        if name in (BASELINE, label) or name != m["method"] or m["test_loss_kind"] != "ELBO":
            continue
        rows = {r["seed"]: r for r in by_label[name]}
        common = [s for s in seeds if s in rows]
        if len(common) < 3:
            continue
        entry: dict = {"ceiling": label, "paired_seeds": common}
        for key in keys:
            if key == "pass_at_1" and not m["has_pass_at_1"]:
                continue
            own = [rows[s][key] - b for s, b in zip(common, _paired(base, common, key))]
            ceil = [g for s, g in zip(seeds, gain[key]) if s in rows]
            entry[key] = stats.ratio_of_means(own, ceil)
        m["vs_ceiling"] = entry
    return out


def _share(r: dict | None) -> str:
    if not r or r["ratio"] is None:
        return "–"
    text = f"{100 * r['ratio']:+.0f}%"
    if not r["bounded"]:
        return f"{text} [unbounded]"
    return f"{text} [{100 * r['lo']:+.0f}%, {100 * r['hi']:+.0f}%]"


def ceiling_table(results: dict) -> list[str]:
    """The ceiling's own gain and each method's share of it, as Markdown lines (empty when the
    job ran no ceiling)."""
    ceiling = results.get("ceiling")
    if not ceiling:
        return []
    label = ceiling["label"]
    lines = []
    for key, what, scale, unit in (("pass_at_1", "pass@1", 100, " points"),
                                   ("test_loss", "test ELBO", 1, " nats")):
        d = ceiling.get(key)
        if d:
            lines.append(f"- {label} − standard, {what}: {scale * d['mean']:+.4g}{unit} "
                         f"[{scale * d['lo']:+.4g}, {scale * d['hi']:+.4g}] (p = {d['p']:.2g}, "
                         f"{len(ceiling['seeds'])} paired seeds).")
    rows = [(name, m["vs_ceiling"]) for name, m in results["methods"].items()
            if m.get("vs_ceiling")]
    if rows:
        lines += ["", f"| method | share of {label}'s pass@1 gain [95% CI] | share of its test "
                      "ELBO gain [95% CI] | seeds |", "|---|---|---|---|"]
        for name, vs in rows:
            lines.append(f"| {name} | {_share(vs.get('pass_at_1'))} | "
                         f"{_share(vs.get('test_loss'))} | {len(vs['paired_seeds'])} |")
    return lines


def ceiling_section(results: dict) -> list[str]:
    """The report's "Noise ceiling" section; a job that ran no ceiling says so and how to add
    one (every compare report has the section)."""
    table = ceiling_table(results)
    if not table:
        methods = ",".join(label for label, m in results["methods"].items()
                           if label == m["method"])
        return ["## Noise ceiling", "", "This job ran no noise ceiling, so it cannot say how "
                "much of standard's pass@1 a perfect variance reducer could buy here. Rerun it "
                f"with `--methods {methods},standard@4x` to add one (finished runs are reused); "
                "the README's noise-ceiling search measures it in several fine-tuning regimes.",
                ""]
    return ["## Noise ceiling", "", "What standard with k times the batch (1/k of its gradient "
            "noise) gains over standard, and each method's gain as a share of it (Fieller "
            "interval; unbounded when the ceiling's own gain is not significant):", "",
            *table, ""]
