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
    "maskdiff.commands.lm_eval",
    "maskdiff.commands.theory",
    "maskdiff.commands.predict_window",
    "maskdiff.commands.fit_pots",
    "maskdiff.commands.compare",
    "maskdiff.commands.readme_tables",
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


def describe(err: BaseException) -> str:
    """One line for an expected failure, naming the file where the error carries one."""
    if isinstance(err, OSError) and err.filename is not None:
        target = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        return f"{target}: {err.strerror or err}"
    return str(err).strip() or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every expected failure (bad input: ``ValueError``; I/O: ``OSError``; a
    refused or diverged run: ``ExpectedError``; Ctrl-C) ends in one line on stderr and a
    non-zero exit: 2 for bad input, 1 for the others, 130 for an interruption."""
    from maskdiff.training.errors import ExpectedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"maskdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ExpectedError) as err:  # say what, without a traceback
        print(f"maskdiff {args.command}: error: {describe(err)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
