"""DDP on CPU with gloo: two ranks compute what one process computes (docs/architecture.md §5)."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from maskdiff.training.checkpoint import latest_checkpoint, load_checkpoint
from maskdiff.training.config import ComponentConfig, EstimatorConfig, RefitConfig, save_json
from maskdiff.training.trainer import Trainer

from test_train import tiny


@pytest.mark.parametrize("estimator", [
    EstimatorConfig(sampler=ComponentConfig(name="stratified"), masker=ComponentConfig(name="mirror"),
                    control=ComponentConfig(name="ema", params={"n_bins": 4, "rate": 0.2})),
    # Online P-POTS: the tracker all-reduces its statistics, so both ranks refit the same density.
    EstimatorConfig(sampler=ComponentConfig(name="importance", params={"density": {"t": [0, 1], "p": [1, 1]}}),
                    refit=RefitConfig(refit_every=2, n_bins=8, min_count=1, restarts=2)),
], ids=["strats+mirror+ema", "ppots_online"])
def test_two_gloo_ranks_match_one_process(tmp_path, estimator):
    config = replace(tiny(tmp_path), estimator=estimator, checkpoint_every=3)
    single = replace(config, out_dir=str(tmp_path / "one"))
    Trainer(single, quiet=True).fit()
    double = replace(config, out_dir=str(tmp_path / "two"))
    config_file = tmp_path / "two.json"
    save_json(double, config_file)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "maskdiff.cli", "train", "--config", str(config_file), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    for name, value in a.weights.items():
        assert torch.allclose(value, b.weights[name], atol=1e-5), name
    if estimator.control is not None:  # the same global batches in the same order on both
        assert torch.allclose(a.state["control"]["stats"], b.state["control"]["stats"], atol=1e-6)
    if estimator.refit is not None:  # one tracker's worth of statistics, one density
        assert a.state["refit"]["refits"] == b.state["refit"]["refits"] >= 1
        assert torch.allclose(a.state["refit"]["tracker"]["synced"], b.state["refit"]["tracker"]["synced"],
                              rtol=1e-6)
        assert torch.allclose(a.state["sampler"]["density"], b.state["sampler"]["density"], rtol=1e-4)
    rows = lambda p: map(json.loads, (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731
    losses = lambda p: [r["loss"] for r in rows(p) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)
