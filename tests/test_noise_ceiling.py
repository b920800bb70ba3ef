"""The noise ceiling (docs/method.md §11): Fieller's interval for a paired ratio of means and
each method's share of standard@4x's gain in a compare summary."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from maskdiff.experiments.compare import PRESETS, plan
from maskdiff.experiments.compare_ceiling import ceiling_label, ceiling_section, ceiling_table
from maskdiff.experiments.compare_summary import summarise
from maskdiff.experiments.stats import ratio_of_means


def _t_rejects(a, b, theta) -> bool:
    """The one-sample t-test of a − θ·b at 5%: what Fieller's interval inverts."""
    return scipy_stats.ttest_1samp(np.asarray(a) - theta * np.asarray(b), 0.0).pvalue < 0.05


def test_fieller_interval_is_the_set_the_t_test_does_not_reject():
    a = [0.9, 1.4, 0.7, 1.1, 1.3, 0.8, 1.2, 1.0]
    b = [2.1, 2.4, 1.7, 2.2, 2.6, 1.9, 2.0, 2.3]
    r = ratio_of_means(a, b)
    assert r["ratio"] == pytest.approx(np.mean(a) / np.mean(b))
    assert r["bounded"] and r["lo"] < r["ratio"] < r["hi"]
    # the end points are where the test's p-value is exactly 0.05
    for end in (r["lo"], r["hi"]):
        p = scipy_stats.ttest_1samp(np.asarray(a) - end * np.asarray(b), 0.0).pvalue
        assert p == pytest.approx(0.05, abs=1e-9)
    assert _t_rejects(a, b, r["lo"] - 1e-3) and _t_rejects(a, b, r["hi"] + 1e-3)
    assert not _t_rejects(a, b, r["ratio"])


def test_fieller_interval_is_unbounded_when_the_denominator_is_not_significant():
    a = [0.5, 0.6, 0.4, 0.55]
    b = [1.0, -1.2, 0.8, -0.5]  # mean 0.025, t ≈ 0.05
    r = ratio_of_means(a, b)
    assert not r["bounded"] and r["lo"] is None and r["hi"] is None
    assert r["ratio"] == pytest.approx(np.mean(a) / np.mean(b))
    with pytest.raises(ValueError, match="equal length"):
        ratio_of_means([1, 2, 3], [1, 2])


def test_a_method_that_is_the_ceiling_over_two_gets_half_its_share():
    """Closed form: with method gains exactly half the ceiling's on every seed, the ratio is
    0.5 and the interval has zero width (a − θb has no spread only at θ = 1/2)."""
    gains = [0.04, 0.06, 0.05, 0.07, 0.03]
    r = ratio_of_means([g / 2 for g in gains], gains)
    assert r["ratio"] == pytest.approx(0.5)
    assert r["lo"] == pytest.approx(0.5, abs=1e-9) and r["hi"] == pytest.approx(0.5, abs=1e-9)


def _record(label, seed, p, loss, fwd=100):
    return {"label": label, "method": label, "task": "arithmetic", "seed": seed, "pass_at_1": p,
            "test_loss": loss, "test_loss_se": 0.1, "test_loss_kind": "ELBO",
            "variance_proxy": 1.0, "forward_passes": fwd, "train_seconds": 1.0, "steps": 10,
            "history": [], "loss_per_t_bin": [], "hits": "", "elbo_items": []}


def test_summary_shares_are_against_the_largest_equal_compute_control():
    seeds = (1, 2, 3, 4, 5)
    std = [0.30, 0.32, 0.28, 0.31, 0.29]
    gain = [0.06, 0.05, 0.07, 0.04, 0.08]
    loss_gain = [-0.02, -0.03, -0.02, -0.025, -0.015]
    records = [_record("standard", s, p, 1.0) for s, p in zip(seeds, std)]
    records += [_record("standard@4x", s, p + g, 1.0 + lg, fwd=400)
                for s, p, g, lg in zip(seeds, std, gain, loss_gain)]
    records += [_record("standard@2x", s, p + g / 2, 1.0 + lg / 2, fwd=200)
                for s, p, g, lg in zip(seeds, std, gain, loss_gain)]
    mirror = [0.01, 0.04, 0.02, 0.0, 0.03]
    records += [_record("mirror", s, p + d, 1.0, fwd=200) for s, p, d in zip(seeds, std, mirror)]
    out = summarise(PRESETS["smoke"], records, seconds=1.0, ppots=None, window=None)
    ceiling = out["ceiling"]
    assert ceiling["label"] == "standard@4x" and ceiling["factor"] == 4
    assert ceiling["pass_at_1"]["mean"] == pytest.approx(np.mean(gain))
    half = out["methods"]["standard@2x"]["vs_ceiling"]
    assert half["pass_at_1"]["ratio"] == pytest.approx(0.5)
    assert half["test_loss"]["ratio"] == pytest.approx(0.5)
    share = out["methods"]["mirror"]["vs_ceiling"]["pass_at_1"]
    assert share["ratio"] == pytest.approx(np.mean(mirror) / np.mean(gain))
    expected = ratio_of_means(mirror, gain)
    assert (share["lo"], share["hi"]) == pytest.approx((expected["lo"], expected["hi"]))
    # the mirror's ELBO is standard's: share 0 of a significant ceiling gain
    assert out["methods"]["mirror"]["vs_ceiling"]["test_loss"]["ratio"] == pytest.approx(0.0)
    for name in ("standard", "standard@4x"):
        assert "vs_ceiling" not in out["methods"][name]
    section = ceiling_section(out)
    assert section[0] == "## Noise ceiling"
    assert any(line.startswith("| mirror | +") for line in section)
    assert any("standard@4x − standard, pass@1: +6 points" in line for line in section)


def test_no_ceiling_without_an_equal_compute_control():
    records = [_record("standard", s, 0.3, 1.0) for s in (1, 2, 3)]
    records += [_record("mirror", s, 0.3, 1.0, fwd=200) for s in (1, 2, 3)]
    out = summarise(PRESETS["smoke"], records, seconds=1.0, ppots=None, window=None)
    assert out["ceiling"] is None and ceiling_table(out) == []
    section = ceiling_section(out)  # every report has the section: how to add the ceiling
    assert section[0] == "## Noise ceiling"
    assert "`--methods standard,mirror,standard@4x`" in section[2]
    assert ceiling_label(out["methods"]) is None


def test_the_full_preset_runs_the_four_times_ceiling():
    labels = {s.label for s in plan(PRESETS["full"])}
    assert {"standard@2x", "standard@4x"} <= labels
