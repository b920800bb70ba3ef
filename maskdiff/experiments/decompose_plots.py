"""The plots of ``maskdiff decompose`` (docs/method.md §2), drawn from ``decompose.json``'s
``configurations`` and ``curves`` alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _clip(value: float | None) -> float:
    return 0.0 if value is None else max(0.0, value)


def plot_components(path: str | Path, configurations: dict[str, dict[str, Any]]) -> None:
    """Stacked bars of A, B, C (clipped at 0) per configuration (``decompose.json``'s
    ``configurations``), with the unbiased total's ±1 SE, the cost-aware total (× forward
    passes) and the batch-level per-example variance (n × Var of the batch mean) as markers."""
    from maskdiff.plotting import pyplot

    plt = pyplot()

    names = list(configurations)
    rows = [configurations[n] for n in names]
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2) + 3.0, 4.8))
    bottom = [0.0] * len(names)
    colours = {"A": "#4c72b0", "B": "#dd8452", "C": "#55a868"}
    labels = {"A": "A: masking pattern", "B": "B: masking rate", "C": "C: data"}
    for comp in ("A", "B", "C"):
        values = [_clip(r[comp]) for r in rows]
        ax.bar(x, values, bottom=bottom, color=colours[comp], label=labels[comp], width=0.7)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.errorbar(x, [r["total"] for r in rows], yerr=[r["se"]["total"] or 0.0 for r in rows],
                fmt="none", ecolor="black", capsize=3, label="total (unbiased) ± SE")
    ax.scatter(x, [r["cost_aware"]["total"] for r in rows], marker="D", color="black",
               facecolor="white", zorder=3, label="total × forward passes")
    batch = [r["batch_variance"]["per_example"] for r in rows]
    ax.scatter(x, [math.nan if b is None else b["value"] for b in batch], marker="^",
               color="#c44e52", zorder=3, label="batch variance × n (repeated batches)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("variance of the per-example value")
    ax.set_title("A/B/C decomposition per configuration (unbiased, bars clipped at 0)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: str | Path, curves: dict[str, dict[str, Any]]) -> None:
    """g(t) and v(t) per configuration (``decompose.json``'s ``curves``). The curves are
    conditional on t and carry no w, so configurations that differ only in the rate sampler
    have identical curves (same seed): each distinct curve is drawn once, labelled with every
    configuration it belongs to."""
    from maskdiff.plotting import pyplot

    plt = pyplot()

    groups: list[tuple[list[str], dict[str, Any]]] = []
    for name, cur in curves.items():
        for members, seen in groups:
            if seen["g"] == cur["g"] and seen["v"] == cur["v"]:
                members.append(name)
                break
        else:
            groups.append(([name], cur))
    fig, (ax_g, ax_v) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("v", ":"), ("D", "-"), ("x", "--"),
              ("P", "-."), ("*", ":")]
    for index, (members, cur) in enumerate(groups):
        label = " = ".join(members)
        marker, line = styles[index % len(styles)]
        t = np.asarray(cur["t"], dtype=float)
        g = np.asarray([math.nan if v is None else v for v in cur["g"]])
        g_se = np.asarray([0.0 if v is None else v for v in cur["g_se"]])
        v = np.asarray([math.nan if x is None or x <= 0 else x for x in cur["v"]])
        ax_g.errorbar(t, g, yerr=g_se, label=label, capsize=2, marker=marker, linestyle=line,
                      markersize=4, markerfacecolor="none")
        ax_v.plot(t, v, label=label, marker=marker, linestyle=line, markersize=4,
                  markerfacecolor="none")
    ax_g.set_xlabel("masking rate t")
    ax_g.set_ylabel("g(t) = E[l | t]")
    ax_v.set_xlabel("masking rate t")
    ax_v.set_ylabel("v(t) = Var(l | t)")
    ax_v.set_yscale("log")
    ax_g.set_title("conditional mean (per-example value, without w)")
    ax_v.set_title("conditional variance: data + masks (log scale)")
    ax_g.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
