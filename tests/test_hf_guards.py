"""Guard rails of the Hugging Face path (maskdiff.hf.checks, maskdiff.hf.lora, the LLaDA example):
each mistake is a clear error or warning, not a raw IndexError or a silent no-op."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.core.masking import Bernoulli  # noqa: E402
from maskdiff.core.samplers import Uniform  # noqa: E402
from maskdiff.hf import MaskedDiffusionTrainer, load_hf_model  # noqa: E402
from maskdiff.hf.checks import CausalAttentionWarning, causal_attention_reason  # noqa: E402
from maskdiff.hf.lora import check_lora_targets, lora_candidates  # noqa: E402

from test_hf import (  # noqa: E402
    CONVERSATION, MASK, PAD, ROOT, VOCAB, args, remote_code_dir, sft_rows, tiny_bert)


def trainer_for(model, tmp_path, **kw):
    return MaskedDiffusionTrainer(
        model=model, args=args(tmp_path), train_dataset=sft_rows(8), rate_sampler=Uniform(),
        masker=Bernoulli(), pad_token_id=PAD, **{"mask_token_id": MASK, **kw})


# ----------------------------------------------------------------------------- LoRA targets
def test_lora_targets_that_match_nothing_list_the_candidates():
    model = tiny_bert()
    assert {"query", "key", "value", "dense", "decoder"} <= set(lora_candidates(model))
    with pytest.raises(ValueError, match=r"\['q_proj', 'v_proj'\] match no layer of BertForMaskedLM"
                       r".*names end in: .*query.*value"):
        check_lora_targets(model, ["q_proj", "v_proj"])
    # one right name among wrong ones: PEFT would adapt `query` only, silently
    with pytest.raises(ValueError, match=r"\['v_proj'\] match no layer"):
        check_lora_targets(model, ["query", "v_proj"])
    with pytest.raises(ValueError, match="regex 'attention' matches no layer"):
        check_lora_targets(model, "attention")  # a regex must match the whole name
    assert check_lora_targets(model, ["query", "value"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
    assert check_lora_targets(model, r".*\.self\.(query|key)") == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key"]


def test_apply_lora_and_the_trainer_log_the_trainable_count(tmp_path, caplog):
    pytest.importorskip("peft")
    from maskdiff.hf.lora import apply_lora

    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    with caplog.at_level(logging.INFO, logger="maskdiff.hf"):
        lora = apply_lora(model, ["query", "value"], r=4, alpha=8)
        trainer = trainer_for(lora, tmp_path)
    # r=4 on two 32x32 projections: A (4x32) + B (32x4) each
    lora_params = 2 * (4 * 32 + 32 * 4)
    assert f"LoRA r=4 on 2 layers: {lora_params} trainable of {total + lora_params}" in caplog.text
    assert trainer.parameter_counts == (lora_params, total + lora_params)
    assert f"{lora_params} trainable of {total + lora_params} parameters" in caplog.messages[-1]
    for p in lora.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="has no trainable parameter"):
        trainer_for(lora, tmp_path)


def test_docs_lora_snippet_runs(tmp_path, monkeypatch):
    """docs/huggingface.md's LoRA snippet, after its first snippet, runs as written and trains
    the adapters only."""
    pytest.importorskip("peft")
    text = (ROOT / "docs" / "huggingface.md").read_text()
    first = re.search(r"```python\n(.*?)```", text.split("## Use with Hugging Face", 1)[1], re.S)
    lora = re.search(r"```python\n(.*?)```", text.split("### LoRA", 1)[1], re.S)
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__docs__"}
    exec(compile(first.group(1), "docs/huggingface.md", "exec"), scope)
    base = {k: v.clone() for k, v in scope["model"].state_dict().items()}
    exec(compile(lora.group(1), "docs/huggingface.md#lora", "exec"), scope)
    trainable, total = scope["trainer"].parameter_counts
    assert trainable == 2 * (8 * 32 + 32 * 8) and total > trainable
    after = scope["lora_model"].get_base_model().state_dict()
    changed = {k for k, v in after.items() if k in base and not torch.equal(v, base[k])}
    assert changed == set(), changed  # the base weights are frozen
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)


# ----------------------------------------------------------------------------- causal attention
def tiny_llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, pad_token_id=PAD))


def tiny_bert_decoder():
    torch.manual_seed(0)
    return transformers.BertLMHeadModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, is_decoder=True, pad_token_id=PAD))


@pytest.mark.parametrize("make, reason", [
    (tiny_llama, r"model\.layers\.0\.self_attn \(LlamaAttention\) has is_causal=True"),
    (tiny_bert_decoder, r"BertConfig\.is_decoder is True"),
])
def test_a_causal_model_warns(tmp_path, make, reason):
    model = make()
    assert re.fullmatch(reason, causal_attention_reason(model))
    with pytest.warns(CausalAttentionWarning, match="attention is causal .*bidirectional"):
        trainer_for(model, tmp_path)


def test_bidirectional_models_do_not_warn(tmp_path):
    model = tiny_bert()
    assert causal_attention_reason(model) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", CausalAttentionWarning)
        trainer_for(model, tmp_path)
        load_hf_model(remote_code_dir(tmp_path / "tiny"), trust_remote_code=True, logit_shift=1)


# ----------------------------------------------------------------------------- ids vs vocabulary
def test_mask_and_pad_ids_are_checked_against_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match=r"mask_token_id=126336 is outside the model's vocabulary "
                                         r"\(64 input embeddings, ids 0\.\.63\)"):
        trainer_for(tiny_bert(), tmp_path, mask_token_id=126336)
    with pytest.raises(ValueError, match="pad_token_id=64 is outside"):
        MaskedDiffusionTrainer(model=tiny_bert(), args=args(tmp_path), train_dataset=sft_rows(4),
                               rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=MASK,
                               pad_token_id=VOCAB)
    path = remote_code_dir(tmp_path / "tiny")
    with pytest.raises(ValueError, match="mask_token_id=126336 is outside the model's vocabulary"):
        load_hf_model(path, trust_remote_code=True, mask_token_id=126336)


# ----------------------------------------------------------------------------- the LLaDA example
def _example(tmp_path: Path, model: Path, rows: list[dict], *extra: str) -> int:
    import runpy

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = runpy.run_path(str(ROOT / "examples" / "sft_llada_8b.py"))
    return script["main"]([
        "--model", str(model), "--data", str(data), "--output-dir", str(tmp_path / "run"),
        "--lora", "--lora-targets", "mix", "head", "--batch-size", "2", "--grad-accum", "1",
        "--steps", "2", "--warmup-steps", "0", "--save-steps", "2", "--device", "cpu",
        "--no-bf16", "--ppots-examples", "2", "--ppots-rates", "8", "--ppots-masks", "1",
        "--ppots-restarts", "1", *extra])


PLAIN_ROWS = [{"prompt": "what is two plus three", "response": "the answer : five"},
              {"prompt": "hello world", "response": "a b c"}]


def test_llada_example_without_a_chat_template(tmp_path, capsys):
    """A tokenizer without a chat template: prompt/response rows train (prompt, response + EOS
    eligible) and the mask id comes from the tokenizer; a messages row is a clear error."""
    model = remote_code_dir(tmp_path / "tiny")
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert not transformers.AutoTokenizer.from_pretrained(model).chat_template
    assert _example(tmp_path, model, PLAIN_ROWS) == 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    assert "training " in capsys.readouterr().out  # the trainable-parameter count
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="'messages' row needs a chat template"):
        _example(tmp_path / "b", model, [{"messages": CONVERSATION}] * 2)


def test_llada_example_errors_are_clear(tmp_path):
    model = remote_code_dir(tmp_path / "tiny")
    with pytest.raises(ValueError, match="mask_token_id=126336 is outside the model's vocabulary"):
        _example(tmp_path, model, PLAIN_ROWS, "--mask-token-id", "126336")
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no layer .*head, .*mix"):
        _example(tmp_path, model, PLAIN_ROWS, "--lora-targets", "q_proj")
