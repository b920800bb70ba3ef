"""benchmarks/noise_during_training.py on the smoke preset: the noise measured along training
under both optimisers, the prediction recomputed from the stored traces."""

import json

import pytest
from scripts import load_script


def _bench():
    return load_script("benchmarks/noise_during_training.py")


def test_the_noise_benchmark_end_to_end(tmp_path, capsys):
    assert _bench().main(["--preset", "smoke", "--shared", str(tmp_path / "shared"), "--out",
                          str(tmp_path / "out"), "--every", "3", "--draws", "4",
                          "--sgd-lr", "0.01"]) == 0
    doc = json.loads((tmp_path / "out" / "noise_during_training.json").read_text())
    assert list(doc["optimizers"]) == ["adamw", "sgd"] and doc["optimizers"]["sgd"]["lr"] == 0.01
    for opt in doc["optimizers"].values():
        assert [r["seed"] for r in opt["records"]] == [42, 731, 20231]
        for record in opt["records"]:
            assert [p["step"] for p in record["points"]] == [0, 3, 6]
            for p in record["points"]:
                assert p["predicted_limit"] == pytest.approx(
                    p["trace_cov"]["standard"] / (2 * p["trace_cov"]["mirror"]))
            assert [h["step"] for h in record["standard"]["history"]] == [3, 6]
            assert record["mirror"]["fwd_per_step"] == 2 * record["standard"]["fwd_per_step"]
        assert "multiplier" in opt["summary"]["measured"]
    # SGD and AdamW start from the same checkpoint (the step-0 noise is the same) and then differ
    a, s = (doc["optimizers"][k]["records"][0]["points"] for k in ("adamw", "sgd"))
    assert a[0]["trace_cov"] == s[0]["trace_cov"] and a[2]["trace_cov"] != s[2]["trace_cov"]
    assert "| sgd | 0.01 | 6 |" in capsys.readouterr().out
