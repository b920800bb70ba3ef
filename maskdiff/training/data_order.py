"""The global example order of a run: a fresh seeded permutation of the training set every
epoch (docs/architecture.md §3: the examples of step ``s`` depend on the seed and ``s`` only, so a
resumed or extended run sees what an uninterrupted one sees)."""

from __future__ import annotations

import torch

from maskdiff.core.seeding import STREAM_DATA_ORDER, generator_for


class DataOrder:
    """Global example order: a fresh seeded permutation of the training set every epoch."""

    def __init__(self, n_examples: int, seed: int) -> None:
        self.n, self.seed, self._cache = n_examples, seed, {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(
                self.n, generator=generator_for(self.seed, STREAM_DATA_ORDER, epoch)).tolist()}
        return self._cache[epoch]

    def global_batch(self, step: int, batch_size: int) -> list[int]:
        out = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            out.append(self._epoch(position // self.n)[position % self.n])
        return out
