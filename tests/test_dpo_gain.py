"""The preference benchmark (maskdiff.experiments.dpo_gain, benchmarks/dpo_gain.py): pairs
from sampled answers, seeded sampling, the paired summary, and the whole benchmark end to end
with resume."""

import json

import pytest
from scripts import load_script

from maskdiff.data.examples import Example
from maskdiff.experiments import dpo_gain
from maskdiff.experiments.dpo_gain import (
    GainConfig, build_pairs, gain_setup, gain_table, sample_answers, summarise,
)
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.runs import load_run
from maskdiff.training.trainer import Trainer


def _ex(prompt: str, answer: int) -> Example:
    return Example(prompt, f"1+1=2\n#### {answer}")


def test_pairs_take_the_first_correct_and_the_first_wrong_sample():
    examples = [_ex("a", 3), _ex("b", 4), _ex("c", 5), _ex("d", 1)]
    answers = [["x\n#### 2", "y\n#### 3", "z\n#### 3", "w\n#### 7"],  # a pair: y / x
               ["#### 4", "#### 4"],                                    # all correct: none
               ["#### 1", "#### 2"],                                    # all wrong: none
               ["  ", "#### 1", "no answer"]]                           # blank skipped
    assert build_pairs(examples, answers) == [
        {"prompt": "a", "chosen": "y\n#### 3", "rejected": "x\n#### 2"},
        {"prompt": "d", "chosen": "#### 1", "rejected": "no answer"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny fine-tuned runs (seeds 0, 1, 2) of the built-in arithmetic task."""
    root = tmp_path_factory.mktemp("gain")
    for seed in range(3):
        config = TrainConfig(
            model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
            data=DataConfig(n_train=32, n_val=4, n_test=6),
            optim=OptimConfig(max_steps=3, warmup_steps=1, batch_size=8),
            eval=EvalConfig(every=3, n_examples=4, rates_per_example=1, patience=0),
            log_every=3, seed=seed, out_dir=str(root / "runs" / f"s{seed}"))
        Trainer(config, quiet=True).fit()
    return root


def test_sampling_is_seeded_per_example_and_sample(runs):
    loaded = load_run(runs / "runs" / "s0")
    examples = [Example("What is 2+2?", "x"), Example("Kim has 3 cups.", "y")]
    kwargs = dict(gen_length=8, steps=4, samples=3, temperature=1.0)
    both = sample_answers(loaded.model.eval(), examples, loaded.tokenizer, seed=7, **kwargs)
    again = sample_answers(loaded.model.eval(), examples, loaded.tokenizer, seed=7, **kwargs)
    alone = sample_answers(loaded.model.eval(), examples[:1], loaded.tokenizer, seed=7, **kwargs)
    other = sample_answers(loaded.model.eval(), examples, loaded.tokenizer, seed=8, **kwargs)
    assert both == again and both[0] == alone[0]  # the batch does not change a sample
    assert [len(a) for a in both] == [3, 3]
    assert both != other and len(set(both[0])) > 1  # the seed and the sample index matter


def _records(start, after: dict) -> list[dict]:
    return [{"seed": s, "pairs": {"pairs": 10 + s, "sample_accuracy": 0.5},
             "start": {"pass_at_1": start[s]},
             **{e: {"pass_at_1": v[s], "reward_margin": 0.1 * s, "dpo_seconds": 1.0,
                    "policy_forward_passes": 64, "reference_forward_passes": 64}
                for e, v in after.items()}} for s in range(len(start))]


def test_summary_gains_are_paired_differences():
    start = [0.30, 0.34, 0.32, 0.36]
    naive = [0.31, 0.36, 0.33, 0.36]
    vrpo = [0.33, 0.38, 0.36, 0.40]
    config = GainConfig(estimators=("naive", "vrpo"), budget=8, batch_size=4)
    doc = summarise(_records(start, {"naive": naive, "vrpo": vrpo}), config)
    vr = doc["estimators"]["vrpo"]
    assert vr["gain"]["mean"] == pytest.approx(0.0375)
    assert vr["vs_naive"]["mean"] == pytest.approx(0.0275)
    assert vr["passes_per_step"] == 128  # 2 responses × 2 models × budget 8 × 4 pairs
    assert doc["estimators"]["naive"]["gain"]["mean"] == pytest.approx(0.01)
    assert "vs_naive" not in doc["estimators"]["naive"]
    doc.update(machine="test", wall_seconds=60.0)
    table = gain_table(doc)
    assert table[2].startswith("| `naive` | 34.0 [") and "| — | — |" in table[2]
    assert "| +3.8 [" in table[3] and "| +2.8 [" in table[3]
    assert "4 paired seeds" in gain_setup(doc)[0]


def test_config_refuses_a_benchmark_without_naive_or_with_temperature_0():
    with pytest.raises(ValueError, match="must include 'naive'"):
        GainConfig(estimators=("vrpo",))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GainConfig(temperature=0.0)


def test_no_pair_is_one_line_naming_the_run(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(dpo_gain, "sample_answers",
                        lambda model, prompts, *a, **k: [["#### 999"] for _ in prompts])
    config = GainConfig(n_prompts=4, n_test=2)
    with pytest.raises(ValueError, match=r"s0: no prompt among 4 gave both"):
        dpo_gain.seed_job((0, str(runs / "runs" / "s0"), str(tmp_path), config))


def _bench():
    return load_script("benchmarks/dpo_gain.py")


def test_the_benchmark_end_to_end_and_resumed(runs, tmp_path, monkeypatch, capsys):
    """Sampling replaced by the gold answer and a wrong one (an untrained model samples no
    correct answer); everything else real: DPO per estimator, pass@1, the summary, resume."""
    def answers(model, prompts, *args, **kwargs):
        gold = [ex.response.rsplit("#### ", 1)[1] for ex in prompts]
        return [[f"#### {g}", f"#### {int(g) + 1}"] for g in gold]

    monkeypatch.setattr(dpo_gain, "sample_answers", answers)
    argv = ["--runs", str(runs / "runs"), "--out", str(tmp_path), "--n-prompts", "3",
            "--steps", "2", "--batch-size", "2", "--budget", "2", "--n-test", "4",
            "--estimators", "naive,vrpo"]
    assert _bench().main(argv) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and doc["pairs"]["mean"] == 3
    assert set(doc["estimators"]) == {"naive", "vrpo"}
    rec = doc["records"][0]
    assert rec["vrpo"]["policy_forward_passes"] == 2 * 2 * 2 * 2  # steps × pairs × 2 × budget
    assert all(0 <= r[e]["pass_at_1"] <= 1 for r in doc["records"] for e in ("naive", "vrpo"))
    assert "| `vrpo` |" in out
    stamp = (tmp_path / "s0" / "vrpo.json").stat().st_mtime_ns
    assert _bench().main(argv) == 0  # resumed: nothing recomputed, the same summary
    assert (tmp_path / "s0" / "vrpo.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "results.json").read_text())["estimators"] == doc["estimators"]
    changed = [a if a != "2" or argv[i - 1] != "--steps" else "3" for i, a in enumerate(argv)]
    with pytest.raises(SystemExit, match=r"dpo_gain: .*naive\.json.*steps"):
        _bench().main(changed)  # a finished DPO run is not silently reused under new settings


def test_the_benchmark_refuses_too_few_runs(runs, tmp_path):
    with pytest.raises(SystemExit, match="seed\\(s\\) \\[5\\]"):
        _bench().main(["--runs", str(runs / "runs"), "--out", str(tmp_path), "--seeds", "0,5"])
    with pytest.raises(SystemExit, match="at least 3"):
        _bench().main(["--runs", str(runs / "runs"), "--out", str(tmp_path), "--seeds", "0,1"])
