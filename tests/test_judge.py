"""The generation judge (maskdiff.training.judge, maskdiff.training.fill): distinct-n, the causal
judge's NLL, the partial-mask probe, seeding, and ``maskdiff evaluate --judge`` end to end."""

import json
import math

import pytest
import torch
from torch import nn

from maskdiff.cli import main
from maskdiff.core.blocks import BlockLayout
from maskdiff.data import CharTokenizer, Collator, CollatorConfig
from maskdiff.data.examples import Example
from maskdiff.models import TransformerConfig, build_model
from maskdiff.training.evaluate import causal_nll
from maskdiff.training.fill import fill_masked
from maskdiff.training.generate import generate_diffusion
from maskdiff.training.judge import (
    JudgeConfig, continuation_mask, distinct_n, diversity, judge_generation, judge_nll, probe_mask,
)

TEXTS = ["in the beginning god created", "the heavens and the earth.", "and the earth was",
         "without form and void", "darkness was on the face", "of the deep and god said"]
MAX_LEN = 32


@pytest.fixture(scope="module")
def setup():
    tok = CharTokenizer("".join(sorted(set("".join(TEXTS)))))
    collate = Collator(tok, CollatorConfig(max_len=MAX_LEN))
    examples = [Example("", text) for text in TEXTS]

    def model(causal: bool, seed: int):
        torch.manual_seed(seed)
        return build_model(TransformerConfig(vocab_size=tok.vocab_size, max_len=MAX_LEN,
                                             mask_token_id=tok.mask_id, d_model=32, n_layers=1,
                                             n_heads=2, causal=causal)).eval()
    return tok, collate, examples, model(False, 0), model(True, 1)


class Repeats(nn.Module):
    """A degenerate 'model': every position predicts ``token`` with near certainty."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, ids, attention=None, position_ids=None):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., self.token] = 30.0
        return logits


class Uniform(nn.Module):
    """A judge with uniform next-token predictions: NLL log V per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids, attention=None):
        return torch.zeros(*ids.shape, self.vocab)


def test_distinct_n_equals_hand_counts():
    assert distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    pooled = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(pooled, 1) == pytest.approx(4 / 6)
    assert distinct_n(pooled, 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
    assert distinct_n(pooled, 3) == 1.0 and distinct_n([[1, 2]], 3) is None
    d = diversity(pooled)
    assert d["distinct_1_per_sample"] == 1.0 and d["tokens"] == 6 and d["mean_length"] == 3.0


def test_judge_nll_is_causal_nll_and_log_v_for_a_uniform_judge(setup):
    tok, collate, examples, _, judge = setup
    batch = collate(list(enumerate(examples)))
    values = judge_nll(judge, batch.x0, batch.attention_mask, batch.eligible)
    assert float(values.mean()) == pytest.approx(causal_nll(judge, examples, collate).mean,
                                                 abs=1e-6)
    uniform = judge_nll(Uniform(tok.vocab_size), batch.x0, batch.attention_mask, batch.eligible)
    assert torch.allclose(uniform, torch.full((6,), math.log(tok.vocab_size), dtype=torch.float64))


def test_report_scores_real_text_as_causal_nll_and_a_repeating_model_has_distinct_1_of_one_over_len(
        setup):
    tok, collate, examples, _, judge = setup
    token = tok.encode("e")[0]
    report = judge_generation(Repeats(tok.vocab_size, token), judge, examples, collate,
                              config=JudgeConfig(samples=6, probe_rates=(0.0, 1.0))).to_dict()
    assert report["reference"]["judge_nll"]["mean"] == pytest.approx(
        causal_nll(judge, examples, collate).mean, abs=1e-6)
    unconditional = report["sources"]["unconditional"]
    assert unconditional["examples"][0] == "e" * MAX_LEN  # every eligible position, "e"
    div = unconditional["diversity"]
    assert div["distinct_1_per_sample"] == pytest.approx(1 / MAX_LEN)
    assert div["distinct_1"] == pytest.approx(1 / (6 * MAX_LEN))
    assert unconditional["real_diversity"]["distinct_1"] > 10 * div["distinct_1"]
    full = report["probe"][1]  # r = 1: every token decoded to "e"
    assert full["masked_tokens"] == 6 * MAX_LEN  # EOS padding is eligible: whole rows
    assert full["accuracy"]["mean"] == pytest.approx(
        sum(t.count("e") / MAX_LEN for t in TEXTS) / 6)  # right exactly where the text has "e"


def test_probe_masks_round_r_n_nested_and_r0_returns_the_original(setup):
    tok, collate, examples, model, judge = setup
    batch = collate(list(enumerate(examples)))
    n = batch.eligible.sum(1)
    masks = {r: probe_mask(batch.eligible, range(6), r, seed=5) for r in (0.0, 0.25, 0.9, 1.0)}
    for r, mask in masks.items():
        assert mask.sum(1).tolist() == [round(r * k) for k in n.tolist()]
        assert not (mask & ~batch.eligible).any()
    assert not (masks[0.25] & ~masks[0.9]).any()  # nested: one permutation per example
    report = judge_generation(model, judge, examples, collate,
                              config=JudgeConfig(samples=6, probe_rates=(0.0, 0.5))).to_dict()
    zero, half = report["probe"]
    assert zero["masked_tokens"] == 0 and zero["accuracy"]["mean"] == 1.0
    assert zero["masked_accuracy"] is None
    assert zero["judge_nll"]["mean"] == pytest.approx(report["reference"]["judge_nll"]["mean"])
    assert half["masked_tokens"] == sum(round(0.5 * k) for k in n.tolist())
    assert half["masked_share"] == pytest.approx(0.5, abs=0.02)


def test_continuation_keeps_the_head_of_the_text():
    eligible = torch.tensor([[False, True, True, True, True, True]])
    content = torch.tensor([[True, True, True, True, False, False]])  # 3 text tokens, 2 EOS
    assert continuation_mask(eligible, 0.5, content).tolist() == [
        [False, False, False, True, True, True]]  # keeps round(1.5) = 2 of the text


def test_same_seed_same_report_and_another_seed_other_samples(setup):
    tok, collate, examples, model, judge = setup
    run = lambda seed: judge_generation(  # noqa: E731
        model, judge, examples, collate,
        config=JudgeConfig(samples=4, probe_rates=(0.5,), seed=seed, batch_size=3)).to_dict(True)
    first, again, other = run(1), run(1), run(2)
    assert json.dumps(first) == json.dumps(again)
    assert first["sources"]["unconditional"]["examples"] != \
        other["sources"]["unconditional"]["examples"]
    # A row's sample does not depend on the rows batched with it.
    alone = judge_generation(model, judge, examples, collate,
                             config=JudgeConfig(samples=4, probe_rates=(0.5,), seed=1,
                                                batch_size=1)).to_dict(True)
    assert alone["items"]["unconditional"] == pytest.approx(first["items"]["unconditional"])


def test_greedy_fill_matches_generate_diffusion(setup):
    tok, _, _, model, _ = setup
    prompt = torch.tensor([tok.encode("in the be"), tok.encode("and the e")])
    expected = generate_diffusion(model, prompt, gen_length=12, steps=12,
                                  mask_token_id=tok.mask_id)
    masked = torch.cat([prompt, torch.full((2, 12), tok.mask_id)], dim=1)
    assert torch.equal(fill_masked(model, masked, mask_token_id=tok.mask_id), expected)
    layout = BlockLayout(4)
    prompt = prompt[:, :8]  # two whole blocks
    expected = generate_diffusion(model, prompt, gen_length=12, steps=12,
                                  mask_token_id=tok.mask_id, layout=layout, use_cache=False)
    masked = torch.cat([prompt, torch.full((2, 12), tok.mask_id)], dim=1)
    assert torch.equal(fill_masked(model, masked, mask_token_id=tok.mask_id, layout=layout),
                       expected)


def test_sampling_needs_a_seed_per_row(setup):
    tok, _, _, model, _ = setup
    with pytest.raises(ValueError, match="one seed per row"):
        fill_masked(model, torch.full((2, 4), tok.mask_id), mask_token_id=tok.mask_id,
                    temperature=1.0, seeds=[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    flags = ["--preset", "smoke", "--task", "text", "--set", "optim.max_steps=4",
             "--set", "data.max_len=40", "--set", 'data.difficulty={"chunk_chars": 32}',
             "--set", "data.n_train=32", "--quiet"]
    for name, extra in (("mdm", []), ("ar", ["--method", "ar"])):
        assert main(["train", *flags, *extra, "--out", str(root / name)]) == 0
    assert main(["train", "--preset", "smoke", "--method", "ar", "--set", "optim.max_steps=2",
                 "--quiet", "--out", str(root / "other")]) == 0  # arithmetic: another alphabet
    return root


def test_evaluate_judge_end_to_end(runs, capsys):
    assert main(["evaluate", "--run", str(runs / "mdm"), "--judge", str(runs / "ar"), "--n", "2",
                 "--samples", "3", "--probe-rates", "0,0.5,1"]) == 0
    out = capsys.readouterr().out
    assert "unconditional" in out and "partial-mask probe" in out and "r=0.5" in out
    gen = json.loads((runs / "mdm" / "eval.json").read_text())["generation"]
    assert [p["rate"] for p in gen["probe"]] == [0.0, 0.5, 1.0]
    assert gen["sources"]["unconditional"]["judge_nll"]["n"] == 3  # --samples, not --n
    assert gen["probe"][0]["accuracy"]["mean"] == 1.0 and len(gen["items"]["probe_0.5"]) == 3
    assert gen["judge"]["run"] == str(runs / "ar")


@pytest.mark.parametrize("run, judge, message", [
    ("mdm", "mdm", "is not a causal run"),
    ("ar", "ar", "is a causal run"),
    ("mdm", "other", "tokenizer"),
])
def test_evaluate_judge_refuses_in_one_line(runs, capsys, run, judge, message):
    assert main(["evaluate", "--run", str(runs / run), "--judge", str(runs / judge)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_probe_rates_flag_is_checked(runs, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(runs / "mdm"), "--judge", str(runs / "ar"),
              "--probe-rates", "0.5,1.5"])
    assert "--probe-rates" in capsys.readouterr().err


def test_a_judge_trained_on_other_data_is_noted(capsys):
    from types import SimpleNamespace

    from maskdiff.commands.generation import note_judge_data
    from maskdiff.training.config import DataConfig

    run = SimpleNamespace(config=SimpleNamespace(data=DataConfig(task="text")))
    judge = SimpleNamespace(config=SimpleNamespace(data=DataConfig(task="text", data_seed=5)))
    note_judge_data(SimpleNamespace(judge="J", run="R", judge_run=judge), run)
    assert "data.data_seed: 0 vs 5" in capsys.readouterr().err
    note_judge_data(SimpleNamespace(judge="J", run="R", judge_run=run), run)
    assert capsys.readouterr().err == ""
