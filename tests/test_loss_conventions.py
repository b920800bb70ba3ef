"""The peers' loss conventions (maskdiff.core.weighting): each equals its peer on identical masks.

The peer for dllm's normalisers is dllm's own ``MDLMTrainer.compute_loss``, read from the
fixtures at run time (tests/dllm_peer.py). CART (dllm's DreamTrainer, not among the fixtures) is
plugged into that same ``compute_loss`` the way DreamTrainer does (``_compute_loss_weights``), with
the weights written out here as an explicit double loop from its definition. LLaDA's SFT loss is
its published formula (GUIDELINES.md, "SFT"), written out below.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from dllm_peer import load_mdlm, peer_loss
from maskdiff.core.batch import Batch
from maskdiff.core.config import EstimatorConfig
from maskdiff.core.masking import Masker, View
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import RateSampler
from maskdiff.core.weighting import LOSS_CONVENTIONS, cart_weights, loss_convention

V, B, L, MASK = 13, 4, 11, 12


def _same(ours, theirs) -> bool:
    """Equal to 1e-6 (relative where the loss exceeds 1: float32 sums of ~30 nats differ in
    the last bit)."""
    return abs(float(ours) - float(theirs)) < 1e-6 * max(1.0, abs(float(theirs)))


class _FixedRates(RateSampler):
    name = "fixed"

    def __init__(self, t):
        self.t, self.eps = t, 1e-3

    def target_interval(self):
        return (self.eps, 1.0)

    def sample(self, n, generator):
        return self.t.clone(), torch.ones(n)

    def sample_at(self, u, positions, global_batch_size, batch_generator):
        return self.t.clone(), torch.ones(len(self.t))



class _FixedMask(Masker):
    name = "fixed"

    def __init__(self, masked, inclusion_prob):
        self.masked, self.inclusion_prob = masked, inclusion_prob

    def views_from_uniforms(self, x0, eligible, t, uniforms, mask_token_id):
        assert not (self.masked & ~eligible).any()
        xt = torch.where(self.masked, torch.full_like(x0, mask_token_id), x0)
        return [View(xt=xt, masked=self.masked, inclusion_prob=self.inclusion_prob)]


class _Model:
    """Deterministic logits from (token, position); records what it was called with."""

    training = True

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(V, V, generator=g) * 2
        self.pos = torch.randn(L + 1, V, generator=g)
        self.inputs = []

    def raw(self, input_ids):
        self.inputs.append(input_ids.clone())
        return self.emb[input_ids] + self.pos[: input_ids.shape[1]]

    def __call__(self, input_ids=None, attention_mask=None):  # the HF calling convention
        return types.SimpleNamespace(logits=self.raw(input_ids))


def _data(seed=1, prompt_max=4):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK, (B, L), generator=g)
    prompt = torch.randint(1, prompt_max + 1, (B,), generator=g)
    lengths = torch.tensor([L, L - 3, L - 1, L - 5])  # right padding, excluded from the loss
    pos = torch.arange(L)[None, :]
    attention = pos < lengths[:, None]
    eligible = (pos >= prompt[:, None]) & attention
    labels = torch.where(eligible, x0, torch.full_like(x0, -100))
    u_t = torch.rand(B, generator=g) * 0.9 + 0.05
    u_mask = torch.rand(B, L, generator=g)
    return x0, eligible, attention, labels, u_t, u_mask


def _ours(model_fn, x0, eligible, attention, masked, inclusion_prob, t, **fields):
    config = EstimatorConfig(**fields)
    est = Estimator(rate_sampler=_FixedRates(t), masker=_FixedMask(masked, inclusion_prob),
                    mask_token_id=MASK, normalizer=config.normalizer, weighting=config.weighting,
                    cart_p=config.cart_p)
    batch = Batch(x0=x0, eligible=eligible, attention_mask=attention,
                  example_index=torch.arange(B))
    return est(model_fn, batch, torch.Generator().manual_seed(0)).loss


def _peer_and_masks(x0, labels, attention, u_t, u_mask, **kwargs):
    model = _Model()
    loss = peer_loss(model, x0, labels, attention, u_t, u_mask, mask_token_id=MASK, **kwargs)
    masked = (model.inputs[0] == MASK) & (labels != -100)
    t = 1e-3 + (1 - 1e-3) * u_t  # the peer's own rate from its uniform
    return float(loss), masked, t


@pytest.mark.parametrize("convention", ["dllm-sequence", "dllm-token", "dllm-batch"])
def test_dllm_normalisers_equal_dllm_compute_loss(convention):
    """dllm's sequence / token / batch normalisers under its default 1/t weighting."""
    norm = {"dllm-sequence": "sequence", "dllm-token": "token", "dllm-batch": "batch"}[convention]
    x0, eligible, attention, labels, u_t, u_mask = _data()
    theirs, masked, t = _peer_and_masks(x0, labels, attention, u_t, u_mask, loss_norm_type=norm)
    assert masked.any() and (masked.sum(1) > 0).sum() >= 3
    # dllm's LinearAlphaScheduler weighs by 1/(1 - alpha(t) + 1e-6): the same per-token weight
    # goes to maskdiff as the inclusion probability, so what is compared is the normalisation.
    weight = load_mdlm().LinearAlphaScheduler().weight(t)
    prob = (1.0 / weight)[:, None].expand(B, L).float()
    model = _Model()
    ours = _ours(lambda ids, att: model.raw(ids), x0, eligible, attention, masked, prob, t,
                 **loss_convention(convention).fields())
    assert _same(ours, theirs), (float(ours), theirs)
    # the other normalisers give other numbers here: the equality is not an accident
    for other in {"eligible", "token", "none"} - {loss_convention(convention).normalizer}:
        alt = _ours(lambda ids, att: model.raw(ids), x0, eligible, attention, masked, prob, t,
                    normalizer=other)
        assert abs(float(alt) - theirs) > 1e-3


def _cart_loop(masked: torch.Tensor, p: float) -> torch.Tensor:
    """Dream's CART weights from their definition, one position pair at a time: a masked
    position i gets, for every unmasked j, 0.5·p·(1−p)^(d−1−1) with d = |i−j| − 1 ≥ 1 (the
    geometric kernel of dllm's ``cart_weight``; pairs with d = 0 count 0)."""
    out = torch.zeros(masked.shape)
    for b in range(masked.shape[0]):
        for i in range(masked.shape[1]):
            if not masked[b, i]:
                continue
            for j in range(masked.shape[1]):
                d = abs(i - j) - 1
                if masked[b, j] or d <= 0:
                    continue
                out[b, i] += 0.5 * p * (1 - p) ** max(d - 1, 0)
    return out


def test_cart_weights_match_their_definition():
    g = torch.Generator().manual_seed(3)
    masked = torch.rand(5, 17, generator=g) < 0.6
    for p in (0.3, 0.1):
        assert torch.allclose(cart_weights(masked, p), _cart_loop(masked, p), atol=1e-7)


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_dream_cart_equals_dllm_with_cart_and_right_shift(norm):
    """dllm's DreamTrainer: CART weights in dllm's compute_loss, logits right-shifted; maskdiff:
    the dream-cart convention through the HF adapter's logit_shift=1."""
    from maskdiff.hf.adapter import AdapterOptions

    x0, eligible, attention, labels, u_t, u_mask = _data(seed=5)
    # every row's position 0 is a prompt token, so dllm does not prepend a BOS (its own rule)
    assert (labels[:, 0] == -100).all()
    theirs, masked, t = _peer_and_masks(
        x0, labels, attention, u_t, u_mask, loss_norm_type=norm, right_shift_logits=True,
        loss_weights=lambda m, t: _cart_loop(m, 0.3))
    model = _Model()
    options = AdapterOptions(mask_token_id=MASK, logit_shift=1)
    fields = dict(loss_convention("dream-cart").fields())
    fields["normalizer"] = "eligible" if norm == "sequence" else "token"
    ours = _ours(lambda ids, att: options.logits(model, ids, att), x0, eligible, attention,
                 masked, t[:, None].expand(B, L), t, **fields)
    assert _same(ours, theirs), (float(ours), theirs)
    elbo = _ours(lambda ids, att: options.logits(model, ids, att), x0, eligible, attention,
                 masked, t[:, None].expand(B, L), t, normalizer=fields["normalizer"])
    assert abs(float(elbo) - theirs) > 1e-3


def _llada_sft(logits, input_ids, masked, p_mask, prompt_lengths):
    """LLaDA's published SFT loss (GUIDELINES.md): CE / p_mask over masked answer tokens, each
    divided by its example's answer length (EOS padding included), summed, over the batch size."""
    pos = torch.arange(input_ids.shape[1])[None, :].expand_as(input_ids)
    answer_lengths = (pos >= prompt_lengths[:, None]).sum(-1, keepdim=True).expand_as(input_ids)
    token_loss = F.cross_entropy(logits[masked], input_ids[masked], reduction="none") / p_mask[masked]
    return torch.sum(token_loss / answer_lengths[masked]) / input_ids.shape[0]


def test_llada_sft_equals_llada_formula_and_dllm_sequence():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, MASK, (B, L), generator=g)
    prompt = torch.tensor([2, 3, 1, 4])
    pos = torch.arange(L)[None, :]
    eligible = pos >= prompt[:, None]  # the answer, its EOS padding included (pad_policy eos)
    attention = torch.ones(B, L, dtype=torch.bool)
    u_t, eps = torch.rand(B, generator=g), 1e-3
    p_mask = ((1 - eps) * u_t + eps)[:, None].expand(B, L)
    masked = (torch.rand(B, L, generator=g) < p_mask) & eligible
    model = _Model()
    logits = model.raw(torch.where(masked, MASK, x0))
    reference = float(_llada_sft(logits, x0, masked, p_mask, prompt))
    ours = _ours(lambda ids, att: model.raw(ids), x0, eligible, attention, masked, p_mask,
                 p_mask[:, 0], **loss_convention("llada-sft").fields())
    assert _same(ours, reference), (float(ours), reference)
    # and it is dllm's "sequence" normaliser on the same answer mask
    labels = torch.where(eligible, x0, torch.full_like(x0, -100))
    theirs, peer_masked, t = _peer_and_masks(x0, labels, attention, u_t, torch.rand(B, L, generator=g),
                                             loss_norm_type="sequence", loss_weight_type="uniform")
    flat = _ours(lambda ids, att: _Model().raw(ids), x0, eligible, attention, peer_masked,
                 t[:, None].expand(B, L), t, normalizer="eligible", weighting="uniform")
    assert _same(flat, theirs)


def test_llada_pretrain_divides_by_batch_times_length():
    x0 = torch.randint(0, MASK, (B, L), generator=torch.Generator().manual_seed(2))
    eligible = torch.ones(B, L, dtype=torch.bool)
    p = torch.full((B, L), 0.5)
    masked = torch.rand(B, L, generator=torch.Generator().manual_seed(4)) < 0.5
    model = _Model()
    logits = model.raw(torch.where(masked, MASK, x0))
    reference = float((F.cross_entropy(logits[masked], x0[masked], reduction="none") / 0.5).sum()
                      / (B * L))
    ours = _ours(lambda ids, att: _Model().raw(ids), x0, eligible, eligible, masked, p, p[:, 0],
                 **loss_convention("llada-pretrain").fields())
    assert _same(ours, reference)


def test_conventions_are_named_and_validated():
    assert {"dllm-sequence", "dllm-token", "dream-cart", "llada-sft"} <= set(LOSS_CONVENTIONS)
    config = EstimatorConfig().with_convention("dream-cart")
    assert (config.normalizer, config.weighting, config.cart_p) == ("token", "cart", 0.3)
    est = config.build(mask_token_id=3)
    assert (est.normalizer, est.weighting) == ("token", "cart")
    with pytest.raises(ValueError, match="loss convention 'dream' is not one of"):
        EstimatorConfig().with_convention("dream")
    with pytest.raises(ValueError, match="estimator.weighting='cat' is not one of"):
        EstimatorConfig(weighting="cat")
    with pytest.raises(ValueError, match="estimator.cart_p must lie in"):
        EstimatorConfig(weighting="cart", cart_p=1.5)
    assert math.isclose(EstimatorConfig(weighting="uniform").cart_p, 0.3)


def test_native_train_takes_a_loss_convention(tmp_path):
    """`maskdiff train --loss-convention dream-cart` sets estimator.normalizer and .weighting,
    and the native trainer trains with CART weights."""
    from maskdiff.cli import build_parser
    from maskdiff.commands.train import build_config
    from maskdiff.training.trainer import Trainer

    argv = ["train", "--preset", "small", "--loss-convention", "dream-cart", "--steps", "3",
            "--batch-size", "8", "--out", str(tmp_path / "run"),
            "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
            "--set", "data.n_train=32", "--set", "data.n_val=8", "--set", "data.n_test=8",
            "--set", "eval.every=3", "--set", "eval.n_examples=8",
            "--set", "eval.rates_per_example=1", "--set", "optim.warmup_steps=1"]
    config = build_config(build_parser().parse_args(argv))
    assert (config.estimator.normalizer, config.estimator.weighting) == ("token", "cart")
    trainer = Trainer(config, quiet=True)
    assert trainer.estimator.weighting == "cart"
    result = trainer.fit()
    assert result.steps == 3
    saved = (tmp_path / "run" / "config.json").read_text()
    assert '"weighting": "cart"' in saved


def test_hf_trainer_takes_a_loss_convention(tmp_path):
    transformers = pytest.importorskip("transformers")
    from maskdiff.hf import MaskedDiffusionTrainer, method_estimator

    config = transformers.BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    rows = [{"input_ids": [5, 6, 7] + [8 + i % 5] * 6, "eligible": [0, 0, 0] + [1] * 6}
            for i in range(8)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
        per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
        disable_tqdm=True, seed=3, dataloader_num_workers=0)
    estimator = method_estimator("standard", loss_convention="dream-cart")
    assert (estimator.normalizer, estimator.weighting) == ("token", "cart")
    trainer = MaskedDiffusionTrainer(model=model, args=args, train_dataset=rows,
                                     mask_token_id=31, pad_token_id=0, estimator=estimator)
    assert (trainer.estimator.normalizer, trainer.estimator.weighting) == ("token", "cart")
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
