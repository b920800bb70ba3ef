"""Masker contracts (docs/method.md §5), parametrised over the registry."""

import math

import pytest
import torch

from maskdiff.core.masking import ISAD, MASKERS, Bernoulli, Mirror, MultiSample, build_masker, syrm_eligible

MASK = 99
DELIMITER = 7

# Every registered masker must have a case here (test_every_registered_masker_has_a_case).
MASKER_CASES = {
    "bernoulli": {},
    "mirror": {},
    "multisample": {"k": 3},
    "isad": {"token_ids": [DELIMITER], "delta": 0.2},
}


def test_every_registered_masker_has_a_case():
    assert set(MASKERS) == set(MASKER_CASES)


def _grid_batch(rows_per_rate=3000, length=10):
    rates = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95])
    t = rates.repeat_interleave(rows_per_rate)
    x0 = torch.arange(length).repeat(len(t), 1) % 9  # token 7 (the delimiter) at position 7
    eligible = torch.ones_like(x0, dtype=torch.bool)
    eligible[:, :2] = False  # a two-token prompt
    return x0, eligible, t, rates


@pytest.mark.parametrize("name", sorted(MASKER_CASES))
def test_mask_frequency_equals_inclusion_prob(name):
    masker = build_masker(name, **MASKER_CASES[name])
    x0, eligible, t, rates = _grid_batch()
    views = masker.views(x0, eligible, t, torch.Generator().manual_seed(0), MASK)
    assert len(views) == masker.n_views
    n = len(t) // len(rates)
    for view in views:
        assert not torch.any(view.masked & ~eligible), "an ineligible token was masked"
        assert torch.equal(view.xt == MASK, view.masked)
        assert torch.equal(view.xt[~view.masked], x0[~view.masked])
        for i, rate in enumerate(rates.tolist()):
            rows = slice(i * n, (i + 1) * n)
            freq = view.masked[rows, 2:].float().mean(0)
            prob = view.inclusion_prob[rows, 2:].mean(0)
            se = torch.sqrt(prob * (1 - prob) / n).clamp(min=1e-6)
            assert torch.all((freq - prob).abs() < 4 * se + 1e-6), (name, rate, freq, prob)


def test_isad_inclusion_probabilities():
    x0, eligible, t, _ = _grid_batch(rows_per_rate=2)
    (view,) = ISAD([DELIMITER], delta=0.2).views(x0, eligible, t, torch.Generator(), MASK)
    delimiter = x0 == DELIMITER
    expected = torch.where(delimiter, (t[:, None] + 0.2).clamp(max=1.0), t[:, None].expand_as(x0))
    assert torch.allclose(view.inclusion_prob, expected)


def test_mirror_views_are_complementary():
    x0 = torch.zeros(4000, 12, dtype=torch.long)
    eligible = torch.ones_like(x0, dtype=torch.bool)
    t = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    first, second = Mirror().views(x0, eligible, t, torch.Generator().manual_seed(2), MASK)
    low = t <= 0.5
    assert not torch.any(first.masked[low] & second.masked[low]), "views overlap for t <= 1/2"
    assert torch.all(first.masked[~low] | second.masked[~low]), "views miss tokens for t >= 1/2"
    coverage = (first.masked | second.masked).float().mean(1)
    # Coverage is min(1, 2t) per token: check it on average over rows.
    diff = coverage - torch.clamp(2 * t, max=1.0)
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(t))


def test_multisample_views_are_independent():
    x0 = torch.zeros(20000, 4, dtype=torch.long)
    eligible = torch.ones_like(x0, dtype=torch.bool)
    t = torch.full((20000,), 0.5)
    views = MultiSample(2).views(x0, eligible, t, torch.Generator().manual_seed(0), MASK)
    both = (views[0].masked & views[1].masked).float().mean()
    assert float(both) == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / 80000))


def test_syrm_adds_syntax_tokens():
    eligible = torch.tensor([[False, False, True]])
    syntax = torch.tensor([[True, False, False]])
    assert syrm_eligible(eligible, syntax).tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="syntax has shape"):
        syrm_eligible(eligible, syntax[:, :2])


@pytest.mark.parametrize("make,match", [
    (lambda: MultiSample(0), "k must be"),
    (lambda: ISAD([5], delta=-0.1), "delta"),
    (lambda: ISAD([], delta=0.1), "token_ids"),
    (lambda: build_masker("nope"), "unknown masker"),
    (lambda: Bernoulli().views(torch.zeros(2, 3, dtype=torch.long),
                               torch.ones(2, 4, dtype=torch.bool), torch.rand(2),
                               torch.Generator(), MASK), "eligible has shape"),
    (lambda: Bernoulli().views(torch.zeros(2, 3, dtype=torch.long),
                               torch.ones(2, 3, dtype=torch.bool), torch.rand(3),
                               torch.Generator(), MASK), "t has shape"),
])
def test_bad_arguments_raise_named_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
