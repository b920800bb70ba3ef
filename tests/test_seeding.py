"""Per-example seeding (docs/architecture.md §3): draws do not depend on batch size or rank layout."""

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.masking import Mirror
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Importance, Stratified, Uniform
from maskdiff.core.seeding import BatchRandomness, derive_seed


def test_derive_seed_is_deterministic_and_spreads():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(7, i, s) for i in range(100) for s in range(10)}
    assert len(seeds) == 1000
    assert derive_seed(1, 2) != derive_seed(2, 1)


def _draw(estimator, x0, indices, positions, global_size, step=5):
    batch = Batch(x0=x0, eligible=torch.ones_like(x0, dtype=torch.bool),
                  attention_mask=torch.ones_like(x0, dtype=torch.bool),
                  example_index=torch.tensor(indices))
    rnd = BatchRandomness.for_batch(123, step, indices, positions, global_size)
    t, w, views = estimator.draw(batch, rnd)
    return t, w, torch.stack([v.masked for v in views])


def test_batch_sizes_4_and_8_draw_the_same_rates_and_masks():
    x0 = torch.randint(1, 9, (8, 11), generator=torch.Generator().manual_seed(0))
    for sampler in (Uniform(), Importance(lambda t: 1 + t)):
        est = Estimator(rate_sampler=sampler, masker=Mirror(), mask_token_id=0)
        t8, w8, m8 = _draw(est, x0, list(range(8)), None, None)
        parts = [_draw(est, x0[i:i + 4], list(range(i, i + 4)), None, None) for i in (0, 4)]
        assert torch.equal(t8, torch.cat([p[0] for p in parts]))
        assert torch.equal(w8, torch.cat([p[1] for p in parts]))
        assert torch.equal(m8, torch.cat([p[2] for p in parts], dim=1))


def test_stratified_global_batch_split_over_two_ranks():
    """Strata follow the global position: two ranks of 4 draw what one rank of 8 draws."""
    x0 = torch.randint(1, 9, (8, 5), generator=torch.Generator().manual_seed(0))
    est = Estimator(rate_sampler=Stratified(), masker=Mirror(), mask_token_id=0)
    t8, _, m8 = _draw(est, x0, list(range(8)), None, None)
    rank0 = _draw(est, x0[:4], [0, 1, 2, 3], [0, 1, 2, 3], 8)
    rank1 = _draw(est, x0[4:], [4, 5, 6, 7], [4, 5, 6, 7], 8)
    assert torch.equal(t8, torch.cat([rank0[0], rank1[0]]))
    assert torch.equal(m8, torch.cat([rank0[2], rank1[2]], dim=1))


def test_steps_differ_and_padding_does_not_change_real_tokens():
    x0 = torch.randint(1, 9, (3, 6), generator=torch.Generator().manual_seed(0))
    est = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=0)
    t_a, _, m_a = _draw(est, x0, [0, 1, 2], None, None, step=1)
    t_b, _, _ = _draw(est, x0, [0, 1, 2], None, None, step=2)
    assert not torch.equal(t_a, t_b)
    padded = torch.cat([x0, torch.ones(3, 4, dtype=torch.long)], dim=1)
    _, _, m_pad = _draw(est, padded, [0, 1, 2], None, None, step=1)
    assert torch.equal(m_pad[:, :, :6], m_a)
