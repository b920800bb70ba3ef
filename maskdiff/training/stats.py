"""Per-step training statistics, shared by the native trainer and ``MaskedDiffusionTrainer``.

One optimiser step yields :class:`StepStats`: the per-example rates, weights, raw losses and
estimator values of the rank's micro-batches, plus masked cross-entropy and token counts.
:func:`finish_step` turns the local statistics into the global batch's (gathered over ranks with
tensor collectives) and folds them into the objective's adaptive state, the variance proxy
(docs/method.md §7) and the online P-POTS tracker (docs/method.md §4). :class:`StepWindow`
accumulates the steps between two log lines: the mean raw loss per bin of t
(``loss_per_t_bin``), the masked cross-entropy per token and the tokens per second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from maskdiff.core.control import VarianceProxy, t_bins
from maskdiff.core.objective import EstimatorOutput, Objective
from maskdiff.training import distributed

T_BINS = 10  # the bins of t of ``loss_per_t_bin``: bin j holds t in (j/10, (j+1)/10]

_PER_EXAMPLE = ("t", "w", "raw", "values")
_SUMMED = ("masked_ce_sum", "masked_count", "tokens", "examples")


@dataclass(frozen=True)
class StepStats:
    """One optimiser step's statistics (of one rank until :meth:`gathered`).

    Attributes:
        t, w, raw, values: (n,) float32 CPU tensors: rates, importance weights, raw losses
            (before ``w``) and the estimator's values, one per example.
        masked_ce_sum, masked_count: plain cross-entropy summed over masked tokens, and their
            number.
        tokens: tokens the model processed (real tokens × forward passes, × 2 under a block
            layout: the model reads ``[xt ; x0]``).
        examples: examples in the step (the per-example tensors hold one entry per rate
            draw: per (example, block) under a block layout with one rate per block).
        grad_proxy: (n,) the per-example gradient-norm proxy when the objective computes one
            (gradient-targeted online P-POTS), else None; local only (never gathered: the
            tracker all-reduces its own statistics).
    """

    t: torch.Tensor
    w: torch.Tensor
    raw: torch.Tensor
    values: torch.Tensor
    masked_ce_sum: float
    masked_count: float
    tokens: float
    examples: float = 0.0
    grad_proxy: torch.Tensor | None = None

    @classmethod
    def collect(cls, outputs: Sequence[EstimatorOutput], tokens: Sequence[int]) -> "StepStats":
        """The step's micro-batch outputs, in order; ``tokens[k]``: micro-batch k's real tokens."""
        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(o, name).detach().float().cpu() for o in outputs])

        proxy = (cat("grad_proxy") if outputs and all(getattr(o, "grad_proxy", None) is not None
                                                       for o in outputs) else None)
        return cls(t=cat("t"), w=cat("w"), raw=cat("raw_loss"), values=cat("values"),
                   masked_ce_sum=sum(o.masked_ce_sum for o in outputs),
                   masked_count=sum(o.masked_count for o in outputs),
                   tokens=sum(n * o.forward_passes * o.input_factor
                              for o, n in zip(outputs, tokens)),
                   examples=sum(len(o.t) // o.units for o in outputs), grad_proxy=proxy)

    @classmethod
    def concat(cls, parts: Sequence["StepStats"]) -> "StepStats":
        """The statistics of several micro-batches as one."""
        proxy = (torch.cat([p.grad_proxy for p in parts])
                 if parts and all(p.grad_proxy is not None for p in parts) else None)
        return cls(**{name: torch.cat([getattr(p, name) for p in parts]) for name in _PER_EXAMPLE},
                   **{name: sum(getattr(p, name) for p in parts) for name in _SUMMED},
                   grad_proxy=proxy)

    def __len__(self) -> int:
        return len(self.t)

    def finite(self) -> "StepStats":
        """Without the examples whose raw loss is not finite."""
        keep = torch.isfinite(self.raw)
        proxy = None if self.grad_proxy is None else self.grad_proxy[keep]
        return replace(self, **{name: getattr(self, name)[keep] for name in _PER_EXAMPLE},
                       grad_proxy=proxy)

    def gathered(self) -> "StepStats":
        """The global batch: per-example tensors concatenated in rank order, sums all-reduced."""
        sums = distributed.all_reduce_sum(torch.tensor(
            [float(getattr(self, name)) for name in _SUMMED], dtype=torch.float64))
        gathered = {name: distributed.gather_cat(getattr(self, name)) for name in _PER_EXAMPLE}
        return StepStats(**gathered, **{name: float(value) for name, value in zip(_SUMMED, sums)})


def finish_step(local: StepStats, *, step: int, objective: Objective, proxy: VarianceProxy,
                refitter=None) -> tuple[StepStats, dict | None]:
    """After optimiser step ``step`` (1-based): feed the online refitter (if any) the rank's own
    values (its tracker all-reduces itself), gather the global batch, and fold it into the
    objective's adaptive state and the variance proxy, identically on every rank.

    Returns the global statistics and the refitter's log record (None but at a refit step).
    """
    refit = None
    if refitter is not None:
        statistic = getattr(refitter, "statistic", "loss")
        tracked = local.raw if statistic == "loss" else local.grad_proxy
        if tracked is None:
            raise ValueError(f"the online refit tracks {statistic!r} but the objective "
                             f"returned no grad_proxy: build the estimator with "
                             f"grad_proxy={statistic!r}")
        refit = refitter.after_step(step, local.t, tracked, local.w)
    stats = local.gathered()
    objective.observe(stats.t, stats.w, stats.raw)
    proxy.update(stats.raw, stats.w)
    return stats, refit


class StepWindow:
    """The statistics of the steps between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.raw: list[torch.Tensor] = []
        self.bins: list[torch.Tensor] = []
        self.ce_sum = self.ce_count = self.tokens = 0.0
        self.start = time.perf_counter()

    def __len__(self) -> int:
        return len(self.raw)

    def state_dict(self) -> dict:
        """The steps since the last log line, for a checkpoint: a resumed run then logs the
        line an uninterrupted run logs (throughput, ``tokens_per_s``, restarts with the
        session)."""
        return {"raw": list(self.raw), "bins": list(self.bins), "ce_sum": self.ce_sum,
                "ce_count": self.ce_count}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.raw, self.bins = list(state["raw"]), list(state["bins"])
        self.ce_sum, self.ce_count = state["ce_sum"], state["ce_count"]

    def add(self, stats: StepStats) -> None:
        self.raw.append(stats.raw)
        self.bins.append(t_bins(stats.t, T_BINS))
        self.ce_sum += stats.masked_ce_sum
        self.ce_count += stats.masked_count
        self.tokens += stats.tokens

    def loss_per_t_bin(self) -> list[float | None]:
        """Mean raw loss of the examples in each bin of t (None for an empty bin)."""
        raw, bins = torch.cat(self.raw).double(), torch.cat(self.bins)
        sums = torch.zeros(T_BINS, dtype=torch.float64).index_add_(0, bins, raw)
        counts = torch.bincount(bins, minlength=T_BINS)
        return [float(s / c) if c else None for s, c in zip(sums, counts)]

    def masked_ce(self) -> float | None:
        """Masked cross-entropy per masked token (None when nothing was masked)."""
        return self.ce_sum / self.ce_count if self.ce_count else None

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)
