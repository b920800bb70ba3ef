"""The Hugging Face trainer's checkpoints under faults (issue 24, items 4-6) and its
``estimator=`` argument. Tiny BERT built here (no download), as in test_hf.py."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskdiff.core.config import ComponentConfig, EstimatorConfig, RefitConfig  # noqa: E402
from maskdiff.core.masking import Mirror  # noqa: E402
from maskdiff.core.objective import Estimator  # noqa: E402
from maskdiff.core.samplers import Importance  # noqa: E402
from maskdiff.hf import MaskedDiffusionTrainer, method_estimator  # noqa: E402
from maskdiff.hf.checkpoints import problem  # noqa: E402
from maskdiff.hf.methods import MIGRATION  # noqa: E402

from test_hf import MASK, PAD, args, sft_rows, tiny_bert, weights  # noqa: E402

ROWS = sft_rows(16)
# P-POTS+MIRROR with an online refit every 3 steps and an EMA control variate: every piece of
# maskdiff_state.pt changes during the run.
ESTIMATOR = EstimatorConfig(
    sampler=ComponentConfig(name="importance", params={"density": {"t": [0.0, 1.0],
                                                                   "p": [1.0, 2.0]}}),
    masker=ComponentConfig(name="mirror"), control=ComponentConfig(name="ema"),
    refit=RefitConfig(refit_every=3, n_bins=8, min_count=1.0, restarts=1))


class Killed(BaseException):
    """A kill -9 at a chosen point: nothing after it runs."""


class StopAt(transformers.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def make(out, model=None, **kw) -> MaskedDiffusionTrainer:
    options = dict(per_device_train_batch_size=8, max_steps=9, save_strategy="steps",
                   save_steps=3, logging_steps=4)
    options.update(kw)
    return MaskedDiffusionTrainer(model=model or tiny_bert(), args=args(out, **options),
                                  train_dataset=ROWS, estimator=ESTIMATOR, seed=9,
                                  mask_token_id=MASK, pad_token_id=PAD)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    trainer = make(tmp_path_factory.mktemp("straight"))
    trainer.train()
    assert trainer.refits >= 1
    return trainer


def assert_same_run(resumed, straight) -> None:
    assert resumed.state.global_step == straight.state.global_step == 9
    for name, value in weights(straight.model).items():
        torch.testing.assert_close(weights(resumed.model)[name], value, atol=1e-6, rtol=0,
                                   msg=name)
    a, b = straight.maskdiff_state(), resumed.maskdiff_state()
    torch.testing.assert_close(b["sampler"]["density"], a["sampler"]["density"], atol=1e-9,
                               rtol=0)


def _logged(trainer, step: int) -> dict:
    return next(h for h in trainer.state.log_history if h.get("step") == step and "loss" in h)


# -- 4. the first log line after a resume averages the same steps as an uninterrupted run -----
def test_the_first_log_after_resume_averages_the_uninterrupted_steps(tmp_path, straight):
    source = tmp_path / "straight-checkpoint"
    shutil.copytree(straight.args.output_dir + "/checkpoint-3", source)
    saved = torch.load(source / "maskdiff_state.pt", weights_only=True)["log_window"]
    assert len(saved["raw"]) == 3  # steps 1-3: logged at step 4, after the checkpoint
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(source, out / "checkpoint-3")
    resumed = make(tmp_path, tiny_bert(seed=123))
    resumed.train(resume_from_checkpoint=True)
    expected, got = _logged(straight, 4), _logged(resumed, 4)
    bins = {k for k in expected if k.startswith("loss_per_t_bin_")}
    assert len(bins) >= 3 and {k for k in got if k.startswith("loss_per_t_bin_")} == bins
    for key in [*bins, "masked_ce"]:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert_same_run(resumed, straight)


# -- 5. a kill around transformers' rotation leaves a complete checkpoint -----------------------
def test_a_kill_after_rotation_with_save_total_limit_1_leaves_a_complete_checkpoint(
        tmp_path, straight, monkeypatch, capsys):
    # transformers 5.x rotates in a module function, 4.x in a Trainer method
    owner, name = ((transformers.trainer, "rotate_checkpoints")
                   if hasattr(transformers.trainer, "rotate_checkpoints")
                   else (transformers.Trainer, "_rotate_checkpoints"))
    real = getattr(owner, name)

    def rotate_then_die(*a, **kw):
        real(*a, **kw)
        if any(p.name == "checkpoint-6" for p in (tmp_path / "out").iterdir()):
            raise Killed
    monkeypatch.setattr(owner, name, rotate_then_die)
    with pytest.raises(Killed):
        make(tmp_path, save_total_limit=1).train()
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-6"]
    assert problem(tmp_path / "out" / "checkpoint-6") is None
    resumed = make(tmp_path, tiny_bert(seed=123), save_total_limit=1)
    resumed.train(resume_from_checkpoint=True)
    assert_same_run(resumed, straight)


def test_a_kill_while_a_checkpoint_is_written_falls_back_to_the_previous_one(
        tmp_path, straight, monkeypatch, capsys):
    real = transformers.trainer.TrainerState.save_to_json

    def die_at_6(self, path):
        if self.global_step == 6:
            raise Killed
        real(self, path)
    monkeypatch.setattr(transformers.trainer.TrainerState, "save_to_json", die_at_6)
    with pytest.raises(Killed):
        make(tmp_path, save_total_limit=1).train()
    monkeypatch.undo()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    resumed = make(tmp_path, tiny_bert(seed=123), save_total_limit=1)
    resumed.train(resume_from_checkpoint=True)
    err = capsys.readouterr().err
    assert (f"maskdiff: skipping checkpoint-6: it was interrupted while being written (no "
            f"trainer_state.json): resuming from {out / 'checkpoint-3'}") in err
    assert_same_run(resumed, straight)


def test_a_checkpoint_without_maskdiff_state_is_called_interrupted_not_foreign(tmp_path):
    """The order of maskdiff before this fix: transformers finished checkpoint-6 and deleted
    checkpoint-3, and the kill came before maskdiff_state.pt."""
    trainer = make(tmp_path, max_steps=6, save_total_limit=1)
    trainer.train()
    (tmp_path / "out" / "checkpoint-6" / "maskdiff_state.pt").unlink()
    with pytest.raises(ValueError, match=r"no complete checkpoint to resume from under .*out "
                                         r"\(checkpoint-6: it was interrupted while being "
                                         r"written \(no maskdiff_state.pt\)\)"):
        make(tmp_path, max_steps=6).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-6: it was interrupted"):
        make(tmp_path, max_steps=6).train(
            resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6"))


# -- 6. a torn maskdiff_state.pt (or weight / optimiser file) falls back with a line ----------
def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name,keep", [("maskdiff_state.pt", 0.5), ("maskdiff_state.pt", 0.0),
                                       ("model.safetensors", 0.5), ("optimizer.pt", 0.9)])
def test_a_torn_checkpoint_file_falls_back_to_the_previous_checkpoint(
        tmp_path, straight, capsys, name, keep):
    partial = make(tmp_path)
    partial.add_callback(StopAt(6))
    partial.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    _truncate(out / "checkpoint-6" / name, keep)
    with pytest.raises(ValueError, match=f"cannot resume from .*checkpoint-6: {name} is damaged"):
        make(tmp_path).train(resume_from_checkpoint=str(out / "checkpoint-6"))
    resumed = make(tmp_path, tiny_bert(seed=123))
    resumed.train(resume_from_checkpoint=True)
    err = capsys.readouterr().err
    assert f"maskdiff: skipping checkpoint-6: {name} is damaged, a torn write?" in err
    assert f"resuming from {out / 'checkpoint-3'}" in err and "Traceback" not in err
    assert_same_run(resumed, straight)


# -- estimator=: one EstimatorConfig (or an Estimator) instead of ten loose arguments ----------
def test_estimator_config_equals_the_deprecated_component_arguments(tmp_path):
    from maskdiff.core.control import BinEMA
    from maskdiff.ppots import SecondMomentTracker

    table = {"t": [0.0, 1.0], "p": [1.0, 2.0]}
    base = args(tmp_path, per_device_train_batch_size=8, max_steps=4)
    ids = dict(mask_token_id=MASK, pad_token_id=PAD)
    new = MaskedDiffusionTrainer(model=tiny_bert(), args=base, train_dataset=ROWS,
                                 estimator=ESTIMATOR, seed=9, **ids)
    with pytest.warns(DeprecationWarning) as caught:
        old = MaskedDiffusionTrainer(
            model=tiny_bert(), args=base, train_dataset=ROWS,
            rate_sampler=Importance(table), masker=Mirror(), mask_token_id=MASK,
            pad_token_id=PAD, control=BinEMA(), seed=9,
            ppots_tracker=SecondMomentTracker(n_bins=8), refit_every=3, refit_min_count=1.0,
            refit_restarts=1)
    assert str(caught[0].message) == MIGRATION and "estimator=EstimatorConfig(" in MIGRATION
    new.train()
    old.train()
    for name, value in weights(old.model).items():
        torch.testing.assert_close(weights(new.model)[name], value, atol=0, rtol=0, msg=name)
    assert new.refits == old.refits >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new form warns about nothing
        built = ESTIMATOR.build(mask_token_id=MASK)
        by_object = MaskedDiffusionTrainer(model=tiny_bert(), args=base, train_dataset=ROWS,
                                           estimator=built, **ids)
        assert by_object.estimator is built and by_object.refitter is None
        assert isinstance(MaskedDiffusionTrainer(model=tiny_bert(), args=base, train_dataset=ROWS,
                                                 **ids).estimator, Estimator)  # standard
    with pytest.raises(ValueError, match="not both"):
        MaskedDiffusionTrainer(model=tiny_bert(), args=base, train_dataset=ROWS,
                               estimator=ESTIMATOR, masker=Mirror(), **ids)
    with pytest.raises(ValueError, match="mask_token_id=5 differs from the model's 63"):
        MaskedDiffusionTrainer(model=tiny_bert(), args=base, train_dataset=ROWS, **ids,
                               estimator=Estimator(rate_sampler=Importance(table),
                                                   masker=Mirror(), mask_token_id=5))
    assert method_estimator("isad", delimiter_ids=[9, 7]).masker.params["token_ids"] == [7, 9]
