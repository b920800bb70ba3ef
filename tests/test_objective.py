"""The objective (docs/method.md §1) and the estimator, with mock models: no real network needed."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskdiff.core.batch import Batch
from maskdiff.core.masking import ISAD, Bernoulli, Mirror, MultiSample, View
from maskdiff.core.objective import Estimator, per_example_loss
from maskdiff.core.samplers import Importance, Stratified, Uniform

MASK, VOCAB = 0, 6


class FixedLogits(torch.nn.Module):
    """A mock model whose logits depend on the position only, never on the input."""

    def __init__(self, length, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(length, VOCAB, generator=gen))
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return self.table.expand(input_ids.shape[0], -1, -1)


def _batch(x0, eligible):
    return Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                 example_index=torch.arange(len(x0)))


def test_per_example_loss_by_hand_for_each_normalizer():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    x0 = torch.tensor([[0, 1, 2]])
    eligible = torch.tensor([[False, True, True]])
    masked = torch.tensor([[False, True, True]])
    t = 0.4
    view = View(xt=x0, masked=masked, inclusion_prob=torch.full((1, 3), t))
    total = -(math.log(0.8) + math.log(1 / 3)) / t
    assert per_example_loss(logits, x0, view, eligible, "eligible").item() == pytest.approx(total / 2, rel=1e-6)
    assert per_example_loss(logits, x0, view, eligible, "sequence").item() == pytest.approx(total / 3, rel=1e-6)
    assert per_example_loss(logits, x0, view, eligible, "none").item() == pytest.approx(total, rel=1e-6)


def test_bf16_logits_give_float32_loss():
    x0 = torch.randint(1, VOCAB, (3, 5), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(3, 5, VOCAB).to(torch.bfloat16)
    masked = torch.ones(3, 5, dtype=torch.bool)
    view = View(xt=x0, masked=masked, inclusion_prob=torch.full((3, 5), 0.5))
    loss = per_example_loss(logits, x0, view, masked)
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(logits.float().reshape(-1, VOCAB), x0.reshape(-1), reduction="none")
    assert torch.allclose(loss, expected.reshape(3, 5).mean(1) / 0.5)


def test_all_prompt_example_gives_zero_and_is_counted():
    x0 = torch.randint(1, VOCAB, (2, 4))
    eligible = torch.tensor([[False] * 4, [True] * 4])
    estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK)
    out = estimator(FixedLogits(4), _batch(x0, eligible), torch.Generator().manual_seed(0))
    assert out.n_empty == 1
    assert out.raw_loss[0].item() == 0.0 and torch.isfinite(out.loss)


def test_gradient_is_finite_at_eps():
    model = FixedLogits(4)
    x0 = torch.randint(1, VOCAB, (2, 4))
    view = View(xt=x0, masked=torch.ones(2, 4, dtype=torch.bool), inclusion_prob=torch.full((2, 4), 1e-3))
    loss = per_example_loss(model(x0, None), x0, view, torch.ones(2, 4, dtype=torch.bool)).mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(model.table.grad))


def test_shape_mismatches_raise():
    x0 = torch.zeros(2, 4, dtype=torch.long)
    view = View(xt=x0, masked=torch.zeros(2, 4, dtype=torch.bool), inclusion_prob=torch.ones(2, 4))
    with pytest.raises(ValueError, match="logits must be"):
        per_example_loss(torch.zeros(2, 5, VOCAB), x0, view, view.masked)
    with pytest.raises(ValueError, match="eligible has shape"):
        per_example_loss(torch.zeros(2, 4, VOCAB), x0, view, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="normalizer"):
        per_example_loss(torch.zeros(2, 4, VOCAB), x0, view, view.masked, "tokens")
    with pytest.raises(ValueError, match="example_index"):
        Batch(x0=x0, eligible=view.masked, attention_mask=view.masked, example_index=torch.arange(3))


ESTIMATORS = {
    "standard": lambda: Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK),
    "mirror": lambda: Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK),
    "multisample": lambda: Estimator(rate_sampler=Uniform(), masker=MultiSample(3), mask_token_id=MASK),
    "isad": lambda: Estimator(rate_sampler=Uniform(), masker=ISAD([3], delta=0.3), mask_token_id=MASK),
    "strats": lambda: Estimator(rate_sampler=Stratified(), masker=Bernoulli(), mask_token_id=MASK),
    "ppots+mirror": lambda: Estimator(rate_sampler=Importance(lambda t: 0.3 + t ** 2),
                                      masker=Mirror(), mask_token_id=MASK),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_is_unbiased_with_input_independent_logits(name):
    """When log p(x0_i | xt) does not depend on xt, E[l] = (1/P)·Σ_eligible CE_i exactly."""
    length = 8
    model = FixedLogits(length, seed=3)
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randint(1, VOCAB, (1, length), generator=gen).repeat(20000, 1)
    x0[:, 5] = 3  # an ISAD delimiter
    eligible = torch.ones_like(x0, dtype=torch.bool)
    eligible[:, :3] = False
    ce = F.cross_entropy(model.table, x0[0], reduction="none").detach()
    truth = float(ce[3:].mean())
    estimator = ESTIMATORS[name]()
    values = []
    for chunk in x0.split(4000):
        with torch.no_grad():
            values.append(estimator(model, _batch(chunk, eligible[: len(chunk)]), gen).values)
    values = torch.cat(values).double()
    se = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - truth) < 4 * se, (name, float(values.mean()), truth, se)


def test_fused_and_separate_views_agree():
    model = FixedLogits(6)
    x0 = torch.randint(1, VOCAB, (5, 6), generator=torch.Generator().manual_seed(0))
    batch = _batch(x0, torch.ones_like(x0, dtype=torch.bool))
    outs = []
    for fuse in (True, False):
        est = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK, fuse_views=fuse)
        model.calls = 0
        outs.append(est(model, batch, torch.Generator().manual_seed(7)))
        assert model.calls == (1 if fuse else 2)
    assert torch.equal(outs[0].values, outs[1].values)
    assert outs[0].forward_passes == 2


def test_a_batch_with_nothing_masked_still_backpropagates_zero_gradients():
    """Regression: a micro-batch in which no token is masked gave a loss off the graph, and the
    trainer's backward() raised. It must give 0 with zero (not missing) gradients."""
    import torch

    from maskdiff.core.batch import Batch
    from maskdiff.core.masking import Bernoulli
    from maskdiff.core.objective import Estimator
    from maskdiff.core.samplers import Uniform

    net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
    x0 = torch.randint(0, 9, (2, 5))
    eligible = torch.zeros(2, 5, dtype=torch.bool)
    batch = Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                  example_index=torch.arange(2))
    estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=9)
    out = estimator(lambda x, a: net(x), batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.n_empty == 2
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in net.parameters())
