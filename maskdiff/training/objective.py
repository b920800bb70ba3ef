"""The objectives the trainer drives: the estimator, or the causal twin's next-token loss.

Both implement :class:`maskdiff.core.objective.Objective`, the whole of what a trainer calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from maskdiff.core.batch import Batch
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.config import EstimatorConfig
from maskdiff.core.objective import EstimatorOutput, Model, Objective
from maskdiff.models.transformer import causal_lm_loss


class CausalObjective:
    """The autoregressive twin's loss in the estimator's output shape (docs/method.md §11).

    Exact next-token cross-entropy per eligible target: no rates (``t = w = 1``), no masks,
    one forward pass, and no adaptive state, so :meth:`observe` and the state are empty.
    """

    forward_passes = 1

    def __call__(self, model: Model, batch: Batch, randomness: Any = None,
                 update_control: bool = True) -> EstimatorOutput:
        loss = causal_lm_loss(model(batch.x0, batch.attention_mask), batch.x0, batch.eligible)
        ones = torch.ones_like(loss.detach())
        n_targets = int(batch.eligible[:, 1:].sum())
        return EstimatorOutput(
            loss=loss.mean(), values=loss.detach(), raw_loss=loss.detach(), t=ones, w=ones,
            n_empty=int((batch.eligible.sum(1) == 0).sum()), forward_passes=1,
            masked_ce_sum=float((loss.detach() * batch.eligible[:, 1:].sum(1)).sum()),
            masked_count=n_targets)

    def observe(self, t: torch.Tensor, w: torch.Tensor, raw_loss: torch.Tensor) -> None:
        """Nothing adapts."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"CausalObjective has no state, got keys {sorted(state)}")


def build_objective(config: EstimatorConfig, *, causal: bool, mask_token_id: int,
                    layout: BlockLayout | None = None, max_steps: int | None = None):
    """The run's objective and, for online P-POTS, the refitter of its importance sampler;
    ``layout``: block diffusion (docs/method.md §12); ``max_steps``: the run's length, which a
    scheduled sampler (``annealed``) takes as its schedule's length unless configured."""
    if causal:
        if layout is not None:
            raise ValueError("the causal twin has no block layout (block diffusion needs the "
                             "diffusion model)")
        return CausalObjective(), None
    estimator = config.build(mask_token_id=mask_token_id, layout=layout,
                             run={"max_steps": max_steps})
    refitter = None
    if config.refit is not None:
        from maskdiff.ppots.online import OnlineRefitter

        refitter = OnlineRefitter.from_config(config.refit, estimator.rate_sampler)
    return estimator, refitter


__all__ = ["CausalObjective", "Objective", "build_objective"]
