"""The nested loss engine shared by the variance decomposition (docs/method.md §2) and the P-POTS
estimation (docs/method.md §4).

For a examples, b rates per example and c mask draws per (example, rate) it evaluates a
caller-supplied ``loss_fn`` on every triple, without gradient, in batches, and returns the
``(a, b, c)`` array that :func:`maskdiff.diagnostics.variance.decompose` and
:func:`maskdiff.diagnostics.curves.conditional_curves` consume. It knows nothing about models: the
``loss_fn`` builds the views and calls the model.

Randomness: triple ``(i, j, k)`` gets the mask seed ``derive_seed(seed, i, j, k)``; drawn rates of
example ``i`` come from ``generator_for(seed, STREAM_RATE, i)``. So every value depends only on
``seed`` and its own indices: not on ``batch_size``, nor on how many other examples, rates or masks
there are.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdiff.core.checks import int_at_least
from maskdiff.core.seeding import STREAM_RATE, derive_seed, generator_for

__all__ = ["LossFn", "RateDraw", "draw_rates", "nested_losses", "rates_on_grid"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(example_ids (n,) long, t (n,), mask_seeds (n,) long) -> (n,)`` per-example values."""

RateDraw = Callable[[int, torch.Generator], Any]
"""``draw(n, generator) -> t`` or ``(t, w)``, both (n,): e.g. a rate sampler's ``sample``."""


def rates_on_grid(b: int, eps: float = 1e-3, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The midpoint grid ``t_j = eps + (1 − eps)(j − 1/2)/b``, j = 1..b (docs/method.md §4), shape (b,).

    Uniform on these points is the midpoint-rule quadrature of U[eps, 1]; decompose losses
    taken on it with ``rate_design="fixed"``.
    """
    b = int_at_least(b, "b")
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < 1.0):
        raise ValueError(f"eps must lie in [0, 1), got {eps!r}")
    j = torch.arange(1, b + 1, dtype=torch.float64)
    return (eps + (1.0 - eps) * (j - 0.5) / b).to(dtype)


def _check_rates(t: torch.Tensor, name: str) -> None:
    if not torch.all(torch.isfinite(t)) or torch.any(t <= 0) or torch.any(t > 1):
        raise ValueError(f"{name} must lie in (0, 1], got min {t.min().item()}, "
                         f"max {t.max().item()}")


def draw_rates(
    draw: RateDraw, n_examples: int, n_rates: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rates ``t`` and weights ``w``, both (n_examples, n_rates): row i is ``draw(n_rates, g_i)``
    with ``g_i = generator_for(seed, STREAM_RATE, i)`` (w = 1 when ``draw`` returns t only).

    These are exactly the rates :func:`nested_losses` uses for a callable ``rates`` with the
    same ``seed``. For the random-rate design of :func:`maskdiff.diagnostics.variance.decompose`, ``draw``
    must return i.i.d. rates (Uniform, Importance without stratification; not Stratified).
    """
    n_examples = int_at_least(n_examples, "n_examples")
    n_rates = int_at_least(n_rates, "n_rates")
    seed = int_at_least(seed, "seed", minimum=0)
    rows_t, rows_w = [], []
    for i in range(n_examples):
        out = draw(n_rates, generator_for(seed, STREAM_RATE, i))
        t, w = out if isinstance(out, tuple) else (out, None)
        t = torch.as_tensor(t)
        w = torch.ones_like(t) if w is None else torch.as_tensor(w, dtype=t.dtype)
        if tuple(t.shape) != (n_rates,) or tuple(w.shape) != (n_rates,):
            raise ValueError(f"rates callable must return (n,) tensors for n={n_rates}, got "
                             f"t {tuple(t.shape)}, w {tuple(w.shape)}")
        rows_t.append(t)
        rows_w.append(w)
    t_all, w_all = torch.stack(rows_t), torch.stack(rows_w)
    _check_rates(t_all, "rates")
    return t_all, w_all


def _given_rates(rates: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray | None,
                 a: int, n_rates: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rates given as a tensor (b,) or (a, b) and their weights (default 1), both as (a, b)."""
    t = torch.as_tensor(rates)
    if t.ndim == 1:
        t = t.unsqueeze(0).expand(a, -1)
    if t.ndim != 2 or t.shape[0] != a:
        raise ValueError(f"rates must be (b,) or (n_examples={a}, b), got shape "
                         f"{tuple(torch.as_tensor(rates).shape)}")
    if n_rates is not None and n_rates != t.shape[1]:
        raise ValueError(f"n_rates={n_rates!r} does not match rates with b={t.shape[1]}")
    _check_rates(t, "rates")
    if weights is None:
        return t, torch.ones(t.shape, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim == 1:
        w = w.unsqueeze(0).expand(a, -1)
    if tuple(w.shape) != tuple(t.shape):
        raise ValueError(f"weights has shape {tuple(torch.as_tensor(weights).shape)}, "
                         f"rates {tuple(t.shape)}")
    return t, w


def _checked(values, units: int, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> np.ndarray:
    """A ``loss_fn`` batch as float64 (n, units), its shape and finiteness checked."""
    n = i.numel()
    values = torch.as_tensor(values)
    want = (n,) if units == 1 else (n, units)
    if tuple(values.shape) != want:
        raise ValueError(f"loss_fn must return shape {want} for {n} rows, got "
                         f"{tuple(values.shape)}")
    values = values.detach().to("cpu", torch.float64).numpy().reshape(n, units)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        r = int(np.argmax(bad))
        shown = values[r, 0] if units == 1 else values[r].tolist()
        raise ValueError(f"loss_fn returned {shown} for example {int(i[r])}, "
                         f"rate index {int(j[r])}, mask {int(k[r])}")
    return values


def nested_losses(
    loss_fn: LossFn,
    *,
    n_examples: int,
    rates: torch.Tensor | np.ndarray | RateDraw,
    n_masks: int,
    n_rates: int | None = None,
    weights: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    units: int = 1,
) -> np.ndarray:
    """Evaluate ``loss_fn`` on every (example, rate, mask) triple; return float64 ``(a, b, c)``.

    Args:
        loss_fn: ``loss_fn(example_ids, t, mask_seeds) -> (n,)``: for each row, the per-example
            value for example ``example_ids[r]`` (in ``[0, n_examples)``; the caller maps it to
            its data) at rate ``t[r]`` with the mask drawn from a generator seeded by
            ``mask_seeds[r]``. Called under ``torch.no_grad()`` with CPU tensors.
        n_examples: a.
        rates: a tensor (a, b) of per-example rates, a tensor (b,) shared by all examples
            (e.g. :func:`rates_on_grid`), or a callable ``draw(n, generator)`` returning t or
            (t, w) (a rate sampler's ``sample``), drawn as in :func:`draw_rates`.
        n_masks: c, mask draws per (example, rate).
        n_rates: b; required for a callable ``rates``, else inferred (must match if given).
        weights: optional importance weights shaped like ``rates`` (tensor rates only); for a
            callable the drawn w is used. Returned values are ``w · loss_fn(...)``, the quantity
            the trainer averages (docs/method.md §2).
        batch_size: rows per ``loss_fn`` call; results do not depend on it.
        seed: root seed; triple (i, j, k) gets mask seed ``derive_seed(seed, i, j, k)``.
        progress: show a tqdm bar (only when stderr is a terminal).
        units: values per row (default 1). With ``units > 1`` (a block layout's per-(example,
            block) losses, docs/method.md §12) ``loss_fn`` returns (n, units) and the result is
            ``(a · units, b, c)``: unit u of example i is row ``i · units + u``.
    """
    a = int_at_least(n_examples, "n_examples")
    c = int_at_least(n_masks, "n_masks")
    batch_size = int_at_least(batch_size, "batch_size")
    seed = int_at_least(seed, "seed", minimum=0)
    units = int_at_least(units, "units")
    if callable(rates) and not isinstance(rates, (torch.Tensor, np.ndarray)):
        if n_rates is None:
            raise ValueError("n_rates is required when rates is a callable")
        if weights is not None:
            raise ValueError("weights must be None when rates is a callable (its w is used)")
        t, w = draw_rates(rates, a, n_rates, seed)
    else:
        t, w = _given_rates(rates, weights, a, n_rates)
    b = int(t.shape[1])
    if b < 1:
        raise ValueError(f"rates must hold at least one rate per example, got {tuple(t.shape)}")
    t = t.detach().cpu().contiguous()  # loss_fn gets CPU tensors; it moves them itself
    weights_np = w.detach().to("cpu", torch.float64).numpy()

    total = a * b * c
    out = np.empty((total, units), dtype=np.float64)
    show = progress and sys.stderr.isatty()
    with tqdm(total=total, disable=not show, desc="nested losses", unit="loss") as bar:
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total))
            i, j, k = flat // (b * c), (flat // c) % b, flat % c
            mask_seeds = torch.tensor(
                [derive_seed(seed, ii, jj, kk) for ii, jj, kk in
                 zip(i.tolist(), j.tolist(), k.tolist())],
                dtype=torch.long,
            )
            with torch.no_grad():
                values = loss_fn(i, t[i, j], mask_seeds)
            out[start:start + flat.numel()] = _checked(values, units, i, j, k)
            bar.update(flat.numel())
    weighted = out.reshape(a, b, c, units) * weights_np[:, :, None, None]
    if units == 1:
        return weighted[..., 0]
    return np.ascontiguousarray(weighted.transpose(0, 3, 1, 2)).reshape(a * units, b, c)
