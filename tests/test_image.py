"""Issue 10: digits as image tokens, the evaluator, the ``maskdiff image`` smoke run."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from maskdiff.data.digits import (
    N_PIXELS, PROMPT_WIDTH, DigitsConfig, balanced_order, class_prompt, dequantise, digits_task,
    examples_to_arrays, ids_to_images, image_collator, image_to_text, label_of, level_token_ids,
    load_digit_arrays, quantise, text_to_image,
)
from maskdiff.experiments.image_eval import DigitEvaluator, frechet_distance, image_features


@pytest.fixture(scope="module")
def task():
    return digits_task()  # 997 / 100 / 700, data seed 0, 4 levels


@pytest.fixture(scope="module")
def evaluator(task):
    return DigitEvaluator.fit(task.test, 4)


@pytest.mark.parametrize("levels", range(2, 11))
def test_quantise_levels_and_round_trip(levels):
    k = np.arange(levels)
    assert np.array_equal(quantise(dequantise(k, levels), levels), k)  # grid round trip, exact
    assert dequantise(np.array([0, levels - 1]), levels).tolist() == [0.0, 16.0]
    v = np.arange(17)
    q = quantise(v, levels)
    assert q.min() == 0 and q.max() == levels - 1
    # Nearest level (ties upwards): no other level is strictly closer to any intensity.
    grid = dequantise(k, levels)
    err = np.abs(dequantise(q, levels) - v)
    assert np.all(err <= np.abs(grid[None, :] - v[:, None]).min(1) + 1e-12)
    assert np.all(err <= 8 / (levels - 1) + 1e-12)


def test_quantise_four_levels_closed_form():
    # Levels at 0, 16/3, 32/3, 16; boundaries 8/3, 8, 40/3 (8 is a tie: rounds up).
    expected = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3]
    assert quantise(np.arange(17), 4).tolist() == expected
    with pytest.raises(ValueError, match="pixels"):
        quantise(np.array([17.0]), 4)
    with pytest.raises(ValueError, match="levels"):
        DigitsConfig(levels=11)


def test_examples_round_trip(task):
    assert len(task.train) == 997 and len(task.val) == 100 and len(task.test) == 700
    images, labels = examples_to_arrays(task.test, 4)
    assert images.shape == (700, 8, 8) and set(np.bincount(labels)) == {70}  # balanced
    for example, image, label in zip(task.test[:50], images, labels):
        assert image_to_text(image, 4) == example.response
        assert np.array_equal(text_to_image(example.response, 4), image)
        assert example.prompt == class_prompt(int(label)) and label_of(example) == label
        assert len(example.prompt) == PROMPT_WIDTH
    assert task.test[0].prompt.strip() in {f"a handwritten {w}" for w in
                                           ("zero", "one", "two", "three", "four", "five", "six",
                                            "seven", "eight", "nine")}


def test_split_order_is_a_balanced_permutation():
    _, labels = load_digit_arrays()
    order = balanced_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(len(labels)))  # splits share no image
    for n in (10, 100, 700, 1500):
        counts = np.bincount(labels[order[:n]], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
    assert not np.array_equal(order, balanced_order(labels, seed=1))


def test_only_the_64_image_tokens_are_eligible(task):
    tok = task.tokenizer
    batch = image_collator(tok)([(i, task.train[i]) for i in range(16)])
    assert batch.x0.shape == (16, PROMPT_WIDTH + N_PIXELS)
    assert batch.eligible.sum(1).tolist() == [N_PIXELS] * 16
    assert not batch.eligible[:, :PROMPT_WIDTH].any() and batch.eligible[:, PROMPT_WIDTH:].all()
    level_ids = set(level_token_ids(tok, 4))
    assert set(batch.x0[batch.eligible].tolist()) <= level_ids
    assert not set(batch.x0[:, :PROMPT_WIDTH].reshape(-1).tolist()) & level_ids
    images = ids_to_images(batch.x0[:, PROMPT_WIDTH:], tok, 4)
    assert [image_to_text(im, 4) for im in images] == [e.response for e in task.train[:16]]


def test_classifier_on_real_held_out_digits(evaluator):
    assert evaluator.n_train == 420 and evaluator.n_reference == 280
    assert evaluator.real_test.accuracy > 0.85
    assert evaluator.real_test.mean_prob > 0.8


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    shift = np.arange(6.0)
    # Same covariance: only the means differ.
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    # Scaling by 2: |μ|² + Tr(Σ + 4Σ − 2·2Σ) = |μ|² + Tr Σ.
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(x, 2 * x) == pytest.approx(float(mu @ mu + np.trace(cov)), rel=1e-8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_real_halves_far_below_noise(task, evaluator):
    images, _ = examples_to_arrays(task.train, 4)
    a, b = images[:400], images[400:800]
    noise = np.random.default_rng(0).integers(0, 4, size=(400, 8, 8))
    real = frechet_distance(*(image_features(evaluator.classifier, x, 4) for x in (a, b)))
    fake = frechet_distance(*(image_features(evaluator.classifier, x, 4) for x in (a, noise)))
    assert real * 20 < fake, (real, fake)


def test_gumbel_sampling_draws_from_softmax():
    from maskdiff.experiments.image_sampling import GumbelSampling

    logits = torch.tensor([0.0, 1.0, -0.5, 2.0, 5.0])

    class Fixed(torch.nn.Module):
        def forward(self, ids, attention):
            return logits.expand(ids.shape[0], ids.shape[1], -1).clone()

    allowed = [0, 1, 2, 3]  # id 4 (the largest logit) is not an image token
    sampler = GumbelSampling(Fixed(), temperature=1.0, allowed_ids=allowed,
                             generator=torch.Generator().manual_seed(0))
    n = 20000
    draws = sampler(torch.zeros(n, 1, dtype=torch.long), None).argmax(-1).reshape(-1)
    freq = torch.bincount(draws, minlength=5).double() / n
    p = torch.softmax(logits[:4].double(), 0)
    se = (p * (1 - p) / n).sqrt()
    assert freq[4] == 0
    assert torch.all((freq[:4] - p).abs() < 4 * se), (freq, p)
    greedy = GumbelSampling(Fixed(), temperature=0.0, allowed_ids=allowed,
                            generator=torch.Generator().manual_seed(0))
    assert greedy(torch.zeros(3, 2, dtype=torch.long), None).argmax(-1).eq(3).all()


def test_image_smoke_writes_results(tmp_path):
    from maskdiff.commands import image

    parser = argparse.ArgumentParser()
    image.register(parser.add_subparsers())
    args = parser.parse_args(["image", "--preset", "smoke", "--out", str(tmp_path), "--quiet"])
    assert args.func(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"preset", "seeds", "methods", "evaluator", "ppots", "start", "seconds", "runs",
            "setup", "threads"} <= set(results)
    assert set(results["methods"]) == {"standard", "mirror", "ppots_mirror"}
    for m in results["methods"].values():
        assert {"accuracy_stats", "mean_prob_stats", "frechet_stats", "per_seed",
                "per_class_accuracy"} <= set(m)
        assert len(m["per_seed"]) == 2 and 0 <= m["accuracy_stats"]["mean"] <= 1
        assert m["frechet_stats"]["mean"] > 0
    assert results["evaluator"]["real_test_accuracy"] > 0.5
    for name in ("report.md", "real.png", "scores.png", "samples_standard.png",
                 "samples_mirror.png", "samples_ppots_mirror.png"):
        assert (tmp_path / name).exists(), name
    # Two-forward methods spend twice the forward passes of standard on the same steps.
    fwd = {k: m["forward_passes"] for k, m in results["methods"].items()}
    assert fwd["mirror"] == 2 * fwd["standard"]
    # The README's table: a row per method; the differences from standard in points, ± their SE.
    from maskdiff.experiments.image_report import differences, readme_table

    table = readme_table(results)
    assert len(table) == 2 + 3 and table[2].startswith("| standard | ")
    d = next(x for x in differences(results, "standard") if x["method"] == "mirror")
    assert f"| {100 * d['diff']:+.1f} ± {100 * d['se']:.1f} (z = {d['z']:+.1f}) |" in table[3]
    # A rerun reuses every finished run; a run finished under another configuration is refused.
    # A damaged record (here emptied) is named, set aside and redone from its finished run.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("image.json")}
    damaged = sorted(stamps)[0]
    before = json.loads(damaged.read_text())
    damaged.write_text("")
    assert stamps and args.func(args) == 0
    assert json.loads(damaged.read_text())["samples"] == before["samples"]
    assert len(list(damaged.parent.glob("image.json.damaged-*"))) == 1
    stamps[damaged] = damaged.stat().st_mtime_ns
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    saved = next(iter(stamps))  # the record carries the configuration it was made under
    record = json.loads(saved.read_text())
    record["job_key"]["config"]["optim"]["lr"] *= 2
    saved.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"image\.json: this run was made under another "
                                         r"configuration \(config\.optim\.lr: "):
        args.func(args)
