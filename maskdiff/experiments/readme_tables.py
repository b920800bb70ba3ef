"""The README's result tables, generated from the reference results under ``docs/results/``.

A table in the README sits between two markers::

    <!-- results:compare-demo:pass -->
    ...generated lines...
    <!-- /results -->

``compare-demo`` names ``docs/results/compare-demo.json`` (a ``maskdiff compare`` job's
``results.json``, or a sweep's ``sweep.json``); ``pass`` names the table (:data:`TABLES`).
:func:`update` rewrites every marked block from its JSON; ``maskdiff readme-tables --check``
(and ``tests/test_readme_results.py``) fails when the README and the JSON disagree, so a
README number can only come from a results file in the repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from maskdiff import jsonio
from maskdiff.experiments import compare_report as report
from maskdiff.experiments.compare_ceiling import ceiling_table
from maskdiff.experiments.decision import decision_table
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import read_record

END = "<!-- /results -->"
BLOCK = re.compile(r"(<!-- results:([\w.-]+):([\w-]+) -->\n)(.*?)(" + re.escape(END) + ")",
                   re.DOTALL)


def _lazy(module: str, name: str) -> Callable[[dict], list[str]]:
    """The table ``name`` of ``maskdiff.experiments.<module>``, imported when first rendered."""
    def table(doc: dict) -> list[str]:
        import importlib

        return getattr(importlib.import_module(f"maskdiff.experiments.{module}"), name)(doc)

    return table


def _block_setup(results: dict) -> list[str]:
    """A block job's setup: the plain one and what the block layout changes."""
    return _setup(results) + [""] + report.block_lines(results)


def _setup(results: dict) -> list[str]:
    cfg = results["config"]
    return [f"Preset `{results['preset']}`: {len(results['seeds'])} paired seeds, "
            f"{cfg['finetune_steps']} steps × batch {cfg['batch_size']}, pass@1 on "
            f"{cfg['n_test']} problems, test ELBO on {cfg['n_test_elbo']} examples × "
            f"{cfg['elbo_rates']} rates; {results['machine']}; "
            f"{report.wall_time(results)}."]


def _f4(x: float) -> str:
    return f"{x:+.4f}"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def headline(results: dict) -> list[str]:
    """The README's pitch numbers: per method at equal steps, the test ELBO and pass@1
    differences to standard, the pass@1 spread ratio and the compute multiplier, with CIs."""
    out = []
    for label, vs in report.paired_elbo_methods(results):
        d = vs["test_loss"].get("difference")
        p1 = vs.get("pass_at_1", {})
        parts = [f"test ELBO {_f4(d['mean'])} [{_f4(d['lo'])}, {_f4(d['hi'])}] nats "
                 f"({report.p_eq(d['p'])})"] if d else []
        if p1.get("difference"):
            pd = p1["difference"]
            parts.append(f"pass@1 {_pts(pd['mean'])} [{_pts(pd['lo'])}, {_pts(pd['hi'])}] points "
                         f"({report.p_eq(pd['p'])})")
        sp = p1.get("spread") or {}
        if sp.get("ratio") is not None:
            parts.append(f"pass@1 sd ratio {report.spread_cells(p1)[0]} "
                         f"(Pitman–Morgan {report.p_eq(sp['p_pitman_morgan'])})")
        if vs.get("compute"):
            parts.append(f"compute multiplier {report.multiplier(vs['compute'])}")
        out.append(f"- **{label}** vs standard: " + "; ".join(parts) + ".")
    return out


def _cell(d: dict | None, fmt) -> str:
    """``mean [lo, hi]``, in bold when the interval excludes 0 (p < 0.05)."""
    if not d:
        return "–"
    text = f"{fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"
    return f"**{text}**" if d["p"] < report.ALPHA else text


def summary(results: dict) -> list[str]:
    """The README's one-table verdict: per method, the paired differences to standard with their
    CIs (bold = significant at 5%), the pass@1 spread ratio, the compute multiplier, and the
    test-ELBO difference at equal compute where the job has one."""
    lines = ["| method | compute / standard's | pass@1 Δ, points | test ELBO Δ, nats | pass@1 sd ratio | "
             "compute multiplier | equal compute: test ELBO Δ vs standard@2x |",
             "|---|---|---|---|---|---|---|"]
    for label, vs in report.paired_elbo_methods(results):
        eq = (results["methods"][label].get("vs_equal_compute") or {}).get("test_loss") or {}
        ratio = report.spread_cells(vs.get("pass_at_1") or {})[0]
        lines.append(f"| {label} | {vs['fwd_ratio']:.0f} | "
                     f"{_cell((vs.get('pass_at_1') or {}).get('difference'), _pts)} | "
                     f"{_cell(vs['test_loss'].get('difference'), _f4)} | {ratio} | "
                     f"{report.multiplier(vs.get('compute'))} | {_cell(eq.get('difference'), _f4)} |")
    return lines


TABLES: dict[str, Callable[[dict], list[str]]] = {
    "setup": _setup,
    "pass": report.pass_table,
    "elbo": report.elbo_table,
    "noise": report.noise_table,
    "words": report.words,
    "headline": headline,
    "summary": summary,
    "equal": report.equal_compute_table,
    "equal-words": report.equal_compute_words,
    "ceiling": ceiling_table,
    "power": report.power_lines,
    "sweep": _lazy("compare_sweep", "sweep_table"),
    "block-setup": _block_setup,
    "block-sweep": _lazy("compare_blocks", "block_sweep_table"),
    "block-sweep-setup": _lazy("compare_blocks", "block_sweep_setup"),
    "pretrain": _lazy("pretrain_report", "tables"),  # compare --regime pretrain's results.json
    "pretrain-setup": _lazy("pretrain_report", "setup_lines"),
    "pretrain-generation": _lazy("pretrain_report", "generation_table"),
    "dpo-gain": _lazy("dpo_gain", "gain_table"),  # benchmarks/dpo_gain.py's results.json
    "dpo-gain-setup": _lazy("dpo_gain", "gain_setup"),
    "image": _lazy("image_report", "readme_table"),  # maskdiff image's results.json
    "noise-training": _lazy("noise_training", "table"),  # benchmarks/noise_during_training.py
    "elbo-se": _lazy("benchmark_tables", "elbo_se_table"),  # benchmarks/elbo_se.py
    "dpo-bias": _lazy("benchmark_tables", "dpo_bias_table"),  # benchmarks/dpo_bias.py
    "prior-policy": _lazy("prior_policy", "table"),  # benchmarks/prior_policy.py
    "prior-line": _lazy("prior_policy", "prior_line"),
    "prior": _lazy("prior_policy", "prior_table"),  # a compare job's methods against the prior
    "ceiling-search": _lazy("ceiling_search", "search_table"),  # benchmarks/ceiling_search.py
}

DIRECTORY_TABLES: dict[str, Callable[[Path], list[str]]] = {"decision": decision_table}


def render(results_dir: Path, name: str, table: str) -> str:
    """The lines of one block, ending with a newline."""
    if table in DIRECTORY_TABLES:  # tables over several results files: <!-- results:all:T -->
        if name != "all":
            raise ValueError(f"README block {name}:{table}: table {table!r} reads every results "
                             f"file; mark it <!-- results:all:{table} -->")
        return "\n".join(DIRECTORY_TABLES[table](Path(results_dir))) + "\n"
    if table not in TABLES:
        raise ValueError(f"unknown README table {table!r}; known: "
                         f"{sorted([*TABLES, *DIRECTORY_TABLES])}")
    path = Path(results_dir) / f"{name}.json"
    if not path.exists():
        raise ValueError(f"README block {name}:{table}: no results file {path}")
    doc = read_results(path)
    try:
        return "\n".join(TABLES[table](doc)) + "\n"
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} (README block {name}:{table})") from None
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable for README block {name}:{table} "
                         f"({type(err).__name__}: {err})") from None


def read_results(path: Path) -> dict:
    """A results file's JSON object; a damaged one is a ValueError naming the file."""
    record, why = read_record(path)
    if why is not None:
        raise ValueError(f"{path}: {why}")
    return record


def update(text: str, results_dir: Path) -> tuple[str, list[str]]:
    """``text`` with every marked block regenerated, and the ``name:table`` of those changed."""
    changed = []

    def replace(match: re.Match) -> str:
        head, name, table, body, end = match.groups()
        new = render(results_dir, name, table)
        if new != body:
            changed.append(f"{name}:{table}")
        return head + new + end

    return BLOCK.sub(replace, text), changed


CURVE = ("step", "fwd", "val_loss")  # what compare_summary.curves reads of a history


def _round(value, digits: int = 6):
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def slim(results: dict) -> dict:
    """A results file as kept under ``docs/results/``: the runs without their sample outputs
    (and a pretraining run without its generation scores, which the methods' summaries hold),
    their validation histories (which only the plots read) cut to the curve (step, forward
    passes, validation ELBO) at 6 significant digits. The statistics the tables print are kept
    exactly."""
    out = dict(results)
    dropped = ("examples", "loss_per_t_bin", "generation")
    if isinstance(out.get("runs"), list):  # (maskdiff image's "runs" is a count)
        out["runs"] = [{**{k: v for k, v in r.items() if k not in dropped},
                        **({"history": [{k: _round(v) for k, v in h.items() if k in CURVE}
                                        for h in r["history"]]} if r.get("history") else {})}
                       for r in out["runs"]]
    return out


def add(results_dir: Path, name: str, source: Path) -> Path:
    """Copy a job's results (``results.json`` / ``sweep.json``) to ``results_dir/NAME.json``."""
    source = Path(source)
    if not source.exists():
        raise ValueError(f"--add {name}={source}: no such file")
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"--add: the name must be letters, digits, '.', '_' or '-', got {name!r}")
    target = Path(results_dir) / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, jsonio.dumps(slim(read_results(source)),
                                         separators=(",", ":")) + "\n")
    return target


def blocks(text: str) -> list[tuple[str, str]]:
    """The ``(name, table)`` of every marked block of ``text``."""
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(text)]
