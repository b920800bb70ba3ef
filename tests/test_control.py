"""BinEMA (docs/method.md §6, variance paper A.4.1) and the variance proxy (docs/method.md §7)."""

import math

import pytest
import torch

from maskdiff.core.batch import Batch
from maskdiff.core.control import BinEMA, VarianceProxy, build_control
from maskdiff.core.masking import Bernoulli
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Importance, Uniform


def test_bin_ema_follows_a41_step_by_step():
    ema = BinEMA(n_bins=2, rate=0.5, damping=1e-8)
    t = torch.tensor([0.3, 0.4, 0.8])
    losses = torch.tensor([2.0, 4.0, 1.0])
    # Nothing learned yet: c = 0, so the adjusted loss is the loss.
    assert torch.equal(ema.adjust(losses, t), losses)
    ema.update(losses, t)
    # Bin 0 by hand: after l=2 (b=0): mu_L=1, b=1; after l=4 (b=1): mu_L=2.5, mu_H=0.5,
    # M_LH=2, M_HH=0.5, b=2.5. Bin 1 after l=1 (b=0): mu_L=0.5, b=0.5.
    expected = torch.tensor([[2.5, 0.5], [0.5, 0.0], [2.0, 0.0], [0.5, 0.0], [2.5, 0.5]],
                            dtype=torch.float64)
    assert torch.allclose(ema.stats, expected)
    # c_0 = (2 - 2.5·0.5) / (0.5 - 0.25 + 1e-8) = 3; c_1 = 0.
    assert torch.allclose(ema.coefficients(), torch.tensor([3.0, 0.0], dtype=torch.float64), atol=1e-6)
    adjusted = ema.adjust(torch.tensor([10.0, 10.0]), torch.tensor([0.2, 0.9]))
    assert torch.allclose(adjusted, torch.tensor([10.0 - 3.0 * 2.5, 10.0]), atol=1e-5)


def test_bin_edges_are_right_closed():
    ema = BinEMA(n_bins=10)
    assert ema.bins(torch.tensor([0.001, 0.1, 0.1001, 0.5, 1.0], dtype=torch.float64)).tolist() == [0, 0, 1, 4, 9]


def test_adjusted_loss_has_the_plain_gradient():
    """docs/method.md §6 [fix]: with b detached, the gradient of l - c·b equals the gradient of l."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))

        def forward(self, ids, attention):
            return self.table.expand(ids.shape[0], -1, -1)

    x0 = torch.randint(1, 4, (16, 5), generator=torch.Generator().manual_seed(1))
    batch = Batch(x0=x0, eligible=torch.ones_like(x0, dtype=torch.bool),
                  attention_mask=torch.ones_like(x0, dtype=torch.bool), example_index=torch.arange(16))
    ema = BinEMA(n_bins=4, rate=0.3)
    warm = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=0, control=ema)
    for seed in range(5):  # give the EMA non-trivial statistics
        warm(Tiny(), batch, torch.Generator().manual_seed(seed))
    assert float(ema.coefficients().abs().max()) > 0
    grads = []
    for control in (ema, None):
        model = Tiny()
        est = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=0, control=control)
        out = est(model, batch, torch.Generator().manual_seed(99), update_control=False)
        out.loss.backward()
        grads.append(model.table.grad.clone())
    assert torch.allclose(grads[0], grads[1])


def test_bin_ema_state_round_trip_and_errors():
    ema = BinEMA(n_bins=3)
    ema.update(torch.tensor([1.0, 2.0]), torch.tensor([0.2, 0.9]))
    other = build_control("ema", n_bins=3)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.stats, ema.stats)
    with pytest.raises(ValueError, match="shape"):
        BinEMA(n_bins=4).load_state_dict(ema.state_dict())
    for kwargs, match in [({"n_bins": 0}, "n_bins"), ({"rate": 0.0}, "rate"), ({"damping": 0}, "damping")]:
        with pytest.raises(ValueError, match=match):
            BinEMA(**kwargs)


def test_variance_proxy_matches_direct_unbiased_variance():
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(1000, generator=gen) * 3
    proxy = VarianceProxy()
    for chunk in losses.split(37):  # incremental updates give the one-shot answer
        proxy.update(chunk)
    assert proxy.count == 1000
    assert proxy.variance() == pytest.approx(float(losses.double().var(unbiased=True)), rel=1e-10)


def test_variance_proxy_with_weights_matches_formula_and_target_variance():
    """t ~ p ∝ 1+t with weights w: the proxy of l = t estimates Var_{U[eps,1]}(t)."""
    eps = 1e-3
    sampler = Importance(lambda t: 1 + t, mix=0.0, eps=eps)
    t, w = sampler.sample(200_000, torch.Generator().manual_seed(3))
    proxy = VarianceProxy()
    proxy.update(t, w)
    y, n = (w * t).double(), len(t)
    direct = float((w * t * t).double().sum() / n - (y.sum() ** 2 - (y * y).sum()) / (n * (n - 1)))
    assert proxy.variance() == pytest.approx(direct, rel=1e-9)
    truth = (1 - eps) ** 2 / 12
    # The estimate's SE, by a delta-method bound: a few percent at this n; 5% is > 4 SE here.
    assert proxy.variance() == pytest.approx(truth, rel=0.05)
    assert math.isnan(VarianceProxy().variance())
    copy = proxy.reduced()  # no process group: the same sums
    assert copy.variance() == proxy.variance()
