"""The masked-diffusion objective (docs/method.md §1) and the estimator that composes the pieces.

``per_example_loss`` is a pure function of tensors. :class:`Estimator` is configuration:
a rate sampler + a masker + an optional control variate, nothing else; P-POTS+MIRROR is
``Estimator(rate_sampler=Importance(p), masker=Mirror(), ...)``. :class:`Objective` is what a
trainer calls: the estimator implements it, and so does the causal twin's next-token loss
(:class:`maskdiff.training.objective.CausalObjective`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from maskdiff.core.batch import Batch
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.gradient_proxy import GRAD_PROXIES, block_gradient_norms, logit_gradient_norms
from maskdiff.core.masking import Masker, View, syrm_eligible
from maskdiff.core.samplers import RateSampler
from maskdiff.core.seeding import BatchRandomness
from maskdiff.core.weighting import DEFAULT_CART_P, check_weighting, token_weights

NORMALIZERS = ("eligible", "sequence", "none", "token")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_normalizer(normalizer: str) -> None:
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got normalizer={normalizer!r}")


def masked_token_losses(logits: torch.Tensor, x0: torch.Tensor, view: View,
                        weighting: str = "elbo", cart_p: float = DEFAULT_CART_P) -> torch.Tensor:
    """Cross-entropy of every masked token times its weight, (B, L) float32: divided by its
    inclusion probability under ``weighting="elbo"`` (:mod:`maskdiff.core.weighting`).

    Zero on unmasked positions. Only the masked rows of ``logits`` are upcast to float32, so a
    bf16 model pays for the precision only where the loss is taken.
    """
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x0.shape):
        raise ValueError(
            f"logits must be (B, L, V) matching x0 {tuple(x0.shape)}, got {tuple(logits.shape)}"
        )
    if tuple(view.masked.shape) != tuple(x0.shape):
        raise ValueError(f"view.masked has shape {tuple(view.masked.shape)}, x0 has {tuple(x0.shape)}")
    out = torch.zeros(x0.shape, dtype=torch.float32, device=logits.device)
    masked = view.masked
    if masked.any():
        ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")
        if weighting == "elbo":
            ce = ce / view.inclusion_prob[masked].float()
        else:
            ce = ce * token_weights(masked, view.inclusion_prob, weighting, cart_p)[masked]
        out = out.masked_scatter(masked, ce)
    elif logits.requires_grad:
        # Nothing masked (e.g. a micro-batch of short responses at small t): the loss is 0, but
        # it must stay on the graph so that backward() and DDP's all-reduce still run.
        out = out + 0.0 * logits[:, :, :1].float().sum()
    return out


def normalizer_counts(eligible: torch.Tensor, normalizer: str) -> torch.Tensor:
    """``N`` of docs/method.md §1 per example, float32 (B,): P (eligible count), L, 1, or the
    batch's mean P.

    ``"sequence"`` uses the padded row length L: pretraining batches are fixed-length sequences.
    ``"token"`` (dllm's ``loss_norm_type="token"``) gives every example the batch's mean eligible
    count, so that the batch mean of the losses is the batch's loss sum over its eligible
    tokens: it depends on the batch, not on the example alone.
    Examples with ``P = 0`` get N = 1; their loss is 0 anyway since nothing can be masked.
    """
    _check_normalizer(normalizer)
    batch, length = eligible.shape
    if normalizer == "eligible":
        return eligible.sum(dim=1).clamp(min=1).float()
    if normalizer == "token":
        return (eligible.sum().clamp(min=1).float() / batch).expand(batch).clone()
    if normalizer == "sequence":
        return torch.full((batch,), float(length), device=eligible.device)
    return torch.ones(batch, device=eligible.device)


def per_example_loss(logits: torch.Tensor, x0: torch.Tensor, view: View, eligible: torch.Tensor,
                     normalizer: str = "eligible") -> torch.Tensor:
    """docs/method.md §1: ``l = -(1/N) Σ_i 1[masked_i] log p(x0_i | xt) / inclusion_prob_i`` for each example.

    With Bernoulli masks ``inclusion_prob = t`` and this is eq. 1 of the variance paper.
    Returns (B,) float32 whatever ``logits.dtype``; an example with nothing eligible gives 0.
    """
    if tuple(eligible.shape) != tuple(x0.shape):
        raise ValueError(f"eligible has shape {tuple(eligible.shape)}, x0 has {tuple(x0.shape)}")
    token_losses = masked_token_losses(logits, x0, view)
    return token_losses.sum(dim=1) / normalizer_counts(eligible, normalizer)


@dataclass(frozen=True)
class EstimatorOutput:
    """What one estimator call produced.

    Attributes:
        loss: the scalar to back-propagate: mean over the batch of ``values`` (with gradient).
        values: (B,) detached, the per-example quantity the estimator averages:
            ``w · mean_over_views(l)``, minus the control variate when one is set. This is what
            variance diagnostics decompose (docs/method.md §2).
        raw_loss: (B,) detached, the per-example loss averaged over views, before ``w``.
        t, w: (B,) the rates and importance weights.
        n_empty: examples with nothing eligible (they contribute 0).
        forward_passes: model forward passes per example (views).
        masked_ce_sum, masked_count: the plain cross-entropy summed over masked tokens, and their
            number, over all views (masked CE per token = sum / count).
        grad_proxy: (B,) detached, :func:`logit_gradient_norms` of ``raw_loss`` when the
            estimator was built with ``grad_proxy`` (gradient-targeted online P-POTS), else None.
        units: rate draws per example (1, or the blocks of a block layout with one rate per
            block, docs/method.md §12). With ``units > 1``, ``values``, ``raw_loss``, ``t``,
            ``w`` and ``grad_proxy`` hold one entry per (example, block), example-major, each
            scaled by ``units``: block k of an example contributes ``units · w_k · l_k`` with
            ``l_k`` its masked tokens' loss (the example's normaliser), so the mean over units is
            still the batch's mean loss, and the adaptive state (control variate, online P-POTS)
            sees one draw per rate. :attr:`example_values` gives per-example values.
        input_factor: model input positions per data position: 2 under a block layout (the
            model reads ``[xt ; x0]``), else 1.
    """

    loss: torch.Tensor
    values: torch.Tensor
    raw_loss: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    n_empty: int
    forward_passes: int
    masked_ce_sum: float
    masked_count: int
    grad_proxy: torch.Tensor | None = None
    units: int = 1
    input_factor: int = 1

    @property
    def example_values(self) -> torch.Tensor:
        """``values`` per example, (B,): the mean over an example's units."""
        return self.values if self.units == 1 else self.values.view(-1, self.units).mean(dim=1)


@runtime_checkable
class Objective(Protocol):
    """What a trainer calls, and all it calls (docs/architecture.md): the native trainer and
    the Hugging Face trainer drive any objective through these five members.

    - ``objective(model, batch, randomness, update_control=False)``: the micro-batch's loss and
      per-example statistics (:class:`EstimatorOutput`); adaptive state is left untouched.
    - ``forward_passes``: model forward passes per example (the compute counters).
    - ``observe(t, w, raw_loss)``: after an optimiser step, fold the *global* batch's
      per-example rates, weights and losses (gathered over ranks, in the same order on every
      rank) into the adaptive state (a control variate), so every rank holds the same state.
    - ``state_dict()`` / ``load_state_dict(state)``: that state as plain tensors, restored
      exactly on resume.
    """

    @property
    def forward_passes(self) -> int: ...

    def __call__(self, model: Model, batch: Batch, randomness: BatchRandomness | torch.Generator,
                 update_control: bool = True) -> "EstimatorOutput": ...

    def observe(self, t: torch.Tensor, w: torch.Tensor, raw_loss: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Estimator:
    """Sampler + masker (+ control variate): turns a batch and a model into the training loss.

    Args:
        rate_sampler: draws ``(t, w)``.
        masker: builds the views.
        mask_token_id: the model's mask token.
        control: optional control variate with ``adjust(values, t) -> adjusted`` and
            ``update(values, t)`` (see :mod:`maskdiff.core.control`).
        normalizer: ``"eligible"``, ``"sequence"``, ``"none"`` or ``"token"`` (docs/method.md §1).
        syntax_eligible: SyRM: the batch's syntax tokens are eligible too.
        fuse_views: run all views of a batch through the model in one forward pass (faster
            on parallel hardware; identical values).
        grad_proxy: ``"logits"`` or ``"bias"``: also return the free per-example gradient-norm
            proxy :func:`logit_gradient_norms` (``EstimatorOutput.grad_proxy``); None (default):
            not computed, nothing is spent on it.
        weighting, cart_p: each masked token's weight (:mod:`maskdiff.core.weighting`):
            ``"elbo"`` (default, ``1/π_i``), ``"uniform"`` or ``"cart"`` (Dream's, kernel ``cart_p``).
        layout: a :class:`~maskdiff.core.blocks.BlockLayout` for block diffusion
            (docs/method.md §12): the model reads ``[xt ; x0]`` under the three-part mask, the
            loss its noisy half, and with ``layout.rates == "block"`` every block draws its own
            rate (samplers, StraTS's strata, the control variate and online P-POTS see blocks
            as their unit). None (default): plain masked diffusion.
    """

    def __init__(self, *, rate_sampler: RateSampler, masker: Masker, mask_token_id: int,
                 control=None, normalizer: str = "eligible", syntax_eligible: bool = False,
                 fuse_views: bool = True, grad_proxy: str | None = None,
                 weighting: str = "elbo", cart_p: float = DEFAULT_CART_P,
                 layout: BlockLayout | None = None) -> None:
        _check_normalizer(normalizer)
        if layout is not None and not isinstance(layout, BlockLayout):
            raise ValueError(f"layout must be a BlockLayout or None, got {layout!r}")
        self.layout = layout
        check_weighting(weighting, cart_p)
        if grad_proxy is not None and weighting != "elbo":
            raise ValueError(f"grad_proxy={grad_proxy!r} (gradient-targeted P-POTS) needs "
                             f"weighting='elbo', got weighting={weighting!r}")
        self.weighting, self.cart_p = weighting, float(cart_p)
        if grad_proxy is not None and grad_proxy not in GRAD_PROXIES:
            raise ValueError(f"grad_proxy must be None or one of {GRAD_PROXIES}, got {grad_proxy!r}")
        self.grad_proxy = grad_proxy
        if mask_token_id < 0:
            raise ValueError(f"mask_token_id must be non-negative, got {mask_token_id}")
        self.rate_sampler, self.masker, self.control = rate_sampler, masker, control
        self.mask_token_id, self.normalizer = int(mask_token_id), normalizer
        self.syntax_eligible, self.fuse_views = bool(syntax_eligible), bool(fuse_views)

    @property
    def forward_passes(self) -> int:
        return self.masker.n_views

    def eligible(self, batch: Batch) -> torch.Tensor:
        if not self.syntax_eligible:
            return batch.eligible
        if batch.syntax is None:
            raise ValueError("syntax_eligible=True (SyRM) needs a batch with a syntax mask")
        return syrm_eligible(batch.eligible, batch.syntax)

    def units(self, length: int) -> int:
        """Rate draws per example for rows of ``length`` (docs/method.md §12)."""
        return 1 if self.layout is None else self.layout.units(length)

    def draw(self, batch: Batch, randomness: BatchRandomness | torch.Generator,
             eligible: torch.Tensor | None = None):
        """Rates, weights and views for ``batch``: per-example seeded, or from one generator.

        ``t`` and ``w`` have one entry per unit (:attr:`EstimatorOutput.units`), example-major.
        """
        eligible = self.eligible(batch) if eligible is None else eligible
        device = batch.x0.device
        size, length = batch.x0.shape
        units = self.units(length)
        if isinstance(randomness, torch.Generator):
            t, w = self.rate_sampler.sample(size * units, randomness)
            t, w = t.to(device), w.to(device)
            views = self.masker.views(batch.x0, eligible, self._token_rates(t, size, length),
                                      randomness, self.mask_token_id)
            return t, w, views
        if len(randomness) != len(batch):
            raise ValueError(f"randomness covers {len(randomness)} examples, batch has {len(batch)}")
        positions = torch.tensor(randomness.positions, dtype=torch.long)
        if units == 1:
            u = randomness.rate_uniforms()
        else:  # StraTS stratifies the (example, block) rates of the global batch
            u = randomness.block_rate_uniforms(units).reshape(-1)
            positions = (positions[:, None] * units + torch.arange(units)).reshape(-1)
        sampler = self.rate_sampler.at_step(randomness.step)  # a scheduled sampler's step
        t, w = sampler.sample_at(u, positions, randomness.global_batch_size * units,
                                 randomness.batch_generator())
        t, w = t.to(device), w.to(device)
        uniforms = randomness.mask_uniforms(self.masker.n_uniform_sets, length)
        views = self.masker.views_from_uniforms(
            batch.x0, eligible, self._token_rates(t, size, length), uniforms.to(device),
            self.mask_token_id)
        return t, w, views

    def _token_rates(self, t: torch.Tensor, size: int, length: int) -> torch.Tensor:
        units = self.units(length)
        return t if units == 1 else self.layout.token_rates(t.view(size, units), length)

    def forward_views(self, model: Model, views: list[View], attention: torch.Tensor,
                      x0: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Logits of every view, fused into one forward pass when ``fuse_views``; under a block
        layout (which needs ``x0``) the noisy half of the model's logits on ``[xt ; x0]``."""
        if self.fuse_views and len(views) > 1:
            n = len(views)
            stacked = torch.cat([v.xt for v in views])
            clean = None if x0 is None else x0.repeat(n, 1)
            return list(self._call(model, stacked, attention.repeat(n, 1), clean).chunk(n))
        return [self._call(model, v.xt, attention, x0) for v in views]

    def _call(self, model: Model, xt: torch.Tensor, attention: torch.Tensor,
              x0: torch.Tensor | None) -> torch.Tensor:
        if self.layout is None:
            return model(xt, attention)
        if x0 is None:
            raise ValueError("a block layout needs x0: forward_views(..., x0=batch.x0)")
        inputs = self.layout.inputs(xt, x0, attention)
        logits = model(inputs.input_ids, inputs.attention_mask, position_ids=inputs.position_ids)
        return self.layout.noisy(logits, xt.shape[1])

    def view_losses(self, model: Model, x0: torch.Tensor, views: list[View],
                    attention: torch.Tensor, counts: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The per-example loss averaged over ``views`` (docs/method.md §1), (B,) float32 with gradient,
        and each view's (B, L) token losses; ``counts`` are the normalizer's ``N``."""
        return self._losses(self.forward_views(model, views, attention, x0), x0, views, counts,
                            self.weighting, self.cart_p)

    @staticmethod
    def _losses(logits: list[torch.Tensor], x0: torch.Tensor, views: list[View],
                counts: torch.Tensor, weighting: str = "elbo", cart_p: float = DEFAULT_CART_P
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        token_losses = [masked_token_losses(z, x0, view, weighting, cart_p)
                        for view, z in zip(views, logits)]
        raw = torch.stack([losses.sum(dim=1) / counts for losses in token_losses]).mean(dim=0)
        return raw, token_losses

    def __call__(self, model: Model, batch: Batch,
                 randomness: BatchRandomness | torch.Generator,
                 update_control: bool = True) -> EstimatorOutput:
        """The training loss of ``model`` on ``batch``.

        ``update_control=False`` leaves the control variate's statistics untouched (a
        distributed trainer gathers the values of all ranks and calls :meth:`observe`).
        """
        eligible = self.eligible(batch)
        t, w, views = self.draw(batch, randomness, eligible)
        counts = normalizer_counts(eligible, self.normalizer)
        proxy = None
        logits = self.forward_views(model, views, batch.attention_mask, batch.x0)
        raw, token_losses = self._losses(logits, batch.x0, views, counts, self.weighting,
                                         self.cart_p)
        units = self.units(batch.x0.shape[1])
        if units > 1:
            raw = self.unit_losses(token_losses, counts, units)
        if self.grad_proxy is not None:
            proxy = (logit_gradient_norms(logits, batch.x0, views, counts, self.grad_proxy)
                     if units == 1 else block_gradient_norms(
                         self.layout, logits, batch.x0, views, counts, self.grad_proxy))
        ce_sum = self._plain_ce_sum(token_losses, logits, batch.x0, views)
        count = sum(int(view.masked.sum()) for view in views)
        values = w * raw
        if self.control is not None:
            values = self.control.adjust(values, t)
            if update_control:
                self.control.update((w * raw).detach(), t.detach())
        n_empty = int((eligible.sum(dim=1) == 0).sum())
        return EstimatorOutput(
            loss=values.mean(), values=values.detach(), raw_loss=raw.detach(), t=t, w=w,
            n_empty=n_empty, forward_passes=len(views), masked_ce_sum=ce_sum, masked_count=count,
            grad_proxy=proxy, units=units, input_factor=1 if self.layout is None else 2)

    def unit_losses(self, token_losses: list[torch.Tensor], counts: torch.Tensor,
                     units: int) -> torch.Tensor:
        """Per (example, block) loss from each view's (B, L) token losses, scaled by ``units``
        (:attr:`EstimatorOutput.units`), averaged over the views: (B · units,), example-major,
        with gradient. The P-POTS probe (diagnostics.probe) reads the same values."""
        scale = counts[:, None] / units
        return torch.stack([self.layout.unit_sums(losses) / scale
                            for losses in token_losses]).mean(dim=0).reshape(-1)

    def _plain_ce_sum(self, token_losses: list[torch.Tensor], logits: list[torch.Tensor],
                      x0: torch.Tensor, views: list[View]) -> float:
        """The plain masked cross-entropy summed over the views (what ``masked_ce`` logs)."""
        if self.weighting == "elbo":  # undo the 1/inclusion_prob
            return sum(float((losses.detach() * view.inclusion_prob).sum())
                       for losses, view in zip(token_losses, views))
        with torch.no_grad():
            return sum(float(masked_token_losses(z, x0, view, "uniform").sum())
                       for z, view in zip(logits, views))

    def observe(self, t: torch.Tensor, w: torch.Tensor, raw_loss: torch.Tensor) -> None:
        """Fold a step's global batch into the control variate (if any): its ``w · l`` at ``t``."""
        if self.control is not None:
            self.control.update(w * raw_loss, t)

    def state_dict(self) -> dict[str, Any]:
        """The rate sampler's state (an online P-POTS density) and the control variate's."""
        return {"sampler": self.rate_sampler.state_dict(),
                "control": self.control.state_dict() if self.control is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rate_sampler.load_state_dict(state["sampler"])
        if self.control is not None:
            self.control.load_state_dict(state["control"])

    def __repr__(self) -> str:
        return (f"Estimator(rate_sampler={self.rate_sampler!r}, masker={self.masker!r}, "
                f"control={self.control!r}, normalizer={self.normalizer!r}, "
                f"weighting={self.weighting!r}, syntax_eligible={self.syntax_eligible}, "
                f"layout={self.layout!r})")
