"""The reference model's ELBOs: computed once under the reference's seeds and reused every
epoch (docs/method.md §13).

Draws are keyed by (seed, example index, draw) only, so the value a frozen reference model
would give a response at any step is the value computed here once: precomputing changes the
compute, not the loss. The table lives in the output directory as ``reference_elbos.json``,
keyed by what produced it (the reference weights' digest, the pairs file's digest, the estimator,
budget, seed and eps); a table with another key is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.data.collate import Collator
from maskdiff.fileio import atomic_write_text
from maskdiff.preference.elbo import PreferenceEstimator
from maskdiff.preference.pairs import PreferencePair, pair_batches

REFERENCE_FILE = "reference_elbos.json"


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (CPU copies)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def reference_elbos(model, pairs: Sequence[PreferencePair], collate: Collator,
                    estimator: PreferenceEstimator, *, budget: int, seed: int,
                    mask_token_id: int, eps: float, batch_size: int = 16,
                    device="cpu") -> torch.Tensor:
    """``B̂_ref`` of every pair's chosen and rejected response under the reference's draws:
    float64 (N, 2), column 0 chosen, column 1 rejected."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(pairs), batch_size):
            indices = list(range(start, min(start + batch_size, len(pairs))))
            chosen, rejected = pair_batches(pairs, indices, collate)
            values = [estimator.log_likelihood(
                model, batch.to(device), seed=seed, budget=budget, mask_token_id=mask_token_id,
                role="reference", eps=eps).double().cpu() for batch in (chosen, rejected)]
            out.append(torch.stack(values, dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def load_or_compute(out_dir: str | Path, key: dict, compute) -> tuple[torch.Tensor, bool]:
    """The table of ``out_dir/reference_elbos.json`` when its key is ``key``, else ``compute()``
    written there; and whether it was computed now."""
    path = Path(out_dir) / REFERENCE_FILE
    if path.is_file():
        try:
            saved = jsonio.load(path)
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            return torch.tensor(saved["elbos"], dtype=torch.float64), False
    table = compute()
    atomic_write_text(path, jsonio.dumps({"key": key, "elbos": table.tolist()}) + "\n")
    return table, True
