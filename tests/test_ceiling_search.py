"""The noise-ceiling search (docs/method.md §11, "The noise ceiling"; benchmarks/ceiling_search.py):
which regime it picks, that regimes share the starting checkpoint they should, and the search
end to end on the smoke preset."""

from __future__ import annotations

import pytest

from maskdiff import jsonio
from maskdiff.experiments import ceiling_search as cs
from maskdiff.experiments.compare import CompareJob
from maskdiff.experiments.compare_presets import PRESETS
from tests.scripts import load_script


def _regime(mean: float, p: float) -> dict:
    return {"ceiling": {"pass_at_1": {"mean": mean, "lo": mean - 0.01, "hi": mean + 0.01, "p": p},
                        "test_loss": None}}


def test_the_chosen_regime_has_the_most_significant_positive_ceiling_gain():
    regimes = {"a": _regime(0.02, 0.04), "b": _regime(0.03, 0.001), "c": _regime(-0.05, 1e-6),
               "d": _regime(0.05, 0.2)}
    assert cs.choose(regimes) == "b"  # c is significant but a loss; d is not significant
    assert cs.choose({"d": _regime(0.05, 0.2), "c": _regime(-0.05, 1e-6)}) is None
    assert cs.choose({"a": {"ceiling": {"pass_at_1": None, "test_loss": None}}}) is None


def test_regimes_share_the_starting_checkpoint_unless_they_change_it(tmp_path):
    full = PRESETS["full"]
    starts = {r.name: CompareJob(r.preset(full, ("standard",)), tmp_path).start_config(
        "arithmetic", False) for r in cs.REGIMES}
    # batch and learning rate are the fine-tuning's: the start (batch 32, lr 3e-3) is one
    assert starts["batch8"] == starts["full"] == starts["lr3e-3"]
    assert starts["weak-start"].optim.max_steps == 250 != starts["full"].optim.max_steps
    assert {r.start_folder(full) for r in cs.REGIMES} == {"start1000", "start250"}
    runs = {r.name: r.preset(full, ("standard",)).base.optim for r in cs.REGIMES}
    assert (runs["batch8"].batch_size, runs["lr3e-3"].lr, runs["full"].lr) == (8, 3e-3, 1e-3)
    with pytest.raises(ValueError, match="unknown regime"):
        cs.regime("nope")


def test_the_search_end_to_end_on_the_smoke_preset(tmp_path, monkeypatch):
    """Two regimes sharing one start (a changed learning rate must not refuse it), then the
    confirmation on fresh seeds, forced here (the smoke preset's ceiling cannot be significant)."""
    monkeypatch.setattr(cs, "choose", lambda regimes: "lr3e-3")
    script = load_script("benchmarks/ceiling_search.py")
    assert script.main(["--preset", "smoke", "--out", str(tmp_path), "--regimes", "full,lr3e-3",
                        "--seeds", "2", "--confirm-seeds", "2", "--methods",
                        "standard,standard@4x,mirror", "--workers", "1", "--quiet"]) == 0
    doc = jsonio.load(tmp_path / "ceiling_search.json")
    assert list(doc["regimes"]) == ["full", "lr3e-3"] and doc["chosen"] == "lr3e-3"
    assert doc["regimes"]["lr3e-3"]["config"]["lr"] == 3e-3
    for r in doc["regimes"].values():
        assert r["seeds"] == [42, 731] and r["ceiling"]["test_loss"]["n"] == 2
    confirm = jsonio.load(tmp_path / "lr3e-3-confirm" / "results.json")
    assert doc["confirm"]["seeds"] == confirm["seeds"] == [7, 20231]  # fresh seeds
    assert doc["confirm"]["results"] == "lr3e-3-confirm/results.json"
    assert set(confirm["methods"]) == {"standard", "standard@4x", "mirror"}
    assert confirm["ceiling"]["label"] == "standard@4x"
    assert not (tmp_path / "start8" / "start" / "arithmetic-causal").exists()
    lines = cs.search_table(doc)
    assert len(lines) == 2 + 3 and lines[-1].startswith("| lr3e-3, fresh seeds |")
    assert (tmp_path / "ceiling_search.png").stat().st_size > 0
    assert "Chosen regime: `lr3e-3`" in (tmp_path / "report.md").read_text()
