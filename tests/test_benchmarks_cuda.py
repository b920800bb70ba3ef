"""Tests that exercise CUDA when a GPU is there: marker ``cuda``, run by ``benchmarks/gpu_check.sh``
(``pytest -m cuda``). Without CUDA the cuda cases skip with a one-line reason; the cpu cases of
the same tests run in the default suite, so the code under test is checked on every machine.

What a GPU changes and these pin: training under bf16 autocast (standard, MIRROR fused, online
P-POTS) lowers the validation ELBO; the estimator's loss and gradients on identical masks equal
the CPU's (masks are drawn on the CPU, so they are the same masks); fused MIRROR equals unfused;
the command line trains on the device, and its run loads and resumes on a CPU-only machine;
decoding runs on the device; a Hugging Face model through the adapter gives the CPU's loss.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from maskdiff.cli import main
from maskdiff.core.methods import method_config
from maskdiff.core.seeding import BatchRandomness
from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.generate import generate_diffusion
from maskdiff.training.runs import load_run
from maskdiff.training.trainer import Trainer

NO_CUDA = f"no CUDA device: torch {torch.__version__} sees none"
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
CUDA = pytest.param("cuda", marks=NEEDS_CUDA, id="cuda")


def tiny(tmp_path, device: str, **overrides) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
        data=DataConfig(n_train=64, n_val=8, n_test=8),
        optim=OptimConfig(max_steps=30, warmup_steps=3, batch_size=16),
        eval=EvalConfig(every=30, n_examples=8, rates_per_example=4, patience=0),
        device=device, out_dir=str(tmp_path / "run"))
    return replace(base, **overrides)


@pytest.mark.parametrize("device, method", [("cpu", "standard")] + [
    pytest.param("cuda", m, marks=NEEDS_CUDA, id=f"cuda-{m}")
    for m in ("standard", "mirror", "ppots_online")])
def test_training_on_the_device_lowers_the_validation_elbo(tmp_path, device, method):
    """bf16 autocast on CUDA; float32 on the CPU (where bf16 is only slower)."""
    trainer = Trainer(tiny(tmp_path, device, estimator=method_config(method),
                           bf16=device == "cuda"), quiet=True)
    assert {p.device.type for p in trainer.model.parameters()} == {device}
    before = trainer.validate()
    losses = []
    for _ in range(trainer.config.optim.max_steps):
        losses.append(trainer.train_step()["loss"])
        trainer.step += 1
    after = trainer.validate()
    assert all(math.isfinite(v) for v in losses), losses
    assert after.mean < before.mean - 3 * before.se, (method, before, after.mean)


def _first_batch(trainer: Trainer, size: int = 8):
    indices = trainer.order.global_batch(0, size)
    batch = trainer.collate([(i, trainer.task.train[i]) for i in indices])
    return batch, BatchRandomness.for_batch(trainer.config.seed, 0, indices)


def _loss_and_grads(model, estimator, batch, randomness, device, wrap=lambda model: model):
    model = copy.deepcopy(model).to(device)
    out = estimator(wrap(model), batch.to(device), randomness, update_control=False)
    out.loss.backward()
    grads = {name: (torch.zeros_like(p) if p.grad is None else p.grad).detach().cpu()
             for name, p in model.named_parameters()}
    return out.loss.detach().cpu(), out.values.detach().cpu(), grads


@pytest.mark.parametrize("other", ["cpu", CUDA])
@pytest.mark.parametrize("method", ["standard", "mirror", "ppots_online"])
def test_loss_and_gradients_equal_the_cpus_on_identical_masks(tmp_path, other, method):
    """float32: the same masks (drawn on the CPU) give the CPU's loss to 1e-5 and gradients to
    1e-3 relative; the cpu case checks that a second evaluation draws the same masks."""
    trainer = Trainer(tiny(tmp_path, "cpu", estimator=method_config(method)), quiet=True)
    batch, randomness = _first_batch(trainer)
    loss, values, grads = _loss_and_grads(trainer.model, trainer.estimator, batch, randomness, "cpu")
    got_loss, got_values, got_grads = _loss_and_grads(
        trainer.model, trainer.estimator, batch, randomness, other)
    assert float(loss) > 0
    assert abs(float(got_loss) - float(loss)) <= 1e-5 * abs(float(loss)), (got_loss, loss)
    assert torch.allclose(got_values, values, rtol=1e-4, atol=1e-6)
    total = float(torch.cat([g.flatten() for g in grads.values()]).norm())
    for name, grad in grads.items():
        error = float((got_grads[name] - grad).norm())
        assert error <= 1e-3 * float(grad.norm()) + 1e-5 * total, (name, error, float(grad.norm()))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fused_mirror_equals_unfused(tmp_path, device):
    trainer = Trainer(tiny(tmp_path, "cpu", estimator=method_config("mirror")), quiet=True)
    assert trainer.estimator.fuse_views and trainer.estimator.forward_passes == 2
    unfused = copy.copy(trainer.estimator)
    unfused.fuse_views = False
    batch, randomness = _first_batch(trainer)
    fused_loss, fused_values, _ = _loss_and_grads(
        trainer.model, trainer.estimator, batch, randomness, device)
    loss, values, _ = _loss_and_grads(trainer.model, unfused, batch, randomness, device)
    assert abs(float(fused_loss) - float(loss)) <= 1e-5 * abs(float(loss))
    assert torch.allclose(fused_values, values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_a_bf16_run_on_the_device_loads_and_resumes_on_a_cpu_only_machine(
        tmp_path, device, monkeypatch):
    run = tmp_path / "cli"
    assert main(["train", "--preset", "smoke", "--out", str(run), "--quiet", "--device", device,
                 "--bf16", "--steps", "2"]) == 0
    config = tiny(tmp_path, device, bf16=True,
                  optim=OptimConfig(max_steps=4, warmup_steps=1, batch_size=8),
                  eval=EvalConfig(every=2, n_examples=8, rates_per_example=1, patience=0))
    Trainer(config, quiet=True).fit(stop_after=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # now a CPU-only machine
    loaded = load_run(run, which="latest", device="cpu")
    assert loaded.config.device == device and loaded.config.bf16
    ids = torch.randint(0, loaded.tokenizer.vocab_size, (2, 16))
    assert torch.isfinite(loaded.model(ids)).all()
    resumed = Trainer(replace(config, device="cpu"), quiet=True)
    result = resumed.fit()  # resumes at step 2 (device may change on resume), ends at 4
    # step 2's evaluation came from the device's session, through the checkpoint's state
    assert result.steps == 4 and [h["step"] for h in result.history] == [2, 4]
    assert all(p.device.type == "cpu" for p in resumed.model.parameters())


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_decoding_runs_on_the_device(tmp_path, device):
    trainer = Trainer(tiny(tmp_path, device), quiet=True)
    mask = trainer.task.tokenizer.mask_id
    prompt = torch.randint(0, mask, (2, 10), device=device)

    def decode():
        return generate_diffusion(trainer.model, prompt, gen_length=8, steps=8, block_length=4,
                                  mask_token_id=mask)

    out = decode()
    assert out.device.type == device and out.shape == (2, 18)
    assert torch.equal(out[:, :10], prompt) and not (out == mask).any()
    assert torch.equal(decode(), out)  # greedy decoding is deterministic on the device too


@pytest.mark.parametrize("other", ["cpu", CUDA])
def test_hugging_face_model_gives_the_cpus_loss(other):
    transformers = pytest.importorskip("transformers")
    from maskdiff.core.batch import Batch
    from maskdiff.core.masking import Mirror
    from maskdiff.core.objective import Estimator
    from maskdiff.core.samplers import Uniform
    from maskdiff.hf import HFAdapter

    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0)).eval()
    x0 = torch.randint(2, 60, (4, 12))
    attention = torch.ones(4, 12, dtype=torch.bool)
    attention[1, 9:] = False
    batch = Batch(x0=x0, eligible=attention.clone(), attention_mask=attention,
                  example_index=torch.arange(4))
    estimator = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=63)
    randomness = BatchRandomness.for_batch(5, 0, range(4))
    def adapter(m):
        return HFAdapter(m, mask_token_id=63)

    loss, _, grads = _loss_and_grads(model, estimator, batch, randomness, "cpu", adapter)
    got, _, got_grads = _loss_and_grads(model, estimator, batch, randomness, other, adapter)
    assert float(loss) > 0 and abs(float(got) - float(loss)) <= 1e-5 * float(loss), (got, loss)
    for name, grad in grads.items():
        if grad.norm() > 0:
            assert float((got_grads[name] - grad).norm()) <= 1e-3 * float(grad.norm()), name
    if other == "cuda":  # and it runs under bf16 autocast
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = estimator(adapter(copy.deepcopy(model).to("cuda")), batch.to("cuda"), randomness)
        assert math.isfinite(float(out.loss)) and abs(float(out.loss) - float(loss)) < 0.1 * float(loss)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_block_diffusion_through_flex_attention_equals_sdpa(monkeypatch):
    """Block diffusion on the device: the compiled flex-attention kernel (models/flex.py) gives
    SDPA's loss and gradients on identical masks."""
    from maskdiff.core.blocks import BlockLayout
    from maskdiff.core.batch import Batch
    from maskdiff.core.masking import Mirror
    from maskdiff.core.objective import Estimator
    from maskdiff.core.samplers import Uniform
    from maskdiff.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, max_len=256, d_model=64, n_layers=2,
                                          n_heads=4, mask_token_id=49)).cuda()
    x0 = torch.randint(0, 49, (4, 200), device="cuda")
    real = torch.ones_like(x0, dtype=torch.bool)
    real[3, 150:] = False
    batch = Batch(x0=x0, eligible=real.clone(), attention_mask=real,
                  example_index=torch.arange(4, device="cuda"))
    estimator = Estimator(rate_sampler=Uniform(), masker=Mirror(), mask_token_id=49,
                          layout=BlockLayout(16))
    results = {}
    for choice in ("sdpa", "flex"):
        monkeypatch.setenv("MASKDIFF_ATTENTION", choice)
        model.zero_grad()
        out = estimator(model, batch, BatchRandomness.for_batch(0, 0, [0, 1, 2, 3]))
        out.loss.backward()
        results[choice] = (out.values.detach(), [p.grad.detach().clone() for p in model.parameters()])
    torch.testing.assert_close(results["flex"][0], results["sdpa"][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(results["flex"][1], results["sdpa"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)

