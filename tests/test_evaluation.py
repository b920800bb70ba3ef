"""Evaluation and decoding for any model maskdiff trains (maskdiff.evaluation, docs/evaluation.md):
HF decoding, PEFT loading, `evaluate --hf`, the ELBO schemes and their standard errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.cli import main  # noqa: E402
from maskdiff.core.batch import Batch  # noqa: E402
from maskdiff.evaluation import generate, load_eval_model, loglikelihoods  # noqa: E402
from maskdiff.hf import HFAdapter  # noqa: E402
from maskdiff.training.evaluate import (  # noqa: E402
    ELBO_SCHEMES, EVAL_SCHEME, draws_se, elbo_draws, fit_elbo_density, stratified_elbo,
    stratified_estimators,
)
from maskdiff.training.generate import generate_diffusion  # noqa: E402
from test_hf import SPECIAL, WORDS, word_tokenizer  # noqa: E402

N_VOCAB = len(SPECIAL) + len(WORDS)
MASK_ID = SPECIAL.index("[MASK]")


def bert_dir(path, seed: int = 0):
    """A tiny BERT masked LM with the word-level tokenizer, saved like a hub model."""
    config = transformers.BertConfig(
        vocab_size=N_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=48, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0)
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_generate_diffusion_on_an_hf_adapter_needs_no_prompt_attention(tmp_path):
    """The adapter accepts attention_mask=None (all real): decoding an HFAdapter without
    prompt_attention works and gives what an all-True prompt_attention gives."""
    model = load_eval_model(hf=bert_dir(tmp_path / "bert"))
    assert isinstance(model.model, HFAdapter) and model.mask_token_id == MASK_ID
    prompt = torch.tensor([[8, 9, 10], [11, 12, 13]])
    plain = generate_diffusion(model.model, prompt, gen_length=4, steps=4, block_length=2,
                               mask_token_id=MASK_ID)
    attended = generate_diffusion(model.model, prompt, gen_length=4, steps=4, block_length=2,
                                  mask_token_id=MASK_ID,
                                  prompt_attention=torch.ones(2, 3, dtype=torch.bool))
    assert torch.equal(plain, attended) and plain.shape == (2, 7)
    assert not (plain == MASK_ID).any() and torch.equal(plain[:, :3], prompt)
    # the first committed token is the argmax of the most confident masked position
    with torch.no_grad():
        ids = torch.cat([prompt, torch.full((2, 4), MASK_ID)], dim=1)
        logits = model.model(ids)[:, 3:5].float()
    logits[..., MASK_ID] = float("-inf")
    conf, pred = logits.softmax(-1).max(-1)
    first = conf.argmax(-1)
    assert plain[0, 3 + first[0]] == pred[0, first[0]]


def test_maskdiff_generate_hf_prints_the_decoder_output_cut_at_stops(tmp_path, capsys):
    path = bert_dir(tmp_path / "bert")
    assert main(["generate", "--hf", str(path), "--prompt", "what is two plus three",
                 "--gen-length", "6", "--steps", "6"]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = load_eval_model(hf=path)
    expected = generate(model, ["what is two plus three"], gen_length=6, steps=6)
    assert printed == expected and len(expected[0].split()) <= 6
    words = expected[0].split()
    if len(words) > 1:  # a stop sequence cuts the text at its first occurrence
        assert main(["generate", "--hf", str(path), "--prompt", "what is two plus three",
                     "--gen-length", "6", "--until", words[1]]) == 0
        assert capsys.readouterr().out.splitlines()[0] == expected[0][:expected[0].index(words[1])]


def test_a_peft_adapter_directory_loads_on_its_base_model(tmp_path):
    peft = pytest.importorskip("peft")
    base = bert_dir(tmp_path / "base")
    lora = peft.get_peft_model(transformers.BertForMaskedLM.from_pretrained(base),
                               peft.LoraConfig(r=4, target_modules=["query", "value"],
                                               init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    model = load_eval_model(hf=tmp_path / "adapter")
    x = torch.randint(8, N_VOCAB, (2, 6))
    with torch.no_grad():
        expected = lora.eval()(input_ids=x, attention_mask=torch.ones_like(x)).logits
        plain = transformers.BertForMaskedLM.from_pretrained(base).eval()(input_ids=x).logits
        got = model.model(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)  # the adapter's weights are really applied


def test_evaluate_hf_on_a_jsonl_file_reports_the_evaluators_elbo(tmp_path, capsys):
    path = bert_dir(tmp_path / "bert")
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": "what is two plus three", "response": "the answer : five #### five"},
            {"prompt": "two plus two", "response": "the answer = a #### a"},
            {"text": "hello world and the answer"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--hf", str(path), "--data", str(data), "--rates", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["loss"]["n"] == 3 and report["loss"]["se"] > 0
    assert report["scheme"] == EVAL_SCHEME and report["forward_passes_per_example"] == 3
    from maskdiff.hf import hf_batch
    from maskdiff.training.evaluate import elbo

    model = load_eval_model(hf=path)
    direct = elbo(model.model, rows, lambda items: hf_batch(model.tokenizer, [r for _, r in items],
                                                            first_index=items[0][0]),
                  mask_token_id=MASK_ID, rates_per_example=3, scheme=EVAL_SCHEME)
    assert report["loss"]["mean"] == pytest.approx(direct.mean, rel=1e-12)
    assert "data loss" in capsys.readouterr().out
    assert main(["evaluate", "--hf", str(path), "--out", str(out)]) == 2  # --data is required


# ----------------------------------------------------------------------------- ELBO schemes
class Toy(torch.nn.Module):
    """A fixed bidirectional toy: logits from the token and the count of masks in the row."""

    def __init__(self, vocab: int = 12, mask: int = 11):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(vocab, vocab, generator=g)
        self.mask = mask

    def forward(self, ids, attention_mask=None):
        frac = (ids == self.mask).float().mean(1, keepdim=True)[..., None]
        return self.table[ids] * (1 - frac) + frac


def toy_batch(n: int = 6, length: int = 10) -> Batch:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 11, (n, length), generator=g)
    eligible = torch.zeros(n, length, dtype=torch.bool)
    eligible[:, 3:] = True
    return Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                 example_index=torch.arange(n))


def test_the_stratified_scheme_is_training_validations_elbo():
    model, batch = Toy(), toy_batch()
    est = ELBO_SCHEMES["stratified"].estimators(mask_token_id=11, rates=4)
    draws = elbo_draws(model, batch, est, seed=5)
    legacy = stratified_elbo(model, batch, stratified_estimators(mask_token_id=11), seed=5)
    torch.testing.assert_close(draws.mean(1), legacy, rtol=1e-12, atol=0)
    assert ELBO_SCHEMES["stratified-mirror"].passes(4) == 8 and ELBO_SCHEMES["mc"].passes(4) == 4


@pytest.mark.parametrize("scheme", sorted(ELBO_SCHEMES))
def test_every_scheme_is_unbiased_for_the_same_elbo(scheme):
    """Over many seeds each scheme's mean agrees with a 4096-draw plain-MC reference (within
    4 combined standard errors), and its reported SE matches the spread over seeds (within
    the tolerance a 120-seed variance estimate allows)."""
    model, batch = Toy(), toy_batch(n=2)
    reference = elbo_draws(model, batch, ELBO_SCHEMES["mc"].estimators(mask_token_id=11, rates=4096),
                           seed=99)
    ref_mean, ref_se = reference.mean(1), draws_se(reference, False)
    chosen = ELBO_SCHEMES[scheme]
    density = fit_elbo_density(model, batch, mask_token_id=11, seed=0) if chosen.fitted else None
    est = chosen.estimators(mask_token_id=11, rates=4, density=density)
    runs = [elbo_draws(model, batch, est, seed=s) for s in range(120)]
    means = torch.stack([r.mean(1) for r in runs])  # (120, 2)
    spread = means.std(0)
    assert ((means.mean(0) - ref_mean).abs()
            < 4 * torch.sqrt(spread ** 2 / len(runs) + ref_se ** 2)).all()
    reported = torch.stack([draws_se(r, chosen.stratified) for r in runs]).pow(2).mean(0).sqrt()
    # iid: unbiased; stratified: the collapsed-strata estimator is conservative
    assert (reported > 0.75 * spread).all() and (reported < (1.3 if not chosen.stratified else 3) * spread).all()


def test_draws_se_closed_forms():
    draws = torch.tensor([[1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    iid = draws_se(draws, stratified=False)
    assert iid[0] == pytest.approx(float(torch.tensor([1.0, 3, 2, 6]).std()) / 2)
    strat = draws_se(draws, stratified=True)  # pairs (1,3), (2,6): sqrt(2²+4²)/4
    assert strat[0] == pytest.approx(math.sqrt(4 + 16) / 4)
    assert strat[1] == 0.0
    odd = draws_se(torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64), True)
    assert odd[0] == pytest.approx(math.sqrt(3 * torch.tensor([1.0, 2, 4]).var().item()) / 3)
    assert math.isnan(draws_se(draws[:, :1], True)[0])


def test_loglikelihood_is_minus_the_summed_elbo_of_the_continuation(tmp_path):
    model = load_eval_model(hf=bert_dir(tmp_path / "bert"))
    pairs = [("what is two plus three", " the answer : five"), ("hello", " world"), ("a", "")]
    scores = loglikelihoods(model, pairs, rates=4, greedy_check=True)
    assert scores[2].loglikelihood == 0.0 and scores[2].n_tokens == 0
    ctx = model.encode_context(pairs[0][0])
    cont = model.encode_continuation(pairs[0][1])
    x0 = torch.tensor([ctx + cont])
    eligible = torch.tensor([[False] * len(ctx) + [True] * len(cont)])
    batch = Batch(x0=x0, eligible=eligible, attention_mask=torch.ones_like(eligible),
                  example_index=torch.tensor([0]))
    est = ELBO_SCHEMES[EVAL_SCHEME].estimators(mask_token_id=MASK_ID, rates=4, normalizer="none")
    draws = elbo_draws(model.model, batch, est, seed=1234)
    assert scores[0].loglikelihood == pytest.approx(-float(draws.mean()), rel=1e-12)
    assert scores[0].se == pytest.approx(float(draws_se(draws, True)[0]), rel=1e-12)
    assert scores[0].passes == ELBO_SCHEMES[EVAL_SCHEME].passes(4) == 4  # lowvar-stratified
    assert scores[0].n_tokens == len(cont) == 4
    default = loglikelihoods(model, pairs[:1], greedy_check=False)[0]  # rates unset: 32 passes
    assert default.passes == 32
    # the draws of a request depend on its index, not on its batch: scoring it alone agrees
    alone = loglikelihoods(model, pairs[:1], rates=4, greedy_check=False)[0]
    assert alone.loglikelihood == scores[0].loglikelihood and alone.is_greedy is None
    greedy = generate_diffusion(model.model, torch.tensor([ctx]), gen_length=4, steps=4,
                                block_length=4, mask_token_id=MASK_ID)[0, len(ctx):].tolist()
    assert scores[0].is_greedy == (greedy == cont)
