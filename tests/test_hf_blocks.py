"""Block diffusion through the Hugging Face trainer (issue 25 item 4, docs/huggingface.md).

``MaskedDiffusionTrainer(block_size=N, block_rates=...)`` trains the real LLaDA2 model code (the
fixture, a tiny random config) through its 4-D attention mask:

- on identical masks its loss equals dllm's own ``BD3LMTrainer.compute_loss`` (read at run
  time, tests/dllm_peer.py) under the matching convention (``dllm-sequence``, one rate per
  sequence: ``block_rates="sequence"``). dllm's bd3lm builds its mask without the padding
  mask, so the comparison runs on unpadded batches;
- ``block_size >= L`` is the plain HF loss (and evaluation), to 1e-5;
- a 3-step run logs per-(example, block) statistics and evaluates the block ELBO; a resumed run
  reaches the uninterrupted one's weights exactly;
- families that cannot take the block inputs (LLaDA: a 2-D mask only; Dream: shifted logits)
  are refused in one line before training.

Every test skips with one line where the fixtures are absent.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from dllm_peer import dllm_ref_dir, peer_bd3lm_loss
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.config import EstimatorConfig
from maskdiff.core.seeding import BatchRandomness
from maskdiff.hf import MaskedDiffusionCollator, MaskedDiffusionTrainer
from maskdiff.hf.collate import batch_from_inputs
from maskdiff.training.evaluate import stratified_elbo, stratified_estimators
from test_hf_families import MASK, PAD, VOCAB, family_dirs, load, needs_fixtures, rows, train_args  # noqa: F401

B, L = 4, 12
DLLM = EstimatorConfig().with_convention("dllm-sequence")


def _inputs(padded: bool = False, size: int = B, length: int = L) -> dict:
    """A collated batch: prompts of 1..4 tokens (never eligible) then a response; unpadded
    (every row ``length`` tokens) unless ``padded``."""
    g = torch.Generator().manual_seed(11)
    out, full = [], length
    for i, prompt in enumerate([1, 3, 2, 4][:size]):
        length = full - (i % 2) * 3 if padded else full
        ids = torch.randint(4, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "eligible": [0] * prompt + [1] * (length - prompt),
                    "example_index": i})
    return MaskedDiffusionCollator(PAD)(out)


def _trainer(path, tmp_path, **kw):
    adapter, _, _ = load(path)
    kw.setdefault("estimator", DLLM)
    return MaskedDiffusionTrainer(model=adapter, args=train_args(tmp_path, max_steps=1), **kw)


def _loss(trainer, inputs, randomness=None) -> float:
    """The trainer's compute_loss in eval mode, on ``randomness`` when given."""
    if randomness is not None:
        trainer.randomness = lambda example_index, step=None: randomness
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, inputs))


@needs_fixtures
@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_block_loss_equals_dllm_bd3lm_compute_loss(family_dirs, tmp_path, block_size):
    dllm_ref_dir()  # one-line skip without dllm's reference
    trainer = _trainer(family_dirs["llada2_moe"], tmp_path, block_size=block_size,
                       block_rates="sequence")
    model = trainer.model
    assert model.config._attn_implementation == "sdpa"  # dllm's tensor-mask path
    inputs = _inputs()
    batch = batch_from_inputs(inputs)
    assert bool(batch.attention_mask.all())  # unpadded: dllm's bd3lm ignores padding
    randomness = BatchRandomness.for_batch(seed=5, step=2, example_indices=range(B))
    u_t, u_mask = randomness.rate_uniforms().float(), randomness.mask_uniforms(1, L)[0]
    # every rate above 0.2: dllm's weight 1/(t + 1e-6) is maskdiff's 1/t to 5e-6 relative
    assert float(1e-3 + (1 - 1e-3) * u_t.min()) > 0.2
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append({k: kwargs[k].clone() for k in
                                             ("input_ids", "attention_mask", "position_ids")}),
        with_kwargs=True)
    try:
        ours = _loss(trainer, inputs, randomness)
        labels = torch.where(batch.eligible, batch.x0, torch.full_like(batch.x0, -100))
        with torch.no_grad():
            theirs = float(peer_bd3lm_loss(model, batch.x0, labels, u_t, u_mask,
                                           mask_token_id=MASK, block_size=block_size))
    finally:
        hook.remove()
    mine, dllm = seen
    # the same [xt ; x0], the same three-part mask and position ids reached the model
    assert mine["input_ids"].shape == (B, 2 * L)
    assert torch.equal(mine["input_ids"], dllm["input_ids"])
    assert int((mine["input_ids"][:, :L] == MASK).sum()) >= 8
    assert torch.equal(mine["attention_mask"], dllm["attention_mask"].expand(B, 1, 2 * L, 2 * L))
    assert torch.equal(mine["position_ids"], dllm["position_ids"])
    assert math.isfinite(ours) and abs(ours - math.log(VOCAB)) < 2.5
    print(f"block_size={block_size}: maskdiff {ours:.7f} dllm {theirs:.7f}")  # pytest -s
    assert abs(ours - theirs) < 1e-5 * abs(theirs), (block_size, ours, theirs)
    # another block size gives another number
    other = _trainer(family_dirs["llada2_moe"], tmp_path / "o", block_size=block_size + 1,
                     block_rates="sequence")
    assert abs(_loss(other, inputs, randomness) - theirs) > 1e-4


@needs_fixtures
@pytest.mark.parametrize("rates", ["block", "sequence"])
def test_block_size_at_least_L_is_the_plain_loss_and_evaluation(family_dirs, tmp_path, rates):
    inputs = _inputs(padded=True)
    plain = _trainer(family_dirs["llada2_moe"], tmp_path / "p")
    values = [_loss(plain, inputs)]
    evals = [float(plain.prediction_step(plain.model, inputs, True)[0])]
    for size in (L, 2 * L):
        trainer = _trainer(family_dirs["llada2_moe"], tmp_path / str(size), block_size=size,
                           block_rates=rates)
        values.append(_loss(trainer, inputs))
        evals.append(float(trainer.prediction_step(trainer.model, inputs, True)[0]))
    assert all(abs(v - values[0]) < 1e-5 for v in values), values
    assert all(abs(v - evals[0]) < 1e-5 for v in evals), evals
    assert abs(values[0] - math.log(VOCAB)) < 2.5


@needs_fixtures
def test_evaluation_is_the_block_elbo(family_dirs, tmp_path):
    trainer = _trainer(family_dirs["llada2_moe"], tmp_path, block_size=4)
    inputs = _inputs(padded=True)
    trainer.model.eval()
    got = float(trainer.prediction_step(trainer.model, inputs, True)[0])
    batch = batch_from_inputs(inputs)
    layout = BlockLayout(4, "block")
    estimators = stratified_estimators(mask_token_id=MASK, rates_per_example=4, layout=layout)
    expected = float(stratified_elbo(trainer.adapter(trainer.model), batch, estimators, 1234).mean())
    assert abs(got - expected) < 1e-6, (got, expected)
    plain = stratified_estimators(mask_token_id=MASK, rates_per_example=4)
    assert abs(got - float(stratified_elbo(trainer.adapter(trainer.model), batch, plain,
                                           1234).mean())) > 1e-4


def _run(out, path, *, steps: int, seed: int = 0, **kw):
    adapter, _, _ = load(path)
    if seed:
        torch.manual_seed(seed)
        for p in adapter.model.parameters():  # another init: a checkpoint must override it
            p.data.add_(0.01 * torch.randn_like(p))
    data = rows(8)
    args = train_args(out, max_steps=steps, per_device_train_batch_size=4, logging_steps=1,
                      save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=3,
                      per_device_eval_batch_size=8)
    return MaskedDiffusionTrainer(model=adapter, args=args, train_dataset=data,
                                  eval_dataset=data, seed=7, block_size=4, **kw)


@needs_fixtures
def test_three_steps_log_block_units_and_resume_exactly(family_dirs, tmp_path):
    path = family_dirs["llada2_moe"]
    straight = _run(tmp_path / "a", path, steps=3)
    collected, shapes = [], []
    finish, compute = straight._finish_step, straight.compute_loss

    def spy_finish():
        collected.append(list(straight._pending))
        finish()

    def spy_compute(model, inputs, *args, **kw):
        if model.training:
            shapes.append((tuple(inputs["input_ids"].shape), int(inputs["attention_mask"].sum())))
        return compute(model, inputs, *args, **kw)

    straight._finish_step, straight.compute_loss = spy_finish, spy_compute
    straight.train()
    assert straight.state.global_step == 3 and len(collected) == 3 and len(shapes) == 3
    for (stats,), ((size, length), real) in zip(collected, shapes):
        # one entry per (example, block): 4 examples of ceil(L / 4) blocks; the model read
        # [xt ; x0], twice the real tokens
        assert (size, stats.examples, len(stats)) == (4, 4, 4 * -(-length // 4)), (stats, length)
        assert length > 4 and stats.tokens == 2 * real
    logs = [h for h in straight.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs)
    assert all(k.startswith("loss_per_t_bin_") or k in {"loss", "masked_ce", "tokens_per_s",
               "variance_proxy", "grad_norm", "learning_rate", "epoch", "step"} for k in logs[0])
    evals = [h["eval_loss"] for h in straight.state.log_history if "eval_loss" in h]
    assert len(evals) == 1 and math.isfinite(evals[0])
    resumed = _run(tmp_path / "b", path, steps=3, seed=5)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 3
    theirs = resumed.model.state_dict()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(theirs[name], value, atol=1e-6, rtol=0, msg=name)
    assert [h["loss"] for h in resumed.state.log_history if "loss" in h][-1] == logs[-1]["loss"]
    # a checkpoint of a block run cannot be resumed without the layout
    wrong = _run(tmp_path / "c", path, steps=3, block_rates="sequence")
    with pytest.raises(ValueError, match=r"maskdiff_state.pt: the checkpoint was trained with "
                       r"block layout \{'block_size': 4, 'rates': 'block'\}"):
        wrong.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))


@needs_fixtures
def test_families_without_block_inputs_are_refused_in_one_line(family_dirs, tmp_path):
    cases = {
        "llada": r"^LLaDA: its model code takes a 2-D attention mask only \(no position_ids\); "
                 r"block training \(block_size=4\) needs a \(B, 1, 2L, 2L\) boolean attention "
                 r"mask and position_ids \(LLaDA2 takes them\)$",
        "dream": r"^Dream: block training \(block_size=4\) is refused with logit_shift=1: ",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            _trainer(family_dirs[name], tmp_path / name, block_size=4)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"^LLaDA2: block training \(block_size=4\) needs .* "
                       r"pass attention='4d' \(this adapter has attention='2d'\)$"):
        adapter, _, _ = load(family_dirs["llada2_moe"])
        MaskedDiffusionTrainer(model=adapter.model, args=train_args(tmp_path), attention="2d",
                               block_size=4)
    adapter, _, _ = load(family_dirs["llada2_moe"])
    adapter.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"attn_implementation='flash_attention_2' does not take"):
        MaskedDiffusionTrainer(model=adapter, args=train_args(tmp_path), block_size=4)
    # a built estimator brings its own layout; a different block_size is refused
    estimator = DLLM.build(mask_token_id=MASK, layout=BlockLayout(4))
    with pytest.raises(ValueError, match=r"block_size=8 with a built estimator"):
        _trainer(family_dirs["llada2_moe"], tmp_path / "e", estimator=estimator, block_size=8)
    trainer = _trainer(family_dirs["llada2_moe"], tmp_path / "f", estimator=estimator)
    assert trainer.layout == BlockLayout(4)


@needs_fixtures
def test_adapter_takes_a_pattern_only_in_the_4d_format(family_dirs):
    adapter, _, _ = load(family_dirs["llada2_moe"])
    x0 = torch.randint(4, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    inputs = BlockLayout(3).inputs(x0, x0, None)
    with torch.no_grad():
        ours = adapter(inputs.input_ids, inputs.attention_mask, inputs.position_ids)
        raw = adapter.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                            position_ids=inputs.position_ids).logits
    torch.testing.assert_close(ours, raw, rtol=0, atol=0)
    two_d = type(adapter)(adapter.model, dataclasses.replace(adapter.options, attention="2d"))
    with pytest.raises(ValueError, match=r"a 4-D attention pattern \(block diffusion\) needs "
                       r"attention='4d' and logit_shift=0"):
        two_d(inputs.input_ids, inputs.attention_mask, inputs.position_ids)


@needs_fixtures
def test_the_hf_training_example_takes_block_size(family_dirs, tmp_path):
    """examples/sft_llada_8b.py --block-size on LLaDA2 (2 full fine-tuning steps, P-POTS estimated
    at start-up on the plain objective); on LLaDA the one-line refusal."""
    import json
    import runpy
    from pathlib import Path

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {a} plus two", "response": b}) + "\n"
                            for a, b in [("one", "three"), ("two", "four"), ("five", "seven"),
                                         ("six", "eight")]))
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "sft_llada_8b.py"))
    argv = ["--data", str(data), "--full", "--batch-size", "2", "--grad-accum", "1", "--steps", "2",
            "--warmup-steps", "0", "--save-steps", "2", "--device", "cpu", "--no-bf16",
            "--ppots-examples", "2", "--ppots-rates", "8", "--ppots-masks", "1",
            "--ppots-restarts", "1", "--block-size", "4", "--block-rates", "sequence"]
    out = tmp_path / "run"
    assert script["main"](["--model", str(family_dirs["llada2_moe"]),
                           "--output-dir", str(out)] + argv) == 0
    state = torch.load(out / "checkpoint-2" / "maskdiff_state.pt", weights_only=False)
    assert json.loads(state["layout"]) == {"block_size": 4, "rates": "sequence"}
    with pytest.raises(ValueError, match=r"^LLaDA: its model code takes a 2-D attention mask"):
        script["main"](["--model", str(family_dirs["llada"]), "--output-dir",
                        str(tmp_path / "llada")] + argv)


def _flex_copy(model):
    """``model`` rebuilt with ``attn_implementation="flex_attention"`` (its own code reads the
    choice at construction), with the same weights."""
    from maskdiff.hf import compat

    config = copy.deepcopy(model.config)
    config._attn_implementation = "flex_attention"
    with compat.loading(config, trust_remote_code=True):
        flex = type(model)(config)
    flex.load_state_dict(model.state_dict())
    assert flex.model._use_flex_attention
    return flex.eval()


@needs_fixtures
@pytest.mark.slow
def test_flex_attention_gets_a_block_mask_and_equals_dllm_and_sdpa(family_dirs, tmp_path):
    """A flex-attention LLaDA2: the adapter hands it the pattern as a flex BlockMask (its flex path
    crashes on a tensor mask); the loss equals the SDPA model's and dllm's own flex path (the
    forward only: flex attention has no backward on the CPU). Slow: transformers compiles flex attention (inductor, a C++ compiler on
    the CPU). B=2, L=8: on the CPU torch 2.13's compiled flex kernel fails for 2L=24 (a C++
    compile error, 'cur_kvSplitSize5' not declared, or NaN logits), a torch bug."""
    dllm_ref_dir()
    sdpa = _trainer(family_dirs["llada2_moe"], tmp_path / "s", block_size=4, block_rates="sequence")
    adapter, _, _ = load(family_dirs["llada2_moe"])
    flex = _flex_copy(adapter.model)
    trainer = MaskedDiffusionTrainer(model=type(adapter)(flex, adapter.options),
                                     args=train_args(tmp_path / "f", max_steps=1), estimator=DLLM,
                                     block_size=4, block_rates="sequence")
    inputs = _inputs(size=2, length=8)
    batch = batch_from_inputs(inputs)
    randomness = BatchRandomness.for_batch(seed=5, step=2, example_indices=range(2))
    u_t, u_mask = randomness.rate_uniforms().float(), randomness.mask_uniforms(1, 8)[0]
    ours, reference = _loss(trainer, inputs, randomness), _loss(sdpa, inputs, randomness)
    labels = torch.where(batch.eligible, batch.x0, torch.full_like(batch.x0, -100))
    with torch.no_grad():
        theirs = float(peer_bd3lm_loss(flex, batch.x0, labels, u_t, u_mask, mask_token_id=MASK,
                                       block_size=4))
    print(f"flex: maskdiff {ours:.7f} (sdpa {reference:.7f}) dllm {theirs:.7f}")  # pytest -s
    assert abs(ours - reference) < 1e-5 * abs(reference), (ours, reference)
    assert abs(ours - theirs) < 1e-5 * abs(theirs), (ours, theirs)
    # no backward here: torch 2.13's FlexAttention "does not support backward on CPU"


@needs_fixtures
def test_block_rates_loss_by_hand_with_dllms_mask(family_dirs, tmp_path):
    """``block_rates="block"``: each block its own rate (no dllm peer: its bd3lm draws one t per
    sequence). The trainer's loss equals a hand computation on the model called with dllm's own
    three-part mask function (bd3lm.py): Σ over masked tokens of CE / t_block, per example over
    its eligible count, averaged over the batch."""
    from dllm_peer import load_bd3lm

    dllm_ref_dir()
    trainer = _trainer(family_dirs["llada2_moe"], tmp_path, block_size=5)
    inputs = _inputs()
    batch = batch_from_inputs(inputs)
    randomness = BatchRandomness.for_batch(seed=5, step=2, example_indices=range(B))
    ours = _loss(trainer, inputs, randomness)
    t, _, views = trainer.estimator.draw(batch, randomness)
    t = t.view(B, 3)  # ceil(12 / 5) blocks, one rate each
    assert float((t.max(dim=1).values - t.min(dim=1).values).min()) > 1e-3
    index = torch.arange(2 * L)
    mask = load_bd3lm()._create_bd3lm_attention_mask(None, None, index[:, None], index[None, :],
                                                     block_size=5, n=L)
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.cat([views[0].xt, batch.x0], dim=1),
                               attention_mask=mask[None, None].expand(B, 1, 2 * L, 2 * L),
                               position_ids=index.remainder(L)[None].expand(B, 2 * L)).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :L].transpose(1, 2), batch.x0,
                                           reduction="none")
    token_t = t[:, torch.arange(L) // 5]
    by_hand = (ce * views[0].masked / token_t).sum(dim=1) / batch.eligible.sum(dim=1)
    assert abs(ours - float(by_hand.mean())) < 1e-5 * abs(ours), (ours, float(by_hand.mean()))
