"""The failures a user is expected to meet (bad input, a damaged or busy run directory, a
diverged run): the CLI turns each into one line and a non-zero exit (docs/architecture.md)."""

from __future__ import annotations


class ExpectedError(Exception):
    """A failure with a message that says everything (file, field or value); no traceback."""


class TrainingError(ExpectedError, RuntimeError):
    """Training cannot go on (non-finite loss); the message names the last good checkpoint."""


class RunDirError(ExpectedError, RuntimeError):
    """A run directory is in use by another trainer, or holds another run."""


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM): raised in the main thread by the
    CLI's handler, so every ``finally`` and ``except KeyboardInterrupt`` clean-up of Ctrl-C
    runs, and the run stays resumable exactly as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


_PROGRESS: dict[str, str] = {}


def note_checkpoint(path) -> None:
    """Record the newest checkpoint this process wrote or resumed from (what the CLI's
    interruption line names); None forgets it."""
    if path is None:
        _PROGRESS.pop("checkpoint", None)
    else:
        _PROGRESS["checkpoint"] = str(path)


def last_checkpoint() -> str | None:
    return _PROGRESS.get("checkpoint")
