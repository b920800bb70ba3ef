"""Checkpoints: safetensors weights + a ``weights_only``-loadable state file, written atomically,
validated on load.

Layout of a run directory::

    checkpoints/step-000120/model.safetensors   weights
    checkpoints/step-000120/state.pt            optimiser, step, sampler/control/proxy state ...
    checkpoints/step-000120/config.json         the resolved config that produced it
    checkpoints/LATEST                          the name of the newest complete checkpoint

A checkpoint is written into ``step-XXXXXX.tmp`` and renamed into place only when complete;
``LATEST`` is then replaced atomically. A failed write (a full disk) leaves the previous
checkpoint and ``LATEST`` untouched and removes the partial directory. Weights that are not
finite are never written (:class:`CheckpointError`).

Reading (:func:`find_checkpoint`) trusts nothing: ``LATEST`` must name a ``step-XXXXXX``
directory inside the same root, and every candidate is loaded in full (a truncated or corrupt
file fails); a damaged one is skipped, with its reason, in favour of the newest valid one.
Cleanup after a write goes by step, not by name order alone: checkpoints of a later step than
the one just written (an abandoned future) are removed, and the newest ``keep`` are kept.
See docs/architecture.md ("Reliability").
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text, naming
from maskdiff.training.errors import ExpectedError

LATEST = "LATEST"
_NAME = re.compile(r"^step-(\d{6,})$")
FILES = ("model.safetensors", "state.pt", "config.json")


class CheckpointError(ExpectedError, RuntimeError):
    """A checkpoint cannot be written or none can be read; the message names the files."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]


@dataclass(frozen=True)
class Found:
    """The newest valid checkpoint under a root (or None) and the newer ones skipped, with why."""

    checkpoint: Checkpoint | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def note(self) -> str | None:
        """One line saying which checkpoints were skipped and which one is used, or None."""
        if not self.skipped:
            return None
        why = "; ".join(f"{p.name}: {reason}" for p, reason in self.skipped)
        used = self.checkpoint.path if self.checkpoint else "none"
        return f"skipped damaged checkpoint(s) ({why}); using {used}"


def step_of(path: Path) -> int | None:
    """The step of a ``step-XXXXXX`` directory name, else None."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def step_dirs(root: Path) -> list[Path]:
    """The checkpoint directories under ``root``, newest step first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(dirs, key=step_of, reverse=True)


def save_checkpoint(root: str | Path, step: int, weights: dict[str, torch.Tensor],
                    state: dict[str, Any], config: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint for ``step`` under ``root`` atomically; keep the newest ``keep``."""
    root = Path(root)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write checkpoint step {step} under {root}: "
                              f"non-finite weights in {bad[:4]}")
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with naming(final):  # a full disk's error names the checkpoint
            tmp.mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                      str(tmp / "model.safetensors"))
            torch.save(state, tmp / "state.pt")
            (tmp / "config.json").write_text(jsonio.dumps(config, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except (OSError, KeyboardInterrupt):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException as err:  # torch's writer reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, Exception):
            raise
        raise CheckpointError(f"writing checkpoint {final} failed (full or unwritable disk?): "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
                              ) from err
    atomic_write_text(root / LATEST, name + "\n")
    older = [p for p in step_dirs(root) if step_of(p) < step]
    stale = [p for p in step_dirs(root) if step_of(p) > step]
    for old in stale + (older[max(keep - 1, 0):] if keep > 0 else []):
        shutil.rmtree(old, ignore_errors=True)
    return final


def _pointed(root: Path) -> tuple[Path | None, str | None]:
    """The directory ``LATEST`` names, or None and why it cannot be used."""
    pointer = root / LATEST
    if not pointer.exists():
        return None, None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{pointer} is unreadable ({err})"
    if not _NAME.match(name):
        return None, f"{pointer} names {name!r}, not a step-XXXXXX directory of {root}"
    return root / name, None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under ``root`` whose files are all present, or None (cheap: the
    files are not read; :func:`find_checkpoint` reads and validates them)."""
    root = Path(root)
    pointed, _ = _pointed(root)
    complete = lambda p: all((p / f).is_file() for f in FILES)  # noqa: E731
    if pointed is not None and complete(pointed):
        return pointed
    return next((p for p in step_dirs(root) if complete(p)), None)


def find_checkpoint(root: str | Path,
                    validate: Callable[[Checkpoint], None] | None = None) -> Found:
    """Load the newest valid checkpoint under ``root``: the one ``LATEST`` names, else the
    newest step directory that loads in full (and passes ``validate``, which raises a
    :class:`CheckpointError` for one that loads but is inconsistent, e.g. weights that do not
    fit its own ``config.json``); every one skipped is listed with its reason."""
    root = Path(root)
    pointed, problem = _pointed(root)
    skipped: list[tuple[Path, str]] = []
    if problem:
        skipped.append((root / LATEST, problem))
    candidates = step_dirs(root)
    if pointed is not None:
        candidates = [pointed] + [p for p in candidates if p != pointed]
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
            if validate is not None:
                validate(checkpoint)
            return Found(checkpoint, skipped)
        except CheckpointError as err:
            skipped.append((path, str(err)))
    return Found(None, skipped)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory (the state file with ``weights_only=True``); any missing,
    truncated or corrupt file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    current = path
    try:
        current = path / "model.safetensors"
        weights = load_file(str(current))
        current = path / "state.pt"
        # On the CPU: a GPU run's optimizer state then loads on a CPU-only machine too
        # (load_state_dict moves it to the parameters' device; device may change on resume).
        state = torch.load(current, weights_only=True, map_location="cpu")
        current = path / "config.json"
        config = json.loads(current.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{current} is missing") from None
    except Exception as err:  # noqa: BLE001  (every reader's own error type: truncated, corrupt)
        raise CheckpointError(f"{current} is damaged ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})") from err
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: state.pt or config.json does not hold a mapping")
    return Checkpoint(path=path, weights=weights, state=state, config=config)
