"""``maskdiff readme-tables``: regenerate (or check) the README's result tables from the
reference results in ``docs/results/`` (:mod:`maskdiff.experiments.readme_tables`)."""

from __future__ import annotations

import sys
from pathlib import Path

from maskdiff.fileio import atomic_write_text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "readme-tables", help="regenerate the README's result tables from docs/results/*.json",
        description="Every block between '<!-- results:NAME:TABLE -->' and '<!-- /results -->' "
                    "in the README is rewritten from docs/results/NAME.json. --check changes "
                    "nothing and exits 1 when a block differs from its JSON.")
    p.add_argument("--readme", default="README.md", help="the README (default: README.md)")
    p.add_argument("--results", default="docs/results",
                   help="the results folder (default: docs/results)")
    p.add_argument("--check", action="store_true", help="only check; exit 1 on a difference")
    p.add_argument("--add", action="append", default=[], metavar="NAME=PATH",
                   help="first copy a job's results.json / sweep.json to RESULTS/NAME.json "
                        "(without sample outputs); repeatable")
    p.set_defaults(func=run)


def run(args) -> int:
    from maskdiff.experiments.readme_tables import add, blocks, update

    for item in args.add:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--add expects NAME=PATH, got {item!r}")
        print(f"{add(Path(args.results), name, Path(path))}")
    readme = Path(args.readme)
    if not readme.exists():
        raise ValueError(f"--readme {readme}: no such file")
    text = readme.read_text()
    new, changed = update(text, Path(args.results))
    if args.check:
        if changed:
            print(f"{readme}: out of date with {args.results}: {', '.join(changed)} "
                  f"(run `maskdiff readme-tables`)", file=sys.stderr)
            return 1
        print(f"{readme}: {len(blocks(text))} result blocks agree with {args.results}")
        return 0
    atomic_write_text(readme, new)
    print(f"{readme}: {len(changed)} of {len(blocks(text))} result blocks rewritten")
    return 0
