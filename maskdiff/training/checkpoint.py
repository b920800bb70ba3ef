"""Checkpoints: safetensors weights + a ``weights_only``-loadable state file, written atomically.

Layout of a run directory::

    checkpoints/step-000120/model.safetensors   weights
    checkpoints/step-000120/state.pt            optimiser, step, sampler/control/proxy state ...
    checkpoints/step-000120/config.json         the resolved config that produced it
    checkpoints/LATEST                          the name of the newest complete checkpoint

A checkpoint is written into ``step-XXXXXX.tmp`` and renamed into place only when complete;
``LATEST`` is then replaced atomically. A failed write (a full disk) leaves the previous
checkpoint and ``LATEST`` untouched and removes the partial directory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "LATEST"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(root: str | Path, step: int, weights: dict[str, torch.Tensor],
                    state: dict[str, Any], config: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint for ``step`` under ``root`` atomically; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                  str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(root / LATEST, name + "\n")
    existing = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory; the state file is read with ``weights_only=True``."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise ValueError(f"{path} is not a checkpoint directory (no model.safetensors)")
    return Checkpoint(
        path=path,
        weights=load_file(str(path / "model.safetensors")),
        state=torch.load(path / "state.pt", weights_only=True),
        config=json.loads((path / "config.json").read_text()),
    )
