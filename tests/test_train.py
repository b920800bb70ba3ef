"""The trainer: learning, exact resumption, refusals, failures, accumulation, the causal twin."""

import json
from dataclasses import replace

import pytest
import torch

from maskdiff.training import checkpoint as checkpoint_module
from maskdiff.training.checkpoint import latest_checkpoint, load_checkpoint
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, to_dict
from maskdiff.core.methods import method_config
from maskdiff.training.trainer import Trainer, TrainingError
from tiny import tiny




def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _metrics(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("tokens_per_s", None)
    return rows


def test_training_reduces_the_validation_loss(tmp_path):
    config = tiny(tmp_path, optim=OptimConfig(max_steps=30, warmup_steps=3, batch_size=16),
                  eval=EvalConfig(every=30, n_examples=8, rates_per_example=4, patience=0))
    trainer = Trainer(config, quiet=True)
    before = trainer.validate()
    result = trainer.fit()
    assert result.final_val < before.mean - 3 * before.se, (before, result.final_val)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "results.json", "checkpoints", "best",
            "tokenizer.json"} <= files


@pytest.mark.parametrize("method", ["standard", "mirror", "ema"])
def test_resume_is_bit_identical(tmp_path, method):
    config = tiny(tmp_path, estimator=method_config(method), checkpoint_every=2)
    straight = Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True)
    straight.fit()
    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=3)
    resumed = Trainer(interrupted, quiet=True)
    resumed.fit()
    for name, value in _weights(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_a_run_resumed_mid_window_logs_the_lines_of_an_uninterrupted_one(tmp_path):
    # Lines at steps 3 (eval), 4 (log_every) and 6; the checkpoint at step 5 falls inside the
    # window of the step-6 line, which must still average steps 5 and 6.
    config = tiny(tmp_path, log_every=4, checkpoint_every=2)
    Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True).fit()
    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=5)
    assert [r["step"] for r in _metrics(tmp_path / "b")] == [0, 3, 4]
    Trainer(interrupted, quiet=True).fit()
    straight, resumed = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["step"] for r in straight] == [0, 3, 4, 6]
    assert resumed == straight
    # The first line counts what max_len cut, per split, as results.json does.
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert straight[0] == {"step": 0, "truncated": results["truncated"]}
    assert results["truncated"]["train"]["of"] == 64


def test_resume_refuses_a_different_config(tmp_path):
    config = tiny(tmp_path, optim=OptimConfig(max_steps=2, warmup_steps=1, batch_size=8))
    Trainer(config, quiet=True).fit()
    changed = replace(config, optim=replace(config.optim, lr=1e-2))
    with pytest.raises(ValueError, match=r"optim\.lr"):
        Trainer(changed, quiet=True).fit()


def test_a_config_written_before_a_field_existed_compares_equal_at_its_default(tmp_path):
    """A run saved before ``estimator.refit.statistic`` existed resumes after the upgrade; a
    field it saved with another value is still a difference."""
    from maskdiff.training.config import config_differences

    config = replace(tiny(tmp_path), estimator=method_config("ppots_online"))
    old = to_dict(config)
    del old["estimator"]["refit"]["statistic"]  # what an older maskdiff wrote
    assert config_differences(old, to_dict(config)) == []
    old["estimator"]["refit"]["refit_every"] = 7
    assert config_differences(old, to_dict(config)) == ["estimator.refit.refit_every"]
    assert config_differences(old, to_dict(config), free_fields=("estimator.refit.refit_every",)) == []


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path, checkpoint_every=2)
    trainer = Trainer(config, quiet=True)

    class Poisoned(type(trainer.estimator)):  # the same objective, NaN at step 3
        def __call__(self, model, batch, randomness, update_control=True):
            out = super().__call__(model, batch, randomness, update_control)
            if trainer.step == 3:
                return replace(out, loss=out.loss * float("nan"))
            return out

    trainer.estimator.__class__ = Poisoned
    with pytest.raises(TrainingError, match="step 3.*step-000002"):
        trainer.fit()
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last.name == "step-000002"
    assert all(torch.isfinite(v).all() for v in load_checkpoint(last).weights.values())


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny(tmp_path, checkpoint_every=2)
    real_save = checkpoint_module.torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        Trainer(config, quiet=True).fit()
    root = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(root).name == "step-000002"
    assert not list(root.glob("*.tmp"))
    load_checkpoint(latest_checkpoint(root))  # intact


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "one")), quiet=True)
    one.fit()
    config = tiny(tmp_path, out_dir=str(tmp_path / "acc"))
    two = Trainer(replace(config, optim=replace(config.optim, grad_accum=2)), quiet=True)
    two.fit()
    for name, value in _weights(one).items():
        assert torch.allclose(value, two.model.state_dict()[name], atol=1e-5), name


def test_causal_twin_trains_with_the_same_parameter_count(tmp_path):
    diffusion = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "d")), quiet=True)
    causal_config = tiny(tmp_path, out_dir=str(tmp_path / "c"),
                         model=ModelConfig(d_model=32, n_layers=1, n_heads=2, causal=True))
    causal = Trainer(causal_config, quiet=True)
    result = causal.fit()
    assert result.n_parameters == sum(p.numel() for p in diffusion.model.parameters())
    assert result.final_val is not None and result.final_val < 5.0


def test_user_jsonl_data(tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "response": f"{a + b}"} for a in range(6) for b in range(6)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny(tmp_path, data=DataConfig(train_file=str(path), max_len=12))
    result = Trainer(config, quiet=True).fit()
    assert result.steps == 6
    path.write_text('{"prompt": "1+1=", "response": "2"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl:2"):
        Trainer(config, quiet=True)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(tiny(tmp_path, optim=OptimConfig(batch_size=6, grad_accum=4)), quiet=True)


def test_training_time_adds_up_over_resumed_sessions(tmp_path):
    config = tiny(tmp_path, checkpoint_every=2)
    first = Trainer(config, quiet=True).fit(stop_after=4)
    second = Trainer(config, quiet=True).fit()
    assert second.steps == 6 and second.seconds > first.seconds
    # A finished run resumed again trains no step and keeps its total.
    third = Trainer(config, quiet=True).fit()
    assert third.steps == 6 and abs(third.seconds - second.seconds) < 1.0
