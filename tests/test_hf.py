"""Hugging Face integration (maskdiff.hf): adapter, collators, Trainer, LoRA, remote code.

No downloads: every model is a tiny one built from a config with random weights, every
tokenizer a word-level one built here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.core.control import BinEMA  # noqa: E402
from maskdiff.training.evaluate import elbo  # noqa: E402
from maskdiff.hf import (  # noqa: E402
    AdapterOptions, ChatCollator, HFAdapter, IndexedDataset, MaskedDiffusionCollator,
    MaskedDiffusionTrainer, batch_from_inputs, encode_chat, load_hf_model, syntax_token_ids,
)
from maskdiff.core.masking import Bernoulli, Mirror  # noqa: E402
from maskdiff.core.objective import Estimator  # noqa: E402
from maskdiff.ppots import SecondMomentTracker  # noqa: E402
from maskdiff.core.samplers import Importance, Stratified, Uniform  # noqa: E402
from maskdiff.core.seeding import BatchRandomness  # noqa: E402

VOCAB, MASK, PAD = 64, 63, 0
ROOT = Path(__file__).resolve().parents[1]


def tiny_bert(seed: int = 0):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=PAD)
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(config)


def sft_rows(n: int, seed: int = 1) -> list[dict]:
    """Rows of varying length: a 3-token prompt (not eligible) then a response.

    The response repeats the prompt's first token, so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, 12, (1,), generator=g))
        prompt = torch.randint(2, 60, (3,), generator=g).tolist()
        ids = prompt + [prompt[0]] * (length - 3)
        rows.append({"input_ids": ids, "eligible": [0, 0, 0] + [1] * (length - 3)})
    return rows


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
                per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
                learning_rate=1e-3, lr_scheduler_type="constant", disable_tqdm=True, seed=3,
                dataloader_num_workers=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- adapter
def test_adapter_matches_model_and_shifts_logits():
    model = tiny_bert().eval()
    x = torch.randint(2, 60, (2, 7))
    att = torch.ones(2, 7, dtype=torch.bool)
    att[1, 5:] = False
    raw = model(input_ids=x, attention_mask=att.long()).logits
    assert torch.equal(HFAdapter(model, mask_token_id=MASK)(x, att), raw)
    shifted = HFAdapter(model, mask_token_id=MASK, logit_shift=1)(x, att)
    assert torch.equal(shifted[:, 1:], raw[:, :-1]) and torch.equal(shifted[:, 0], raw[:, 0])
    with pytest.raises(ValueError, match="logit_shift"):
        AdapterOptions(mask_token_id=MASK, logit_shift=-1)
    with pytest.raises(ValueError, match="pad_policy"):
        AdapterOptions(mask_token_id=MASK, pad_policy="left")
    # One pad-policy vocabulary with the native collator; "ignore" is kept as an alias.
    assert AdapterOptions(mask_token_id=MASK).pad_policy == "exclude"
    assert AdapterOptions(mask_token_id=MASK, pad_policy="ignore").pad_policy == "exclude"


# ----------------------------------------------------------------------------- collator
def test_collator_pad_policies():
    rows = [{"input_ids": [5, 6, 7], "eligible": [0, 1, 1], "example_index": 4},
            {"input_ids": [8], "example_index": 9, "syntax": [1]}]
    out = MaskedDiffusionCollator(PAD)(rows)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert out["attention_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert out["eligible"].tolist() == [[False, True, True], [True, False, False]]
    assert out["syntax"].tolist() == [[False] * 3, [True, False, False]]
    assert out["example_index"].tolist() == [4, 9]
    eos = MaskedDiffusionCollator(3, pad_policy="eos", pad_to_multiple_of=4)(rows)
    assert eos["input_ids"].tolist() == [[5, 6, 7, 3], [8, 3, 3, 3]]
    assert eos["attention_mask"].all() and eos["eligible"].tolist()[1] == [True] * 4
    assert eos["eligible"].tolist()[0] == [False, True, True, True]
    for alias in ("exclude", "ignore"):
        same = MaskedDiffusionCollator(PAD, pad_policy=alias)(rows)
        assert all(torch.equal(same[k], out[k]) for k in out)
    cut = MaskedDiffusionCollator(PAD, max_length=2)(rows)
    assert cut["input_ids"].shape == (2, 2)
    with pytest.raises(ValueError, match="example_index"):
        MaskedDiffusionCollator(PAD)([{"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="eligible has 1 entries"):
        MaskedDiffusionCollator(PAD)([{"input_ids": [1, 2], "eligible": [1], "example_index": 0}])


# ----------------------------------------------------------------------------- trainer
def test_trainer_loss_equals_maskdiff_estimator(tmp_path):
    """compute_loss is maskdiff's Estimator on the same batch and seeds (P-POTS-like sampler,
    MIRROR, EMA control), and one training step logs exactly its statistics."""
    rows = sft_rows(4)
    density = lambda t: 0.5 + t ** 2  # noqa: E731
    model = tiny_bert()
    trainer = MaskedDiffusionTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                               max_steps=1, learning_rate=0.0),
        train_dataset=rows, rate_sampler=Importance(density), masker=Mirror(),
        mask_token_id=MASK, pad_token_id=PAD, control=BinEMA(), seed=11)
    inputs = MaskedDiffusionCollator(PAD)([IndexedDataset(rows)[i] for i in range(4)])
    reference = Estimator(rate_sampler=Importance(density), masker=Mirror(), mask_token_id=MASK,
                          control=BinEMA())
    expected = reference(HFAdapter(model, mask_token_id=MASK), batch_from_inputs(inputs),
                         BatchRandomness.for_batch(11, 0, [0, 1, 2, 3]))
    with torch.no_grad():
        got = trainer.compute_loss(model.eval(), inputs)
    assert abs(float(got.detach()) - float(expected.loss.detach())) < 1e-6

    trainer.train()  # one step of 2 micro-batches of 2: the same 4 examples, same draws
    log = trainer.state.log_history[0]
    # transformers 4.x's Trainer logs the loss rounded to 4 decimals (make test-tf4)
    rounding = 5e-5 if transformers.__version__.startswith("4.") else 0.0
    assert abs(log["loss"] - float(expected.values.mean())) < 1e-5 + rounding
    bins = (torch.ceil(expected.t.double() * 10) - 1).long()
    for j in range(10):
        key = f"loss_per_t_bin_{j}"
        if (bins == j).any():
            assert abs(log[key] - float(expected.raw_loss[bins == j].double().mean())) < 1e-5
        else:
            assert key not in log
    assert abs(log["masked_ce"] - expected.masked_ce_sum / expected.masked_count) < 1e-5


def test_hf_and_native_trainers_log_the_same_step_statistics(tmp_path):
    """Both trainers log one window implementation: the same steps give the same per-bin
    losses and masked CE, under the native list and under Trainer's flat keys."""
    from maskdiff.training.stats import StepStats
    from maskdiff.training.metrics_log import LogWindow

    trainer = MaskedDiffusionTrainer(
        model=tiny_bert(), args=args(tmp_path), train_dataset=sft_rows(4), rate_sampler=Uniform(),
        masker=Bernoulli(), mask_token_id=MASK, pad_token_id=PAD)
    native = LogWindow()
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        t, raw = torch.rand(16, generator=g) * 0.7, torch.rand(16, generator=g) * 5  # bins 7-9 empty
        stats = StepStats(t=t, w=torch.ones(16), raw=raw, values=raw, masked_ce_sum=3.0 + seed,
                          masked_count=4, tokens=100)
        trainer._window.add(stats)
        native.add({"stats": stats, "loss": 0.0, "grad_norm": 0.0, "lr": 0.0})
    logged, record = trainer._window_logs(), native.flush(2, float("nan"))
    for j, loss in enumerate(record["loss_per_t_bin"]):
        assert logged.get(f"loss_per_t_bin_{j}") == loss, j
    assert record["loss_per_t_bin"][9] is None and record["loss_per_t_bin"][0] is not None
    assert logged["masked_ce"] == record["masked_ce"] == 7.0 / 8


def test_grad_accumulation_gives_the_full_batch_update(tmp_path):
    """6 examples in one micro-batch or in three of 2: the same update. StraTS makes the rates
    depend on each example's position in the global batch (3 strata: positions 0-5 lie in
    strata 0,1,2,0,1,2), so the micro-batches' positions must be right too."""
    rows = sft_rows(12)
    results = []
    for micro, accum in ((6, 1), (2, 3)):
        model = tiny_bert()
        trainer = MaskedDiffusionTrainer(
            model=model, args=args(tmp_path / f"{micro}", per_device_train_batch_size=micro,
                                   gradient_accumulation_steps=accum, max_steps=2),
            train_dataset=rows, rate_sampler=Stratified(), masker=Bernoulli(), mask_token_id=MASK,
            pad_token_id=PAD, seed=5)
        trainer.train()
        results.append(weights(model))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, atol=2e-6, rtol=0, msg=name)


def test_training_reduces_the_full_range_loss(tmp_path):
    """40 steps of P-POTS+MIRROR lower the evaluation ELBO (fixed seeds) by > 0.5 nats/token;
    measured: 4.26 -> 2.35 (eval seed 1234, train seed 7)."""
    rows = sft_rows(16)
    model = tiny_bert()
    trainer = MaskedDiffusionTrainer(
        model=model, args=args(tmp_path, max_steps=40, learning_rate=1e-2, logging_steps=40),
        train_dataset=rows, eval_dataset=rows, rate_sampler=Importance(lambda t: 1.0 + t),
        masker=Mirror(), mask_token_id=MASK, pad_token_id=PAD, seed=7)
    before = trainer.evaluate()["eval_loss"]
    assert abs(before - math.log(VOCAB)) < 0.5  # a random model: about log V nats per token
    # evaluation is maskdiff's full-range ELBO with its default seed and 4 rates per example
    collate = lambda items: MaskedDiffusionCollator(PAD).batch(  # noqa: E731
        [{**row, "example_index": i} for i, row in items])
    reference = elbo(HFAdapter(model, mask_token_id=MASK), rows, collate, mask_token_id=MASK,
                     rates_per_example=4, seed=1234, batch_size=8)
    assert abs(before - reference.mean) < 1e-5
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.5, (before, after)


def test_resume_reaches_the_uninterrupted_weights(tmp_path):
    """6 steps straight vs 3 steps, checkpoint, a fresh trainer resuming: equal weights, equal
    sampler density (online P-POTS refits), control variate and proxy."""
    rows = sft_rows(16)

    def make(out, model):
        return MaskedDiffusionTrainer(
            model=model, args=args(out, per_device_train_batch_size=8, max_steps=6,
                                   save_strategy="steps", save_steps=3),
            train_dataset=rows, rate_sampler=Importance(lambda t: 1.0 + t), masker=Mirror(),
            mask_token_id=MASK, pad_token_id=PAD, control=BinEMA(), seed=9,
            ppots_tracker=SecondMomentTracker(n_bins=8), refit_every=3, refit_min_count=1.0,
            refit_restarts=1)

    straight = make(tmp_path / "a", tiny_bert())
    straight.train()
    assert straight.refits >= 1, straight.refit_history
    initial = Importance(lambda t: 1.0 + t).state_dict()["density"]
    assert not torch.allclose(straight.maskdiff_state()["sampler"]["density"], initial)
    checkpoint = tmp_path / "a" / "out" / "checkpoint-3"
    assert (checkpoint / "maskdiff_state.pt").is_file()
    resumed = make(tmp_path / "b", tiny_bert(seed=123))  # other init: the checkpoint overrides it
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    for name, value in weights(straight.model).items():
        torch.testing.assert_close(weights(resumed.model)[name], value, atol=1e-6, rtol=0, msg=name)
    a, b = straight.maskdiff_state(), resumed.maskdiff_state()
    torch.testing.assert_close(b["sampler"]["density"], a["sampler"]["density"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["control"]["stats"], a["control"]["stats"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["proxy"]["sums"], a["proxy"]["sums"], atol=1e-9, rtol=1e-9)
    assert json.loads(a["refit"])["refits"] == json.loads(b["refit"])["refits"]


def test_lora_changes_only_adapter_weights(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    before = weights(model)
    trainer = MaskedDiffusionTrainer(
        model=model, args=args(tmp_path, max_steps=3, learning_rate=1e-2), train_dataset=sft_rows(8),
        rate_sampler=Uniform(), masker=Mirror(), mask_token_id=MASK, pad_token_id=PAD)
    trainer.train()
    after = weights(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)
    assert any("lora_B" in k for k in changed)


# ----------------------------------------------------------------------------- tokenizer, remote code
SPECIAL = ["[PAD]", "[UNK]", "[MASK]", "[EOS]", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
WORDS = sorted(set("hello world what is two plus three five the answer : ( ) = a b c and".split()))
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|> {% if m.role == 'assistant' %}"
            "{% generation %}{{ m.content }} <|end|>{% endgeneration %}"
            "{% else %}{{ m.content }} <|end|>{% endif %} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def word_tokenizer(with_generation: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        eos_token="[EOS]", additional_special_tokens=SPECIAL[4:])
    tok.chat_template = TEMPLATE if with_generation else re.sub(r"{% (end)?generation %}", "", TEMPLATE)
    return tok


CONVERSATION = [
    {"role": "system", "content": "a b"},
    {"role": "user", "content": "what is two plus three"},
    {"role": "assistant", "content": "the answer : five"},
    {"role": "user", "content": "and ( two plus two )"},
    {"role": "assistant", "content": "the answer = a"},
]


@pytest.mark.parametrize("method", ["template", "diff", "auto"])
def test_chat_eligible_is_exactly_the_assistant_turns(method):
    tok = word_tokenizer(with_generation=method != "diff")
    row = encode_chat(tok, CONVERSATION, method=method,
                      syntax_ids=syntax_token_ids(tok, ["(", ")", ":", "=", SPECIAL.index("<|end|>")]))
    tokens = tok.convert_ids_to_tokens(row["input_ids"])
    eligible = [t for t, e in zip(tokens, row["eligible"]) if e]
    assert eligible == "the answer : five <|end|> the answer = a <|end|>".split()
    # every eligible run starts right after an <|assistant|> token
    starts = [i for i, e in enumerate(row["eligible"]) if e and not row["eligible"][i - 1]]
    assert [tokens[i - 1] for i in starts] == ["<|assistant|>", "<|assistant|>"]
    syntax = [t for t, s in zip(tokens, row["syntax"]) if s]
    assert syntax == ["<|end|>", "<|end|>", "(", ")", "<|end|>"]  # prompt side only


def test_chat_collator_pads_with_eos_and_keeps_the_index():
    tok = word_tokenizer()
    rows = [{"prompt": "what is two plus three", "response": "five", "example_index": 7},
            {"messages": CONVERSATION, "example_index": 2}]
    out = ChatCollator(tok, pad_policy="eos", syntax_tokens=["("])(rows)
    eos = tok.eos_token_id
    assert out["example_index"].tolist() == [7, 2]
    short = out["input_ids"][0].tolist()
    n = len(encode_chat(tok, ChatCollator.messages(rows[0]))["input_ids"])
    assert short[n:] == [eos] * (len(short) - n) and len(short) > n
    assert out["attention_mask"].all() and out["eligible"][0, n:].all()
    answer = [short[i] for i in range(n) if out["eligible"][0, i]]
    assert tok.convert_ids_to_tokens(answer) == ["five", "<|end|>"]
    assert int(out["syntax"].sum()) == 1


def test_syntax_token_ids_rejects_multi_token_strings():
    tok = word_tokenizer()
    assert syntax_token_ids(tok, ["(", 5]) == {tok.convert_tokens_to_ids("("), 5}
    with pytest.raises(ValueError, match="encodes to 2 tokens"):
        syntax_token_ids(tok, ["( )"])


CONFIG_PY = '''
from transformers import PretrainedConfig


class TinyDiffConfig(PretrainedConfig):
    model_type = "tinydiff"

    def __init__(self, vocab_size=32, hidden_size=16, mask_token_id=2, **kwargs):
        self.vocab_size, self.hidden_size, self.mask_token_id = vocab_size, hidden_size, mask_token_id
        super().__init__(**kwargs)
'''

MODELING_PY = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinydiff import TinyDiffConfig


class TinyDiffModel(PreTrainedModel):
    """Dream-like: the logits for token i sit at position i - 1."""

    config_class = TinyDiffConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is None:
            keys = torch.ones(input_ids.shape, dtype=h.dtype)
        elif attention_mask.dim() == 4:
            keys = attention_mask[:, 0, 0, :].to(h.dtype)
        else:
            keys = attention_mask.to(h.dtype)
        context = (h * keys[..., None]).sum(1, keepdim=True) / keys.sum(1)[:, None, None]
        logits = self.head(torch.tanh(h + self.mix(context)))
        return MaskedLMOutput(logits=torch.cat([logits[:, 1:], logits[:, -1:]], dim=1))
'''


def remote_code_dir(path: Path) -> Path:
    from safetensors.torch import save_file

    path.mkdir()
    (path / "configuration_tinydiff.py").write_text(CONFIG_PY)
    (path / "modeling_tinydiff.py").write_text(MODELING_PY)
    n_vocab = len(SPECIAL) + len(WORDS)
    (path / "config.json").write_text(json.dumps({
        "model_type": "tinydiff", "vocab_size": n_vocab, "hidden_size": 16, "mask_token_id": 2,
        "auto_map": {"AutoConfig": "configuration_tinydiff.TinyDiffConfig",
                     "AutoModel": "modeling_tinydiff.TinyDiffModel"}}))
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, trust_remote_code=True)
    save_file(model.state_dict(), str(path / "model.safetensors"))
    word_tokenizer().save_pretrained(path)
    return path


def test_remote_code_model_through_adapter_and_trainer(tmp_path):
    path = remote_code_dir(tmp_path / "tinydiff")
    adapter, tok, mask_id = load_hf_model(path, trust_remote_code=True, logit_shift=1)
    assert mask_id == tok.mask_token_id == 2
    assert adapter.options.logit_shift == 1 and adapter.options.pad_token_id == tok.pad_token_id
    x = torch.randint(8, 20, (2, 6))
    att = torch.ones(2, 6, dtype=torch.bool)
    att[0, 4:] = False
    raw = adapter.model(input_ids=x, attention_mask=att.long()).logits
    out = adapter(x, att)
    assert torch.equal(out[:, 1:], raw[:, :-1])  # token i's logits moved back to position i
    four_d = HFAdapter(adapter.model, mask_token_id=2, logit_shift=1, attention="4d")(x, att)
    torch.testing.assert_close(four_d, out)

    collate = ChatCollator(tok)
    rows = [{"prompt": "what is two plus three", "response": "the answer : five"},
            {"prompt": "hello world", "response": "a b c"}] * 2
    trainer = MaskedDiffusionTrainer(
        model=adapter, args=args(tmp_path, max_steps=2), train_dataset=rows, data_collator=collate,
        rate_sampler=Uniform(), masker=Mirror())
    before = weights(adapter.model)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(k.startswith("loss_per_t_bin_") for k in trainer.state.log_history[0])
    assert any(not torch.equal(before[k], v) for k, v in weights(adapter.model).items())


def test_docs_snippet_runs(tmp_path, monkeypatch):
    """The "Use with Hugging Face" snippet of docs/huggingface.md runs as written."""
    text = (ROOT / "docs" / "huggingface.md").read_text()
    section = text.split("## Use with Hugging Face", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/huggingface.md", "exec"), {"__name__": "__docs__"})


def test_llada_sft_example_runs_on_a_tiny_model(tmp_path):
    """examples/sft_llada_8b.py end to end (P-POTS estimated at start-up, MIRROR, LoRA, EOS
    padding, online refits) on the tiny remote-code model, on the CPU."""
    import runpy

    path = remote_code_dir(tmp_path / "tinydiff")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "what is two plus three", "response": "the answer : five"},
        {"messages": CONVERSATION}, {"prompt": "hello world", "response": "a b c"},
        {"prompt": "two plus two", "response": "the answer = a"}]))
    script = runpy.run_path(str(ROOT / "examples" / "sft_llada_8b.py"))
    out = tmp_path / "run"
    code = script["main"]([
        "--model", str(path), "--mask-token-id", "2", "--data", str(data), "--output-dir", str(out),
        "--lora", "--lora-targets", "mix", "head", "--batch-size", "2", "--grad-accum", "1",
        "--steps", "2", "--warmup-steps", "0", "--save-steps", "2", "--device", "cpu", "--no-bf16",
        "--ppots-examples", "4", "--ppots-rates", "8", "--ppots-masks", "2",
        "--ppots-restarts", "1", "--online-refit-every", "1"])
    assert code == 0
    fit = json.loads((out / "ppots.json").read_text())
    assert len(fit["t"]) == 8 and fit["forward_passes"] == 4 * 8 * 2
    assert (out / "final" / "adapter_config.json").is_file()
    assert (out / "checkpoint-2" / "maskdiff_state.pt").is_file()


def test_hf_batch_for_maskdiff_tools():
    """hf_batch encodes text, chat and BERT-style prompt/response rows for model_p_hat et al."""
    from maskdiff.hf import hf_batch

    chat_tok = word_tokenizer()
    batch = hf_batch(chat_tok, [{"text": "hello world"}, {"prompt": "two plus two", "response": "a"}],
                     first_index=10)
    assert batch.example_index.tolist() == [10, 11]
    assert batch.x0.shape == (2, 8)  # <|user|> two plus two <|end|> <|assistant|> a <|end|>
    assert batch.eligible[0].tolist() == [True, True] + [False] * 6
    assert chat_tok.convert_ids_to_tokens(batch.x0[1][batch.eligible[1]].tolist()) == ["a", "<|end|>"]
    plain = word_tokenizer()
    plain.chat_template = None
    batch = hf_batch(plain, [{"prompt": "two plus two", "response": "a b"}])
    assert plain.convert_ids_to_tokens(batch.x0[0][batch.eligible[0]].tolist()) == ["a", "b", "[EOS]"]
    assert int(batch.eligible.sum()) == 3 and batch.attention_mask.all()


def test_fit_pots_and_decompose_accept_a_hugging_face_model(tmp_path, capsys):
    """`maskdiff fit-pots --hf` and `maskdiff decompose --hf` on a local remote-code model."""
    from maskdiff.cli import main

    model_dir = remote_code_dir(tmp_path / "model")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"tok{i} tok{i + 1}", "response": f"tok{i + 2} tok{i}"})
                            + "\n" for i in range(6)))
    hf_args = ["--hf", str(model_dir), "--data", str(data), "--trust-remote-code"]
    assert main(["fit-pots", *hf_args, "--a", "4", "--b", "10", "--c", "2", "--restarts", "2",
                 "--out", str(tmp_path / "pots"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "pots" / "ppots.json").read_text())
    assert doc["forward_passes"] == 4 * 10 * 2 and doc["source"]["hf"] == str(model_dir)
    assert main(["decompose", *hf_args, "--methods", "standard", "mirror", "isad", "--a", "4",
                 "--b", "3", "--c", "3", "--n-batches", "4", "--batch-size", "2", "--grad-draws", "4",
                 "--grad-batch-draws", "2", "--curve-rates", "4", "--n-boot", "20",
                 "--out", str(tmp_path / "dec"), "--quiet"]) == 0
    result = json.loads((tmp_path / "dec" / "decompose.json").read_text())
    assert set(result["configurations"]) == {"standard", "mirror"}  # ISAD needs a task's delimiters
    assert result["model"]["hf"] == str(model_dir)
    capsys.readouterr()
    # --hf without --data is a one-line error, not a traceback
    assert main(["fit-pots", "--hf", str(model_dir), "--out", str(tmp_path / "x")]) != 0
    assert "--data" in capsys.readouterr().err
