"""Smoke test of ``maskdiff decompose`` (docs/method.md §2): the whole path from a preset to
decompose.json, report.md and the plots, on the smoke model with a tiny design."""

from __future__ import annotations

import argparse
import json

import pytest

from maskdiff.commands import decompose

SMALL_DESIGN = ["--a", "6", "--b", "2", "--c", "2", "--n-batches", "4", "--batch-size", "3",
                "--grad-draws", "3", "--grad-batch-draws", "2", "--curve-rates", "4",
                "--ema-warmup", "64", "--n-boot", "20", "--ppots-b", "8", "--ppots-c", "2",
                "--quiet"]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    decompose.register(parser.add_subparsers())
    args = parser.parse_args(["decompose", *argv])
    return args.func(args)


def test_decompose_smoke_preset_writes_every_configuration(tmp_path, capsys):
    out = tmp_path / "dec"
    assert run_cli(["--preset", "smoke", "--out", str(out), *SMALL_DESIGN]) == 0
    doc = json.loads((out / "decompose.json").read_text())
    for name in ("report.md", "components.png", "curves.png", "ppots.json", "model/results.json",
                 "gpots.json", "gradient_targets.json", "densities.png"):
        assert (out / name).exists(), name
    assert doc["skipped"] == {"syrm": doc["skipped"]["syrm"]}  # arithmetic has no syntax tokens
    expected = {"standard", "clipped", "strats", "ema", "isad", "mirror", "multisample2",
                "ppots", "ppots_mirror", "gpots", "gpots_mirror"}
    assert set(doc["configurations"]) == expected
    for name, r in doc["configurations"].items():
        for key in ("A", "B", "C", "total", "se", "plugin", "batch_variance",
                    "gradient_variance", "gradient_variance_batch", "forward_passes",
                    "cost_aware"):
            assert key in r, (name, key)
        assert r["total"] == pytest.approx(r["A"] + r["B"] + r["C"], rel=1e-9, abs=1e-12)
        assert r["cost_aware"]["total"] == pytest.approx(r["total"] * r["forward_passes"])
        assert r["gradient_variance"]["trace_cov"]["se"] is not None
        assert r["forward_passes"] == (2 if name in ("mirror", "multisample2", "ppots_mirror",
                                                     "gpots_mirror") else 1)
    assert doc["configurations"]["ema"]["control_warmup_samples"] == 64
    assert "| mirror | 2 |" in (out / "report.md").read_text()
    # The gradient-targeted section: the proxies' correlation with the exact second moment
    # and every density's gradient tr Cov, paired with uniform's on the same draws.
    record = doc["gpots"]
    assert set(record["correlation"]) == {"logits", "bias"}
    assert set(record["gradient_variance"]) == {"uniform", "loss", "gradient", "logits", "bias"}
    assert "Gradient-targeted densities" in (out / "report.md").read_text()
    assert "mirror" in capsys.readouterr().out

    # A restart reuses the trained model (no second training), the cached P-POTS density and
    # every configuration measured (maskdiff.jobs); a damaged measurement is named and redone.
    stamp = (out / "model" / "results.json").stat().st_mtime_ns
    records = out / "configurations"
    kept = (records / "standard.json").stat().st_mtime_ns
    (records / "ppots.json").write_text((records / "ppots.json").read_text()[:-40])
    capsys.readouterr()
    assert run_cli(["--preset", "smoke", "--out", str(out), "--methods", "standard", "ppots",
                    *SMALL_DESIGN]) == 0
    assert (out / "model" / "results.json").stat().st_mtime_ns == stamp
    assert (records / "standard.json").stat().st_mtime_ns == kept
    assert f"{records / 'ppots.json'} is damaged" in capsys.readouterr().err
    again = json.loads((out / "decompose.json").read_text())
    assert set(again["configurations"]) == {"standard", "ppots"}
    assert again["configurations"]["standard"]["A"] == doc["configurations"]["standard"]["A"]
    assert again["configurations"]["ppots"]["A"] == doc["configurations"]["ppots"]["A"]


def test_decompose_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run_cli(["--preset", "smoke", "--out", str(tmp_path), "--methods", "nope", *SMALL_DESIGN])
    with pytest.raises(ValueError, match="n_examples"):
        run_cli(["--preset", "smoke", "--out", str(tmp_path), "--a", "1", *SMALL_DESIGN[2:]])
    with pytest.raises(ValueError, match="ppots_rates"):
        run_cli(["--preset", "smoke", "--out", str(tmp_path), *SMALL_DESIGN, "--ppots-b", "4"])
    with pytest.raises(ValueError, match="not a run directory"):
        run_cli(["--run", str(tmp_path / "missing"), "--out", str(tmp_path), *SMALL_DESIGN])
