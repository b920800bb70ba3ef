"""A run's optimiser (``OptimConfig.optimizer``, docs/method.md §11): AdamW, or SGD with
momentum ``beta1`` (the control of the noise-scale measurement: no per-coordinate
preconditioning). Weight decay on matrices only (AdamW's decoupled, SGD's coupled L2); the
learning rate is set every step by the trainer's schedule (``OptimConfig.lr_at``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(parameters: Iterable[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """The optimiser ``optim`` (an ``OptimConfig``) names, over the trainable ``parameters``."""
    params = [p for p in parameters if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.beta1)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2))
