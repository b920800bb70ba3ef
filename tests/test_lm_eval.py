"""The lm-evaluation-harness model end to end, offline, on local task files (docs/evaluation.md):
a native run and a Hugging Face model, through ``lm_eval.simple_evaluate`` and ``maskdiff lm-eval``.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from maskdiff.cli import main  # noqa: E402
from maskdiff.evaluation import generate, load_eval_model, loglikelihoods  # noqa: E402
from test_evaluation import bert_dir  # noqa: E402

MC = [{"question": "what is two plus three", "choices": ["five", "a", "the answer"], "answer": 0},
      {"question": "hello", "choices": ["world", "b c"], "answer": 1},
      {"question": "two plus two", "choices": ["a", "b", "c"], "answer": 2}]
GEN = [{"question": "what is two plus three", "answer": "five"},
       {"question": "hello world", "answer": "a"}]


def task_dir(path):
    """Two local tasks: multiple choice (loglikelihood) and generation (generate_until)."""
    path.mkdir()
    for name, rows in (("mc", MC), ("gen", GEN)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    def common(name):
        return ("dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
                + str(path / f"{name}.jsonl") + "\ntest_split: test\ndoc_to_text: \"{{question}}\"\n")

    (path / "mc.yaml").write_text(
        "task: maskdiff_tiny_mc\n" + common("mc")
        + "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\n"
          "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
    (path / "gen.yaml").write_text(
        "task: maskdiff_tiny_gen\n" + common("gen")
        + "output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
          "generation_kwargs:\n  until: [\"answer\"]\n  max_gen_toks: 4\n"
          "metric_list:\n  - metric: exact_match\n")
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return task_dir(tmp_path / "tasks")


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-eval") / "run"
    assert main(["train", "--preset", "smoke", "--set", "optim.max_steps=2", "--out", str(out),
                 "--quiet"]) == 0
    return out


def _check(results, model, harness_lm):
    """The harness's numbers are exactly maskdiff's: its accuracy is the argmax of our ELBOs,
    its generations our decoder's, and every request's SE is kept."""
    samples = results["samples"]["maskdiff_tiny_mc"]
    for k, d in enumerate(harness_lm.details):  # request k draws with index k
        direct = loglikelihoods(model, [(d["context"], d["continuation"])], first_index=k)[0]
        assert d["loglikelihood"] == direct.loglikelihood and d["is_greedy"] == direct.is_greedy
        # a one-token continuation's count-scheme ELBO is exact (its one mask): SE 0
        assert d["se"] == direct.se >= 0 and d["passes"] == 32
        assert d["se"] > 0 or direct.n_tokens == 1
    hits = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = MC[sample["doc_id"]]
        logged = [r[0][0] for r in sample["resps"]]
        ours = {d["continuation"]: d["loglikelihood"] for d in harness_lm.details
                if d["context"] == doc["question"]}
        assert logged == [ours[" " + c] for c in doc["choices"]]  # the harness's delimiter
        hits.append(float(max(range(len(logged)), key=logged.__getitem__) == doc["answer"]))
    assert results["results"]["maskdiff_tiny_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))
    gen = sorted(results["samples"]["maskdiff_tiny_gen"], key=lambda s: s["doc_id"])
    expected = generate(model, [d["question"] for d in GEN], gen_length=4, until=[["answer"]] * 2)
    assert [s["resps"][0][0] for s in gen] == expected
    assert all("answer" not in text for text in expected)


def _evaluate(model_args, tasks_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import maskdiff.evaluation.harness  # noqa: F401  (registers the model)
    from lm_eval.api.registry import get_model

    lm = get_model("maskdiff").create_from_arg_string(model_args)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["maskdiff_tiny_mc", "maskdiff_tiny_gen"],
        task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
        bootstrap_iters=0)
    return results, lm


def test_harness_end_to_end_on_a_native_run(offline, native_run):
    results, lm = _evaluate(f"run={native_run}", offline)
    _check(results, load_eval_model(run=native_run), lm)


def test_harness_end_to_end_on_a_hf_model(offline, tmp_path):
    path = bert_dir(tmp_path / "bert")
    results, lm = _evaluate(f"pretrained={path}", offline)
    _check(results, load_eval_model(hf=path), lm)
    assert len(lm.details) == sum(len(d["choices"]) for d in MC)


@pytest.mark.slow  # ~30 s: lm_eval.simple_evaluate end to end (the harness is tested in the default run)
def test_simple_evaluate_by_name_and_the_maskdiff_lm_eval_command(offline, native_run, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import maskdiff.evaluation.harness  # noqa: F401

    by_name = lm_eval.simple_evaluate(
        model="maskdiff", model_args=f"run={native_run},rates=2,greedy_check=False",
        tasks=["maskdiff_tiny_mc"], task_manager=TaskManager(include_path=str(offline)),
        bootstrap_iters=0)
    acc = by_name["results"]["maskdiff_tiny_mc"]["acc,none"]
    se_file = tmp_path / "se.jsonl"
    out = tmp_path / "results"
    assert main(["lm-eval", "--model", "maskdiff", "--model_args",
                 f"run={native_run},rates=2,greedy_check=False,se_file={se_file}",
                 "--tasks", "maskdiff_tiny_mc", "--include_path", str(offline),
                 "--output_path", str(out)]) == 0
    written = list(out.rglob("results_*.json"))
    assert len(written) == 1
    assert json.loads(written[0].read_text())["results"]["maskdiff_tiny_mc"]["acc,none"] == acc
    rows = [json.loads(line) for line in se_file.read_text().splitlines()]
    assert len(rows) == sum(len(d["choices"]) for d in MC)
    assert all(r["passes"] == 2 and r["se"] >= 0 for r in rows)  # rates=2, lowvar-stratified


def _build(model_args, extra=None):
    import maskdiff.evaluation.harness  # noqa: F401  (registers the model)
    from lm_eval.api.registry import get_model

    return get_model("maskdiff").create_from_arg_string(model_args, extra)


def test_every_documented_model_arg_is_accepted(native_run, tmp_path):
    """docs/evaluation.md's model_args table, each given (the harness also sends its own
    batch_size/device/max_batch_size: model_args win, no 'multiple values' TypeError)."""
    se = tmp_path / "se.jsonl"
    harness_defaults = {"batch_size": 1, "max_batch_size": None, "device": "cpu"}
    lm = _build(f"run={native_run},checkpoint=latest,scheme=uniform,rates=3,seed=7,gen_length=5,"
                f"steps=5,block_length=5,max_length=20,greedy_check=false,se_file={se},"
                f"batch_size=4,device=cpu", harness_defaults)
    assert (lm.batch_size, lm._device, lm.rates, lm.seed, lm.scheme) == (4, "cpu", 3, 7, "uniform")
    assert lm.decoding == {"gen_length": 5, "steps": 5, "block_length": 5}
    assert (lm.lm.max_length, lm.greedy_check, lm.se_file) == (20, False, se)
    assert _build(f"run={native_run}", {"batch_size": "8", "device": None}).batch_size == 8
    assert _build(f"run={native_run}", {"batch_size": "auto:4", "max_batch_size": 64}).batch_size == 16
    path = bert_dir(tmp_path / "bert")
    hf = _build(f"pretrained={path},trust_remote_code=false,mask_token_id=3,logit_shift=1,"
                f"dtype=float32,attention=4d,auto_class=AutoModelForMaskedLM,batch_size=2,"
                f"device=cpu", harness_defaults)
    assert (hf.lm.mask_token_id, hf.lm.model.options.logit_shift,
            hf.lm.model.options.attention, hf.batch_size) == (3, 1, "4d", 2)
    with pytest.raises(ValueError, match="unknown maskdiff model_args"):
        _build(f"run={native_run},batchsize=4")


def test_unseen_characters_never_crash_a_harness_run(offline, native_run, tmp_path, capfd):
    """A native run's char tokenizer meets ':' and '€' (outside its alphabet): the harness run
    completes, each is read as the unknown id, and the count is said once on stderr and kept
    in the results."""
    from maskdiff.training.runs import load_run

    rows = [{"question": "ratio 3:4 costs 5€", "choices": ["a: b", "c"], "answer": 0},
            {"question": "x: y", "choices": ["z", "w€"], "answer": 1}]
    (offline / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    alphabet = set(load_run(native_run).tokenizer.alphabet)
    unseen = lambda s: sum(c not in alphabet for c in s)  # noqa: E731
    # the harness scores (context, " " + choice) once per choice
    expected = sum(unseen(r["question"]) + unseen(" " + c) for r in rows for c in r["choices"])
    out = tmp_path / "results"
    capfd.readouterr()
    assert main(["lm-eval", "--model", "maskdiff", "--model_args",
                 f"run={native_run},rates=2,greedy_check=False,batch_size=4,device=cpu",
                 "--tasks", "maskdiff_tiny_mc", "--include_path", str(offline),
                 "--output_path", str(out)]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "outside the run's alphabet" in line]
    assert len(lines) == 1 and f"{expected} occurrence(s) of 2 character(s)" in lines[0], err
    written = json.loads(next(out.rglob("results_*.json")).read_text())
    assert written["config"]["unknown_characters"] == expected == 8
    assert written["config"]["unknown_character_set"] == ":€"
    assert written["results"]["maskdiff_tiny_mc"]["acc,none"] in (0.0, 0.5, 1.0)


def test_training_data_still_refuses_unknown_characters_and_old_tokenizers_load(tmp_path):
    """Training encodes strictly (a run's alphabet is built from its own data, so an unknown
    there is a bug, named); a tokenizer file saved before unk_id existed loads unchanged."""
    from maskdiff.data.char_tokenizer import CharTokenizer
    from maskdiff.data.tokenizer_files import load_tokenizer

    tok = CharTokenizer("ab ")
    with pytest.raises(ValueError, match="character ':' at position 1"):
        tok.encode("a:b")
    assert tok.encode_with_unknowns("a:b€") == ([tok.encode("a")[0], tok.unk_id,
                                                 tok.encode("b")[0], tok.unk_id], [":", "€"])
    assert tok.unk_id == tok.mask_id == 2
    old = tmp_path / "tokenizer.json"  # the layout every saved run has
    old.write_text(json.dumps({"type": "char", "alphabet": " ab", "extra_tokens": [],
                               "use_bos": False,
                               "vocab": ["<pad>", "<eos>", "<mask>", " ", "a", "b"]}))
    assert load_tokenizer(old) == tok and load_tokenizer(old).vocab_size == 6
