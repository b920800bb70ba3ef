"""Tests of maskdiff.diagnostics.nested (docs/method.md §2, §4): the seed assignment and layout of the nested loss
engine, and the decomposition of a synthetic model whose A, B, C are known, run through it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskdiff.diagnostics.nested import draw_rates, nested_losses, rates_on_grid
from maskdiff.core.seeding import derive_seed, generator_for
from maskdiff.diagnostics.variance import decompose, total_variance


def uniform_draw(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def encoding_loss_fn(ids, t, mask_seeds):
    """Encodes its inputs, so the output at [i, j, k] shows which triple it was given."""
    return ids.double() * 1000.0 + t.double() * 10.0 + (mask_seeds % 997).double() / 1000.0


def test_rates_on_grid():
    np.testing.assert_allclose(rates_on_grid(4, eps=0.0).numpy(), [0.125, 0.375, 0.625, 0.875])
    grid = rates_on_grid(70, dtype=torch.float64)
    j = np.arange(1, 71)
    np.testing.assert_allclose(grid.numpy(), 1e-3 + (1 - 1e-3) * (j - 0.5) / 70, rtol=1e-15)
    assert grid.mean().item() == pytest.approx((1 + 1e-3) / 2)
    assert rates_on_grid(3).dtype == torch.float32
    for bad, match in (({"b": 0}, "b must"), ({"b": 2.5}, "b must"), ({"b": 4, "eps": 1.0}, "eps"),
                       ({"b": 4, "eps": -0.1}, "eps")):
        with pytest.raises(ValueError, match=match):
            rates_on_grid(**bad)


def test_layout_and_seeds():
    """Value [i, j, k] comes from example i, rate t[i, j] and mask seed derive_seed(seed, i, j, k),
    whatever the batch size."""
    a, b, c, seed = 3, 4, 5, 17
    rates = torch.rand(a, b, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = nested_losses(encoding_loss_fn, n_examples=a, rates=rates, n_masks=c, batch_size=7,
                        seed=seed, progress=False)
    assert out.shape == (a, b, c) and out.dtype == np.float64
    expected = np.empty((a, b, c))
    for i in range(a):
        for j in range(b):
            for k in range(c):
                expected[i, j, k] = (i * 1000.0 + float(rates[i, j]) * 10.0
                                     + (derive_seed(seed, i, j, k) % 997) / 1000.0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)
    for batch_size in (1, 13, 1000):
        again = nested_losses(encoding_loss_fn, n_examples=a, rates=rates, n_masks=c,
                              batch_size=batch_size, seed=seed, progress=False)
        np.testing.assert_array_equal(again, out)
    other_seed = nested_losses(encoding_loss_fn, n_examples=a, rates=rates, n_masks=c,
                               seed=seed + 1, progress=False)
    assert not np.array_equal(other_seed, out)


def test_shared_rates_and_weights():
    grid = rates_on_grid(3, dtype=torch.float64)
    shared = nested_losses(encoding_loss_fn, n_examples=2, rates=grid, n_masks=2, progress=False)
    full = nested_losses(encoding_loss_fn, n_examples=2, rates=grid.expand(2, 3), n_masks=2,
                         progress=False)
    np.testing.assert_array_equal(shared, full)
    weights = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 4.0]])
    weighted = nested_losses(encoding_loss_fn, n_examples=2, rates=grid, weights=weights,
                             n_masks=2, progress=False)
    np.testing.assert_allclose(weighted, shared * weights.numpy()[:, :, None])


def test_callable_rates_use_draw_rates_and_weights():
    """A callable returning (t, w) is drawn as draw_rates does, and the values are w · loss."""

    def sampler(n, generator):
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t = 0.5 + 0.5 * u
        return t, 1.0 / t

    a, b, c, seed = 4, 3, 2, 5
    out = nested_losses(encoding_loss_fn, n_examples=a, rates=sampler, n_rates=b, n_masks=c,
                        seed=seed, progress=False)
    t, w = draw_rates(sampler, a, b, seed)
    for i in range(a):
        np.testing.assert_array_equal(
            t[i].numpy(), sampler(b, generator_for(seed, 1, i))[0].numpy())
    plain = nested_losses(encoding_loss_fn, n_examples=a, rates=t, n_masks=c, seed=seed,
                          progress=False)
    np.testing.assert_allclose(out, plain * w.numpy()[:, :, None], rtol=1e-15)
    # an example's rates do not depend on how many examples are drawn
    t_more, _ = draw_rates(sampler, a + 3, b, seed)
    np.testing.assert_array_equal(t_more[:a].numpy(), t.numpy())
    t_only, w_only = draw_rates(uniform_draw, 2, 3, 0)
    assert torch.all(w_only == 1) and t_only.shape == (2, 3)


def test_loss_fn_runs_without_gradient():
    seen = []

    def loss_fn(ids, t, mask_seeds):
        seen.append(torch.is_grad_enabled())
        return torch.zeros(ids.shape[0])

    nested_losses(loss_fn, n_examples=2, rates=[0.5, 0.7], n_masks=2, batch_size=3,
                  progress=False)
    assert seen and not any(seen)


class SyntheticModel:
    """l = α(example) + β(example, t) + γ(mask seed) with Var α = C, Var_t β = B, Var γ = A.

    α_i ~ N(0, C) and a phase φ_i ~ U[0, 2π) are seeded by the example id; for t ~ U[0, 1),
    β = sqrt(2B) cos(2π t + φ_i) has mean 0 and variance B given the example; γ ~ N(0, A) is
    drawn from the mask seed, as a masker would draw its mask.
    """

    A, B, C = 1.5, 0.6, 1.0

    def __init__(self, world: int) -> None:
        self.world = world

    def __call__(self, ids, t, mask_seeds):
        out = torch.empty(ids.shape[0], dtype=torch.float64)
        for r, (i, tt, seed) in enumerate(zip(ids.tolist(), t.tolist(), mask_seeds.tolist())):
            alpha = math.sqrt(self.C) * torch.randn(
                (), generator=generator_for(self.world, 0, i), dtype=torch.float64)
            phase = 2 * math.pi * torch.rand(
                (), generator=generator_for(self.world, 1, i), dtype=torch.float64)
            beta = math.sqrt(2 * self.B) * torch.cos(2 * math.pi * tt + phase)
            gamma = math.sqrt(self.A) * torch.randn(
                (), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            out[r] = 2.0 + alpha + beta + gamma
        return out


def test_decomposition_through_engine_recovers_components():
    """The engine-produced design decomposes to the model's A, B, C within 3 bootstrap SE, the
    plug-in B is biased by A/c, and A+B+C matches the variance of independent triples (one
    rate, one mask, distinct examples) drawn through the same engine."""
    model = SyntheticModel(world=3)
    a, b, c = 200, 4, 3
    losses = nested_losses(model, n_examples=a, rates=uniform_draw, n_rates=b, n_masks=c,
                           batch_size=64, seed=11, progress=False)
    dec = decompose(losses, n_boot=500, seed=0)
    for name in ("A", "B", "C"):
        est = getattr(dec, name)
        assert abs(est.value - getattr(model, name)) < 3 * est.se, (name, est)
    assert abs(dec.naive_B.value - (model.B + model.A / c)) < 3 * dec.naive_B.se
    assert dec.naive_B.value - model.B > 3 * dec.naive_B.se

    triples = nested_losses(SyntheticModel(world=4), n_examples=3000, rates=uniform_draw,
                            n_rates=1, n_masks=1, batch_size=500, seed=12, progress=False)
    direct = total_variance(triples.ravel())
    truth = model.A + model.B + model.C
    assert abs(direct.variance.value - truth) < 3 * direct.variance.se
    assert abs(dec.total.value - direct.variance.value) < 3 * math.hypot(
        dec.total.se, direct.variance.se)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_examples": 0, "rates": [0.5], "n_masks": 1}, "n_examples"),
        ({"n_examples": 2, "rates": [0.5], "n_masks": 0}, "n_masks"),
        ({"n_examples": 2, "rates": [0.5], "n_masks": 1, "batch_size": 0}, "batch_size"),
        ({"n_examples": 2, "rates": [0.5], "n_masks": 1, "seed": -1}, "seed"),
        ({"n_examples": 2, "rates": torch.ones(3, 2) * 0.5, "n_masks": 1}, "rates"),
        ({"n_examples": 2, "rates": torch.ones(2, 2, 2) * 0.5, "n_masks": 1}, "rates"),
        ({"n_examples": 2, "rates": [0.0, 0.5], "n_masks": 1}, "rates"),
        ({"n_examples": 2, "rates": [0.5, 1.5], "n_masks": 1}, "rates"),
        ({"n_examples": 2, "rates": [0.5, 0.6], "n_masks": 1, "n_rates": 3}, "n_rates"),
        ({"n_examples": 2, "rates": [0.5], "n_masks": 1, "weights": [1.0, 2.0]}, "weights"),
        ({"n_examples": 2, "rates": uniform_draw, "n_masks": 1}, "n_rates"),
        ({"n_examples": 2, "rates": uniform_draw, "n_rates": 2, "n_masks": 1,
          "weights": [1.0, 1.0]}, "weights"),
        ({"n_examples": 2, "rates": lambda n, g: torch.rand(n + 1, generator=g), "n_rates": 2,
          "n_masks": 1}, "rates callable"),
    ],
)
def test_bad_arguments_raise_named_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nested_losses(encoding_loss_fn, progress=False, **kwargs)


def test_bad_loss_fn_output_raises():
    with pytest.raises(ValueError, match="loss_fn must return shape"):
        nested_losses(lambda ids, t, s: torch.zeros(ids.shape[0], 2), n_examples=2,
                      rates=[0.5], n_masks=2, progress=False)

    def nan_at_1_0_1(ids, t, seeds):
        out = torch.zeros(ids.shape[0])
        out[(ids == 1) & (seeds == derive_seed(0, 1, 0, 1))] = math.nan
        return out

    with pytest.raises(ValueError, match="example 1, rate index 0, mask 1"):
        nested_losses(nan_at_1_0_1, n_examples=2, rates=[0.5, 0.6], n_masks=2, progress=False)
