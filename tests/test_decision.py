"""The README's decision table (maskdiff.experiments.decision): verdicts read off intervals."""

import json

import pytest

from maskdiff.experiments.decision import NO_EFFECT, decision_table, verdict
from maskdiff.experiments.readme_tables import render


def _vs(mult, lo, hi, pass_lo, pass_hi, reached=True):
    return {"fwd_ratio": 1.0,
            "compute": {"multiplier": mult, "lo": lo, "hi": hi, "reached": reached},
            "pass_at_1": {"difference": {"mean": (pass_lo + pass_hi) / 2, "lo": pass_lo,
                                         "hi": pass_hi, "p": 0.01}}}


@pytest.mark.parametrize("vs, expected", [
    (_vs(1.6, 1.5, 1.8, -0.05, -0.02), "faster likelihood, worse generation"),
    (_vs(1.6, 1.5, 1.8, -0.01, 0.02), "faster"),
    (_vs(0.7, 0.6, 0.8, -0.01, 0.02), "more compute"),
    (_vs(0.0, 0.0, 0.0, -0.01, 0.02, reached=False), "more compute"),
    (_vs(0.0, 0.0, 1.1, -0.01, 0.02, reached=False), NO_EFFECT),
    (_vs(1.0, 0.9, 1.1, -0.05, -0.01), "worse generation"),
    (_vs(1.0, 0.9, 1.1, -0.01, 0.02), NO_EFFECT),
])
def test_verdicts_follow_the_intervals(vs, expected):
    assert verdict(vs) == expected


def _method(name, vs=None):
    return {"method": name, "test_loss_kind": "ELBO", **({"vs_standard": vs} if vs else {})}


def test_the_table_has_one_row_per_verdict_and_one_for_the_rest(tmp_path):
    results = {"methods": {
        "standard": _method("standard"),
        "clipped": _method("clipped", _vs(1.62, 1.5, 1.77, -0.057, -0.019)),
        "mirror": _method("mirror", {**_vs(0.68, 0.65, 0.74, -0.008, 0.025), "fwd_ratio": 2.0}),
        "ema": _method("ema", _vs(1.0, 1.0, 1.0, 0.0, 0.0)),
        "strats": _method("strats", _vs(0.0, 0.0, 1.1, -0.024, 0.006, reached=False)),
        "standard@2x": _method("standard@2x", {**_vs(1.9, 1.7, 2.1, -0.01, 0.03),
                                               "fwd_ratio": 2.0}),
        "syrm (table)": {**_method("syrm", _vs(1.0, 0.9, 1.1, 0, 0)), "method": "syrm"},
    }}
    (tmp_path / "compare-full.json").write_text(json.dumps(results))
    lines = decision_table(tmp_path)
    assert lines[2] == ("| fine-tuning (`--preset full`) | clipped | 1 | 1.62 [1.50, 1.77] | "
                        "pass@1 -3.8 [-5.7, -1.9] points | **faster likelihood, worse generation** |")
    assert lines[3].startswith("| fine-tuning (`--preset full`) | mirror | 2 | 0.68 [0.65, 0.74]")
    assert lines[3].endswith("| **more compute** |")
    # the controls and other-task labels are not methods to choose; the rest share a row
    assert lines[4] == f"| fine-tuning (`--preset full`) | ema, strats | | | | {NO_EFFECT} |"
    assert len(lines) == 5
    assert render(tmp_path, "all", "decision") == "\n".join(lines) + "\n"
    with pytest.raises(ValueError, match="mark it <!-- results:all:decision -->"):
        render(tmp_path, "compare-full", "decision")


def test_missing_regimes_are_skipped_and_a_damaged_file_is_named(tmp_path):
    assert len(decision_table(tmp_path)) == 2  # the header only
    (tmp_path / "compare-block.json").write_text("{not json")
    with pytest.raises(ValueError, match="compare-block.json"):
        decision_table(tmp_path)


def _pretrain_method(name, comp, gen_lo_hi=None, fwd=1):
    gen = None
    if gen_lo_hi:
        lo, hi = gen_lo_hi
        gen = {"continuation_nll": {"mean": 3.0, "n": 3, "vs_standard": {
            "mean": (lo + hi) / 2, "lo": lo, "hi": hi, "p": 0.01}}}
    out = {"fwd_per_step": fwd, "generation": gen}
    if comp is not None:
        out["vs_standard"] = {"compute_to_target": [
            {"fraction": 0.25, "multiplier": 9.0, "lo": 9.0, "hi": 9.0},
            {"fraction": 1.0, **comp}]}
    return out


def test_the_pretraining_regime_reads_its_own_results(tmp_path):
    results = {"regime": "pretrain", "methods": {
        "standard": _pretrain_method("standard", None),
        "window_0.45_0.55": _pretrain_method(
            "window_0.45_0.55", {"multiplier": 1.4, "lo": 1.2, "hi": 1.6}, (0.05, 0.20)),
        "bell_iw": _pretrain_method("bell_iw", {"multiplier": 1.3, "lo": 1.1, "hi": 1.5},
                                    (-0.05, 0.02)),
        "mirror": _pretrain_method("mirror", {"multiplier": None, "lo": None, "hi": None,
                                              "censored": 2, "n": 6, "upper_bound": 0.8},
                                   fwd=2),
        "annealed": _pretrain_method("annealed", {"multiplier": 1.0, "lo": 0.9, "hi": 1.1}),
        "window": _pretrain_method("window", {"multiplier": None, "lo": None, "hi": None,
                                              "censored": 2, "n": 6, "upper_bound": 2.0}),
        "standard@2x": _pretrain_method("standard@2x", {"multiplier": 0.8, "lo": 0.7,
                                                        "hi": 0.9}, fwd=2),
    }}
    (tmp_path / "compare-pretrain.json").write_text(json.dumps(results))
    lines = decision_table(tmp_path)[2:]
    regime = "pretraining from scratch (`--regime pretrain`)"
    assert lines == [
        f"| {regime} | window_0.45_0.55 | 1 | 1.40 [1.20, 1.60] | judge NLL +0.125 [+0.050, +0.200] "
        "nats/token | **faster likelihood, worse generation** |",
        f"| {regime} | bell_iw | 1 | 1.30 [1.10, 1.50] | judge NLL -0.015 [-0.050, +0.020] "
        "nats/token | **faster** |",
        f"| {regime} | mirror | 2 | not reached (2/6 seeds), ≤ 0.80 | – | **more compute** |",
        f"| {regime} | window | 1 | not reached (2/6 seeds), ≤ 2.00 | – | "
        "**unreliable: not reached on 2/6 seeds** |",
        f"| {regime} | annealed | | | | {NO_EFFECT} |",
    ]
