"""Block diffusion's objective (docs/method.md §12): the layout, per-block rates, the estimators
per block, the b = L reduction, seeding and exact resumption."""

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from maskdiff.core.batch import Batch
from maskdiff.core.blocks import BlockLayout, block_attention_mask
from maskdiff.core.gradient_proxy import logit_gradient_norms
from maskdiff.core.masking import Bernoulli, Mirror
from maskdiff.core.methods import method_config
from maskdiff.core.objective import Estimator, masked_token_losses, normalizer_counts
from maskdiff.core.samplers import Stratified, Uniform
from maskdiff.core.seeding import BatchRandomness
from maskdiff.models.transformer import Transformer, TransformerConfig
from maskdiff.training.config import ModelConfig, TrainConfig
from maskdiff.training.trainer import Trainer
from tiny import tiny

BD3LM = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "models" / \
    "dllm_ref" / "bd3lm.py"
MASK = 19


def _model(seed=0, max_len=16):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=20, max_len=max_len, d_model=32, n_layers=2,
                                         n_heads=2, mask_token_id=MASK)).eval()


def _batch(length=12, padded=True, prompt=0):
    x0 = torch.randint(0, MASK, (3, length), generator=torch.Generator().manual_seed(1))
    real = torch.ones(3, length, dtype=torch.bool)
    if padded:
        real[2, length - 3:] = False
    eligible = real.clone()
    eligible[:, :prompt] = False
    return Batch(x0=x0, eligible=eligible, attention_mask=real, example_index=torch.arange(3))


def _spec_mask(length: int, b: int) -> torch.Tensor:
    """docs/method.md §12 written out, position by position."""
    out = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_clean, k_clean = q >= length, k >= length
            bq, bk = (q % length) // b, (k % length) // b
            if not q_clean:
                out[q, k] = (not k_clean and bq == bk) or (k_clean and bk < bq)
            else:
                out[q, k] = k_clean and bk <= bq
    return out


@pytest.mark.parametrize("length,b", [(1, 1), (4, 1), (5, 2), (6, 3), (7, 4), (8, 8), (6, 10)])
def test_the_mask_equals_its_closed_form(length, b):
    assert torch.equal(block_attention_mask(length, b), _spec_mask(length, b))


def test_the_mask_equals_dllms():
    if not BD3LM.exists():
        pytest.skip(f"{BD3LM} is absent (the shared fixtures are not on this machine)")
    tree = ast.parse(BD3LM.read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                and n.name == "_create_bd3lm_attention_mask")
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[func], type_ignores=[]), str(BD3LM), "exec"), namespace)
    for length, b in [(6, 2), (8, 4), (7, 3), (4, 4)]:
        theirs = namespace["_create_bd3lm_attention_mask"](
            None, None, torch.arange(2 * length)[:, None], torch.arange(2 * length)[None, :],
            block_size=b, n=length)
        assert torch.equal(block_attention_mask(length, b), theirs), (length, b)


@pytest.mark.parametrize("masker", [Bernoulli(), Mirror()])
@pytest.mark.parametrize("normalizer", ["eligible", "sequence", "token", "none"])
def test_one_block_is_the_plain_masked_diffusion_loss(masker, normalizer):
    model, batch = _model(), _batch(prompt=2)
    randomness = BatchRandomness.for_batch(7, 3, [0, 1, 2])
    plain = Estimator(rate_sampler=Uniform(), masker=masker, mask_token_id=MASK,
                      normalizer=normalizer)(model, batch, randomness)
    for b in (12, 40):  # b = L, and b > L
        block = Estimator(rate_sampler=Uniform(), masker=masker, mask_token_id=MASK,
                          normalizer=normalizer, layout=BlockLayout(b))(model, batch, randomness)
        assert block.units == 1 and block.input_factor == 2
        assert torch.equal(block.t, plain.t) and torch.equal(block.w, plain.w)
        assert block.masked_count == plain.masked_count
        # Same masks and inputs; SDPA reduces over 2L keys (L of them hidden): rounding only.
        torch.testing.assert_close(block.values, plain.values, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(block.loss, plain.loss, rtol=1e-6, atol=1e-6)


def test_per_block_losses_weight_each_block_by_its_own_rate():
    model, batch = _model(), _batch()
    layout = BlockLayout(5)  # 12 positions: blocks of 5, 5 and 2
    estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK,
                          layout=layout)
    randomness = BatchRandomness.for_batch(3, 0, [0, 1, 2])
    out = estimator(model, batch, randomness)
    assert out.units == 3 and out.t.shape == (9,)
    t, w, (view,) = estimator.draw(batch, randomness)
    assert torch.equal(t, out.t)
    rates = t.view(3, 3)[:, torch.arange(12) // 5]
    assert torch.equal(view.inclusion_prob, rates)  # each token carries its block's rate
    with torch.no_grad():
        inputs = layout.inputs(view.xt, batch.x0, batch.attention_mask)
        logits = model(inputs.input_ids, inputs.attention_mask, position_ids=inputs.position_ids)
        ce = torch.nn.functional.cross_entropy(logits[:, :12].transpose(1, 2), batch.x0,
                                               reduction="none")
    counts = batch.eligible.sum(1).float()
    for i in range(3):
        for k, (lo, hi) in enumerate([(0, 5), (5, 10), (10, 12)]):
            masked = view.masked[i, lo:hi]
            expected = 3 * float((ce[i, lo:hi] * masked).sum()) / float(t[3 * i + k]) / counts[i]
            assert abs(float(out.raw_loss[3 * i + k]) - expected) < 1e-4 * max(1.0, expected)
    # The mean over units is the per-example loss summed over blocks.
    torch.testing.assert_close(out.example_values, out.values.view(3, 3).mean(1))
    torch.testing.assert_close(out.loss, out.example_values.mean())


def test_mirror_complements_within_every_block():
    batch = _batch(length=16, padded=False)
    estimator = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK,
                          layout=BlockLayout(4))
    for step in range(20):
        t, _, (first, second) = estimator.draw(batch, BatchRandomness.for_batch(5, step, [0, 1, 2]))
        t = t.view(3, 4)
        for i in range(3):
            for k in range(4):
                a, b = first.masked[i, 4 * k:4 * k + 4], second.masked[i, 4 * k:4 * k + 4]
                if t[i, k] <= 0.5:
                    assert not (a & b).any()  # disjoint below 1/2
                else:
                    assert (a | b).all()  # and together cover the block above it
                assert torch.equal(first.inclusion_prob[i, 4 * k:4 * k + 4],
                                   t[i, k].expand(4).float())


def test_block_rates_are_per_example_and_per_block_whatever_the_batch():
    estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK,
                          layout=BlockLayout(4))
    batch = _batch(padded=False)
    whole, _, (view,) = estimator.draw(batch, BatchRandomness.for_batch(9, 4, [10, 11, 12]))
    alone = Batch(x0=batch.x0[1:2], eligible=batch.eligible[1:2],
                  attention_mask=batch.attention_mask[1:2], example_index=torch.tensor([11]))
    one, _, (view_one,) = estimator.draw(alone, BatchRandomness.for_batch(9, 4, [11], [1], 3))
    assert torch.equal(one, whole[3:6]) and torch.equal(view_one.masked, view.masked[1:2])
    assert len(set(whole.view(3, 3)[0].tolist())) == 3  # the blocks draw different rates
    sequence = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK,
                         layout=BlockLayout(4, rates="sequence"))
    t_seq, _, (view_seq,) = sequence.draw(batch, BatchRandomness.for_batch(9, 4, [10, 11, 12]))
    assert t_seq.shape == (3,) and torch.equal(t_seq, whole.view(3, 3)[:, 0])


def test_strats_stratifies_the_blocks_of_the_global_batch():
    estimator = Estimator(rate_sampler=Stratified(), masker=Bernoulli(), mask_token_id=MASK,
                          layout=BlockLayout(3))
    batch = _batch(padded=False)  # 3 examples x 4 blocks = 12 units: k = 4 strata of 3
    t, _, _ = estimator.draw(batch, BatchRandomness.for_batch(2, 0, [0, 1, 2]))
    strata = torch.floor((t.double() - 1e-3) / (1 - 1e-3) * 4).long().clamp(max=3)
    assert torch.bincount(strata, minlength=4).tolist() == [3, 3, 3, 3]


def test_the_block_loss_is_unbiased_whichever_rate_unit():
    """Per-block and per-sequence rates estimate the same block ELBO (docs/method.md §12)."""
    model, batch = _model(), _batch()
    means = {}
    for rates in ("block", "sequence"):
        estimator = Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK,
                              layout=BlockLayout(4, rates))
        with torch.no_grad():
            draws = torch.stack([estimator(model, batch, BatchRandomness.for_batch(0, s, [0, 1, 2]))
                                 .example_values.double() for s in range(400)])
        means[rates] = (draws.mean(0), draws.std(0) / 20)
    (a, sa), (b, sb) = means["block"], means["sequence"]
    assert ((a - b).abs() < 4 * (sa ** 2 + sb ** 2).sqrt()).all(), (a, b, sa, sb)


def test_noisy_blocks_never_see_the_clean_tokens_they_predict():
    model, layout = _model(), BlockLayout(4)
    x0 = torch.randint(0, MASK, (1, 12), generator=torch.Generator().manual_seed(3))
    xt = x0.clone()
    xt[0, 4:8] = MASK  # block 1 fully masked
    changed = x0.clone()
    changed[0, 4:] = (changed[0, 4:] + 1) % MASK  # the clean tokens of blocks 1 and 2
    with torch.no_grad():
        def noisy(clean):
            inputs = layout.inputs(xt, clean, None)
            return model(inputs.input_ids, inputs.attention_mask,
                         position_ids=inputs.position_ids)[:, :12]
        a, b = noisy(x0), noisy(changed)
    assert torch.equal(a[:, :8], b[:, :8])  # blocks 0 and 1 see clean blocks before them only
    assert not torch.allclose(a[:, 8:], b[:, 8:])  # block 2 sees clean block 1


def test_the_per_block_gradient_proxy_is_the_norm_of_each_blocks_logit_gradient():
    model, batch = _model(), _batch()
    layout = BlockLayout(5)
    estimator = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK,
                          layout=layout, grad_proxy="logits")
    randomness = BatchRandomness.for_batch(1, 2, [0, 1, 2])
    out = estimator(model, batch, randomness)
    t, _, views = estimator.draw(batch, randomness)
    logits = [z.detach().requires_grad_(True)
              for z in estimator.forward_views(model, views, batch.attention_mask, batch.x0)]
    counts = normalizer_counts(batch.eligible, "eligible")
    unit = torch.stack([layout.unit_sums(masked_token_losses(z, batch.x0, v)) / (counts[:, None] / 3)
                        for z, v in zip(logits, views)]).mean(0).reshape(-1)
    for u in range(9):
        grads = torch.autograd.grad(unit[u], logits, retain_graph=True)
        expected = torch.sqrt(sum((g * g).sum() for g in grads))
        assert abs(float(out.grad_proxy[u]) - float(expected)) < 1e-4 * max(1.0, float(expected))
    assert logit_gradient_norms  # the per-example proxy the block one reuses


def _tiny(tmp_path, **overrides) -> TrainConfig:
    return tiny(tmp_path, **{"block_size": 4, "checkpoint_every": 2, **overrides})


@pytest.mark.parametrize("method", ["mirror", "ema", "strats"])
def test_block_training_resumes_bit_identically(tmp_path, method):
    config = _tiny(tmp_path, estimator=method_config(method))
    straight = Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True)
    result = straight.fit()
    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=3)
    resumed = Trainer(interrupted, quiet=True)
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    rows = [[{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("a", "b")]
    assert rows[0] == rows[1]
    # Compute counters count examples (not blocks) and the 2L-token input.
    assert result.forward_passes == 6 * 8 * (2 if method == "mirror" else 1)


def test_block_size_is_refused_for_the_causal_twin():
    with pytest.raises(ValueError, match="causal twin"):
        TrainConfig(model=ModelConfig(causal=True), block_size=4)
    with pytest.raises(ValueError, match="block_rates"):
        TrainConfig(block_size=4, block_rates="token")


def test_online_ppots_tracks_one_rate_per_block(tmp_path):
    config = _tiny(tmp_path, estimator=method_config("ppots_online"), checkpoint_every=0)
    trainer = Trainer(config, quiet=True)
    trainer.fit()
    expected = 0
    for step in range(6):
        batch = trainer.collate([(i, trainer.task.train[i])
                                 for i in trainer.order.global_batch(step, 8)])
        expected += 8 * -(-batch.x0.shape[1] // 4)
    count = trainer.refitter.tracker.moments()["count"].sum()
    assert count == expected and expected > 6 * 8 * 2


def test_train_block_size_on_the_command_line(tmp_path, capsys):
    from maskdiff.cli import main

    out = tmp_path / "bd3"
    assert main(["train", "--preset", "smoke", "--method", "mirror", "--block-size", "4",
                 "--block-rates", "sequence", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["block_size"], config["block_rates"]) == (4, "sequence")
    result = json.loads((out / "results.json").read_text())
    assert result["forward_passes"] == 3 * config["optim"]["batch_size"] * 2  # MIRROR: 2 views
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--block-size", "4", "--block-rates", "token"])
    assert main(["train", "--preset", "smoke", "--block-size", "0", "--out",
                 str(tmp_path / "bad")]) != 0
    assert "train.block_size" in capsys.readouterr().err


def test_flex_attention_computes_what_sdpa_computes(monkeypatch):
    """models/flex.py: the block-sparse path (unfused on a CPU, forward only there) against SDPA."""
    from maskdiff.models import flex

    if flex.flex_attention is None:
        pytest.skip(f"torch {torch.__version__} has no flex attention")
    model, batch = _model(max_len=40), _batch(length=37)
    estimator = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK,
                          layout=BlockLayout(5))
    values = {}
    for choice in ("sdpa", "flex"):
        monkeypatch.setenv(flex.ENV, choice)
        with torch.no_grad():
            values[choice] = estimator(model, batch, BatchRandomness.for_batch(0, 1, [0, 1, 2])).values
    torch.testing.assert_close(values["flex"], values["sdpa"], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(flex.ENV, "auto")
    assert not flex.use_flex(torch.device("cpu"))  # a CPU keeps SDPA unless asked
    monkeypatch.setenv(flex.ENV, "fast")
    with pytest.raises(ValueError, match="MASKDIFF_ATTENTION='fast'"):
        flex.use_flex(torch.device("cpu"))
