"""Configuration round trips and validation (docs/architecture.md §3)."""

import re

import pytest
import torch

from maskdiff.core.batch import Batch
from maskdiff.training.config import ComponentConfig, EstimatorConfig, diff_configs, from_dict, to_dict


def test_estimator_config_round_trips_through_json_dict():
    config = EstimatorConfig(
        sampler=ComponentConfig(name="window", params={"t_min": 0.4, "t_max": 0.5}),
        masker=ComponentConfig(name="mirror"),
        control=ComponentConfig(name="ema", params={"n_bins": 5}),
        normalizer="sequence",
    )
    again = from_dict(EstimatorConfig, to_dict(config))
    assert again == config
    est = again.build(mask_token_id=3)
    assert est.rate_sampler.target_interval() == (0.4, 0.5)
    assert est.forward_passes == 2 and est.control.n_bins == 5


def test_ppots_mirror_is_importance_plus_mirror():
    config = EstimatorConfig(
        sampler=ComponentConfig(name="importance", params={"density": {"t": [0, 1], "p": [1, 2]}}),
        masker=ComponentConfig(name="mirror"))
    est = config.build(mask_token_id=0)
    assert type(est.rate_sampler).__name__ == "Importance" and type(est.masker).__name__ == "Mirror"


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": ComponentConfig(name="beta")}, "sampler.name"),
    ({"masker": ComponentConfig(name="random")}, "masker.name"),
    ({"control": ComponentConfig(name="ppo")}, "control.name"),
    ({"normalizer": "tokens"}, "normalizer"),
])
def test_bad_config_fields_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EstimatorConfig(**kwargs)


def test_unknown_keys_and_diffs():
    with pytest.raises(ValueError, match="no field"):
        from_dict(EstimatorConfig, {"samplr": {}})
    a = to_dict(EstimatorConfig())
    b = to_dict(EstimatorConfig(masker=ComponentConfig(name="mirror")))
    assert diff_configs(a, b) == ["masker.name"]


def test_syrm_needs_a_syntax_mask():
    est = EstimatorConfig(syntax_eligible=True).build(mask_token_id=0)
    x0 = torch.ones(1, 3, dtype=torch.long)
    batch = Batch(x0=x0, eligible=torch.ones_like(x0, dtype=torch.bool),
                  attention_mask=torch.ones_like(x0, dtype=torch.bool), example_index=torch.arange(1))
    with pytest.raises(ValueError, match="syntax"):
        est.eligible(batch)


@pytest.mark.parametrize("value", [True, 0, 2.0, "3", None, -1])
def test_int_at_least_refuses_what_is_not_a_count(value):
    from maskdiff.core.checks import int_at_least

    with pytest.raises(ValueError, match=rf"^n must be an integer >= 1, got {re.escape(repr(value))}$"):
        int_at_least(value, "n")


def test_int_at_least_returns_a_plain_int():
    import numpy as np

    from maskdiff.core.checks import int_at_least

    value = int_at_least(np.int64(3), "n", minimum=3)
    assert value == 3 and type(value) is int
    assert int_at_least(0, "seed", minimum=0) == 0
