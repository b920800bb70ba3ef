"""The real model code of LLaDA, Dream and LLaDA2 (the fixtures, as dllm vendors them) loads
unchanged through load_hf_model under the installed transformers (5.x: through the shims of
maskdiff.hf.compat; 4.57: natively), trains, decodes and evaluates; nothing goes wrong silently.

Tiny random models (hidden 64, 2 layers, a 320-id BPE tokenizer) are built at test time from
the fixture code with maskdiff.hf.remote.save_random_model; the code is never copied into the
repository. A family never seen before that uses the same 4.x patterns (test_unseen_family_*)
is written here and needs no fixture."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.hf import MaskedDiffusionTrainer, load_hf_model, method_trainer_kwargs  # noqa: E402
from maskdiff.hf.checks import CausalAttentionWarning  # noqa: E402
from maskdiff.hf.families import family_of  # noqa: E402
from maskdiff.hf.probes import check_buffers  # noqa: E402
from maskdiff.hf.remote import save_random_model, sized_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MASKDIFF_FIXTURES") or ROOT.parent / "shared" / "fixtures")
MODELS = FIXTURES / "models"
needs_fixtures = pytest.mark.skipif(
    not MODELS.is_dir(), reason=f"no model fixtures at {MODELS} (a user's clone has none)")
FAMILIES = ["llada", "dream", "llada2_moe"]
MASK, PAD, VOCAB = 3, 0, 320
TF_MAJOR = int(transformers.__version__.split(".")[0])


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    if not MODELS.is_dir():
        pytest.skip(f"no model fixtures at {MODELS}")
    root = tmp_path_factory.mktemp("families")
    return {name: save_random_model(MODELS / name, root / name, config=sized_config(name))
            for name in FAMILIES}


def load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return load_hf_model(path, trust_remote_code=True, **kw)


def rows(n: int, seed: int = 1) -> list[dict]:
    """A 3-token prompt (not eligible) then a response repeating its first token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(8, 14, (1,), generator=g))
        prompt = torch.randint(4, 40, (3,), generator=g).tolist()
        out.append({"input_ids": prompt + [prompt[0]] * (length - 3),
                    "eligible": [0, 0, 0] + [1] * (length - 3)})
    return out


def train_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
                per_device_train_batch_size=8, max_steps=30, logging_steps=30,
                save_strategy="no", learning_rate=1e-2, lr_scheduler_type="constant",
                disable_tqdm=True, seed=3, dataloader_num_workers=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


# ----------------------------------------------------------------------------- loading
@needs_fixtures
@pytest.mark.parametrize("name", FAMILIES)
def test_family_loads_forwards_and_reloads_equal(family_dirs, name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CausalAttentionWarning)  # the probe finds it bidirectional
        adapter, tok, mask_id = load(family_dirs[name])
    family = family_of(adapter.model.config)
    # the detected defaults (docs/huggingface.md's table)
    assert (mask_id, adapter.options.logit_shift, adapter.options.attention) == (
        MASK, family.logit_shift, family.attention)
    assert {"llada": (0, "2d"), "dream": (1, "4d"), "llada2_moe": (0, "4d")}[name] == (
        family.logit_shift, family.attention)
    # LLaDA2's auto_map sends AutoModel to the headless model: the LM head class is loaded
    assert type(adapter.model).__name__ == {"llada": "LLaDAModelLM", "dream": "DreamModel",
                                            "llada2_moe": "LLaDA2MoeModelLM"}[name]
    x = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    att = torch.ones(2, 12, dtype=torch.bool)
    att[1, -3:] = False
    logits = adapter(x, att)
    assert logits.shape == (2, 12, VOCAB) and torch.isfinite(logits).all()
    adapter.model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again, _, _ = load(tmp_path / "saved")
    torch.testing.assert_close(again(x, att), logits, rtol=0, atol=1e-5)


@needs_fixtures
def test_llada2_forced_2d_attention_is_causal_on_padding_and_warns(family_dirs):
    """LLaDA2 turns a 2-D mask with padding into a causal one; the probe says so, with the fix."""
    with pytest.warns(CausalAttentionWarning, match=r"causally on a padded batch under "
                      r"attention='2d' \(its family's default is '4d'\): pass attention='4d'"):
        adapter, _, _ = load(family_dirs["llada2_moe"], attention="2d")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CausalAttentionWarning)
        load(family_dirs["llada2_moe"])  # the family's 4-D default: bidirectional, no warning


@needs_fixtures
def test_corrupted_rotary_buffer_is_recomputed_and_said(family_dirs):
    adapter, _, _ = load(family_dirs["dream"])
    rotary = adapter.model.model.rotary_emb
    good = rotary.inv_freq.clone()
    rotary.inv_freq.fill_(1e34)  # what an uninitialised buffer looks like
    assert check_buffers(adapter.model) == ["model.rotary_emb.inv_freq"]
    torch.testing.assert_close(rotary.inv_freq, good)
    # with no recipe, a non-finite non-persistent buffer is one error naming it
    del rotary.rope_init_fn
    rotary.inv_freq.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-persistent buffer model.rotary_emb.inv_freq holds "
                                         r"non-finite values"):
        check_buffers(adapter.model)


@needs_fixtures
def test_nan_logits_on_the_first_batch_are_one_line(family_dirs, tmp_path):
    adapter, _, _ = load(family_dirs["llada"])
    with torch.no_grad():
        adapter.model.get_output_embeddings().weight[5].fill_(float("nan"))
    trainer = MaskedDiffusionTrainer(model=adapter, args=train_args(tmp_path, max_steps=1),
                                     train_dataset=rows(8), **method_trainer_kwargs("standard"))
    with pytest.raises(ValueError, match=r"the first batch gave NaN/inf logits at \d+ of \d+ real "
                                         r"positions: likely an uninitialised weight or buffer"):
        trainer.train()


@needs_fixtures
def test_dream_position_zero_is_never_eligible(family_dirs, capfd):
    from maskdiff.hf import hf_batch

    adapter, tok, _ = load(family_dirs["dream"])
    batch = hf_batch(tok, [{"text": "In the beginning God created"}])
    assert batch.eligible[0, 0]
    eligible = adapter.options.eligible(batch.eligible)
    assert not eligible[0, 0] and torch.equal(eligible[0, 1:], batch.eligible[0, 1:])
    assert "logit_shift=1: positions 0..0 are never eligible" in capfd.readouterr().err


# ----------------------------------------------------------------------------- training
@needs_fixtures
@pytest.mark.parametrize("method", ["standard", "mirror", "ppots_online"])
@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_30_steps_and_the_loss_falls(family_dirs, name, method, tmp_path):
    adapter, _, _ = load(family_dirs[name])
    data = rows(16)
    kwargs = method_trainer_kwargs(method)
    if method == "ppots_online":
        kwargs.update(refit_every=10, refit_min_count=4)
    trainer = MaskedDiffusionTrainer(model=adapter, args=train_args(tmp_path), train_dataset=data,
                                     eval_dataset=data, seed=7, **kwargs)
    before = trainer.evaluate()["eval_loss"]
    assert abs(before - math.log(VOCAB)) < 1.5  # a random model: about log V nats per token
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert trainer.state.global_step == 30
    assert after < before - 1.0, (before, after)


@needs_fixtures
@pytest.mark.parametrize("name", FAMILIES)
def test_family_generates_and_evaluates(family_dirs, name, tmp_path):
    from maskdiff.evaluation.model import load_eval_model
    from maskdiff.evaluation.rows import evaluate_rows
    from maskdiff.training.generate import generate_diffusion

    adapter, tok, mask_id = load(family_dirs[name])
    prompt = torch.tensor([tok.encode("In the beginning")])
    out = generate_diffusion(adapter, prompt, gen_length=8, steps=4, block_length=8,
                             mask_token_id=mask_id)
    assert out.shape == (1, prompt.shape[1] + 8) and not (out == mask_id).any()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": "In the beginning", "response": "God created"})
                            + "\n" for _ in range(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = load_eval_model(hf=family_dirs[name], trust_remote_code=True)
    report = evaluate_rows(model, data, rates=2, pass_at_1=True, gen_length=8, steps=4,
                           block_length=8)
    assert math.isfinite(report["loss_result"].mean)
    assert abs(report["loss_result"].mean - math.log(VOCAB)) < 1.5
    assert len(report["predictions"]) == 3


# ----------------------------------------------------------------------------- an unseen family
UNSEEN_CONFIG = """
from transformers import PretrainedConfig


class UnseenConfig(PretrainedConfig):
    model_type = "unseen"

    def __init__(self, vocab_size=300, hidden_size=32, num_attention_heads=2, rope_theta=10000.0,
                 max_position_embeddings=64, use_cache=False, mask_token_id=3, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_attention_heads, self.rope_theta = num_attention_heads, rope_theta
        self.max_position_embeddings, self.mask_token_id = max_position_embeddings, mask_token_id
        super().__init__(use_cache=use_cache, **kwargs)
"""

UNSEEN_MODELING = """
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.utils.import_utils import is_torch_fx_available
from .configuration_unseen import UnseenConfig


class UnseenRotary(nn.Module):
    def __init__(self, config, device=None):
        super().__init__()
        self.config = config
        self.rope_init_fn = ROPE_INIT_FUNCTIONS["default"]
        inv_freq, _ = self.rope_init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length, heads):
        angle = torch.arange(length, device=self.inv_freq.device).float()[:, None] * self.inv_freq
        return torch.cat([angle.sin(), angle.cos()], -1).repeat(1, heads)


class UnseenPreTrainedModel(PreTrainedModel):
    config_class = UnseenConfig
    base_model_prefix = "unseen"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)


class UnseenForMaskedLM(UnseenPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        device = "cuda"  # hard-coded, as a vendored copy might
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, device=device)
        self.rotary = UnseenRotary(config, device=device)
        self.attn = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads,
                                          batch_first=True, device=device)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids, attention_mask=None, **kwargs):
        h = self.embed(input_ids)
        h = h + self.rotary(input_ids.shape[1], self.config.num_attention_heads)
        pad = None if attention_mask is None else ~attention_mask.bool()
        h = h + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return MaskedLMOutput(logits=self.lm_head(h))
"""


def test_unseen_family_with_the_same_4x_patterns_loads(tmp_path):
    """A remote-code family written here with the 4.x patterns of the fixtures (list-valued
    _tied_weights_keys, tie_weights() without keywords, no post_init(), use_cache passed to
    PretrainedConfig, ROPE_INIT_FUNCTIONS['default'], is_torch_fx_available, device='cuda'
    hard-coded) loads, saves and reloads equal, under either transformers line."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "configuration_unseen.py").write_text(UNSEEN_CONFIG)
    (code / "modeling_unseen.py").write_text(UNSEEN_MODELING)
    config = {"model_type": "unseen", "vocab_size": 300, "hidden_size": 32,
              "num_attention_heads": 2, "mask_token_id": MASK, "pad_token_id": PAD,
              "auto_map": {"AutoConfig": "configuration_unseen.UnseenConfig",
                           "AutoModelForMaskedLM": "modeling_unseen.UnseenForMaskedLM"}}
    path = save_random_model(code, tmp_path / "unseen", config=config)
    adapter, _, mask_id = load(path)
    assert mask_id == MASK and adapter.model.config.use_cache is False
    x = torch.randint(4, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    logits = adapter(x)
    assert torch.isfinite(logits).all()
    rotary = adapter.model.rotary
    expected = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(rotary.inv_freq, expected)  # recomputed if loading left it wrong
    adapter.model.save_pretrained(tmp_path / "saved")
    again, _, _ = load(tmp_path / "saved", tokenizer_name_or_path=path)
    torch.testing.assert_close(again(x), logits)


@needs_fixtures
@pytest.mark.slow
def test_hf_steps_benchmark_dry_run(tmp_path):
    """benchmarks/hf_steps.py --dry-run (what gpu_check.sh --dry-run runs): a table and JSON."""
    import runpy

    main = runpy.run_path(str(ROOT / "benchmarks" / "hf_steps.py"))["main"]
    out = tmp_path / "hf_steps.json"
    assert main(["--dry-run", "--steps", "2", "--fixtures", str(FIXTURES), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["rows"]] == ["standard", "mirror"]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"]) for r in report["rows"])


@needs_fixtures
def test_cli_evaluate_and_generate_use_the_family_defaults(family_dirs, tmp_path, capfd,
                                                          monkeypatch):
    """`maskdiff evaluate/generate --hf` need no --auto-class / --logit-shift for these families:
    LLaDA2 loads its LM head class (not the headless AutoModel), Dream gets its shift."""
    from maskdiff.cli import main
    from maskdiff.hf import loading

    monkeypatch.setattr(loading, "_SAID", set())  # each line is said once per process
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "In the beginning God created the heaven"}) + "\n")
    out = tmp_path / "eval.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert main(["evaluate", "--hf", str(family_dirs["llada2_moe"]), "--trust-remote-code",
                     "--data", str(data), "--rates", "2", "--out", str(out)]) == 0
        assert math.isfinite(json.loads(out.read_text())["loss"]["mean"])
        assert main(["generate", "--hf", str(family_dirs["dream"]), "--trust-remote-code",
                     "--prompt", "In the beginning", "--gen-length", "4", "--steps", "4"]) == 0
    err = capfd.readouterr().err
    assert ("LLaDA2 family detected: mask_token_id=3, logit_shift=0, attention=4d, "
            "auto_class=AutoModelForCausalLM") in err
    assert "Dream family detected: mask_token_id=3, logit_shift=1, attention=4d" in err


@needs_fixtures
def test_a_raw_model_handed_to_the_trainer_gets_its_familys_shift_and_attention(
        family_dirs, tmp_path, capsys):
    """A Dream or LLaDA2 model passed to MaskedDiffusionTrainer without the adapter keeps its
    family's logit shift and attention format (not the generic 0 / "2d"), and says so once."""
    from maskdiff.hf import MaskedDiffusionTrainer
    from maskdiff.hf.families import family_of

    for name in ("dream", "llada2_moe"):
        adapter, _, mask_id = load(family_dirs[name])
        capsys.readouterr()
        trainer = MaskedDiffusionTrainer(model=adapter.model, args=train_args(tmp_path / name),
                                         train_dataset=rows(4), mask_token_id=mask_id)
        expected = family_of(adapter.model.config)
        assert (trainer.options.logit_shift, trainer.options.attention) == (
            expected.logit_shift, expected.attention)
        assert capsys.readouterr().err.count(f"{expected.name} family detected") == 1
    assert (family_of("dream").logit_shift, family_of("llada2_moe").attention) == (1, "4d")
