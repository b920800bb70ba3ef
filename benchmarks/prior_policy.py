"""How much of pass@1 needs no arithmetic? The operator prior against stored hit strings
(:mod:`maskdiff.experiments.prior_policy`; docs/method.md §11, "What pass@1 measures here").

The operator prior answers each test problem with the training split's most frequent answer
for its operation. Per source (a compare job's runs of one task, the preference benchmark's
``results.json``) and label: pass@1, the share of the prior's hits the models reproduce, the
problems they solve outside it, and how many collapsed onto it exactly.

    python benchmarks/prior_policy.py --compare "fine-tuning=runs/ceiling_search/full/runs/arithmetic" \\
        --dpo-gain "DPO=docs/results/dpo-gain.json" --out runs/prior_policy

Prints the table and writes ``OUT/results.json`` (the README's copy: docs/results/prior-policy.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskdiff import jsonio
from maskdiff.data.setup import load_task
from maskdiff.experiments import prior_policy as pp
from maskdiff.experiments.compare_presets import PRESETS
from maskdiff.fileio import atomic_write_text


def _sources(p: argparse.ArgumentParser, items: list[str], read) -> dict[str, dict]:
    out = {}
    for item in items:
        name, sep, path = item.rpartition("=")
        if not sep or not name or not Path(path).exists():
            p.error(f"expected NAME=PATH with an existing path, got {item!r}")
        try:
            out[name] = read(Path(path))
        except ValueError as err:
            p.error(str(err))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="full", help="the compare preset whose task was scored")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=TASK_RUNS",
                   help="a compare job's runs of one task (OUT/runs/arithmetic)")
    p.add_argument("--dpo-gain", action="append", default=[], metavar="NAME=RESULTS_JSON")
    p.add_argument("--out", type=Path, default=Path("runs/prior_policy"))
    args = p.parse_args(argv)
    models = {**_sources(p, args.compare, pp.compare_models),
              **_sources(p, args.dpo_gain, lambda path: pp.dpo_models(jsonio.load(path)))}
    if not models:
        p.error("give at least one --compare or --dpo-gain source")
    lengths = {len(h) for labels in models.values() for hits in labels.values() for h in hits}
    if len(lengths) != 1:
        p.error(f"the sources scored different numbers of test problems: {sorted(lengths)}")
    task = load_task(PRESETS[args.preset].base.data)
    n_test = lengths.pop()
    if n_test > len(task.test):
        p.error(f"{n_test} hits but the preset's task has {len(task.test)} test problems")
    prior = pp.prior_policy(task.train, list(task.test)[:n_test])
    doc = {"preset": args.preset,
           "prior": {"answers": prior["answers"], "pass_at_1": prior["pass_at_1"],
                     "hits": sum(prior["hits"]), "n_test": n_test, "n_train": len(task.train)},
           "sources": {name: pp.summarise(labels, prior["hits"])
                       for name, labels in models.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", jsonio.dumps(doc, indent=1) + "\n")
    print("\n".join(pp.prior_line(doc) + [""] + pp.table(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
