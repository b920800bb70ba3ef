"""The Hugging Face trainer's checkpoints: complete or not, and which one a resume uses.

``MaskedDiffusionTrainer`` writes ``checkpoint-N/maskdiff_state.pt`` (atomically) *before*
``transformers`` writes the folder's model, optimiser and, last, ``trainer_state.json``, and
only then lets ``transformers`` delete older checkpoints. A checkpoint is complete when both
state files are there and readable and its weight / optimiser files are whole; a kill at any
moment therefore leaves at least one complete checkpoint (with ``save_total_limit=1`` too), and
``resume_from_checkpoint=True`` takes the newest complete one, saying which newer ones it
skipped and why. Needs no ``transformers``.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import torch

from maskdiff.fileio import clean_stale_temps, temp_name
from maskdiff.hf.adapter import STATE_FILE

TRAINER_STATE = "trainer_state.json"  # transformers' last write into a checkpoint folder
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def begin_checkpoint(folder: str | os.PathLike, state: dict) -> None:
    """Open ``folder`` for a new checkpoint: mark it incomplete (a stale ``trainer_state.json``
    of an earlier write goes first), then write ``maskdiff_state.pt`` through a temporary
    file, so the folder is never taken for complete before ``transformers`` has finished it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAINER_STATE).unlink(missing_ok=True)
    path = folder / STATE_FILE
    tmp = temp_name(path)  # unique per writer; a killed writer's is cleaned by fileio
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    clean_stale_temps(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be resumed from, in words (None: it is a complete checkpoint)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such checkpoint directory"
    for name in (STATE_FILE, TRAINER_STATE):
        if not (folder / name).is_file():
            return f"it was interrupted while being written (no {name})"
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE} is damaged ({_first_line(err)})"
    try:
        torch.load(folder / STATE_FILE, weights_only=True)
    except Exception as err:  # torn: OSError, RuntimeError or an unpickling error
        return f"{STATE_FILE} is damaged, a torn write? ({_first_line(err)})"
    for path in sorted(folder.iterdir()):
        reason = _damaged(path)
        if reason is not None:
            return f"{path.name} is damaged, a torn write? ({reason})"
    return None


def _damaged(path: Path) -> str | None:
    """A weight or optimiser file whose index cannot be read (cheap: no tensor is loaded)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):  # torch.save's format: the index sits at the end
                pass
    except Exception as err:
        return _first_line(err)
    return None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders under ``output_dir``, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)


def newest_complete(output_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """The newest complete checkpoint under ``output_dir`` and a note per newer one skipped;
    none: a ``ValueError`` naming each folder and why."""
    skipped = []
    for folder in checkpoints(output_dir):
        reason = problem(folder)
        if reason is None:
            return folder, skipped
        skipped.append(f"{folder.name}: {reason}")
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise ValueError(f"no complete checkpoint to resume from under {output_dir}{detail}")


def load_state(folder: str | os.PathLike) -> dict:
    """``maskdiff_state.pt`` of ``folder``, or a one-line ``ValueError`` saying what is wrong."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {STATE_FILE}: its writing was interrupted (or a plain "
                         f"transformers.Trainer wrote it), so the sampler, control variate and "
                         f"tracker cannot be restored; resume_from_checkpoint=True resumes from "
                         f"the newest complete checkpoint")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is damaged, a torn write? ({_first_line(err)}); "
                         f"resume_from_checkpoint=True resumes from the newest complete "
                         f"checkpoint") from err
