"""The ``maskdiff`` command line: a thin shell over the library.

Each sub-command lives in its own module under :mod:`maskdiff.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
namespace and returning an exit code). This file only collects them; it holds no logic.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order of `maskdiff --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "maskdiff.commands.train",
    "maskdiff.commands.generate",
    "maskdiff.commands.evaluate",
    "maskdiff.commands.theory",
    "maskdiff.commands.predict_window",
    "maskdiff.commands.fit_pots",
    "maskdiff.commands.compare",
    "maskdiff.commands.decompose",
    "maskdiff.commands.image",
    "maskdiff.commands.parity",
    "maskdiff.commands.window_sweep",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdiff",
        description="Stable training of masked diffusion language models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input: say what, without a traceback
        print(f"maskdiff {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
