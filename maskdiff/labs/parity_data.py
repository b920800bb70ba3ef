"""k-parity data (docs/method.md §9): ``x ~ U{-1,+1}^n``, a secret ``S ⊂ [n]`` with ``|S| = k``,
``y = Π_{j∈S} x_j``; token ids -1 -> 0, +1 -> 1, MASK -> 2. Validation inputs are disjoint from
the training inputs. Every draw takes an explicit generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskdiff.core.checks import int_at_least

MINUS_ID, PLUS_ID, MASK_ID = 0, 1, 2
VOCAB_SIZE = 3




def parity_labels(bits: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
    """``y = Π_{j∈S} x_j`` for ±1 ``bits`` (m, n) and secret indices ``secret`` (k,): (m,) ±1."""
    if bits.dim() != 2:
        raise ValueError(f"bits must be (m, n), got shape {tuple(bits.shape)}")
    return bits[:, secret].prod(dim=1)


@dataclass(frozen=True)
class ParityData:
    """A k-parity instance: the secret and the token sequences of both splits.

    Attributes:
        n, k: input bits and secret size.
        secret: (k,) long, sorted indices of the secret set S.
        train, val: (m, n + 1) long token ids (0 for -1, 1 for +1); the last column is the label.
    """

    n: int
    k: int
    secret: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor

    @property
    def label_position(self) -> int:
        return self.n


def _draw_unique(n: int, count: int, taken: set[int], generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct ±1 vectors of length ``n`` whose codes are not in ``taken`` (updated)."""
    weights = 2 ** torch.arange(n, dtype=torch.long)
    rows: list[torch.Tensor] = []
    have = 0
    while have < count:
        bits = torch.randint(0, 2, (2 * (count - have) + 16, n), generator=generator)
        codes = (bits * weights).sum(dim=1).tolist()
        keep = []
        for row, code in enumerate(codes):
            if code not in taken:
                taken.add(code)
                keep.append(row)
                if have + len(keep) == count:
                    break
        rows.append(bits[keep])
        have += len(keep)
    return torch.cat(rows) * 2 - 1 if rows else torch.empty(0, n, dtype=torch.long)


def make_parity_data(*, n: int, k: int, n_train: int, n_val: int,
                     generator: torch.Generator) -> ParityData:
    """A random secret of size ``k`` among ``n`` bits, ``n_train`` distinct training inputs and
    ``n_val`` distinct validation inputs none of which is a training input (docs/method.md §9)."""
    for name, value in (("n", n), ("k", k), ("n_train", n_train), ("n_val", n_val)):
        int_at_least(value, name)
    if k > n:
        raise ValueError(f"k must be <= n, got k={k}, n={n}")
    if n > 62:
        raise ValueError(f"n must be <= 62 (inputs are coded as int64), got n={n}")
    if n_train + n_val > 2 ** n:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the 2^n = {2 ** n} inputs")
    secret = torch.sort(torch.randperm(n, generator=generator)[:k]).values
    taken: set[int] = set()
    splits = []
    for count in (n_train, n_val):
        bits = _draw_unique(n, count, taken, generator)
        labels = parity_labels(bits, secret)
        splits.append(((torch.cat([bits, labels[:, None]], dim=1) + 1) // 2).long())
    return ParityData(n=n, k=k, secret=secret, train=splits[0], val=splits[1])
