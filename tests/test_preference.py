"""Preference optimisation (docs/method.md §13): the ELBO estimators against the exact ELBO,
shared draws, the DPO and KTO losses, pairs files, and ``maskdiff dpo`` end to end."""

import json
import math
from dataclasses import replace

import pytest
import torch
from scipy.special import betainc

from maskdiff.cli import main
from maskdiff.core.batch import Batch
from maskdiff.models import TransformerConfig, build_model
from maskdiff.preference import (
    PREFERENCE_ESTIMATORS, DPOConfig, count_weights, dpo_loss, exact_log_likelihood, kto_loss,
    load_pairs, preference_estimator, train_dpo,
)
from maskdiff.training.checkpoint import latest_checkpoint, load_checkpoint
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.runs import load_run
from maskdiff.training.trainer import Trainer

V, MASK, LENGTH = 12, 11, 9


def _model(scale: float = 3.0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(TransformerConfig(vocab_size=V, max_len=LENGTH, mask_token_id=MASK,
                                              d_model=32, n_layers=1, n_heads=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # sharper predictions than the initialisation's near-uniform ones
    return model


def _batch() -> Batch:
    x0 = torch.randint(0, 10, (3, LENGTH), generator=torch.Generator().manual_seed(0))
    eligible = torch.zeros(3, LENGTH, dtype=torch.bool)
    eligible[0, 3:8] = True
    eligible[1, 2:6] = True
    eligible[2, 3:9] = True
    return Batch(x0=x0, eligible=eligible, attention_mask=torch.ones(3, LENGTH, dtype=torch.bool),
                 example_index=torch.tensor([0, 1, 2]))


def _trained(model, batch, steps: int = 5):
    """``model`` after a few optimiser steps on the batch's responses (a policy near its
    reference)."""
    import copy

    policy = copy.deepcopy(model)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)
    estimator = preference_estimator("vrpo")
    for step in range(steps):
        loss = -estimator.log_likelihood(policy, batch, seed=1000 + step, budget=2,
                                         mask_token_id=MASK).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


@pytest.fixture(scope="module")
def pair_of_models():
    batch = _batch()
    reference = _model()
    policy = _trained(reference, batch)
    exact = [exact_log_likelihood(m, batch, mask_token_id=MASK) for m in (policy, reference)]
    return batch, policy, reference, exact


def _draws(estimator, policy, reference, batch, n: int, budget: int = 2):
    with torch.no_grad():
        rows = [(estimator.log_likelihood(policy, batch, seed=s, budget=budget,
                                          mask_token_id=MASK, role="policy"),
                 estimator.log_likelihood(reference, batch, seed=s, budget=budget,
                                          mask_token_id=MASK, role="reference"))
                for s in range(n)]
    return (torch.stack([p for p, _ in rows]).double(),
            torch.stack([r for _, r in rows]).double())


def test_count_weights_match_the_incomplete_beta_and_sum_to_the_length():
    n = torch.tensor([1, 5, 40])
    for eps in (0.0, 1e-3, 0.2):
        c = count_weights(n, eps)
        for row, length in enumerate(n.tolist()):
            l = torch.arange(1, length + 1, dtype=torch.float64)
            expected = (1 - torch.tensor(betainc(l.numpy(), length - l.numpy() + 1, eps))) / (
                l * (1 - eps))
            assert torch.allclose(c[row, :length], expected, rtol=1e-9, atol=1e-12)
            assert torch.all(c[row, length:] == 0)
            # one nat per masked token: E_t[(1/t)·#masked] = L whatever eps
            assert float((c[row, :length] * l).sum()) == pytest.approx(length, rel=1e-9)
    assert torch.allclose(count_weights(torch.tensor([6]), 0.0)[0],
                          1 / torch.arange(1, 7, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(PREFERENCE_ESTIMATORS))
def test_every_estimator_is_unbiased_for_the_elbo_and_the_difference(name, pair_of_models):
    batch, policy, reference, (exact_policy, exact_reference) = pair_of_models
    assert float((exact_policy - exact_reference).abs().max()) > 1  # the policy has moved
    n = 50
    pol, ref = _draws(PREFERENCE_ESTIMATORS[name], policy, reference, batch, n)
    for values, target in ((pol, exact_policy), (pol - ref, exact_policy - exact_reference)):
        mean, se = values.mean(dim=0), values.std(dim=0) / math.sqrt(n)
        z = (mean - target) / se
        assert torch.all(z.abs() < 4), (name, z, mean, target)


def test_shared_draws_cut_the_se_of_the_difference(pair_of_models):
    batch, policy, reference, _ = pair_of_models
    n = 40
    spread = {}
    for name in ("naive", "shared-mc", "vrpo", "lowvar"):
        pol, ref = _draws(PREFERENCE_ESTIMATORS[name], policy, reference, batch, n)
        spread[name] = (pol - ref).std(dim=0)
    # the same rates and masks: the difference loses most of the masking noise (measured
    # 6-22x on these three examples after 5 steps of Adam at lr 1e-4)
    for name in ("shared-mc", "vrpo", "lowvar"):
        assert torch.all(spread[name] * 4 < spread["naive"]), (name, spread)


def test_the_reference_draws_are_the_policys_only_when_shared():
    batch, model = _batch(), _model()
    for name, shared in (("naive", False), ("vrpo", True), ("lowvar", True)):
        estimator = PREFERENCE_ESTIMATORS[name]
        with torch.no_grad():
            a = estimator.log_likelihood(model, batch, seed=5, budget=2, mask_token_id=MASK)
            b = estimator.log_likelihood(model, batch, seed=5, budget=2, mask_token_id=MASK,
                                         role="reference")
            # one example's value does not depend on the batch it is in
            alone = estimator.log_likelihood(model, Batch(
                x0=batch.x0[1:2], eligible=batch.eligible[1:2],
                attention_mask=batch.attention_mask[1:2], example_index=batch.example_index[1:2]),
                seed=5, budget=2, mask_token_id=MASK)
        assert torch.equal(a, b) == shared, name
        assert torch.allclose(alone, a[1:2], atol=1e-5), name


def test_budget_must_fit_the_estimator():
    with pytest.raises(ValueError, match="multiple of 2"):
        preference_estimator("vrpo-mirror").draws(3)
    with pytest.raises(ValueError, match="unknown ELBO estimator 'bogus'"):
        preference_estimator("bogus")


def test_dpo_loss_equals_its_closed_form_and_reaches_the_policy_only():
    pw = torch.tensor([-10.0, -3.0], requires_grad=True)
    pl = torch.tensor([-12.0, -2.0], requires_grad=True)
    rw = torch.tensor([-11.0, -3.5], requires_grad=True)
    rl = torch.tensor([-11.5, -2.5], requires_grad=True)
    beta = 0.5
    loss = dpo_loss(pw, pl, rw, rl, beta)
    margins = [(-10 + 11) - (-12 + 11.5), (-3 + 3.5) - (-2 + 2.5)]  # 1.5, 0.0
    expected = [math.log1p(math.exp(-beta * m)) for m in margins]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    sig = [1 / (1 + math.exp(beta * m)) for m in margins]  # σ(−βm)
    assert pw.grad.tolist() == pytest.approx([-beta * s for s in sig], rel=1e-6)
    assert pl.grad.tolist() == pytest.approx([beta * s for s in sig], rel=1e-6)
    assert rw.grad is None and rl.grad is None


def test_dpo_gradient_through_models_reaches_the_policy_only():
    batch, policy, reference = _batch(), _model(), _model(scale=2.0)
    reference.requires_grad_(True)  # even a reference on the graph gets no gradient
    estimator = preference_estimator("vrpo")
    values = [estimator.log_likelihood(model, batch, seed=1, budget=2, mask_token_id=MASK,
                                       role=role)
              for model, role in ((policy, "policy"), (reference, "reference"))]
    dpo_loss(values[0][:2], values[0][1:], values[1][:2], values[1][1:], 0.1).mean().backward()
    assert all(p.grad is None for p in reference.parameters())
    assert sum(float(p.grad.abs().sum()) for p in policy.parameters()) > 0


def test_kto_loss_closed_form():
    policy = torch.tensor([-4.0, -6.0, -5.0])
    ref = torch.tensor([-5.0, -5.0, -5.0])
    desirable = torch.tensor([True, False, True])
    beta = 2.0
    r = [1.0, -1.0, 0.0]
    z0 = 0.0  # max(0, mean r)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1 - sig(beta * (r[0] - z0)), 1 - sig(beta * (z0 - r[1])),
                1 - sig(beta * (r[2] - z0))]
    assert kto_loss(policy, ref, desirable, beta).tolist() == pytest.approx(expected, rel=1e-6)
    shifted = kto_loss(policy, ref, desirable, beta, reference_point=0.5)
    assert float(shifted[0]) == pytest.approx(1 - sig(beta * 0.5), rel=1e-6)


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "a", "chosen": "b"}', "missing key 'rejected'"),
    ('{"prompt": "a", "chosen": "b", "rejected": 3}', "'rejected' must be a string"),
    ('{"prompt": "a", "chosen": " ", "rejected": "c"}', "'chosen' is empty"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "x": 1}', "unknown keys"),
    ('[1]', "a row must be a JSON object"),
])
def test_bad_pair_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + row + "\n")
    with pytest.raises(ValueError, match=f"pairs.jsonl:2: .*{message}"):
        load_pairs(path)


# -- maskdiff dpo end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    config = TrainConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
        data=DataConfig(n_train=32, n_val=4, n_test=4),
        optim=OptimConfig(max_steps=4, warmup_steps=1, batch_size=8),
        eval=EvalConfig(every=4, n_examples=4, rates_per_example=1, patience=0),
        log_every=4, out_dir=str(root / "run"))
    trainer = Trainer(config, quiet=True)
    trainer.fit()
    rows = []
    tok = trainer.task.tokenizer
    fits = [ex for ex in trainer.task.train
            if len(tok.encode(ex.prompt)) + len(tok.encode(ex.response)) + 2 <= 128]
    for ex in fits[:5]:
        gold = ex.response.rsplit("#### ", 1)[1]
        wrong = ex.response.rsplit("#### ", 1)[0] + "#### " + str(int(gold) + 1)
        rows.append(json.dumps({"prompt": ex.prompt, "chosen": ex.response, "rejected": wrong}))
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    return root


def _weights(out):
    return load_checkpoint(latest_checkpoint(out / "checkpoints")).weights


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_command_end_to_end_with_exact_resume(smoke_run, capsys):
    args = ["dpo", "--run", str(smoke_run / "run"), "--pairs", str(smoke_run / "pairs.jsonl"),
            "--estimator", "vrpo", "--budget", "2", "--batch-size", "2", "--steps", "3",
            "--lr", "1e-3", "--beta", "0.5"]
    assert main(args + ["--out", str(smoke_run / "a")]) == 0
    assert "3 steps" in capsys.readouterr().out
    config = DPOConfig(run=str(smoke_run / "run"), pairs=str(smoke_run / "pairs.jsonl"),
                       out_dir=str(smoke_run / "b"), estimator="vrpo", budget=2, batch_size=2,
                       steps=3, lr=1e-3, beta=0.5)
    assert train_dpo(config, stop_after=2, quiet=True)["steps"] == 2
    assert main(args + ["--out", str(smoke_run / "b")]) == 0
    a, b = _weights(smoke_run / "a"), _weights(smoke_run / "b")
    start = load_run(smoke_run / "run").model.state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the policy moved
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert _metrics(smoke_run / "a") == _metrics(smoke_run / "b")
    result = json.loads((smoke_run / "a" / "results.json").read_text())
    assert result["steps"] == 3 and result["estimator"] == "vrpo"
    # 3 steps × 2 pairs × 2 responses × budget 2, for the policy and the frozen reference
    assert result["policy_forward_passes"] == result["reference_forward_passes"] == 24
    assert load_run(smoke_run / "a", "latest").checkpoint.name == "step-000003"
    # a resume under another beta is refused in one line; so is --out at a training run
    assert main(args[:-1] + ["0.25", "--out", str(smoke_run / "b"), "--steps", "4"]) == 2
    assert "differs in beta" in capsys.readouterr().err
    assert main(args + ["--out", str(smoke_run / "run")]) == 2
    assert "is the starting run itself" in capsys.readouterr().err
    # rerunning the finished command changes nothing
    assert main(args + ["--out", str(smoke_run / "a")]) == 0
    assert all(torch.equal(a[k], _weights(smoke_run / "a")[k]) for k in a)


def test_precomputed_reference_trains_as_the_frozen_copy(smoke_run):
    config = DPOConfig(run=str(smoke_run / "run"), pairs=str(smoke_run / "pairs.jsonl"),
                       out_dir=str(smoke_run / "frozen"), estimator="lowvar", budget=2,
                       batch_size=2, steps=3, lr=1e-3, loss="kto")
    frozen = train_dpo(config, quiet=True)
    pre = train_dpo(replace(config, out_dir=str(smoke_run / "pre"), precompute_reference=True),
                    quiet=True)
    assert (smoke_run / "pre" / "reference_elbos.json").is_file()
    assert pre["reference_forward_passes"] == 5 * 2 * 2  # every pair once, not every step
    assert frozen["reference_forward_passes"] == 3 * 2 * 2 * 2
    a, b = _weights(smoke_run / "frozen"), _weights(smoke_run / "pre")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert pre["final_loss"] == pytest.approx(frozen["final_loss"], abs=1e-5)


def test_a_pair_that_does_not_fit_is_refused_naming_the_line(smoke_run, tmp_path, capsys):
    pairs = tmp_path / "long.jsonl"
    pairs.write_text('{"prompt": "1+1", "chosen": "2", "rejected": "3"}\n'
                     + json.dumps({"prompt": "1+1", "chosen": "9" * 200, "rejected": "3"}) + "\n")
    code = main(["dpo", "--run", str(smoke_run / "run"), "--pairs", str(pairs),
                 "--out", str(tmp_path / "out"), "--steps", "1"])
    assert code == 2
    assert "long.jsonl:2: chosen:" in capsys.readouterr().err


@pytest.mark.slow
def test_the_dpo_bias_benchmark_runs_and_shared_draws_are_exact_at_the_start(tmp_path):
    from scripts import load_script

    bench = load_script("benchmarks/dpo_bias.py")
    assert bench.main(["--run-steps", "6", "--pairs", "4", "--reps", "3", "--high-budget", "32",
                       "--dpo-steps", "2", "--budget", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "dpo_bias.json").read_text())
    start = result["start"]
    assert start["vrpo"]["se_delta"] == 0.0 and start["vrpo"]["beta"]["0.1"]["loss_bias"] == 0.0
    assert start["naive"]["se_delta"] > 0 and start["naive"]["beta"]["1.0"]["loss_bias"] > 0
    assert set(result["trained"]) == set(PREFERENCE_ESTIMATORS)


@pytest.mark.parametrize("name", ["naive", "vrpo-mirror", "lowvar", "sqrt-stratified-mirror"])
def test_every_estimators_gradient_is_unbiased_for_the_elbos(name, pair_of_models):
    """The draws do not depend on the weights, so E[∇B̂] = ∇B: checked along a fixed random
    direction of the parameters against the exact ELBO's gradient."""
    batch, policy, _, _ = pair_of_models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        direction = [torch.randn_like(p) for p in policy.parameters()]

    def along(value: torch.Tensor) -> float:
        grads = torch.autograd.grad(value.sum(), list(policy.parameters()))
        return float(sum((g * d).sum() for g, d in zip(grads, direction)))

    exact = along(exact_log_likelihood(policy, batch, mask_token_id=MASK, grad=True))
    estimator = PREFERENCE_ESTIMATORS[name]
    n = 60
    draws = torch.tensor([along(estimator.log_likelihood(policy, batch, seed=s, budget=4,
                                                         mask_token_id=MASK)) for s in range(n)])
    se = float(draws.std()) / math.sqrt(n)
    assert abs(float(draws.mean()) - exact) < 4 * se, (name, float(draws.mean()), exact, se)
