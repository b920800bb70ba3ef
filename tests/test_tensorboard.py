"""TensorBoard logging: the native trainer mirrors metrics.jsonl (train.tensorboard, --tensorboard);
the Hugging Face path logs maskdiff's keys through transformers' own report_to."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import replace

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from maskdiff.training.checkpoint import step_dirs  # noqa: E402
from maskdiff.training.config import (  # noqa: E402
    ComponentConfig, EstimatorConfig, RefitConfig, TrainConfig, from_dict, to_dict)
from maskdiff.training.metrics_log import scalars  # noqa: E402
from maskdiff.training.trainer import Trainer  # noqa: E402

from test_train import tiny  # noqa: E402


def events(log_dir) -> dict[str, dict[int, list[float]]]:
    """tag -> step -> every value logged at that step (all event files of the directory)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            out[tag][event.step].append(event.value)
    return out


def expected(run) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in scalars(record):
            out[tag][record["step"]] = value
    return out


def assert_board_matches_metrics(run) -> None:
    board, want = events(run / "tensorboard"), expected(run)
    assert set(board) == set(want)
    for tag, steps in want.items():
        assert set(board[tag]) == set(steps), tag
        for step, value in steps.items():
            assert board[tag][step] == pytest.approx([value], rel=1e-6, abs=1e-12), (tag, step)


ONLINE = EstimatorConfig(
    sampler=ComponentConfig(name="importance", params={"density": {"t": [0, 1], "p": [1, 1]}}),
    refit=RefitConfig(refit_every=2, n_bins=8, min_count=1, restarts=2))


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path):
    """Every number of metrics.jsonl (loss, masked_ce, per-t-bin loss, grad norm, lr, tokens/s,
    variance proxy, validation loss, P-POTS refits) is a scalar at its step, once; a resumed
    run hides the events it rewrites (purge_step), as it drops their metrics lines."""
    config = replace(tiny(tmp_path), tensorboard=True, estimator=ONLINE, checkpoint_every=3)
    Trainer(config, quiet=True).fit()
    run = tmp_path / "run"
    tags = set(expected(run))
    assert {"loss", "masked_ce", "grad_norm", "lr", "tokens_per_s", "variance_proxy", "val_loss",
            "val_se", "ppots_refit/kl"} <= tags and any(t.startswith("loss_per_t_bin/") for t in tags)
    assert_board_matches_metrics(run)
    # lose the last checkpoint (a crash after step 6's logs): the resumed run redoes 4..6
    shutil.rmtree(step_dirs(run / "checkpoints")[0])
    Trainer(config, quiet=True).fit()
    assert_board_matches_metrics(run)  # steps 4..6 once each, not twice


def test_tensorboard_is_off_by_default_and_old_configs_resume(tmp_path, capsys):
    from maskdiff.cli import main

    config = tiny(tmp_path, checkpoint_every=3)
    assert config.tensorboard is False
    Trainer(config, quiet=True).fit(stop_after=3)  # an interrupted run
    assert not (tmp_path / "run" / "tensorboard").exists()
    # a config.json written before the field existed loads with the default ...
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    saved.pop("tensorboard")
    assert from_dict(TrainConfig, saved) == config
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    (tmp_path / "old.json").write_text(json.dumps(saved))
    # ... and its run resumes with --tensorboard switched on (where it logs, not what it computes)
    assert main(["train", "--config", str(tmp_path / "old.json"), "--tensorboard", "--quiet"]) == 0
    assert set(events(tmp_path / "run" / "tensorboard")["loss"]) == {4, 5, 6}
    with pytest.raises(ValueError, match="train.tensorboard must be true or false"):
        from_dict(TrainConfig, {**to_dict(config), "tensorboard": "yes"})


def test_hf_trainer_keeps_report_to_tensorboard(tmp_path, monkeypatch):
    """MaskedDiffusionTrainer's maskdiff keys (masked_ce, loss_per_t_bin_j, variance_proxy)
    reach TensorBoard through TrainingArguments(report_to=["tensorboard"])."""
    pytest.importorskip("transformers")
    from maskdiff.core.masking import Mirror
    from maskdiff.core.samplers import Uniform
    from maskdiff.hf import MaskedDiffusionTrainer

    from test_hf import MASK, PAD, args, sft_rows, tiny_bert

    board = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(board))  # transformers' own switch
    trainer = MaskedDiffusionTrainer(
        model=tiny_bert(), args=args(tmp_path, max_steps=3, report_to=["tensorboard"]),
        train_dataset=sft_rows(8), rate_sampler=Uniform(), masker=Mirror(),
        mask_token_id=MASK, pad_token_id=PAD)
    trainer.train()
    logged = events(board)
    history = [r for r in trainer.state.log_history if "masked_ce" in r]
    assert len(history) == 3
    for record in history:
        keys = [k for k in record if k in ("masked_ce", "variance_proxy", "loss")
                or k.startswith("loss_per_t_bin_")]
        assert "masked_ce" in keys and any(k.startswith("loss_per_t_bin_") for k in keys)
        for key in keys:
            assert logged[f"train/{key}"][record["step"]] == pytest.approx([record[key]], rel=1e-6)
