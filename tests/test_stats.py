"""The shared training statistics: t-bins, the step window, gather/reduce, the Objective
contract, the seed streams."""

import subprocess
import sys

import pytest
import torch

from maskdiff.core import seeding
from maskdiff.core.control import BinEMA, VarianceProxy, t_bins
from maskdiff.core.masking import Bernoulli
from maskdiff.core.objective import Estimator, EstimatorOutput, Objective
from maskdiff.core.samplers import Importance, Uniform
from maskdiff.training import distributed
from maskdiff.training.objective import CausalObjective
from maskdiff.training.stats import T_BINS, StepStats, StepWindow, finish_step
from maskdiff.training.metrics_log import LogWindow


def _stats(t, raw, *, w=None, ce=(0.0, 0), tokens=0) -> StepStats:
    t = torch.tensor(t, dtype=torch.float32)
    raw = torch.tensor(raw, dtype=torch.float32)
    w = torch.ones_like(t) if w is None else torch.tensor(w, dtype=torch.float32)
    return StepStats(t=t, w=w, raw=raw, values=w * raw, masked_ce_sum=ce[0], masked_count=ce[1],
                     tokens=tokens)


def test_t_bins_are_left_open_right_closed_tenths():
    # (j/10, (j+1)/10]: 0.25 -> 2, 0.5 -> 4 (closed on the right), 1 -> 9; t <= 0 clamps to 0.
    t = torch.tensor([0.0, 0.05, 0.125, 0.25, 0.5, 0.75, 1.0])
    assert t_bins(t, 10).tolist() == [0, 0, 1, 2, 4, 7, 9]
    assert t_bins(t, 4).tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert T_BINS == 10
    # float32 0.1 lies a hair above 1/10: bin 1, as every trainer has always binned it.
    assert t_bins(torch.tensor([0.1], dtype=torch.float32), 10).tolist() == [1]
    assert BinEMA(n_bins=10).bins(t).tolist() == t_bins(t, 10).tolist()


def test_step_window_against_hand_computed_values():
    window = StepWindow()
    window.add(_stats([0.25, 0.5, 1.0], [1.0, 2.0, 3.0], ce=(6.0, 3), tokens=10))
    window.add(_stats([0.125, 0.25], [4.0, 5.0], ce=(4.0, 2), tokens=6))
    assert len(window) == 2
    expected = [None] * 10
    expected[1], expected[2], expected[4], expected[9] = 4.0, 3.0, 2.0, 3.0  # bin 2: (1 + 5) / 2
    assert window.loss_per_t_bin() == expected
    assert window.masked_ce() == 2.0  # (6 + 4) / (3 + 2)
    assert window.tokens == 16 and window.tokens_per_s() > 0
    window.reset()
    assert len(window) == 0 and window.masked_ce() is None


def test_native_log_record_holds_the_window_and_its_own_scalars():
    window = LogWindow()
    for loss, norm, lr, stats in ((1.0, 2.0, 0.1, _stats([0.25], [1.0], ce=(2.0, 1))),
                                  (3.0, 4.0, 0.2, _stats([0.95], [7.0], ce=(4.0, 3)))):
        window.add({"stats": stats, "loss": loss, "grad_norm": norm, "lr": lr})
    record = window.flush(5, variance_proxy=float("nan"))
    assert list(record) == ["step", "loss", "masked_ce", "loss_per_t_bin", "grad_norm", "lr",
                            "tokens_per_s", "variance_proxy"]
    scalars = ("step", "loss", "masked_ce", "grad_norm", "lr")
    assert tuple(record[key] for key in scalars) == (5, 2.0, 1.5, 3.0, 0.2)
    assert record["loss_per_t_bin"] == [None, None, 1.0] + [None] * 6 + [7.0]
    assert record["variance_proxy"] is None


def test_step_stats_collect_concat_finite_and_gather_on_one_process():
    def output(t, raw, ce, count, passes):
        t = torch.tensor(t)
        return EstimatorOutput(loss=raw.mean(), values=2 * raw, raw_loss=raw, t=t,
                               w=2 * torch.ones_like(t), n_empty=0, forward_passes=passes,
                               masked_ce_sum=ce, masked_count=count)

    first = output([0.5, 0.25], torch.tensor([1.0, float("nan")]), 1.5, 2, passes=2)
    second = output([1.0], torch.tensor([3.0]), 2.5, 4, passes=2)
    collected = StepStats.collect([first, second], tokens=[7, 5])
    concat = StepStats.concat([StepStats.collect([first], [7]), StepStats.collect([second], [5])])
    for stats in (collected, concat):
        assert stats.t.tolist() == [0.5, 0.25, 1.0] and stats.values.dtype == torch.float32
        assert (stats.masked_ce_sum, stats.masked_count, stats.tokens) == (4.0, 6, 24)  # 2 passes
    kept = collected.finite()
    assert kept.t.tolist() == [0.5, 1.0] and kept.raw.tolist() == [1.0, 3.0] and kept.tokens == 24
    gathered = kept.gathered()
    assert torch.equal(gathered.raw, kept.raw)
    assert (gathered.masked_ce_sum, gathered.masked_count, gathered.tokens) == (4.0, 6.0, 24.0)


def test_finish_step_feeds_the_objective_the_proxy_and_the_refitter():
    estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=0,
                          control=BinEMA(n_bins=4, rate=0.5))
    reference = BinEMA(n_bins=4, rate=0.5)
    proxy, local = VarianceProxy(), _stats([0.2, 0.6, 0.9], [1.0, 2.0, 4.0], w=[1.0, 0.5, 2.0])
    stats, refit = finish_step(local, step=1, objective=estimator, proxy=proxy)
    assert refit is None and torch.equal(stats.t, local.t)
    reference.update(local.w * local.raw, local.t)
    assert torch.equal(estimator.control.stats, reference.stats)
    # w·l = 1, 1, 8: unbiased variance with w = importance weights (docs/method.md §7)
    s1, s2, s12, n = 10.0, 1 + 2 + 32, 1 + 1 + 64, 3
    assert proxy.variance() == pytest.approx(s2 / n - (s1 * s1 - s12) / (n * (n - 1)))

    class Recorder:
        def __init__(self):
            self.calls = []

        def after_step(self, step, t, losses, weights):
            self.calls.append((step, t.tolist(), losses.tolist(), weights.tolist()))
            return {"step": step, "refit": None}

    recorder = Recorder()
    _, refit = finish_step(local, step=7, objective=CausalObjective(), proxy=VarianceProxy(),
                           refitter=recorder)
    assert refit == {"step": 7, "refit": None}
    assert recorder.calls == [(7, local.t.tolist(), local.raw.tolist(), local.w.tolist())]


def test_estimator_and_causal_twin_implement_the_objective_contract():
    estimator = Estimator(rate_sampler=Importance(lambda t: 1 + t), masker=Bernoulli(),
                          mask_token_id=0, control=BinEMA(n_bins=4))
    causal = CausalObjective()
    assert isinstance(estimator, Objective) and isinstance(causal, Objective)
    assert estimator.forward_passes == 1 and causal.forward_passes == 1
    estimator.observe(torch.tensor([0.3]), torch.tensor([2.0]), torch.tensor([1.5]))
    state = estimator.state_dict()
    assert sorted(state) == ["control", "sampler"]
    fresh = Estimator(rate_sampler=Importance(lambda t: 1.0 + 0 * t), masker=Bernoulli(),
                      mask_token_id=0, control=BinEMA(n_bins=4))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.control.stats, estimator.control.stats)
    torch.testing.assert_close(fresh.rate_sampler.state_dict()["density"],
                               state["sampler"]["density"], rtol=1e-12, atol=0)
    assert causal.state_dict() == {}
    causal.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        causal.load_state_dict({"control": {}})


def test_seed_streams_keep_their_values():
    """Every stream number is part of every run's draws: changing one changes all results."""
    streams = {name: getattr(seeding, name) for name in dir(seeding) if name.startswith("STREAM_")}
    assert streams == {
        "STREAM_RATE": 1, "STREAM_MASK": 2, "STREAM_BATCH": 3, "STREAM_DATA_ORDER": 4,
        "STREAM_CLASSIFIER": 7, "STREAM_BATCH_PICK": 11, "STREAM_GRAD_PICK": 12,
        "STREAM_WARMUP": 13, "STREAM_PARITY_DATA": 11, "STREAM_PARITY_INIT": 12,
        "STREAM_PARITY_TRAIN": 13, "STREAM_IMAGE_SAMPLING": 11, "STREAM_PREFERENCE_REFERENCE": 21,
        "STREAM_ELBO_DENSITY": 22, "STREAM_JUDGE_SAMPLING": 31, "STREAM_JUDGE_PROBE": 32,
    }


def test_collectives_are_the_identity_on_one_process():
    x = torch.arange(5.0)
    assert distributed.gather_cat(x) is x and distributed.all_reduce_sum(x) is x


_TWO_RANKS = '''
import os, sys, torch, torch.distributed as dist
from maskdiff.training import distributed

def main(rank):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    local = torch.arange(3.0) + 10 * rank if rank == 0 else torch.tensor([7.0])
    gathered = distributed.gather_cat(local)
    total = distributed.all_reduce_sum(torch.tensor([1.0, rank], dtype=torch.float64))
    assert gathered.tolist() == [0.0, 1.0, 2.0, 7.0], gathered
    assert total.tolist() == [2.0, 1.0], total
    empty = distributed.gather_cat(torch.empty(0) if rank == 0 else torch.tensor([5.0]))
    assert empty.tolist() == [5.0], empty
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(main, nprocs=2)
'''


@pytest.mark.slow
def test_gather_concatenates_unequal_lengths_over_two_gloo_ranks(tmp_path):
    """What MaskedDiffusionTrainer relies on: a rank may drop non-finite values."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "worker.py").write_text(_TWO_RANKS)
    proc = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(port)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
