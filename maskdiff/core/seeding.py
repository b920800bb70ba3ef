"""Per-example, per-step randomness (docs/architecture.md §3 "Randomness").

Library code never touches the global RNG. The rate and the masks of example ``i`` at step ``s``
come from generators seeded by ``(seed, stream, i, s)``, so what an example sees does not depend
on the batch size, gradient accumulation, the number of data-loader workers or of ranks, and a
resumed run draws exactly what an uninterrupted one would.

Streams keep independent draws apart: the rate of an example never shifts because its mask grew
longer. The batch stream (seeded by ``(seed, step)`` only) is shared by every rank; it is what
batch-level layouts such as StraTS's stratum assignment use, so all ranks agree on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1

# Seed streams: the second part of every ``derive_seed``/``generator_for`` key, so independent
# draws never share a generator. This is their one definition; every value is part of every
# run's draws: never change one. Streams under different root seeds (the groups below) may
# share a value.
# The estimator's draws, keyed further by (example index, step) or (step):
STREAM_RATE = 1  # each example's rate
STREAM_MASK = 2  # each example's masks (one generator per uniform set)
STREAM_BATCH = 3  # batch-level layouts shared by all ranks (StraTS's strata)
# The trainer:
STREAM_DATA_ORDER = 4  # the per-epoch permutation of the training set
# Diagnostics (maskdiff.diagnostics.estimators):
STREAM_BATCH_PICK = 11  # which examples form a repeated batch
STREAM_GRAD_PICK = 12  # which example a per-example gradient draw uses
STREAM_WARMUP = 13  # the control variate's warm-up batches
# The k-parity laboratory (maskdiff.labs.parity):
STREAM_PARITY_DATA = 11  # the secret and the splits
STREAM_PARITY_INIT = 12  # the model's initialisation
STREAM_PARITY_TRAIN = 13  # batch order and masks
# The image experiment (maskdiff.experiments.image, image_eval):
STREAM_CLASSIFIER = 7  # the digit classifier's initialisation and batch order
STREAM_IMAGE_SAMPLING = 11  # the generation noise
# Preference optimisation (maskdiff.preference):
STREAM_PREFERENCE_REFERENCE = 21  # the reference model's own draws under an unshared estimator
# Evaluation (maskdiff.training.elbo_schemes):
STREAM_ELBO_DENSITY = 22  # the nested draws that fit a fitted ELBO scheme's importance density
# The generation judge (maskdiff.training.judge), keyed further by the example index:
STREAM_JUDGE_SAMPLING = 31  # the sampled tokens' Gumbel noise
STREAM_JUDGE_PROBE = 32  # which tokens the partial-mask probe masks


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integer parts; different tuples give unrelated seeds."""
    state = 0x2545F4914F6CDD1D
    for part in parts:
        if part < 0:
            raise ValueError(f"seed parts must be non-negative integers, got {part}")
        state = _splitmix64(state ^ _splitmix64(int(part) & _MASK64))
    return state >> 1


def generator_for(*parts: int) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class BatchRandomness:
    """The random draws of one (local part of a) batch at one optimisation step.

    ``example_indices`` are the examples' global data indices (what seeds their draws);
    ``positions`` their positions in the *global* batch of size ``global_batch_size`` (what
    batch-level layouts such as stratification use). On one rank with no accumulation,
    positions are ``0..B-1``.
    """

    seed: int
    step: int
    example_indices: tuple[int, ...]
    positions: tuple[int, ...]
    global_batch_size: int

    @classmethod
    def for_batch(
        cls,
        seed: int,
        step: int,
        example_indices: Sequence[int],
        positions: Sequence[int] | None = None,
        global_batch_size: int | None = None,
    ) -> "BatchRandomness":
        indices = tuple(int(i) for i in example_indices)
        pos = tuple(range(len(indices))) if positions is None else tuple(int(p) for p in positions)
        total = len(indices) if global_batch_size is None else int(global_batch_size)
        if len(pos) != len(indices):
            raise ValueError(
                f"positions has {len(pos)} entries but example_indices has {len(indices)}"
            )
        if pos and (min(pos) < 0 or max(pos) >= total):
            raise ValueError(f"positions must lie in [0, global_batch_size={total}), got {pos}")
        return cls(seed, step, indices, pos, total)

    def __len__(self) -> int:
        return len(self.example_indices)

    def batch_generator(self) -> torch.Generator:
        """Shared by all ranks: seeded by (seed, step) only."""
        return generator_for(self.seed, STREAM_BATCH, self.step)

    def rate_uniforms(self) -> torch.Tensor:
        """One U[0,1) per example, float64, shape (n,)."""
        return torch.stack(
            [
                torch.rand((), generator=generator_for(self.seed, STREAM_RATE, i, self.step),
                           dtype=torch.float64)
                for i in self.example_indices
            ]
        ) if self.example_indices else torch.empty(0, dtype=torch.float64)

    def block_rate_uniforms(self, n_blocks: int) -> torch.Tensor:
        """One U[0,1) per (example, block), float64, shape (n, n_blocks) (docs/method.md §12).

        Block 0 draws what :meth:`rate_uniforms` draws, so a single block (``b >= L``) gives the
        plain model's rates; block ``k > 0`` is keyed ``(seed, rate stream, example, step, k)``,
        so an example's blocks do not depend on the batch, the world size or a resume.
        """
        first = self.rate_uniforms()
        if n_blocks == 1:
            return first[:, None]
        rest = [[torch.rand((), generator=generator_for(self.seed, STREAM_RATE, i, self.step, k),
                            dtype=torch.float64) for k in range(1, n_blocks)]
                for i in self.example_indices]
        if not rest:
            return torch.empty(0, n_blocks, dtype=torch.float64)
        return torch.cat([first[:, None], torch.tensor(rest, dtype=torch.float64)], dim=1)

    def mask_uniforms(self, n_sets: int, length: int) -> torch.Tensor:
        """``n_sets`` independent rows of U[0,1) per example: shape (n_sets, n, length).

        Each set has its own generator, and a row's first ``k`` values do not depend on
        ``length``, so padding a batch to a different length leaves the real tokens' draws as
        they were.
        """
        out = torch.empty(n_sets, len(self.example_indices), length, dtype=torch.float32)
        for row, i in enumerate(self.example_indices):
            for s in range(n_sets):
                out[s, row] = torch.rand(
                    length, generator=generator_for(self.seed, STREAM_MASK, i, self.step, s)
                )
        return out
