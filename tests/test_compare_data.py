"""``maskdiff compare`` on the user's own data (--train-file) and a Hugging Face model (--hf):
the same paired protocol, pass@1 where rows carry a gold answer, the test ELBO always."""

import json

import numpy as np
import pytest

from maskdiff.cli import main
from maskdiff.data.arithmetic import ArithmeticConfig, make_example


def _arithmetic_rows(path, n=48):
    rng = np.random.default_rng(0)
    rows = [make_example(rng, ArithmeticConfig(n_ops=1, max_value=5)) for _ in range(n)]
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n"
                            for e in rows))
    return path


def test_compare_runs_the_protocol_on_a_train_file(tmp_path):
    data = _arithmetic_rows(tmp_path / "mine.jsonl")
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "smoke", "--train-file", str(data), "--methods",
                 "standard,mirror", "--out", str(out), "--quiet", "--workers", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "jsonl" and results["task"]["train_file"] == str(data)
    assert results["task"]["n_val"] == 4  # 10% of 48 held out: the validation = test split
    mirror = results["methods"]["mirror"]
    assert mirror["has_pass_at_1"] and "difference" in mirror["vs_standard"]["pass_at_1"]
    assert mirror["test_loss_floor"]["n_items"] == 4
    assert str(data) in (out / "report.md").read_text()


def test_text_rows_have_a_test_elbo_and_no_pass_at_1(tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat {i} today"}) + "\n"
                            for i in range(30)))
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "smoke", "--train-file", str(data), "--methods",
                 "standard,mirror", "--seeds", "1,2", "--out", str(out), "--quiet",
                 "--workers", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    std = results["methods"]["standard"]
    assert not std["has_pass_at_1"] and "pass_at_1_ci" not in std
    assert len(std["test_loss"]) == 2 and all(x > 0 for x in std["test_loss"])
    assert "## pass@1" not in (out / "report.md").read_text()


def _tiny_hf_model(path):
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[MASK]", "[EOS]", "add", "####"] + [str(d) for d in range(10)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                               unk_token="[UNK]", mask_token="[MASK]",
                                               eos_token="[EOS]")
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_compare_runs_the_protocol_on_a_hugging_face_model(tmp_path):
    model = _tiny_hf_model(tmp_path / "bert")
    rng = np.random.default_rng(1)
    pairs = [(a, b) for a in range(10) for b in range(10) if a + b <= 9]  # 40 distinct rows:
    rows = [{"prompt": f"add {a} {b}", "response": f"{a + b} #### {a + b}"}  # repeats would be
            for a, b in (pairs[k] for k in rng.permutation(len(pairs))[:40])]  # held out once
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "hf"
    assert main(["compare", "--preset", "smoke", "--hf", str(model), "--train-file", str(data),
                 "--methods", "standard,mirror,ar", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"standard", "mirror"}  # the causal twin needs maskdiff's
    assert results["task"]["hf"] == str(model)
    for m in results["methods"].values():
        assert len(m["pass_at_1"]) == 3 and all(0 <= p <= 1 for p in m["pass_at_1"])
        assert m["test_loss_floor"]["n_items"] == 4
    runs = [r for r in results["runs"] if r["label"] == "mirror"]
    assert runs[0]["history"] and runs[0]["forward_passes"] == 2 * runs[0]["steps"] * 8
    # Paired: every run scored on the same rows with the same draws.
    items = [json.loads(p.read_text())["elbo_items"] for p in (out / "runs").rglob("compare.json")]
    assert len(items) == 6 and len({len(i) for i in items}) == 1
