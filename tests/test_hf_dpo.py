"""``MaskedDiffusionDPOTrainer`` (issue 27 item 2, docs/method.md §13) on a tiny random BERT
and a word-level tokenizer built here (no downloads):

- its loss on a batch is :func:`maskdiff.preference.preference_loss` of the native estimators'
  ELBOs, computed by hand from hand-tokenised batches with the same seeds, and one step logs
  TRL's reward statistics of those numbers;
- TRL's conversational rows: only the answer's tokens are eligible;
- the precomputed reference equals the frozen copy's, and is reused from ``output_dir``;
- LoRA: the reference is the base model with the adapters disabled (no copy), so the first
  shared-draw step has margin 0 and loss log 2 exactly; only adapter weights change;
- a resumed run logs and reaches exactly what an uninterrupted one does;
- bad settings and rows are one ``ValueError`` naming the field.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.hf import (  # noqa: E402
    HFAdapter, MaskedDiffusionCollator, MaskedDiffusionDPOTrainer, batch_from_inputs, encode_pair,
)
from maskdiff.preference import preference_estimator, preference_loss  # noqa: E402
from test_hf import tiny_bert, weights, word_tokenizer  # noqa: E402

# transformers 4.x's Trainer logs the loss rounded to 4 decimals (make test-tf4)
ROUNDING = 5e-5 if transformers.__version__.startswith("4.") else 0.0

ROWS = [
    {"prompt": "what is two plus three", "chosen": "the answer : five",
     "rejected": "the answer : a b c"},
    {"prompt": "what is two plus two", "chosen": "the answer = a", "rejected": "hello world"},
    {"prompt": "hello", "chosen": "hello world", "rejected": "( a b ) and c"},
    {"prompt": "a b c", "chosen": "the answer : c", "rejected": "five and three"},
]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
                per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2,
                logging_steps=1, save_strategy="no", learning_rate=1e-3,
                lr_scheduler_type="constant", disable_tqdm=True, seed=3,
                dataloader_num_workers=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _trainer(tmp_path, model=None, rows=ROWS, **kw):
    tok = word_tokenizer()
    kw.setdefault("args", _args(tmp_path))
    return MaskedDiffusionDPOTrainer(model=tiny_bert() if model is None else model,
                                     train_dataset=rows, processing_class=tok,
                                     mask_token_id=tok.mask_token_id, **kw)


def _by_hand(rows, role: int):
    """Prompt tokens, then answer + EOS (eligible), example index 2i + role: a Batch."""
    tok = word_tokenizer()
    encoded = []
    for i, row in enumerate(rows):
        prompt = tok(row["prompt"])["input_ids"]
        answer = tok(row[("chosen", "rejected")[role]], add_special_tokens=False)["input_ids"]
        answer = answer + [tok.eos_token_id]
        encoded.append({"input_ids": prompt + answer,
                        "eligible": [0] * len(prompt) + [1] * len(answer),
                        "example_index": 2 * i + role})
    return batch_from_inputs(MaskedDiffusionCollator(tok.pad_token_id)(encoded))


@pytest.mark.parametrize("loss,estimator", [("dpo", "naive"), ("kto", "vrpo-mirror"),
                                            ("dpo", "lowvar")])
def test_loss_is_the_native_preference_loss_of_the_native_estimators(tmp_path, loss, estimator):
    policy, reference = tiny_bert(seed=0), tiny_bert(seed=1)
    trainer = _trainer(tmp_path, policy, ref_model=reference, loss=loss, estimator=estimator,
                       budget=4, seed=5, beta=0.5,
                       args=_args(tmp_path, per_device_train_batch_size=4, max_steps=1,
                                  learning_rate=0.0))
    mask = word_tokenizer().mask_token_id
    native = preference_estimator(estimator)
    elbos = {}
    with torch.no_grad():
        for name, model in (("policy", policy), ("reference", reference)):
            elbos[name] = [native.log_likelihood(
                HFAdapter(model.eval(), mask_token_id=mask), _by_hand(ROWS, k), seed=5, budget=4,
                mask_token_id=mask, role=name) for k in (0, 1)]
        expected = preference_loss(loss, *elbos["policy"], *elbos["reference"], 0.5)
        got, out = trainer.compute_loss(trainer.model.eval(), trainer.collator(
            trainer.train_dataset), return_outputs=True)
    torch.testing.assert_close(out["losses"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, expected.mean(), rtol=1e-5, atol=1e-6)
    assert float(expected.std()) > 1e-3  # the pairs differ: a real comparison

    trainer._metrics["eval"].clear()
    trainer.train()  # one step over the 4 pairs at lr 0: the same numbers, logged
    log = trainer.state.log_history[0]
    rewards = [0.5 * (p - r) for p, r in zip(elbos["policy"], elbos["reference"])]
    assert log["loss"] == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-6 + ROUNDING)
    assert log["rewards/chosen"] == pytest.approx(float(rewards[0].mean()), rel=1e-5)
    assert log["rewards/rejected"] == pytest.approx(float(rewards[1].mean()), rel=1e-5)
    assert log["rewards/margins"] == pytest.approx(float((rewards[0] - rewards[1]).mean()),
                                                   rel=1e-5)
    assert log["rewards/accuracies"] == float((rewards[0] > rewards[1]).float().mean())
    assert log["logps/chosen"] == pytest.approx(float(elbos["policy"][0].mean()), rel=1e-5)


def test_conversational_rows_make_only_the_answer_eligible():
    tok = word_tokenizer()
    row = {"prompt": [{"role": "user", "content": "what is two plus three"},
                      {"role": "assistant", "content": "five"},
                      {"role": "user", "content": "and two plus two"}],
           "chosen": [{"role": "assistant", "content": "the answer : a"}],
           "rejected": [{"role": "assistant", "content": "hello"}]}
    pair = encode_pair(tok, row, 7)
    assert pair["example_index"] == 7
    for role, words in (("chosen", "the answer : a <|end|>"), ("rejected", "hello <|end|>")):
        ids, eligible = pair[role]["input_ids"], pair[role]["eligible"]
        assert tok.convert_ids_to_tokens([t for t, e in zip(ids, eligible) if e]) == words.split()
        # the prompt's own assistant turn ("five") is never eligible
        assert "five" in tok.convert_ids_to_tokens(ids)
    plain = word_tokenizer()
    plain.chat_template = None
    with pytest.raises(ValueError, match="preference row 7 \\(chosen\\).*no.*chat template|"
                                         "chat template and the tokenizer has none"):
        encode_pair(plain, row, 7)


@pytest.mark.parametrize("row,message", [
    ({"prompt": "a", "chosen": "b"}, "preference row 0: missing \\['rejected'\\]"),
    ({"prompt": "a", "chosen": " ", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"},
     "'prompt' must be a string"),
    ({"prompt": "a b c a b c", "chosen": "a b c", "rejected": "c"}, "more than max_length=6"),
])
def test_bad_rows_are_one_line_naming_row_and_field(row, message):
    with pytest.raises(ValueError, match=message):
        encode_pair(word_tokenizer(), row, 0, max_length=6)


def test_bad_settings_name_the_field(tmp_path):
    for kw, message in (({"loss": "ipo"}, "loss must be one of"),
                        ({"beta": 0.0}, "beta must be a positive"),
                        ({"estimator": "mirror"}, "unknown ELBO estimator"),
                        ({"estimator": "vrpo-mirror", "budget": 3}, "multiple of 2"),
                        ({"budget": 4, "mc_budget": 8}, "give one")):
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, **kw)
    with pytest.raises(ValueError, match="processing_class"):
        MaskedDiffusionDPOTrainer(model=tiny_bert(), args=_args(tmp_path), train_dataset=ROWS)


def test_precomputed_reference_equals_the_frozen_copy_and_is_reused(tmp_path, monkeypatch):
    frozen = _trainer(tmp_path / "a", estimator="vrpo", budget=2, args=_args(tmp_path / "a"))
    pre = _trainer(tmp_path / "b", estimator="vrpo", budget=2, precompute_reference=True,
                   args=_args(tmp_path / "b"), eval_dataset=ROWS[:2])
    assert frozen.ref_model is not None and pre.ref_model is None
    table = torch.tensor([row["reference"] for row in pre.train_dataset])
    inputs = frozen.collator(frozen.train_dataset)
    with torch.no_grad():
        _, out = frozen.compute_loss(frozen.model.eval(), inputs, return_outputs=True)
    torch.testing.assert_close(out["reference_elbos"], table.t().reshape(-1).float(),
                               rtol=1e-5, atol=1e-5)
    assert (tmp_path / "b" / "out" / "reference_elbos.json").is_file()
    assert (tmp_path / "b" / "out" / "reference_elbos_eval.json").is_file()
    frozen.train()
    pre.train()
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (frozen, pre)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=2 * ROUNDING)
    assert abs(losses[0][0] - math.log(2)) < 1e-6 + ROUNDING  # shared draws, policy = reference
    metrics = pre.evaluate()
    assert {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"} <= set(metrics)

    def never(*args, **kwargs):
        raise AssertionError("the reference table was recomputed")

    monkeypatch.setattr("maskdiff.hf.dpo.reference_table", never)
    again = _trainer(tmp_path / "b", estimator="vrpo", budget=2, precompute_reference=True,
                     args=_args(tmp_path / "b"))
    assert [row["reference"] for row in again.train_dataset] == table.tolist()


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    before = weights(model)
    trainer = _trainer(tmp_path, model, estimator="sqrt-stratified-mirror", budget=2,
                       args=_args(tmp_path, max_steps=3, learning_rate=1e-2))
    assert trainer.ref_model is None and trainer.reference_kind == "adapters-disabled"
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    # LoRA starts at B = 0: the policy is its reference, shared draws give margin 0 exactly
    assert logs[0]["rewards/margins"] == 0.0
    assert abs(logs[0]["loss"] - math.log(2)) < 1e-6 + ROUNDING
    assert logs[-1]["rewards/margins"] != 0.0
    changed = {k for k, v in weights(model).items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed), sorted(changed)


def test_resume_is_exact(tmp_path):
    def make(out, **kw):
        return _trainer(out, tiny_bert(seed=0), estimator="naive", budget=2, args=_args(
            out, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2), **kw)

    straight = make(tmp_path / "a")
    straight.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    resumed = make(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4

    def logs(trainer):
        return [e for e in trainer.state.log_history if "loss" in e and e["step"] > 2]

    assert logs(resumed) == logs(straight) and len(logs(straight)) == 2
    for name, value in weights(straight.model).items():
        assert torch.equal(weights(resumed.model)[name], value), name
    other = make(tmp_path / "c", beta=0.2)
    with pytest.raises(ValueError, match="beta=0.1 \\(now 0.2\\)"):
        other.train(resume_from_checkpoint=str(checkpoint))


def test_docs_snippet_runs_and_the_chosen_answers_pull_ahead(tmp_path, monkeypatch):
    """The DPO snippet of docs/huggingface.md runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "huggingface.md").read_text()
    section = text.split("### Preference optimisation: DPO on ELBOs", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__docs__"}
    exec(compile(code, "docs/huggingface.md", "exec"), scope)
    margins = [r["rewards/margins"] for r in scope["logs"]]
    assert len(margins) == 4 and margins[-1] > margins[0] > 0, margins
    assert scope["logs"][-1]["rewards/accuracies"] >= 0.75


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_diffusion_llm_families_train_by_dpo(name, tmp_path_factory, tmp_path):
    """LLaDA's and Dream's own model code (the fixtures, tiny random configs; Dream's logits
    shifted by one): two DPO steps from a frozen copy, the first exactly log 2 under shared
    draws, the second moved."""
    from maskdiff.hf.remote import save_random_model, sized_config
    from test_hf_families import MODELS, load

    if not MODELS.is_dir():
        pytest.skip(f"no model fixtures at {MODELS}")
    path = save_random_model(MODELS / name, tmp_path_factory.mktemp(name),
                             config=sized_config(name))
    adapter, tok, mask_id = load(path)
    trainer = MaskedDiffusionDPOTrainer(
        model=adapter, train_dataset=ROWS, processing_class=tok, budget=2, beta=1.0,
        args=_args(tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2))
    assert trainer.options.mask_token_id == mask_id
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert abs(logs[0]["loss"] - math.log(2)) < 1e-6 + ROUNDING and logs[0]["rewards/margins"] == 0
    assert logs[1]["rewards/margins"] != 0.0
