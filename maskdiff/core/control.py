"""The bin-wise EMA control variate (docs/method.md §6) and the running variance proxy (docs/method.md §7).

Both keep their state as float64 tensors in a ``state_dict()`` (loadable with
``torch.load(weights_only=True)``). Both states are sums or averages that a distributed trainer
can make identical on every rank: :class:`VarianceProxy` by all-reducing its sums, :class:`BinEMA`
by updating from the values of the whole global batch (gathered) on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def t_bins(t: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index of each rate among ``n_bins`` equal bins of (0, 1]: ``j`` such that
    ``t in (j/m, (j+1)/m]``, clamped to [0, m); a long CPU tensor.

    The one binning of t: the control variate's bins and the trainers' ``loss_per_t_bin``.
    """
    return (torch.ceil(t.detach().double().cpu() * n_bins) - 1).long().clamp(0, n_bins - 1)


class BinEMA:
    """Bin-wise EMA control variate of variance paper A.4.1.

    ``m`` equal bins of t, bin ``j`` (0-based) holding ``t in (j/m, (j+1)/m]``. Per bin: the EMA
    statistics ``mu_L, mu_H, M_LH, M_HH`` and the baseline ``b`` (all start at 0). For a sample
    with loss ``l`` in bin ``j``:

    - coefficient ``c_j = (M_LH - mu_L·mu_H) / (M_HH - mu_H² + damping)``;
    - adjusted loss ``l - c_j·b_j`` with ``b_j`` a constant (detached).

    :meth:`adjust` computes the adjusted losses of a batch from the statistics as they stand
    before the batch. :meth:`update` then processes the batch's samples in order; for each:
    ``mu_L <- (1-η)mu_L + η·l``, ``mu_H <- (1-η)mu_H + η·b_j``, ``M_LH <- (1-η)M_LH + η·l·b_j``,
    ``M_HH <- (1-η)M_HH + η·b_j²``, and finally ``b_j <- (1-η)b_j + η·l``.

    docs/method.md §6 [fix]: ``b_j`` is detached, so the *gradient* of the adjusted loss equals the
    gradient of ``l``: the method changes the reported loss value, not the parameter update.
    It is implemented as specified; the gradient-variance diagnostic shows what it does.
    """

    def __init__(self, n_bins: int = 10, rate: float = 0.01, damping: float = 1e-8) -> None:
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got n_bins={n_bins!r}")
        if not (0.0 < rate <= 1.0):
            raise ValueError(f"rate must lie in (0, 1], got rate={rate}")
        if not damping > 0.0:
            raise ValueError(f"damping must be positive, got damping={damping}")
        self.n_bins, self.rate, self.damping = n_bins, float(rate), float(damping)
        # Rows: mu_L, mu_H, M_LH, M_HH, baseline.
        self.stats = torch.zeros(5, n_bins, dtype=torch.float64)

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        """Bin index of each rate: ``j`` such that ``t in (j/m, (j+1)/m]``, clamped to [0, m)."""
        return t_bins(t, self.n_bins)

    def coefficients(self) -> torch.Tensor:
        mu_l, mu_h, m_lh, m_hh, _ = self.stats
        return (m_lh - mu_l * mu_h) / (m_hh - mu_h * mu_h + self.damping)

    def adjust(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``l - c_j·b_j`` for each sample; keeps the gradient of ``values``."""
        bins = self.bins(t)
        offset = (self.coefficients() * self.stats[4])[bins]
        return values - offset.to(device=values.device, dtype=values.dtype)

    def update(self, values: torch.Tensor, t: torch.Tensor) -> None:
        """Fold a batch's (detached) losses into the statistics, sample by sample."""
        eta = self.rate
        losses = values.detach().double().cpu().tolist()
        mu_l, mu_h, m_lh, m_hh, base = (row for row in self.stats)
        for j, loss in zip(self.bins(t).tolist(), losses):
            b = float(base[j])
            mu_l[j] = (1 - eta) * mu_l[j] + eta * loss
            mu_h[j] = (1 - eta) * mu_h[j] + eta * b
            m_lh[j] = (1 - eta) * m_lh[j] + eta * loss * b
            m_hh[j] = (1 - eta) * m_hh[j] + eta * b * b
            base[j] = (1 - eta) * b + eta * loss

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        stats = torch.as_tensor(state["stats"], dtype=torch.float64)
        if tuple(stats.shape) != tuple(self.stats.shape):
            raise ValueError(f"BinEMA state has shape {tuple(stats.shape)}, expected {tuple(self.stats.shape)}")
        self.stats = stats.clone()

    def config(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "rate": self.rate, "damping": self.damping}

    def __repr__(self) -> str:
        return f"BinEMA(n_bins={self.n_bins}, rate={self.rate})"


CONTROLS: dict[str, type] = {"ema": BinEMA}


def build_control(name: str, **kwargs: Any) -> BinEMA:
    """Build a registered control variate by name (``"ema"``)."""
    if name not in CONTROLS:
        raise ValueError(f"unknown control name={name!r}; registered: {sorted(CONTROLS)}")
    return CONTROLS[name](**kwargs)


class VarianceProxy:
    """The training-variance proxy of variance paper A.7.2 (docs/method.md §7).

    Running sums over every per-example loss ``l`` of a run with importance weight ``w``:
    ``S1 = Σ w·l``, ``S2 = Σ w·l²``, ``S12 = Σ (w·l)²`` and the count ``n``. Then
    ``m2 = S2/n`` is unbiased for the target's ``E[l²]`` and ``mu² = (S1² - S12)/(n(n-1))``
    (the mean of ``y_i·y_j`` over pairs ``i != j``, ``y = w·l``) is unbiased for ``E[w·l]²``,
    so ``m2 - mu²`` is an unbiased estimate of the loss variance under the target rate
    distribution. With ``w = 1`` it is the ordinary unbiased sample variance.
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # S1, S2, S12, n

    def update(self, losses: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        l = losses.detach().double().cpu().flatten()
        w = torch.ones_like(l) if weights is None else weights.detach().double().cpu().flatten()
        if w.shape != l.shape:
            raise ValueError(f"weights has shape {tuple(w.shape)}, losses has {tuple(l.shape)}")
        y = w * l
        self.sums += torch.stack([y.sum(), (w * l * l).sum(), (y * y).sum(),
                                  torch.tensor(float(l.numel()), dtype=torch.float64)])

    @property
    def count(self) -> int:
        return int(self.sums[3])

    def variance(self) -> float:
        """The unbiased variance estimate; NaN with fewer than two samples."""
        s1, s2, s12, n = (float(v) for v in self.sums)
        if n < 2:
            return float("nan")
        return s2 / n - (s1 * s1 - s12) / (n * (n - 1))

    def reduced(self, group=None) -> "VarianceProxy":
        """A copy holding the sums over all ranks (the copy itself without a process group).

        Each rank keeps its own running sums; reduce a copy when reporting, so repeated reports
        never count a sample twice.
        """
        import torch.distributed as dist

        total = VarianceProxy()
        total.sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total.sums, group=group)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = torch.as_tensor(state["sums"], dtype=torch.float64).clone()
