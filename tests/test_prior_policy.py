"""The operator prior (docs/method.md §11, "What pass@1 measures here"): closed-form cases, and
the committed table recomputed from the stored hit strings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as Ex

import pytest

from maskdiff import jsonio
from maskdiff.experiments import prior_policy as pp
from tests.scripts import load_script

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_the_operation_of_a_worked_answer():
    assert pp.operation("1-1=0\n#### 0") == "-"
    assert pp.operation("2*3=6\n6+1=7\n#### 7") == "*+"
    assert pp.operation("5+5=10\n#### 10") == "+"
    with pytest.raises(ValueError, match="arithmetic task"):
        pp.operation("the answer is\n#### 4")


def test_the_prior_answers_the_most_frequent_answer_per_operation():
    train = [Ex(response=r) for r in ("1+5=6\n#### 6", "2+4=6\n#### 6", "1+1=2\n#### 2",
                                      "3-3=0\n#### 0", "4-1=3\n#### 3", "2-2=0\n#### 0")]
    test = [Ex(response=r) for r in ("3+3=6\n#### 6", "1+2=3\n#### 3", "5-5=0\n#### 0",
                                     "5-1=4\n#### 4")]
    prior = pp.prior_policy(train, test)
    assert prior["answers"] == {"+": "6", "-": "0"}
    assert prior["hits"] == [True, False, True, False] and prior["pass_at_1"] == 0.5
    assert pp.overlap("1010", prior["hits"]) == {"inside": 2, "outside": 0, "collapsed": True}
    assert pp.overlap("0110", prior["hits"]) == {"inside": 1, "outside": 1, "collapsed": False}
    s = pp.summarise({"a": ["1010", "0110"]}, prior["hits"])["a"]
    assert (s["pass_at_1"], s["inside_share"], s["collapsed"]) == (50.0, 0.75, 1)
    assert s["outside"]["mean"] == pytest.approx(12.5)  # 0 and 25 points outside
    with pytest.raises(ValueError, match="3 hits"):
        pp.overlap("101", prior["hits"])


def test_the_committed_table_is_the_stored_hits_against_the_prior(tmp_path):
    """docs/results/prior-policy.json's DPO rows, recomputed from dpo-gain.json's hit strings."""
    script = load_script("benchmarks/prior_policy.py")
    assert script.main(["--dpo-gain", f"DPO={RESULTS / 'dpo-gain.json'}",
                        "--out", str(tmp_path)]) == 0
    fresh = jsonio.load(tmp_path / "results.json")
    committed = jsonio.load(RESULTS / "prior-policy.json")
    assert fresh["prior"] == committed["prior"]
    assert fresh["prior"]["answers"] == {"+": "6", "-": "0"} and fresh["prior"]["hits"] == 365
    assert fresh["sources"]["DPO"] == committed["sources"]["DPO"]


def test_a_compare_job_reports_each_method_against_the_prior():
    """versus_prior on run records: the outside-the-prior pass@1 per seed, paired with
    standard's; the report section shows it; a task without arithmetic has no prior."""
    prior = {"answers": {"+": "6"}, "pass_at_1": 0.5, "hits": "1100"}
    rec = lambda label, seed, hits: {"label": label, "method": label, "seed": seed,  # noqa: E731
                                     "hits": hits}
    by_label = {"standard": [rec("standard", 1, "1000"), rec("standard", 2, "0100"),
                             rec("standard", 3, "1101")],
                "mirror": [rec("mirror", 1, "1110"), rec("mirror", 2, "1111"),
                           rec("mirror", 3, "1100")]}
    out = pp.versus_prior(by_label, prior)
    # outside the prior (problems 3 and 4), in points of 4 problems: standard 0, 0, 25
    assert out["standard"]["outside"]["mean"] == pytest.approx(25 / 3)
    d = out["mirror"]["outside_vs_standard"]  # mirror 25, 50, 0 → differences 25, 50, -25
    assert d["mean"] == pytest.approx(50 / 3) and d["n"] == 3
    assert out["mirror"]["collapsed"] == 1 and "outside_vs_standard" not in out["standard"]
    section = pp.prior_section({"task": {"operator_prior": prior}, "operator_prior": out})
    assert section[0] == "## Operator prior" and "scores 50.0% pass@1" in section[2]
    assert section[-2].startswith("| mirror | 75.0 | 100% | 25.0 [") and "1 of 3 |" in section[-2]
    assert pp.versus_prior(by_label, None) is None and pp.prior_section({"task": {}}) == []
    assert pp.operator_prior([Ex(response="a story\n#### 4")], [Ex(response="x\n#### 1")]) is None
