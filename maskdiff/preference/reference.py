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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.core.batch import Batch
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


def reference_elbos(model, pairs: Sequence[PreferencePair], collate: Collator,
                    estimator: PreferenceEstimator, *, budget: int, seed: int,
                    mask_token_id: int, eps: float, batch_size: int = 16,
                    device="cpu") -> torch.Tensor:
    """``B̂_ref`` of every pair's chosen and rejected response under the reference's draws:
    float64 (N, 2), column 0 chosen, column 1 rejected."""
    return reference_table(model, len(pairs), lambda indices: pair_batches(pairs, indices, collate),
                           estimator, budget=budget, seed=seed, mask_token_id=mask_token_id,
                           eps=eps, batch_size=batch_size, device=device)


@torch.no_grad()
def reference_table(model, n_pairs: int,
                    batches: Callable[[list[int]], tuple[Batch, Batch]],
                    estimator: PreferenceEstimator, *, budget: int, seed: int,
                    mask_token_id: int, eps: float, batch_size: int = 16,
                    device="cpu") -> torch.Tensor:
    """:func:`reference_elbos` for pairs given as ``batches(indices) -> (chosen, rejected)``
    (the Hugging Face trainer's tokenised rows): float64 (n_pairs, 2)."""
    was_training = model.training
    model.eval()
    out = [torch.empty(0, 2, dtype=torch.float64)]
    try:
        for start in range(0, n_pairs, batch_size):
            indices = list(range(start, min(start + batch_size, n_pairs)))
            values = [estimator.log_likelihood(
                model, batch.to(device), seed=seed, budget=budget, mask_token_id=mask_token_id,
                role="reference", eps=eps).double().cpu() for batch in batches(indices)]
            out.append(torch.stack(values, dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def load_or_compute(out_dir: str | Path, key: dict, compute,
                    name: str = REFERENCE_FILE) -> tuple[torch.Tensor, bool]:
    """The table of ``out_dir/name`` when its key is ``key``, else ``compute()`` written
    there; and whether it was computed now."""
    path = Path(out_dir) / name
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
