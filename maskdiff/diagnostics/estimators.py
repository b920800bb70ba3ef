"""The diagnostics suite of one training estimator on a model (docs/method.md §2; variance paper eq. 2).

:func:`run_diagnostics` runs every measurement of :mod:`maskdiff.diagnostics.measure` for one
(model, examples, estimator) triple with the sizes of a :class:`DiagnosticsDesign` and returns
an :class:`EstimatorDiagnostics` record (its ``to_dict`` is the JSON a report writes);
:func:`cost_aware` puts configurations of different cost on an equal-compute footing (MIRROR
pays 2 forward passes per example).

Every random draw derives from the design's seed (:mod:`maskdiff.core.seeding`); with the same
seed, different estimators see the same examples and uniforms (common random numbers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any


from maskdiff.jsonio import finite_or_none
from maskdiff.core.checks import int_at_least
from maskdiff.core.batch import Batch
from maskdiff.core.objective import Estimator
from maskdiff.diagnostics.curves import ConditionalCurves
from maskdiff.diagnostics.gradient import GradientVariance
from maskdiff.diagnostics.measure import (
    decompose_estimator, estimator_batch_variance, estimator_curves, estimator_gradient_variance,
    warm_up_control,
)
from maskdiff.diagnostics.variance import BatchVariance, Decomposition

__all__ = [
    "DiagnosticsDesign", "EstimatorDiagnostics", "cost_aware", "run_diagnostics", "with_extra",
]


def cost_aware(variance: float, forward_passes: int) -> float:
    """Variance × forward passes per example: the variance at equal compute (docs/method.md §2).

    An estimator that costs k passes per example fits n/k examples in the budget of n single-pass
    ones, so its mini-batch variance at equal compute is k·Var/n; comparing ``k·Var`` across
    configurations compares them at equal compute.
    """
    passes = int_at_least(forward_passes, "forward_passes")
    return float(variance) * passes


@dataclass(frozen=True, kw_only=True)
class DiagnosticsDesign:
    """Sizes of every measurement of :func:`run_diagnostics` (a = the number of examples given).

    ``n_rates``/``n_masks``: b and c of the nested design; ``batch_size``/``n_batches``: the
    repeated mini-batches; ``grad_draws``/``grad_batch_draws``: per-example and per-batch
    gradient draws (0 skips); ``curve_rates``: grid points of g(t), v(t) (0 skips);
    ``control_warmup``: samples fed to a control variate first; ``parameters``: the gradient's
    parameter subset (None: all); ``n_boot``: bootstrap replicates; ``seed``: the root seed.
    """

    n_rates: int = 8
    n_masks: int = 8
    batch_size: int = 16
    n_batches: int = 100
    grad_draws: int = 64
    grad_batch_draws: int = 32
    curve_rates: int = 16
    control_warmup: int = 2048
    parameters: tuple[str, ...] | None = None
    n_boot: int = 1000
    eps: float = 1e-3
    seed: int = 0
    forward_batch: int = 256

    def __post_init__(self) -> None:
        for name, minimum in (("n_rates", 2), ("n_masks", 2), ("batch_size", 1),
                              ("forward_batch", 1)):
            int_at_least(getattr(self, name), f"design.{name}", minimum=minimum)
        int_at_least(self.n_batches, "design.n_batches", minimum=2)
        for name in ("grad_draws", "grad_batch_draws", "curve_rates"):
            value = getattr(self, name)
            if value != 0:
                int_at_least(value, f"design.{name}", minimum=2)
        int_at_least(self.control_warmup, "design.control_warmup", minimum=0)
        int_at_least(self.n_boot, "design.n_boot", minimum=0)
        int_at_least(self.seed, "design.seed", minimum=0)
        if self.n_boot == 1:
            raise ValueError("design.n_boot must be 0 or >= 2, got 1")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"design.eps must lie in (0, 1), got {self.eps!r}")


@dataclass(frozen=True, eq=False)
class EstimatorDiagnostics:
    """Everything :func:`run_diagnostics` measured for one estimator configuration."""

    forward_passes: int
    decomposition: Decomposition
    batch: BatchVariance
    gradient: GradientVariance | None
    gradient_batch: GradientVariance | None
    curves: ConditionalCurves | None
    control_warmup: int
    seconds: float
    control_state: dict[str, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_aware(self) -> dict[str, float | None]:
        """Variance × forward passes for the total, the batch-level per-example variance and
        the per-example gradient variance."""
        k = self.forward_passes
        out: dict[str, float | None] = {
            "total": cost_aware(self.decomposition.total.value, k),
            "batch_per_example": (None if self.batch.per_example is None
                                  else cost_aware(self.batch.per_example.value, k)),
            "gradient": None if self.gradient is None else cost_aware(self.gradient.trace_cov.value, k),
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        dec = self.decomposition
        out: dict[str, Any] = {
            "forward_passes": self.forward_passes,
            "A": dec.A.value, "B": dec.B.value, "C": dec.C.value, "total": dec.total.value,
            "se": {k: getattr(dec, k).se for k in ("A", "B", "C", "total")},
            "plugin": {k: getattr(dec, f"naive_{k}").value for k in ("A", "B", "C", "total")},
            "mean": dec.mean.to_dict(),
            "decomposition": dec.to_dict(),
            "batch_variance": self.batch.to_dict(),
            "gradient_variance": None if self.gradient is None else self.gradient.to_dict(),
            "gradient_variance_batch": (None if self.gradient_batch is None
                                        else self.gradient_batch.to_dict()),
            "cost_aware": self.cost_aware,
            "control_warmup_samples": self.control_warmup,
            "control_state": self.control_state,
            "seconds": self.seconds,
            **self.extra,
        }
        return finite_or_none(out)



def run_diagnostics(model, examples: Batch, estimator: Estimator,
                    design: DiagnosticsDesign | None = None, *,
                    progress: bool = False) -> EstimatorDiagnostics:
    """All diagnostics of one estimator on ``model`` over ``examples`` (docs/method.md §2).

    Order: warm up the control variate (if any; :func:`warm_up_control`), then the nested
    decomposition, the batch variance, the gradient variances and the curves, all with the
    design's seed (common random numbers across configurations).
    """
    design = design or DiagnosticsDesign()
    if len(examples) < 2:
        raise ValueError(f"examples must hold at least 2 examples (a >= 2), got {len(examples)}")
    start = time.perf_counter()
    warm = 0
    if estimator.control is not None and design.control_warmup > 0:
        warm = warm_up_control(model, examples, estimator, n_samples=design.control_warmup,
                               seed=design.seed)
    dec, _ = decompose_estimator(model, examples, estimator, n_rates=design.n_rates,
                                 n_masks=design.n_masks, seed=design.seed, n_boot=design.n_boot,
                                 batch_size=design.forward_batch, progress=progress)
    bvar = estimator_batch_variance(model, examples, estimator, batch_size=design.batch_size,
                                    n_batches=design.n_batches, seed=design.seed)
    grad = grad_batch = None
    if design.grad_draws:
        grad = estimator_gradient_variance(model, examples, estimator, n_draws=design.grad_draws,
                                           batch_size=1, seed=design.seed,
                                           parameters=design.parameters)
    if design.grad_batch_draws:
        grad_batch = estimator_gradient_variance(
            model, examples, estimator, n_draws=design.grad_batch_draws,
            batch_size=design.batch_size, seed=design.seed, parameters=design.parameters)
    curves = None
    if design.curve_rates:
        curves = estimator_curves(model, examples, estimator, n_rates=design.curve_rates,
                                  n_masks=design.n_masks, eps=design.eps, seed=design.seed,
                                  n_boot=min(design.n_boot, 200), batch_size=design.forward_batch)
    state = None
    control = estimator.control
    if control is not None and hasattr(control, "coefficients"):
        state = {"coefficients": [float(x) for x in control.coefficients()],
                 "baselines": [float(x) for x in control.stats[4]]}
    return EstimatorDiagnostics(
        forward_passes=int(estimator.forward_passes), decomposition=dec, batch=bvar,
        gradient=grad, gradient_batch=grad_batch, curves=curves, control_warmup=warm,
        seconds=time.perf_counter() - start, control_state=state)


def with_extra(diag: EstimatorDiagnostics, **extra: Any) -> EstimatorDiagnostics:
    """A copy of ``diag`` with more JSON fields (e.g. the configuration's description)."""
    return replace(diag, extra={**diag.extra, **extra})
