"""The ``maskdiff`` command line: a thin shell over the library.

Each sub-command lives in its own module under :mod:`maskdiff.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
namespace and returning an exit code). This file only collects them; it holds no logic.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys

# Order is the order of `maskdiff --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "maskdiff.commands.train",
    "maskdiff.commands.generate",
    "maskdiff.commands.evaluate",
    "maskdiff.commands.lm_eval",
    "maskdiff.commands.dpo",
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
# Jobs whose finished parts are reused when the same command is run again.
RESUMABLE_JOBS = frozenset({"compare", "decompose", "image", "parity", "window-sweep"})


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


def interruption(command: str, err: KeyboardInterrupt) -> tuple[str, int]:
    """The line and exit status of a run stopped by Ctrl-C or a signal (128 + the signal)."""
    from maskdiff.training.errors import Stopped, last_checkpoint

    signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
    how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    line = f"maskdiff {command}: interrupted by {how}"
    checkpoint = last_checkpoint()
    if command in RESUMABLE_JOBS:
        line += "; rerun the same command to resume (finished runs are reused)"
    elif checkpoint is not None:
        line += f"; rerun the same command to resume from {checkpoint}"
    return line, 128 + signum


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (what schedulers and ``kill`` send), and SIGHUP (a closed terminal) unless it is
    ignored (``nohup``), raise :class:`Stopped` in the main thread, so they end like Ctrl-C:
    clean-up runs, workers stop, one line. A second signal during that clean-up kills at once.
    Outside the main thread nothing is installed."""
    from maskdiff.training.errors import Stopped

    state: dict = {}

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        state["signum"] = signum
        raise Stopped(signum)

    previous = {}
    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    try:
        for signum in wanted:
            if signum == signal.SIGTERM or signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        previous.clear()
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every expected failure (bad input: ``ValueError``; I/O: ``OSError``; a
    refused or diverged run: ``ExpectedError``; Ctrl-C, SIGTERM or SIGHUP) ends in one line on
    stderr and a non-zero exit: 2 for bad input, 1 for the others, 128 + the signal for an
    interruption (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    from maskdiff.training.errors import ExpectedError, Stopped, note_checkpoint

    note_checkpoint(None)
    parser = build_parser()
    args = parser.parse_args(argv)
    with stop_on_sigterm() as stopped:
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt as err:
            line, code = interruption(args.command, err)
        except (ValueError, OSError, ExpectedError) as err:  # say what, without a traceback
            if "signum" in stopped:  # e.g. a worker the same SIGTERM ended first
                line, code = interruption(args.command, Stopped(stopped["signum"]))
            else:
                print(f"maskdiff {args.command}: error: {describe(err)}", file=sys.stderr)
                return 2 if isinstance(err, ValueError) else 1
        except Exception:
            if "signum" not in stopped:
                raise
            line, code = interruption(args.command, Stopped(stopped["signum"]))
        print(line, file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
