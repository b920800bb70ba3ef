"""Block decoding of block-diffusion models (docs/method.md §8 "Block decoding", §12): the KV
cache gives exactly the tokens (and, to float rounding, the logits) of the uncached training-style
input, b >= L is the plain decoder, and the CLI's generate/evaluate use a block run's layout."""

import json

import pytest
import torch

import maskdiff.evaluation.scoring as scoring
import maskdiff.training.generate as generate_module
from maskdiff.cli import main
from maskdiff.core.blocks import BlockLayout, block_attention_mask
from maskdiff.data import Collator, CollatorConfig
from maskdiff.data.setup import load_task
from maskdiff.models import KVCache
from maskdiff.models.transformer import Transformer, TransformerConfig
from maskdiff.training.config import block_layout
from maskdiff.training.evaluate import elbo
from maskdiff.training.generate import (
    block_decoding_steps, decoding_blocks, generate_diffusion,
)
from maskdiff.training.runs import load_run

MASK = 11


def _tiny(positions: str = "rotary", seed: int = 0) -> Transformer:
    """A random model whose weights are large enough (std 0.3, not the init's 0.02) for its
    greedy tokens to vary with the context: a decoder that saw the wrong keys would show."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=12, max_len=32, d_model=32, n_layers=2,
                                          n_heads=2, mask_token_id=MASK, positions=positions))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    return model


def _decode_recording(monkeypatch, model, prompt, *, gen_length, layout, use_cache,
                      mask=MASK, attention=None, steps=None):
    """The decoded ids and every step's block logits (what the remasking rule read)."""
    seen = []
    commit = generate_module._commit

    def spy(ids, block_logits, *args):
        seen.append(block_logits.float().clone())
        commit(ids, block_logits, *args)

    monkeypatch.setattr(generate_module, "_commit", spy)
    steps = steps or block_decoding_steps(prompt.shape[1], gen_length, layout)
    out = generate_diffusion(model, prompt, gen_length=gen_length, steps=steps,
                             mask_token_id=mask, prompt_attention=attention, layout=layout,
                             use_cache=use_cache)
    monkeypatch.setattr(generate_module, "_commit", commit)
    return out, seen


def _assert_cache_matches(monkeypatch, model, prompt, gen_length, layout, **kwargs):
    cached, cached_logits = _decode_recording(monkeypatch, model, prompt, gen_length=gen_length,
                                              layout=layout, use_cache=True, **kwargs)
    full, full_logits = _decode_recording(monkeypatch, model, prompt, gen_length=gen_length,
                                          layout=layout, use_cache=False, **kwargs)
    assert torch.equal(cached, full)
    assert len(cached_logits) == len(full_logits) > 0
    for a, b in zip(cached_logits, full_logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    return cached, cached_logits


@pytest.mark.parametrize("positions", ["rotary", "learned"])
@pytest.mark.parametrize("block_size", [1, 3, 4, 7])
def test_the_cache_gives_the_uncached_tokens_and_logits(monkeypatch, positions, block_size):
    # P = 5, L = 19: the prompt ends inside a block for b = 3, 4, 7, and no b divides 19.
    model = _tiny(positions)
    prompt = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(1))
    layout = BlockLayout(block_size)
    out, logits = _assert_cache_matches(monkeypatch, model, prompt, 14, layout)
    assert torch.equal(out[:, :5], prompt) and not (out == MASK).any()
    blocks = decoding_blocks(5, 14, block_size)
    assert blocks[0][0] == 5 // block_size * block_size and blocks[-1][1] == 19
    # One token per step by default: one forward pass per generated token, each block's own.
    assert len(logits) == 14
    assert {tuple(x.shape[:2]) for x in logits} <= {(3, e - s) for s, e in blocks}


def test_the_cache_hides_left_padding_as_the_uncached_input_does(monkeypatch):
    model = _tiny()
    prompt = torch.randint(0, 10, (2, 6), generator=torch.Generator().manual_seed(2))
    attention = torch.ones(2, 6, dtype=torch.bool)
    attention[1, :3] = False
    _assert_cache_matches(monkeypatch, model, prompt, 9, BlockLayout(4), attention=attention)


def test_a_block_at_least_the_sequence_is_the_plain_decoder():
    model = _tiny()
    prompt = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(3))
    plain = generate_diffusion(model, prompt, gen_length=14, steps=14, mask_token_id=MASK)
    for size in (19, 32):
        for use_cache in (True, False):
            assert torch.equal(plain, generate_diffusion(
                model, prompt, gen_length=14, steps=14, mask_token_id=MASK,
                layout=BlockLayout(size), use_cache=use_cache))


def test_blocks_differ_from_the_plain_decoder_and_steps_are_counted_per_block():
    model = _tiny()
    prompt = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(4))
    plain = generate_diffusion(model, prompt, gen_length=14, steps=14, mask_token_id=MASK)
    blocks = generate_diffusion(model, prompt, gen_length=14, steps=16, mask_token_id=MASK,
                                layout=BlockLayout(4))
    assert not torch.equal(plain, blocks)  # the attention differs: block 1 never sees block 2
    assert block_decoding_steps(5, 14, BlockLayout(4)) == 4 * 4  # blocks [4,8) ... [16,19)
    assert block_decoding_steps(5, 14, BlockLayout(4), steps=6) == 8
    with pytest.raises(ValueError, match="steps must be divisible by the 4 decoded blocks"):
        generate_diffusion(model, prompt, gen_length=14, steps=6, mask_token_id=MASK,
                           layout=BlockLayout(4))
    with pytest.raises(ValueError, match="block_length=2 conflicts with .* block_size=4"):
        generate_diffusion(model, prompt, gen_length=14, steps=8, block_length=2,
                           mask_token_id=MASK, layout=BlockLayout(4))


def test_a_cached_prefix_equals_the_clean_half_of_the_training_mask():
    model = _tiny().eval()
    ids = torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(5))
    clean = block_attention_mask(12, 4)[12:, 12:]
    positions = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        full = model(ids, clean[None, None].expand(2, 1, 12, 12), positions)
        cache = KVCache()
        parts = [model(ids[:, s:s + 4], cache=cache, store=True) for s in (0, 4, 8)]
    assert cache.length == 12 and len(cache.keys) == 2 and cache.keys[0].shape[2] == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="store=True needs a cache"):
        model(ids, store=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("block_decoding")
    out = {}
    for name, extra in (("block", ["--block-size", "4"]), ("plain", [])):
        out[name] = root / name
        assert main(["train", "--preset", "smoke", "--seed", "5", *extra,
                     "--set", "optim.max_steps=12", "--out", str(out[name]), "--quiet"]) == 0
    return out


def test_a_trained_block_model_decodes_the_same_with_and_without_the_cache(runs, monkeypatch):
    loaded = load_run(runs["block"])
    assert block_layout(loaded.config) == BlockLayout(4)
    tok = loaded.tokenizer
    prompt = torch.tensor([tok.encode("Tom has 3 pens.")] * 2)  # 15 tokens: ends in block 3
    for size in (4, 5):
        _assert_cache_matches(monkeypatch, loaded.model, prompt, 11, BlockLayout(size),
                              mask=tok.mask_id)


def test_generate_decodes_a_block_run_in_its_blocks(runs, capsys, monkeypatch):
    layouts = []
    decode = scoring.generate_diffusion

    def spy(*args, **kwargs):
        layouts.append(kwargs.get("layout"))
        return decode(*args, **kwargs)

    monkeypatch.setattr(scoring, "generate_diffusion", spy)
    loaded = load_run(runs["block"])
    tok = loaded.tokenizer
    prompt = torch.tensor([tok.encode("Tom has 3 pens.")])
    for argv, size in (([], 4), (["--block-size", "3"], 3)):
        assert main(["generate", "--run", str(runs["block"]), "--prompt", "Tom has 3 pens.",
                     "--gen-length", "9", *argv]) == 0
        layout = BlockLayout(size)
        expected = generate_diffusion(loaded.model, prompt, gen_length=9,
                                      steps=block_decoding_steps(15, 9, layout),
                                      mask_token_id=tok.mask_id, layout=layout,
                                      use_cache=False)[0, 15:].tolist()
        if tok.eos_id in expected:
            expected = expected[:expected.index(tok.eos_id)]
        assert capsys.readouterr().out == tok.decode(expected, skip_special=True) + "\n"
        assert layouts.pop() == layout
    assert main(["generate", "--run", str(runs["plain"]), "--prompt", "Tom has 3 pens.",
                 "--gen-length", "9", "--block-size", "4"]) == 0
    assert "was not trained with blocks" in capsys.readouterr().err
    assert layouts.pop() == BlockLayout(4)
    assert main(["generate", "--run", str(runs["plain"]), "--prompt", "Tom",
                 "--gen-length", "4"]) == 0
    assert layouts.pop() is None and "blocks" not in capsys.readouterr().err


def test_evaluate_reports_the_block_elbo_of_a_block_run(runs, capsys, monkeypatch):
    import maskdiff.training.evaluate as evaluate_module

    layouts = []
    decode = evaluate_module.generate_diffusion

    def spy(*args, **kwargs):
        layouts.append(kwargs.get("layout"))
        return decode(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate_diffusion", spy)
    run = runs["block"]
    assert main(["evaluate", "--run", str(run), "--n", "6", "--rates", "2",
                 "--scheme", "stratified-mirror", "--pass-at-1", "--gen-length", "6",
                 "--block-length", "3"]) == 0
    captured = capsys.readouterr()
    assert "block ELBO, blocks of 4" in captured.out
    assert "--block-length 3 is unused: a block model decodes in its blocks of 4" in captured.err
    assert layouts and set(layouts) == {BlockLayout(4)}  # pass@1 decoded in the run's blocks
    doc = json.loads((run / "eval.json").read_text())
    assert doc["block_layout"] == {"block_size": 4, "rates": "block"}
    loaded = load_run(run)
    config, tok = loaded.config, loaded.tokenizer
    examples = list(load_task(config.data).split("test"))[:6]
    collate = Collator(tok, CollatorConfig(max_len=config.data.max_len,
                                           pad_policy=config.data.pad_policy,
                                           overflow=config.data.overflow))
    kwargs = dict(mask_token_id=tok.mask_id, rates_per_example=2, seed=1234,
                  scheme="stratified-mirror", normalizer=config.estimator.normalizer)
    block = elbo(loaded.model, examples, collate, layout=BlockLayout(4), **kwargs)
    plain = elbo(loaded.model, examples, collate, **kwargs)
    assert doc["loss"]["mean"] == pytest.approx(block.mean, rel=1e-12)
    assert doc["loss"]["se"] == pytest.approx(block.se, rel=1e-12) and block.se > 0
    assert abs(block.mean - plain.mean) > 1e-6  # the layout changed what was scored


def test_loglikelihoods_of_a_block_run_are_its_block_elbo(runs):
    from maskdiff.core.batch import Batch
    from maskdiff.evaluation import load_eval_model, loglikelihoods
    from maskdiff.training.evaluate import elbo_draws, elbo_scheme

    model = load_eval_model(run=runs["block"])
    assert model.layout == BlockLayout(4)
    (score,) = loglikelihoods(model, [("Tom has 3 pens.", " 7")], rates=2, seed=9)
    context, continuation = model.encode_context("Tom has 3 pens."), model.encode_continuation(" 7")
    x0 = torch.tensor([context + continuation])
    eligible = torch.zeros_like(x0, dtype=torch.bool)
    eligible[:, len(context):] = True
    batch = Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                  example_index=torch.tensor([0]))
    estimators = elbo_scheme("sqrt-stratified-mirror").estimators(
        mask_token_id=model.mask_token_id, rates=2, normalizer="none", layout=BlockLayout(4))
    with torch.no_grad():
        expected = -float(elbo_draws(model.model, batch, estimators, 9).mean())
    assert score.loglikelihood == pytest.approx(expected, rel=1e-12)
    assert score.is_greedy in (True, False)
