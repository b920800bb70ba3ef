"""Free per-example gradient-norm proxies from the logits alone (docs/method.md §4 [beyond]
"Gradient-targeted densities"): what gradient-targeted online P-POTS tracks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskdiff.core.blocks import BlockLayout
from maskdiff.core.masking import View

GRAD_PROXIES = ("logits", "bias")


def _proxy_part(logits: torch.Tensor, x0: torch.Tensor, view: View, kind: str) -> torch.Tensor:
    """One view's ``Σ_i 1[masked_i] (softmax_i − onehot(x0_i)) / q_i``: per token (kind
    ``logits``: its squared norms summed per example, (B,)) or summed over positions (kind
    ``bias``: (B, V)). Detached, float32."""
    batch, vocab = x0.shape[0], logits.shape[-1]
    masked = view.masked
    if not masked.any():
        return torch.zeros(batch, device=logits.device) if kind == "logits" else \
            torch.zeros(batch, vocab, device=logits.device)
    probs = torch.softmax(logits.detach()[masked].float(), dim=-1)
    target = x0[masked]
    q = view.inclusion_prob[masked].float()
    rows = masked.nonzero()[:, 0]
    if kind == "logits":  # ‖s − e_y‖² = Σ s² − 2 s_y + 1
        sq = (probs * probs).sum(-1) - 2.0 * probs.gather(1, target[:, None]).squeeze(1) + 1.0
        return torch.zeros(batch, device=logits.device).index_add_(0, rows, sq / (q * q))
    grad = probs.scatter_add(1, target[:, None], -torch.ones_like(q)[:, None]) / q[:, None]
    return torch.zeros(batch, vocab, device=logits.device).index_add_(0, rows, grad)


def logit_gradient_norms(logits: list[torch.Tensor], x0: torch.Tensor, views: list[View],
                         counts: torch.Tensor, kind: str = "logits") -> torch.Tensor:
    """A free proxy of the per-example gradient norm ``‖∇θ l‖`` from the logits alone
    (docs/method.md §4 [beyond] "Gradient-targeted densities"), (B,) float32, detached.

    ``l`` is the per-example loss averaged over the ``V`` views (the estimator's ``raw_loss``,
    without ``w``); for a masked token i of view v, ``∂l/∂z_vi = (softmax − onehot)/(V·N·q_i)``
    in closed form. ``kind="logits"``: the norm of the gradient with respect to all logits,
    ``sqrt(Σ_v Σ_i ‖∂l/∂z_vi‖²)``; ``kind="bias"``: the norm of the gradient with respect to a
    shared output bias, ``‖Σ_v Σ_i ∂l/∂z_vi‖`` (it keeps the coherence of the token terms that
    the first one drops). No backward pass.
    """
    if kind not in GRAD_PROXIES:
        raise ValueError(f"kind must be one of {GRAD_PROXIES}, got kind={kind!r}")
    parts = [_proxy_part(z, x0, view, kind) for z, view in zip(logits, views)]
    scale = (len(views) * counts.float().to(x0.device)) ** 2
    if kind == "logits":
        return (torch.stack(parts).sum(0) / scale).sqrt()
    summed = torch.stack(parts).sum(0)
    return ((summed * summed).sum(-1) / scale).sqrt()


def block_gradient_norms(layout: BlockLayout, logits: list[torch.Tensor], x0: torch.Tensor,
                         views: list[View], counts: torch.Tensor, kind: str) -> torch.Tensor:
    """:func:`logit_gradient_norms` of each (example, block) unit's loss under a block layout
    with one rate per block (units scaled as :class:`~maskdiff.core.objective.EstimatorOutput`
    says): the rows are cut into blocks (the last padded with unmasked positions) and each block
    is one row. (B · blocks,) float32, example-major."""
    size, length = x0.shape
    units, width = layout.n_blocks(length), layout.block_size
    pad = units * width - length

    def rows(x: torch.Tensor, fill) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, pad) if x.dim() == 3 else (0, pad), value=fill)
        return x.reshape(size * units, width, *x.shape[2:])

    cut = [View(xt=rows(v.xt, 0), masked=rows(v.masked, False),
                inclusion_prob=rows(v.inclusion_prob, 1.0)) for v in views]
    return logit_gradient_norms([rows(z, 0.0) for z in logits], rows(x0, 0), cut,
                                counts.repeat_interleave(units) / units, kind)
