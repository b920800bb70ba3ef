"""A ``ppots.json`` is what training uses (issue 24, items 9 and 10).

- Its ``mix`` and ``eps`` are the importance sampler's in every consumer (``train --ppots``,
  ``density_from_ppots`` → ``method_config`` / the HF ``method_estimator`` / ``Importance``,
  ``cached_density`` of compare/image), unless overridden explicitly, which is said once.
- A table reaching beyond the rates p̂ was estimated on is said once (stderr).
- Every invalid file is one line naming the file and the field; ``fit-pots`` never writes a
  file ``train`` cannot read (``--eps 0.5`` works end to end).
"""

import json
import math

import numpy as np
import pytest
import torch

from maskdiff.cli import main
from maskdiff.core.config import EstimatorConfig
from maskdiff.core.methods import method_config
from maskdiff.core.samplers import Importance
from maskdiff.ppots import (
    PPotsFileError, cached_density, density_from_ppots, density_table, fit_ppots, load_ppots_json,
    save_ppots_json,
)
from maskdiff.training.config import TrainConfig, from_dict
from maskdiff.training.needs import apply_method
from maskdiff.training.presets import PRESETS


def _midpoints(lo: float, n: int = 16) -> list[float]:
    """The midpoint grid of [lo, 1] (what `fit-pots --run/--preset` estimates p̂ on)."""
    return [lo + (1.0 - lo) * (j + 0.5) / n for j in range(n)]


def _table(path, t, eps=None):
    t = np.asarray(t)
    doc = {"t": t.tolist(), "p_hat": (0.01 + t ** 4).tolist()}  # peaked: weights need the mix
    if eps is not None:
        doc["eps"] = eps
    path.write_text(json.dumps(doc))
    return path


def _fit(tmp_path, name, t, *flags, eps_in_table=None):
    table = _table(tmp_path / f"{name}-table.json", t, eps_in_table)
    out = tmp_path / name
    assert main(["fit-pots", "--from-table", str(table), "--restarts", "1", "--out", str(out),
                 *flags]) == 0
    return out / "ppots.json"


def _train(tmp_path, name, ppots, *flags, method="ppots"):
    run = tmp_path / name
    code = main(["train", "--preset", "smoke", "--steps", "2", "--method", method,
                 "--ppots", str(ppots), "--out", str(run), "--quiet", *flags])
    return code, run


def _run_sampler(run):
    """The rate sampler the run's config.json builds (what its trainer trained with)."""
    config = from_dict(TrainConfig, json.loads((run / "config.json").read_text()))
    params = config.estimator.sampler.params
    return params, config.estimator.build(mask_token_id=0).rate_sampler


def _draws(sampler, n=50_000):
    t, w = sampler.sample(n, torch.Generator().manual_seed(0))
    return t.double().numpy(), w.double().numpy()


# -- 9. the file's mix and eps are what training uses -------------------------------------------
def test_fit_pots_mix_is_the_mix_train_uses(tmp_path, capsys):
    ppots = _fit(tmp_path, "pots", _midpoints(1e-3), "--mix", "0.3")
    assert json.loads(ppots.read_text())["mix"] == 0.3
    code, run = _train(tmp_path, "run", ppots)
    assert code == 0
    params, sampler = _run_sampler(run)
    assert params["mix"] == 0.3 and sampler.mix == 0.3 and sampler.eps == 1e-3
    t, w = _draws(sampler)
    # Weights bounded by 1/mix = 3.33 (not 1/0.05 = 20): the low rates, rare under this
    # peaked density, carry the largest weights, just under the bound.
    assert w.max() <= 1 / 0.3 + 1e-6 and w.max() > 2.5
    loose = Importance(density_from_ppots(ppots), mix=0.05)
    assert _draws(loose)[1].max() > 5.0  # what training used before: a 0.05 mix
    err = capsys.readouterr().err
    assert "warning" not in err and "note" not in err  # a midpoint grid covers [eps, 1]


def test_ppots_eps_is_the_rate_floor_train_uses_end_to_end(tmp_path, capsys):
    # eps 0.5: written by fit-pots (it used to fail in train: "Geometric sequence cannot
    # include zero"), then trained from; no rate below 0.5 is ever drawn.
    ppots = _fit(tmp_path, "pots", _midpoints(0.5), "--eps", "0.5", "--mix", "0.1")
    doc = json.loads(ppots.read_text())
    assert (doc["eps"], doc["mix"]) == (0.5, 0.1)
    code, run = _train(tmp_path, "run", ppots)
    assert code == 0, capsys.readouterr().err
    params, sampler = _run_sampler(run)
    assert (params["eps"], params["mix"]) == (0.5, 0.1) and sampler.eps == 0.5
    t, w = _draws(sampler)
    assert t.min() >= 0.5 - 1e-6 and t.max() <= 1.0
    assert w.max() <= 1 / 0.1 + 1e-6
    # Weighted draws are unbiased for U[0.5, 1]: E_w[t] = 0.75.
    assert abs(np.mean(w * t) - 0.75) < 0.01
    # The run itself drew no rate below 0.5: the 5 lower loss_per_t_bin bins stay empty.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bins = [row["loss_per_t_bin"] for row in rows if "loss_per_t_bin" in row]
    assert bins and all(b[:5] == [None] * 5 and any(x is not None for x in b[5:]) for b in bins)


def test_eps_0_3_from_a_table_file_is_honoured(tmp_path):
    # The table's own eps (no --eps) is the floor fit-pots records and train samples above.
    ppots = _fit(tmp_path, "pots", _midpoints(0.3), eps_in_table=0.3)
    assert json.loads(ppots.read_text())["eps"] == 0.3
    code, run = _train(tmp_path, "run", ppots)
    assert code == 0
    params, sampler = _run_sampler(run)
    assert params["eps"] == 0.3 and params["mix"] == 0.05
    assert _draws(sampler)[0].min() >= 0.3 - 1e-6


@pytest.mark.parametrize("eps", [0.3, 0.5, 0.999])
def test_every_consumer_takes_mix_and_eps_from_the_file(tmp_path, eps):
    t = np.asarray(_midpoints(eps))
    result = fit_ppots(t, 0.01 + t ** 4, eps=eps, mix=0.3, restarts=1)
    path = tmp_path / "ppots.json"
    save_ppots_json(path, result)
    density = density_from_ppots(path)
    assert (density["mix"], density["eps"]) == (0.3, eps) and density["t"][0] == eps
    assert density["t"][-1] == 1.0 and np.all(np.diff(density["t"]) > 0)
    from maskdiff.hf.methods import method_estimator

    configs = {
        "method_config": method_config("ppots", density=density),
        "apply_method": apply_method(PRESETS["smoke"], "ppots_mirror", density=density).estimator,
        "hf": method_estimator("ppots", density=density),
        "online": method_config("ppots_online", density=density),
        # compare / image: the per-directory cache
        "cached": method_config("gpots", density=cached_density(
            tmp_path / "cache", lambda: fit_ppots(t, 0.01 + t ** 4, eps=eps, mix=0.3, restarts=1,
                                                  target="gradient"))),
    }
    for name, config in configs.items():
        params = config.sampler.params
        assert (params["mix"], params["eps"]) == (0.3, eps), name
        assert set(params["density"]) == {"t", "p"}, name
        sampler = config.build(mask_token_id=0).rate_sampler
        rates, weights = _draws(sampler, 20_000)
        assert rates.min() >= eps - 1e-6 and weights.max() <= 1 / 0.3 + 1e-6, name
    direct = Importance(density)  # the sampler itself, given the table
    assert (direct.mix, direct.eps) == (0.3, eps)
    # An explicit argument wins over the file's.
    assert method_config("ppots", density=density, mix=0.2).sampler.params["mix"] == 0.2
    assert Importance(density, mix=0.0).mix == 0.0


def test_the_hf_example_uses_the_files_mix_and_eps(tmp_path):
    pytest.importorskip("transformers")
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    script = Path(__file__).resolve().parents[1] / "examples" / "sft_llada_8b.py"
    spec = importlib.util.spec_from_file_location("sft_llada_8b", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    t = np.asarray(_midpoints(0.3))
    save_ppots_json(tmp_path / "p.json", fit_ppots(t, 0.01 + t ** 4, eps=0.3, mix=0.3, restarts=1))
    args = SimpleNamespace(output_dir=str(tmp_path / "out"), ppots=str(tmp_path / "p.json"),
                           online_refit_every=0)
    config = module.build_estimator(args, None, None, [], "cpu")
    assert (config.sampler.params["mix"], config.sampler.params["eps"]) == (0.3, 0.3)


def test_an_explicit_override_is_said_once_and_a_lower_eps_refused(tmp_path, capsys):
    ppots = _fit(tmp_path, "pots", _midpoints(0.3), "--eps", "0.3", "--mix", "0.3")
    capsys.readouterr()
    code, run = _train(tmp_path, "a", ppots, "--mix", "0.2")
    err = capsys.readouterr().err
    assert code == 0 and _run_sampler(run)[0]["mix"] == 0.2
    notes = [line for line in err.splitlines() if "overriding" in line]
    assert notes == [f"maskdiff train: note: the importance sampler uses mix=0.2 (--mix; the "
                     f"file has 0.3), overriding {ppots}"]
    code, run = _train(tmp_path, "b", ppots, "--set", "estimator.sampler.params.mix=0.5",
                       "--eps", "0.4")
    err = capsys.readouterr().err
    assert code == 0 and _run_sampler(run)[0]["mix"] == 0.5 and _run_sampler(run)[0]["eps"] == 0.4
    assert [line for line in err.splitlines() if "overriding" in line] == [
        f"maskdiff train: note: the importance sampler uses mix=0.5 (--set; the file has 0.3), "
        f"eps=0.4 (--eps; the file has 0.3), overriding {ppots}"]
    # Below the file's eps the fitted density is not defined: refused, not extrapolated.
    code, _ = _train(tmp_path, "c", ppots, "--eps", "0.1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "eps 0.1 is below" in err[0] and str(ppots) in err[0]
    for flags, match in ((["--mix", "1"], "--mix must lie in [0, 1)"),
                         (["--mix", "nan"], "--mix must lie in [0, 1)"),
                         (["--eps", "0"], "--eps must lie in (0, 1)")):
        code, _ = _train(tmp_path, "d", ppots, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], (flags, err)
    code = main(["train", "--preset", "smoke", "--method", "standard", "--mix", "0.2",
                 "--out", str(tmp_path / "e")])
    assert code == 2 and "this run samples rates with 'uniform'" in capsys.readouterr().err
    code = main(["train", "--preset", "smoke", "--method", "standard", "--ppots", str(ppots),
                 "--out", str(tmp_path / "e")])
    assert code == 2 and "method 'standard' takes none" in capsys.readouterr().err


def test_extrapolation_beyond_the_estimated_rates_is_said_once(tmp_path, capsys):
    half = np.linspace(0.5, 1.0, 12)
    ppots = _fit(tmp_path, "pots", half, "--mix", "0.3")  # eps 1e-3: [0.001, 0.5) extrapolated
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "warning" in line]
    assert len(said) == 1 and str(ppots) in said[0]
    assert "p̂ was estimated on t in [0.5, 1] only" in said[0]
    assert "[0.001, 0.5)" in said[0] and "--eps 0.5" in said[0]
    code, _ = _train(tmp_path, "run", ppots)
    err = capsys.readouterr().err.splitlines()
    assert code == 0 and len([line for line in err if "extrapolated" in line]) == 1
    # Refitted on the rates it was estimated on: nothing to say.
    _fit(tmp_path, "inside", half, "--eps", "0.5")
    assert "warning" not in capsys.readouterr().err
    # An upper gap too: a table ending at 0.6.
    result = fit_ppots(np.linspace(0.1, 0.6, 12), np.ones(12), eps=0.08, restarts=1)
    density_table(result, source="upper.json")
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "(0.6, 1]" in line and "upper.json" in line


# -- 10. an invalid ppots.json: one line naming the file and the field --------------------------
def _good_doc(tmp_path):
    path = _fit(tmp_path, "good", _midpoints(1e-3))
    return json.loads(path.read_text())


def _set(doc, dotted, value):
    node, parts = doc, dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    if value is KeyError:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


CASES = [  # (field to change, new value, the field named in the error)
    ("epr.params.kappa", math.nan, "epr.params.kappa"),
    ("epr.params.a", math.inf, "epr.params.a"),
    ("epr.params.b", -0.5, "epr.params.b"),
    ("epr.params.m", 1.0, "epr.params.m"),
    ("epr.params.r", KeyError, "epr.params.r"),
    ("epr.params.q", "2", "epr.params.q"),
    ("epr.params.kappa", 1e308, "epr.params"),  # finite, but its density is not
    ("epr.kl", None, "epr.kl"),
    ("epr", [1, 2], "epr"),
    ("mix", 1.0, "mix"), ("mix", -0.1, "mix"), ("mix", "0.3", "mix"), ("mix", math.nan, "mix"),
    ("mix", True, "mix"), ("mix", KeyError, "mix"),
    ("eps", 0.0, "eps"), ("eps", 1.5, "eps"), ("eps", math.nan, "eps"), ("eps", 0.5, "eps"),
    ("eps", None, "eps"),
    ("t", [], "t"), ("t", [0.1, 0.2, 0.3], "t"), ("t", KeyError, "t"), ("t", "0.1", "t"),
    ("p_hat", KeyError, "p_hat"), ("p_hat", None, "p_hat"), ("p_hat", [1.0] * 3, "p_hat"),
    ("poly7.coeffs", [1, 2, 3], "poly7.coeffs"), ("poly7.floor", 0.0, "poly7.floor"),
    ("poly7.kl", math.inf, "poly7.kl"),
    ("estimator", "mean", "estimator"), ("target", "weights", "target"),
    ("format", "other", "format"), ("version", 7, "version"),
    ("forward_passes", -1, "forward_passes"), ("seconds", math.nan, "seconds"),
]


@pytest.fixture(scope="module")
def good_doc(tmp_path_factory):
    return _good_doc(tmp_path_factory.mktemp("good"))


def _one_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("field, value, named", CASES,
                         ids=[f"{c[0]}={c[1]!r}"[:40] for c in CASES])
def test_an_invalid_ppots_json_is_one_line_naming_file_and_field(tmp_path, capsys, good_doc,
                                                                 field, value, named):
    doc = json.loads(json.dumps(good_doc))
    _set(doc, field, value)
    path = tmp_path / "ppots.json"
    path.write_text(json.dumps(doc))  # json writes NaN / Infinity as Python reads them
    line = _one_line(capsys, _train(tmp_path, "run", path)[0])
    assert line.startswith(f"maskdiff train: error: {path}: field {named!r}"), line
    assert not (tmp_path / "run").exists()
    with pytest.raises(PPotsFileError, match=f"^{path}: field '{named}'"):
        density_from_ppots(path)  # decompose --ppots, gradient targets, the HF helpers


def test_element_errors_name_the_element(tmp_path, capsys, good_doc):
    for field, values, named in (("t", "swap", "t"), ("t", 0.0, "t[0]"), ("t", 1.5, "t[15]"),
                                 ("t", math.nan, "t[3]"), ("p_hat", -1.0, "p_hat[2]"),
                                 ("p_hat", "zeros", "p_hat")):
        doc = json.loads(json.dumps(good_doc))
        if values == "swap":
            doc["t"][4], doc["t"][5] = doc["t"][5], doc["t"][4]
        elif values == "zeros":
            doc["p_hat"] = [0.0] * len(doc["p_hat"])
        else:
            index = int(named[named.index("[") + 1:-1])
            doc[field][index] = values
        path = tmp_path / "ppots.json"
        path.write_text(json.dumps(doc))
        line = _one_line(capsys, _train(tmp_path, "run", path)[0])
        assert f"{path}: field {named!r}" in line, line
    path.write_text("[1, 2]")
    assert "not a P-POTS result" in _one_line(capsys, _train(tmp_path, "run", path)[0])
    path.write_text("{bad")
    line = _one_line(capsys, _train(tmp_path, "run", path)[0])
    assert f"{path}: not a P-POTS result (not valid JSON" in line


def test_a_damaged_cache_is_set_aside_and_estimated_again(tmp_path, good_doc):
    out = tmp_path / "cache"
    out.mkdir()
    bad = {**good_doc, "mix": math.nan}
    (out / "ppots.json").write_text(json.dumps(bad))
    t = np.asarray(_midpoints(1e-3))
    density = cached_density(out, lambda: fit_ppots(t, np.ones(16), mix=0.2, restarts=1))
    assert density["mix"] == 0.2 and load_ppots_json(out / "ppots.json").mix == 0.2


# -- fit-pots never writes a file train cannot read ---------------------------------------------
@pytest.mark.parametrize("flags, match", [
    (["--mix", "1"], "--mix must lie in [0, 1)"), (["--mix", "-0.1"], "--mix must lie in [0, 1)"),
    (["--mix", "nan"], "--mix must lie in [0, 1)"), (["--eps", "0"], "--eps must be a number in (0, 1)"),
    (["--eps", "1"], "--eps must be a number in (0, 1)"),
    (["--eps", "nan"], "--eps must be a number in (0, 1)"),
    (["--eps", "0.5"], "--eps 0.5 is above the table's first rate t = 0.0322"),
])
def test_fit_pots_refuses_what_train_could_not_use(tmp_path, capsys, flags, match):
    table = _table(tmp_path / "table.json", _midpoints(1e-3))
    code = main(["fit-pots", "--from-table", str(table), "--restarts", "1", "--out",
                 str(tmp_path / "out"), *flags])
    line = _one_line(capsys, code)
    assert match in line, line
    assert not (tmp_path / "out" / "ppots.json").exists()


@pytest.mark.parametrize("doc, match", [
    ({"t": _midpoints(1e-3), "p_hat": [1.0] * 15 + [math.nan]}, "p_hat must be finite"),
    ({"t": _midpoints(1e-3), "p_hat": [1.0] * 16, "eps": math.nan}, "eps must be a number"),
    ({"t": _midpoints(1e-3), "p_hat": [1.0] * 16, "eps": "x"}, "eps must be a number"),
    ({"t": _midpoints(1e-3)[::-1], "p_hat": [1.0] * 16}, "t must be strictly increasing"),
])
def test_fit_pots_names_a_bad_table_file(tmp_path, capsys, doc, match):
    table = tmp_path / "table.json"
    table.write_text(json.dumps(doc))
    code = main(["fit-pots", "--from-table", str(table), "--out", str(tmp_path / "out")])
    line = _one_line(capsys, code)
    assert f"--from-table {table}: " in line and match in line, line


@pytest.mark.parametrize("eps, mix", [(1e-3, 0.0), (0.3, 0.3), (0.5, 0.05), (0.9, 0.99)])
def test_every_file_fit_pots_writes_is_one_train_reads(tmp_path, eps, mix):
    path = _fit(tmp_path, "pots", _midpoints(eps), "--eps", str(eps), "--mix", str(mix))
    density = density_from_ppots(path)
    config = method_config("ppots", density=density)
    assert config.sampler.params["mix"] == mix
    assert config.sampler.params.get("eps", 1e-3) == eps
    sampler = EstimatorConfig(sampler=config.sampler).build(mask_token_id=0).rate_sampler
    rates, weights = _draws(sampler, 10_000)
    assert rates.min() >= eps - 1e-6 and np.all(np.isfinite(weights))
    if mix:
        assert weights.max() <= 1 / mix + 1e-6
