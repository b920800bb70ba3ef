"""The operator prior of the arithmetic task: how much pass@1 needs no arithmetic at all
(docs/method.md §11, "What pass@1 measures here"; ``benchmarks/prior_policy.py``).

A problem's prompt says which operation it asks for ("sells" is a subtraction) but a model may
still not combine the numbers. The *operator prior* answers every problem with the answer most
frequent in the training split among problems of the same operation(s) — it reads the
operation, ignores the numbers. Its hits on the test problems are a fixed set; a model's hits
split into those inside that set and those outside it (problems it solved that the prior does
not: arithmetic). A model whose hits *are* the prior's, problem for problem, has collapsed onto
it. Functions of stored hit strings (a compare job's runs, the preference benchmark's records)
and of the task's examples.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from maskdiff.experiments import stats
from maskdiff.experiments.report_md import interval
from maskdiff.training.answers import gold_answer

_OPS = re.compile(r"(?<=\d)\s*([-+*/])")


def operation(response: str) -> str:
    """The operation(s) of a worked answer ``a+b=c\\n#### c``: the operators between numbers
    on the left of its equations (``"+"``, ``"-*"``)."""
    work = response.split("####")[0]
    ops = "".join(_OPS.findall(" ".join(line.split("=")[0] for line in work.splitlines())))
    if not ops:
        raise ValueError(f"no arithmetic operation in the response {response!r}: the operator "
                         f"prior is defined for the arithmetic task")
    return ops


def prior_policy(train: Sequence, test: Sequence) -> dict:
    """The operator prior fitted on ``train`` (examples with ``.response``) and its hits on
    ``test``: ``{"answers": {operation: answer}, "hits": [bool], "pass_at_1"}``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for ex in train:
        counts[operation(ex.response)][gold_answer(ex.response)] += 1
    answers = {op: c.most_common(1)[0][0] for op, c in sorted(counts.items())}
    hits = [answers.get(operation(ex.response)) == gold_answer(ex.response) for ex in test]
    return {"answers": answers, "hits": hits, "pass_at_1": sum(hits) / len(hits)}


def overlap(hits: str, prior: Sequence[bool]) -> dict:
    """A model's hit string (``"1"`` = solved) against the prior's hits on the same problems."""
    if len(hits) != len(prior):
        raise ValueError(f"{len(hits)} hits against the prior's {len(prior)} problems")
    mine = [h == "1" for h in hits]
    inside = sum(m and p for m, p in zip(mine, prior))
    return {"inside": inside, "outside": sum(mine) - inside, "collapsed": mine == list(prior)}


def summarise(models: dict[str, list[str]], prior: Sequence[bool]) -> dict:
    """Per label (its models' hit strings, one per seed): pass@1, the share of the prior's hits
    the models reproduce, the problems solved outside the prior (points of pass@1, mean with its
    t interval) and how many models collapsed onto the prior."""
    n, n_prior = len(prior), sum(prior)
    out = {}
    for label, strings in models.items():
        rows = [overlap(h, prior) for h in strings]
        outside = [100 * r["outside"] / n for r in rows]
        out[label] = {"n": len(rows),
                      "pass_at_1": 100 * sum(h.count("1") for h in strings) / (n * len(rows)),
                      "inside_share": (sum(r["inside"] for r in rows) / (n_prior * len(rows))
                                       if n_prior else None),
                      "outside": stats.mean_ci(outside) if len(rows) > 1 else
                      {"mean": outside[0], "lo": None, "hi": None},
                      "collapsed": sum(r["collapsed"] for r in rows)}
    return out


def compare_models(task_runs: Path) -> dict[str, list[str]]:
    """The hit strings of a compare job's runs on one task, per label, from each run's
    ``compare.json`` under ``task_runs/<method>/s<seed>/`` (``results.json`` leaves them out);
    the causal twin is not a masked-diffusion model and is left out."""
    from maskdiff.jobs import load_record

    models: dict[str, list[str]] = {}
    for path in sorted(Path(task_runs).glob("*/s*/compare.json")):
        run = load_record(path)
        if run and run.get("hits") and run["method"] != "ar":
            models.setdefault(run["label"], []).append(run["hits"])
    if not models:
        raise ValueError(f"no scored run (METHOD/sSEED/compare.json with hits) under {task_runs}")
    return dict(sorted(models.items(), key=lambda kv: (kv[0] != "standard", kv[0])))


def dpo_models(doc: dict) -> dict[str, list[str]]:
    """The preference benchmark's hit strings: the starting runs, then each estimator's."""
    labels = ["start", *doc["config"]["estimators"]]
    return {label: [r[label]["hits"] for r in doc["records"]] for label in labels}


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def table(doc: dict) -> list[str]:
    """One row per source and label (bold: the models that collapsed onto the prior)."""
    prior = doc["prior"]
    lines = [f"| models | seeds | pass@1 % | share of the prior's {prior['hits']} hits reproduced "
             "| pass@1 outside the prior, points [95% CI] | collapsed onto the prior |",
             "|---|---|---|---|---|---|"]
    for source, labels in doc["sources"].items():
        for label, s in labels.items():
            collapsed = f"{s['collapsed']} of {s['n']}"
            lines.append(f"| {source}: `{label}` | {s['n']} | {s['pass_at_1']:.1f} | "
                         f"{_share(s['inside_share'])} | {interval(s['outside'], digits=1)} | "
                         f"{f'**{collapsed}**' if s['collapsed'] else collapsed} |")
    return lines


def prior_line(doc: dict) -> list[str]:
    """The prior itself: its answers and its pass@1."""
    p = doc["prior"]
    answers = ", ".join(f"`{op}` → {a}" for op, a in p["answers"].items())
    return [f"Operator prior (fitted on the {p['n_train']} training problems): {answers}; "
            f"pass@1 {100 * p['pass_at_1']:.1f}% ({p['hits']} of the {p['n_test']} test "
            "problems)."]


def operator_prior(train: Sequence, test: Sequence) -> dict | None:
    """What a compare job records of the prior (its answers, pass@1 and hit string on the
    scored test problems), or None for a task that is not arithmetic."""
    try:
        prior = prior_policy(train, test)
    except (ValueError, TypeError, AttributeError):
        return None
    return {"answers": prior["answers"], "pass_at_1": prior["pass_at_1"],
            "hits": "".join("1" if h else "0" for h in prior["hits"])}


def versus_prior(by_label: dict[str, list[dict]], prior: dict | None) -> dict | None:
    """Per label of a compare job (its run records, with hit strings): the prior summary of
    :func:`summarise`, and the paired difference of the pass@1 outside the prior to
    standard's (points); None without a prior."""
    if not prior:
        return None
    hits = [c == "1" for c in prior["hits"]]
    models = {label: rows for label, rows in by_label.items()
              if all(len(r.get("hits") or "") == len(hits) for r in rows)}
    out = summarise({label: [r["hits"] for r in rows] for label, rows in models.items()}, hits)
    base = {r["seed"]: overlap(r["hits"], hits)["outside"] for r in models.get("standard", [])}
    for label, rows in models.items():
        mine = {r["seed"]: overlap(r["hits"], hits)["outside"] for r in rows}
        seeds = sorted(set(mine) & set(base))
        if label != "standard" and len(seeds) >= 2:
            out[label]["outside_vs_standard"] = stats.paired_difference(
                [100 * mine[s] / len(hits) for s in seeds], [100 * base[s] / len(hits) for s in seeds])
    return out


def prior_table(results: dict) -> list[str]:
    """A compare job's methods against the operator prior, as Markdown lines (empty for a task
    without one)."""
    rows = results.get("operator_prior")
    if not rows:
        return []
    lines = ["| method | pass@1 % | prior's hits reproduced | outside the prior, points [95% CI] "
             "| Δ outside vs standard [95% CI] (p) | collapsed |", "|---|---|---|---|---|---|"]
    for label, s in rows.items():
        d = s.get("outside_vs_standard")
        diff = interval(d, digits=1, sign="+", p=True) if d else ""
        lines.append(f"| {label} | {s['pass_at_1']:.1f} | {_share(s['inside_share'])} | "
                     f"{interval(s['outside'], digits=1)} | {diff} | "
                     f"{s['collapsed']} of {s['n']} |")
    return lines


def prior_section(results: dict) -> list[str]:
    """The compare report's "Operator prior" section (nothing for a task without one)."""
    prior = (results.get("task") or {}).get("operator_prior")
    table = prior_table(results)
    if not prior or not table:
        return []
    answers = ", ".join(f"`{op}` → {a}" for op, a in prior["answers"].items())
    return ["## Operator prior", "", f"Answering the training split's most frequent answer per "
            f"operation ({answers}) scores {100 * prior['pass_at_1']:.1f}% pass@1 without any "
            "arithmetic (docs/method.md §11, \"What pass@1 measures here\"). Per method: the "
            "share of the prior's hits reproduced, the pass@1 outside them, its paired "
            "difference to standard's, and the runs whose hits are the prior's exactly.", "",
            *table, ""]
