"""docs/method.md §9: the k-parity laboratory (data, objectives, training, the sweep and its CLI)."""

from __future__ import annotations

import argparse
import io
import json
import math
from contextlib import redirect_stdout
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from maskdiff.commands import parity as parity_command
from maskdiff.experiments import parity_sweep
from maskdiff.labs.parity import (
    MASK_ID, FixedRate, ParityModelConfig, ParityRunConfig, build_parity_model,
    evaluate_accuracy, make_parity_data, md_loss, parity_labels, steps_to_accuracy,
    supervised_loss, train_parity,
)
from maskdiff.core.samplers import Window
from maskdiff.labs.theory import ps_optimal_t1, signal_probability


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- data


def test_labels_are_the_xor_of_the_secret_bits():
    data = make_parity_data(n=10, k=3, n_train=200, n_val=50, generator=_gen(0))
    secret = data.secret.tolist()
    assert len(secret) == 3 == len(set(secret)) and secret == sorted(secret)
    assert all(0 <= j < 10 for j in secret)
    for split in (data.train, data.val):
        assert split.shape[1] == 11 and set(split.unique().tolist()) <= {0, 1}
        bits = split[:, :10]
        # token 1 is +1, token 0 is -1: the product of ±1 is +1 iff the XOR of the
        # "is -1" indicators is 0.
        xor = (1 - bits[:, secret]).sum(dim=1) % 2
        assert torch.equal(split[:, 10], 1 - xor)
    # parity_labels on ±1 inputs, checked against an explicit loop
    pm = data.train[:5, :10] * 2 - 1
    expected = [math.prod(int(pm[i, j]) for j in secret) for i in range(5)]
    assert parity_labels(pm, data.secret).tolist() == expected


def test_splits_are_distinct_disjoint_and_seeded():
    data = make_parity_data(n=8, k=2, n_train=150, n_val=100, generator=_gen(3))
    rows = lambda x: {tuple(r) for r in x[:, :8].tolist()}  # noqa: E731
    assert len(rows(data.train)) == 150 and len(rows(data.val)) == 100
    assert not rows(data.train) & rows(data.val)
    again = make_parity_data(n=8, k=2, n_train=150, n_val=100, generator=_gen(3))
    assert torch.equal(again.train, data.train) and torch.equal(again.secret, data.secret)
    other = make_parity_data(n=8, k=2, n_train=150, n_val=100, generator=_gen(4))
    assert not torch.equal(other.train, data.train)
    # every input of a tiny cube can be used exactly once
    full = make_parity_data(n=4, k=2, n_train=12, n_val=4, generator=_gen(0))
    assert len(rows(full.train[:, :4].repeat(1, 2)) | rows(full.val[:, :4].repeat(1, 2))) == 16


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=4, k=5, n_train=4, n_val=4), "k must be <= n"),
    (dict(n=4, k=2, n_train=10, n_val=7), "exceeds the 2"),
    (dict(n=4, k=0, n_train=4, n_val=4), "k must be"),
    (dict(n=4, k=2, n_train=0, n_val=4), "n_train"),
])
def test_bad_data_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_parity_data(generator=_gen(0), **kwargs)


def test_run_config_validation():
    with pytest.raises(ValueError, match="objective"):
        ParityRunConfig(objective="ar")
    with pytest.raises(ValueError, match="t0"):
        ParityRunConfig(t0=0.5, t1=0.2)
    with pytest.raises(ValueError, match="batch_size"):
        ParityRunConfig(batch_size=-1)
    assert isinstance(ParityRunConfig(t0=0.2, t1=0.2).sampler(), FixedRate)
    window = ParityRunConfig(t0=0.0, t1=0.3).sampler()
    assert isinstance(window, Window) and window.target_interval() == (1e-3, 0.3)
    assert ParityRunConfig(objective="supervised").sampler() is None
    with pytest.raises(ValueError, match="divisible"):
        ParityModelConfig(d_model=30, n_heads=4)


# ---------------------------------------------------------------- objectives


def test_md_loss_is_eq1_with_n_equal_1():
    data = make_parity_data(n=6, k=2, n_train=16, n_val=4, generator=_gen(0))
    model = build_parity_model(ParityModelConfig(d_model=16, n_layers=1, n_heads=2), 6, seed=0)
    x0 = data.train
    loss = md_loss(model, x0, Window(0.2, 0.6), _gen(7))
    # the same draws by hand: rates from the sampler, then U_i < t over all n+1 positions
    g = _gen(7)
    t, _ = Window(0.2, 0.6).sample(16, g)
    u = torch.rand((1, *x0.shape), generator=g)[0]
    masked = u < t[:, None]
    xt = torch.where(masked, torch.full_like(x0, MASK_ID), x0)
    logp = F.log_softmax(model(xt, None).float(), dim=-1).gather(-1, x0[..., None])[..., 0]
    expected = (-(logp * masked).sum(dim=1) / t).mean()
    assert masked.any() and not masked.all()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_fixed_rate_and_supervised_loss():
    t, w = FixedRate(0.25).sample(5, _gen(0))
    assert torch.equal(t, torch.full((5,), 0.25)) and torch.equal(w, torch.ones(5))
    with pytest.raises(ValueError, match="t must"):
        FixedRate(0.0)
    data = make_parity_data(n=5, k=2, n_train=8, n_val=4, generator=_gen(1))
    model = build_parity_model(ParityModelConfig(d_model=16, n_layers=1, n_heads=2), 5, seed=1)
    x = data.train.clone()
    x[:, -1] = MASK_ID
    with torch.no_grad():
        expected = F.cross_entropy(model(x, None)[:, -1].float(), data.train[:, -1])
    loss = float(supervised_loss(model, data.train).detach())
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # accuracy counts the argmax over {-1,+1}; CE is over those two logits only
    acc, ce = evaluate_accuracy(model, data.train)
    with torch.no_grad():
        logits = model(x, None)[:, -1, :2]
    assert acc == pytest.approx(float((logits.argmax(1) == data.train[:, -1]).float().mean()))
    assert ce == pytest.approx(float(F.cross_entropy(logits, data.train[:, -1])), rel=1e-5)


def test_model_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_parity_model(ParityModelConfig(d_model=16, n_layers=1, n_heads=2), 5, seed=4)
    assert torch.equal(torch.rand(1), before)
    b = build_parity_model(ParityModelConfig(d_model=16, n_layers=1, n_heads=2), 5, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- training


TINY = ParityRunConfig(n=6, k=2, n_train=40, n_val=24, objective="supervised",
                       model=ParityModelConfig(d_model=32, n_layers=1, n_heads=2),
                       batch_size=0, max_steps=200, eval_every=25, lr=3e-3, weight_decay=0.0,
                       stop_at_accuracy=1.0)


def test_supervised_model_solves_a_tiny_instance():
    result = train_parity(TINY)
    last = result.history[-1]
    # (6,2) XOR with 40 of the 64 inputs: 100% on train and on the 24 unseen inputs
    assert last["train_acc"] == 1.0 and last["val_acc"] == 1.0
    assert last["step"] <= 200 and result.history[0]["step"] == 0
    assert 0.3 <= result.history[0]["val_acc"] <= 0.7  # chance at initialisation
    steps = [row["step"] for row in result.history]
    assert steps == sorted(steps) and all(s % 25 == 0 for s in steps)
    assert steps_to_accuracy(result.history, "val_acc", 1.0) == last["step"]
    assert steps_to_accuracy(result.history, "val_acc", 1.1) is None
    # determinism: the same config reproduces the same curve
    again = train_parity(replace(TINY, max_steps=20, stop_at_accuracy=None))
    first = train_parity(replace(TINY, max_steps=20, stop_at_accuracy=None))
    assert again.history == first.history


# ---------------------------------------------------------------- sweep


def test_paper_settings_match_the_theory():
    settings = parity_sweep.paper_settings(6)
    assert [s.objective for s in settings] == ["supervised"] + ["md"] * 5
    windows = [(s.t0, s.t1) for s in settings[1:]]
    assert windows[0] == (0.0, 0.1) and windows[2] == (0.0, 0.4) and windows[3] == (0.0, 1.0)
    assert windows[1] == (0.0, ps_optimal_t1(6)) and abs(ps_optimal_t1(6) - 0.246) < 5e-4
    assert windows[4] == (1 / 7, 1 / 7)
    shares = [s.signal_share(6) for s in settings[1:]]
    assert shares[3] == pytest.approx(1 / 8)  # U[0,1]: 1/(k+2)
    assert shares[4] == pytest.approx((6 / 7) ** 6)  # the fixed optimum (k/(k+1))^k
    assert shares[1] == max(shares[:4])  # t1* beats the other U[0, t1]
    assert settings[0].signal_share(6) is None


def test_curves_on_grid_carries_the_last_value_forward():
    h1 = [{"step": 0, "a": 0.5}, {"step": 10, "a": 1.0}]
    h2 = [{"step": 0, "a": 0.4}, {"step": 10, "a": 0.6}, {"step": 20, "a": 0.9}]
    steps, runs = parity_sweep.curves_on_grid([h1, h2], "a")
    assert steps == [0, 10, 20] and runs == [[0.5, 1.0, 1.0], [0.4, 0.6, 0.9]]


def test_smoke_sweep_writes_results_and_skips_finished_runs(tmp_path):
    preset = parity_sweep.PRESETS["smoke"]
    results = parity_sweep.run_parity_sweep(preset, tmp_path, progress=False)
    for name in ("report.md", "results.json", "accuracy_curves.png", "val_accuracy_all.png",
                 "loss_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) >= {"n", "k", "secret", "seeds", "summary", "curves", "settings",
                          "ps_optimal_t1", "signal_optimal_rate", "threshold", "deviations", "threads"}
    assert saved["seeds"] == [0, 1] and (saved["n"], saved["k"]) == (6, 2)
    assert len(saved["summary"]) == 6
    for label, s in saved["summary"].items():
        assert len(s["steps_to_val"]["per_seed"]) == 2
        for v in s["steps_to_val"]["per_seed"] + s["steps_to_train"]["per_seed"]:
            assert v is None or (0 <= v <= 20 and v % 5 == 0)
        for history in saved["curves"][label]["history"]:
            steps = [row["step"] for row in history]
            assert steps == list(range(0, 21, 5))  # strictly increasing, every eval_every
            assert all(0.0 <= row["val_acc"] <= 1.0 and row["train_loss"] > 0 for row in history)
        if s["objective"] == "md":
            assert s["signal_share"] == pytest.approx(signal_probability(2, s["t0"], s["t1"]))
    assert len(list((tmp_path / "runs").glob("*.json"))) == 12
    # a restart reuses every finished run: identical curves, no training
    (tmp_path / "results.json").unlink()
    again = parity_sweep.run_parity_sweep(preset, tmp_path, progress=False)
    assert again["curves"] == results["curves"]
    assert again["seconds"] < results["seconds"]


def test_cli_commands(tmp_path):
    parser = argparse.ArgumentParser()
    parity_command.register(parser.add_subparsers())
    out = io.StringIO()
    args = parser.parse_args(["parity", "--preset", "smoke", "--objective", "md", "--rate", "0.3",
                              "--max-steps", "10", "--eval-every", "5",
                              "--out", str(tmp_path / "run.json")])
    with redirect_stdout(out):
        assert args.func(args) == 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["t0"] == record["config"]["t1"] == 0.3
    assert [row["step"] for row in record["history"]] == [0, 5, 10]
    assert "train acc" in out.getvalue()
    args = parser.parse_args(["parity", "--preset", "smoke", "--rate", "0.3", "--t1", "0.4"])
    with pytest.raises(ValueError, match="--rate or --t1"):
        args.func(args)
    args = parser.parse_args(["parity-sweep", "--preset", "smoke", "--seeds", "5",
                              "--max-steps", "5", "--out", str(tmp_path / "sweep"), "--quiet"])
    with redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert saved["seeds"] == [5] and saved["base_config"]["max_steps"] == 5
