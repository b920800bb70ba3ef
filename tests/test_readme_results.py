"""The README's result tables agree with the reference results under docs/results/ (they are
generated from them by `maskdiff readme-tables`)."""

import json
from pathlib import Path

import pytest

from maskdiff.cli import main
from maskdiff.experiments.compare import PRESETS
from maskdiff.experiments.compare_summary import summarise
from maskdiff.experiments.readme_tables import blocks, update

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_the_readme_tables_are_generated_from_docs_results():
    text = (ROOT / "README.md").read_text()
    new, changed = update(text, RESULTS)
    assert changed == [], f"README out of date with docs/results: {changed}; run `maskdiff readme-tables`"
    used = {name for name, _ in blocks(text)} - {"all"}  # "all": tables over every file
    assert used, "the README shows no generated result table"
    files = {p.stem for p in RESULTS.glob("*.json")}
    assert used <= files and files <= used, (used, files)
    for path in RESULTS.glob("*.json"):
        assert path.stat().st_size < 300_000, f"{path} is not small"


def _results(p_mirror):
    rec = lambda label, seed, p, fwd: {  # noqa: E731
        "label": label, "method": label, "task": "arithmetic", "seed": seed, "pass_at_1": p,
        "test_loss": 1.0 + p / 10, "test_loss_se": 0.1, "test_loss_kind": "ELBO",
        "variance_proxy": 1.0, "forward_passes": fwd, "train_seconds": 1.0, "steps": 10,
        "history": [{"step": 5, "val_loss": 1.2, "fwd": fwd / 2},
                    {"step": 10, "val_loss": 1.1, "fwd": fwd}], "loss_per_t_bin": []}
    records = [rec("standard", s, p, 100) for s, p in [(1, 0.2), (2, 0.4), (3, 0.3)]]
    records += [rec("mirror", s, p, 200) for s, p in zip((1, 2, 3), p_mirror)]
    out = summarise(PRESETS["smoke"], records, seconds=60.0, ppots=None, window=None)
    return out


def test_readme_tables_rewrites_a_block_and_check_finds_a_stale_one(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "toy.json").write_text(json.dumps(_results((0.5, 0.45, 0.35))))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:toy:pass -->\nstale\n<!-- /results -->\nend\n")
    args = ["readme-tables", "--readme", str(readme), "--results", str(results)]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    text = readme.read_text()
    assert "| mirror | 43.3 [" in text and "+13.3 [" in text and text.endswith("end\n")
    assert main([*args, "--check"]) == 0
    (tmp_path / "job.json").write_text(json.dumps(_results((0.5, 0.45, 0.45))))
    assert main([*args, "--add", f"toy2={tmp_path / 'job.json'}"]) == 0
    assert json.loads((results / "toy2.json").read_text())["methods"]["mirror"]["pass_at_1"] == [
        0.5, 0.45, 0.45]
    (results / "toy.json").write_text(json.dumps(_results((0.5, 0.45, 0.45))))
    assert main([*args, "--check"]) == 1
    assert "toy:pass" in capsys.readouterr().err
    readme.write_text("<!-- results:toy:nosuch -->\n<!-- /results -->\n")
    assert main(args) == 2
    with pytest.raises(ValueError, match="no results file"):
        update("<!-- results:missing:pass -->\n<!-- /results -->\n", results)


def test_the_benchmark_tables_mark_the_librarys_defaults():
    """The ELBO-SE and DPO-bias tables name the default from the library, not from the file:
    exactly one row each, and the numbers are the file's (closed-form rounding checked)."""
    from maskdiff.experiments.benchmark_tables import dpo_bias_table, elbo_se_table
    from maskdiff.preference.elbo import DEFAULT_ESTIMATOR
    from maskdiff.training.elbo_schemes import default_scheme

    se = json.loads((RESULTS / "elbo-se.json").read_text())
    rows = [r for r in elbo_se_table(se) if "(default" in r]
    assert len(rows) == 1 and rows[0].startswith(f"| `{default_scheme()}` (default) |")
    s = se["schemes"][default_scheme()]
    assert f"| {s['passes_for_target']:.0f} (" in rows[0] and f"{s['saving']:.1f}× (" in rows[0]
    bias = json.loads((RESULTS / "dpo-bias.json").read_text())
    rows = [r for r in dpo_bias_table(bias) if "(default)" in r]
    assert len(rows) == 1 and rows[0].startswith(f"| `{DEFAULT_ESTIMATOR}` (default) |")
    # the first data row is naive: the loss bias at the largest beta, to two decimals
    naive = bias["trained"]["naive"]["beta"][str(max(bias["betas"]))]
    assert f"{naive['loss_bias']:+.2f} ± {naive['loss_bias_se']:.2f}" in dpo_bias_table(bias)[2]
