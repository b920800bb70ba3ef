"""The noise-ceiling search (docs/method.md §11, "The noise ceiling"): in which fine-tuning
regime does ``standard@4x`` — a perfect variance reducer's upper bound — move pass@1
significantly, and what share of that gain do the unbiased estimators get there?

Per regime (variations of ``maskdiff compare --preset full``: :data:`REGIMES` of
``maskdiff.experiments.ceiling_search``), standard and ``standard@4x`` on 10 paired seeds; then,
in the regime whose ceiling gain on pass@1 is significant with the smallest p, the unbiased
methods on 10 fresh seeds (an ordinary compare job: its report has the ceiling section with
each method's share of the ceiling's gain).

    python benchmarks/ceiling_search.py --out runs/ceiling_search

Resumable (finished runs are reused). Prints the search table and writes
``OUT/ceiling_search.json``, ``OUT/report.md`` and ``OUT/ceiling_search.png``; the chosen
regime's job is ``OUT/<regime>-confirm/`` (results.json, report.md).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.experiments.ceiling_search import (CONFIRM_METHODS, REGIMES, CeilingSearch, regime,
                                                 search_table, plot_search)
from maskdiff.experiments.compare_presets import PRESETS, SEEDS
from maskdiff.fileio import atomic_write_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/ceiling_search"))
    p.add_argument("--preset", default="full", help="the base compare preset (smoke: seconds)")
    p.add_argument("--regimes", default=",".join(r.name for r in REGIMES),
                   help="comma-separated regimes to search")
    p.add_argument("--seeds", type=int, default=10, help="paired seeds per regime")
    p.add_argument("--confirm-seeds", type=int, default=10,
                   help="fresh paired seeds of the chosen regime's methods (0: no confirmation)")
    p.add_argument("--methods", default=",".join(CONFIRM_METHODS),
                   help="the confirmation's methods")
    p.add_argument("--workers", type=int, default=min(4, torch.get_num_threads() or 1))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.seeds + args.confirm_seeds > len(SEEDS) or args.seeds < 2:
        p.error(f"--seeds (>= 2) and --confirm-seeds take at most {len(SEEDS)} seeds together")
    search = CeilingSearch(
        args.out, regimes=tuple(regime(n) for n in args.regimes.split(",")),
        base=PRESETS[args.preset], search_seeds=SEEDS[:args.seeds],
        confirm_seeds=SEEDS[args.seeds:args.seeds + args.confirm_seeds],
        confirm_methods=tuple(args.methods.split(",")), workers=args.workers, threads=1,
        progress=not args.quiet)
    doc = search.run(confirm=args.confirm_seeds >= 2)
    doc["machine"] = f"{platform.machine()} {platform.system()}, torch {torch.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ceiling_search.json", jsonio.dumps(doc, indent=1) + "\n")
    plot_search(args.out / "ceiling_search.png", doc)
    table = search_table(doc)
    verdict = (f"Chosen regime: `{doc['chosen']}`." if doc["chosen"] else
               "No regime's ceiling gain on pass@1 is significant: no share can be estimated.")
    atomic_write_text(args.out / "report.md", "\n".join(
        ["# The noise-ceiling search", "", *table, "", verdict, "",
         "![ceiling gains](ceiling_search.png)", ""]))
    print("\n".join(table) + "\n\n" + verdict)
    print(f"\n{args.out / 'ceiling_search.json'}  ({doc['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
