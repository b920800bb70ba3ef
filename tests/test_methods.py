"""The method registry: every registered method trains a step through ``maskdiff train`` at its
declared cost, yields a decomposition configuration, and is in ``compare --preset full``; the
registry's refusals name what is wrong."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from maskdiff import METHODS, Method, get_method
from maskdiff.cli import main
from maskdiff.core.config import ComponentConfig, EstimatorConfig
from maskdiff.core.methods import NEEDS, equal_compute, method_config, register_method
from maskdiff.data.setup import load_task
from maskdiff.experiments.compare import PRESETS, plan
from maskdiff.experiments.decompose import DecomposeSettings, build_method
from maskdiff.hf import method_trainer_kwargs
from maskdiff.ppots import epr_density, fit_ppots, save_ppots_json
from maskdiff.training.config import DataConfig
from maskdiff.training.needs import resolve_estimator

TINY = ["--preset", "smoke", "--steps", "1", "--batch-size", "4", "--quiet",
        "--set", "data.n_train=16", "--set", "data.n_val=4", "--set", "eval.n_examples=4",
        "--set", "eval.rates_per_example=1"]
DENSITY = {"t": [0.0, 0.5, 1.0], "p": [0.5, 1.0, 1.5]}


@pytest.fixture(scope="module")
def ppots_json(tmp_path_factory):
    """A fitted density file per density target (a ``gpots`` method refuses a loss-target one)."""
    folder = tmp_path_factory.mktemp("ppots")
    t = np.linspace(0.01, 0.99, 24)
    table = epr_density({"a": 0.4, "b": 0.2, "A": 0.5, "kappa": 1.2, "r": 0.8, "q": 1.5,
                         "m": 2.0}, 1e-3)
    p_hat = np.interp(t, table.t_grid, table.p_grid)
    paths = {"loss": folder / "ppots.json", "gradient": folder / "gpots.json"}
    for target, path in paths.items():
        save_ppots_json(path, fit_ppots(t, p_hat / p_hat.sum(), restarts=1, target=target))
    return paths


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(DataConfig(task=name, n_train=8, n_val=4, n_test=4))
            for name in ("arithmetic", "table")}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_a_step_at_its_declared_cost(name, tmp_path, ppots_json, capsys):
    method = METHODS[name]
    argv = ["train", "--method", name, "--out", str(tmp_path / "run"), *TINY]
    argv += ["--ppots", str(ppots_json[method.density_target])] if "density" in method.needs else []
    argv += ["--task", method.task] if method.task else []
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 1
    # One step of 4 examples (× the batch factor), each with its views' forward passes.
    assert results["forward_passes"] == 4 * method.cost
    assert config["model"]["causal"] is method.causal
    assert config["optim"]["batch_size"] == 4 * method.batch_factor
    if "density" in method.needs:
        assert config["estimator"]["sampler"]["name"] == "importance"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_yields_a_decomposition_configuration(name, tasks):
    method = METHODS[name]
    task = tasks[method.task or "arithmetic"]
    source = SimpleNamespace(task=task, config=SimpleNamespace(estimator=EstimatorConfig()),
                             mask_token_id=task.tokenizer.mask_id)
    DecomposeSettings(methods=(name,))  # the settings accept every registered name
    estimator, reason = build_method(name, source, DENSITY)
    if method.causal:
        assert estimator is None and "causal" in reason
    else:
        assert reason is None
        assert estimator.forward_passes == method.forward_passes


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_is_in_the_full_compare_preset(name):
    specs = [s for s in plan(PRESETS["full"], seeds=[1]) if s.method == name]
    assert specs and specs[0].task == (METHODS[name].task or "arithmetic")  # first: its own task


def test_a_new_registration_appears_in_compare_full(monkeypatch):
    monkeypatch.setitem(METHODS, "mirror_clipped", Method(
        name="mirror_clipped", summary="clipped rates, MIRROR views", forward_passes=2,
        estimator=EstimatorConfig(sampler=ComponentConfig(name="clipped"),
                                  masker=ComponentConfig(name="mirror"))))
    assert "mirror_clipped" in {s.method for s in plan(PRESETS["full"], seeds=[1])}
    assert "mirror_clipped" not in {s.method for s in plan(PRESETS["demo"], seeds=[1])}


def test_the_registry_refuses_and_names_what_is_missing():
    with pytest.raises(ValueError, match=r"unknown method 'magic'; known methods: \['standard'"):
        get_method("magic")
    with pytest.raises(ValueError, match="'ppots' needs a fitted P-POTS density"):
        get_method("ppots").estimator_config()
    with pytest.raises(ValueError, match="'window' needs a masking-rate window"):
        method_config("window")
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method(name="mirror", summary="again"))
    with pytest.raises(ValueError, match=r"unknown needs \['gpu'\]"):
        Method(name="x", summary="", needs=frozenset({"gpu"}))
    with pytest.raises(ValueError, match="names its base"):
        Method(name="x", summary="", batch_factor=2)
    with pytest.raises(ValueError, match="base 'nope' is not registered"):
        register_method(Method(name="x@2x", summary="", base="nope", batch_factor=2))
    assert "x@2x" not in METHODS


def test_needs_come_from_the_masker_and_the_declaration():
    isad_like = Method(name="x", summary="", estimator=EstimatorConfig(
        masker=ComponentConfig(name="isad", params={"delta": 0.3})))
    assert isad_like.needs == {"delimiters"}  # declared by the ISAD masker class
    assert get_method("syrm").needs == {"syntax"} and get_method("ar").causal
    assert set().union(*(m.needs | m.optional for m in METHODS.values())) <= set(NEEDS)
    # The equal-compute control spends what the two-view methods spend, on standard's estimator.
    doubled = get_method("standard@2x")
    assert (doubled.base, doubled.cost, doubled.estimator) == ("standard", 2, EstimatorConfig())
    assert doubled.cost == get_method("mirror").cost == get_method("ppots_mirror").cost
    assert equal_compute("mirror", 3).cost == 6


def test_density_and_window_fill_the_rate_sampler():
    config = method_config("ppots_mirror", density=DENSITY, mix=0.1)
    assert config.sampler == ComponentConfig(name="importance", params={"density": DENSITY, "mix": 0.1})
    assert config.masker.name == "mirror"
    online = method_config("ppots_online")  # optional density: uniform by default
    assert online.sampler.params["density"] == {"t": [0.0, 1.0], "p": [1.0, 1.0]}
    assert online.refit is not None
    assert method_config("ppots_online", density=DENSITY).sampler.params["density"] == DENSITY
    assert method_config("window", window=(0.2, 0.3)).sampler.params == {"t_min": 0.2, "t_max": 0.3}
    assert method_config("standard", density=DENSITY, window=(0.2, 0.3)) == EstimatorConfig()


def test_the_trainer_fills_and_checks_what_the_task_provides(tasks):
    arithmetic, table = tasks["arithmetic"], tasks["table"]
    isad = resolve_estimator(method_config("isad"), arithmetic)
    assert isad.masker.params["token_ids"] == sorted(arithmetic.delimiter_ids()) != []
    explicit = replace(method_config("isad"),
                       masker=ComponentConfig(name="isad", params={"token_ids": [3]}))
    assert resolve_estimator(explicit, arithmetic).masker.params == {"token_ids": [3]}
    assert resolve_estimator(method_config("syrm"), table) == method_config("syrm")
    with pytest.raises(ValueError, match="'arithmetic' has no syntax tokens"):
        resolve_estimator(method_config("syrm"), arithmetic)


def test_hf_trainer_arguments_come_from_the_registry():
    for name, method in METHODS.items():
        if method.causal or method.base is not None:
            with pytest.raises(ValueError, match="causal|batch"):
                method_trainer_kwargs(name, density=DENSITY, window=(0.4, 0.6))
            continue
        kwargs = method_trainer_kwargs(name, density=DENSITY, window=(0.4, 0.6), delimiter_ids=[7])
        assert kwargs["masker"].n_views == method.forward_passes, name
        assert kwargs["syntax_eligible"] is ("syntax" in method.needs)
        assert ("ppots_tracker" in kwargs) is (method.estimator.refit is not None)
    assert method_trainer_kwargs("isad", delimiter_ids=[9, 7])["masker"].token_ids == [7, 9]
    with pytest.raises(ValueError, match="answer-delimiter token ids: pass delimiter_ids"):
        method_trainer_kwargs("isad")


def test_docs_method_table_lists_every_registered_method():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    section = text[text.index("## 11. The baselines"):]
    assert [name for name in METHODS if f"| `{name}` |" not in section] == []
