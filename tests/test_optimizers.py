"""A run's optimiser (maskdiff.training.optimizers): AdamW or SGD with momentum, weight decay on
matrices only, chosen by OptimConfig.optimizer."""

import pytest
import torch

from maskdiff.training.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from maskdiff.training.optimizers import build_optimizer
from maskdiff.training.trainer import Trainer


def _params():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    return w, b


def test_sgd_step_is_momentum_sgd_with_l2_on_matrices_only():
    w, b = _params()
    opt = build_optimizer([w, b], OptimConfig(optimizer="sgd", lr=0.1, beta1=0.9,
                                              weight_decay=0.5))
    assert isinstance(opt, torch.optim.SGD)
    for step in range(2):
        opt.zero_grad()
        (w.sum() * 3.0 + b.sum() * 2.0).backward()  # gradients 3 (w) and 2 (b)
        opt.step()
    # step 1: buffer = g + wd·w0; step 2: buffer = 0.9·buffer + g + wd·w1
    w0 = torch.tensor([[1.0, -2.0]])
    buf1 = 3.0 + 0.5 * w0
    w1 = w0 - 0.1 * buf1
    buf2 = 0.9 * buf1 + 3.0 + 0.5 * w1
    torch.testing.assert_close(w.detach(), w1 - 0.1 * buf2)
    torch.testing.assert_close(b.detach(), torch.tensor([0.5 - 0.1 * 2.0 - 0.1 * (0.9 * 2 + 2)]))


def test_adamw_is_the_default_with_the_configured_betas():
    w, b = _params()
    opt = build_optimizer([w, b], OptimConfig(beta1=0.8, beta2=0.95, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)


def test_an_unknown_optimizer_is_one_line():
    with pytest.raises(ValueError, match=r"optim.optimizer must be one of \('adamw', 'sgd'\), "
                                         r"got 'adam'"):
        OptimConfig(optimizer="adam")


def test_a_run_trains_with_sgd(tmp_path):
    config = TrainConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2),
        data=DataConfig(n_train=32, n_val=4, n_test=4),
        optim=OptimConfig(max_steps=2, warmup_steps=0, batch_size=8, optimizer="sgd", lr=0.1),
        eval=EvalConfig(every=2, n_examples=4, rates_per_example=1, patience=0),
        log_every=2, out_dir=str(tmp_path / "run"))
    trainer = Trainer(config, quiet=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert isinstance(trainer.optimizer, torch.optim.SGD) and result.steps == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
