"""The failures a user is expected to meet (bad input, a damaged or busy run directory, a
diverged run): the CLI turns each into one line and a non-zero exit (docs/architecture.md)."""

from __future__ import annotations


class ExpectedError(Exception):
    """A failure with a message that says everything (file, field or value); no traceback."""


class TrainingError(ExpectedError, RuntimeError):
    """Training cannot go on (non-finite loss); the message names the last good checkpoint."""


class RunDirError(ExpectedError, RuntimeError):
    """A run directory is in use by another trainer, or holds another run."""
