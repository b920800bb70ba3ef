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
