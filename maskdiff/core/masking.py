"""Maskers: how the noised views ``xt`` are built from ``x0`` and a rate ``t`` (docs/method.md §5).

A masker turns per-token uniforms ``U`` into one or more :class:`View` s. Every view is a valid
sample of the forward process with known per-token inclusion probabilities, which is all the
objective needs to stay unbiased. Maskers never see the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from maskdiff.core.registry import Registry


@dataclass(frozen=True)
class View:
    """One noised sequence batch.

    Attributes:
        xt: (B, L) long, ``x0`` with masked positions replaced by the mask token.
        masked: (B, L) bool, the masked positions (always a subset of the eligible ones).
        inclusion_prob: (B, L) float32, each token's probability of being masked given ``t``
            (``t`` for Bernoulli, ``q`` for ISAD's delimiter tokens); the objective divides each
            masked token's loss by it.
    """

    xt: torch.Tensor
    masked: torch.Tensor
    inclusion_prob: torch.Tensor


def _check_inputs(x0: torch.Tensor, eligible: torch.Tensor, t: torch.Tensor) -> None:
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, L), got shape {tuple(x0.shape)}")
    if tuple(eligible.shape) != tuple(x0.shape):
        raise ValueError(f"eligible has shape {tuple(eligible.shape)}, x0 has {tuple(x0.shape)}")
    if eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be a bool tensor, got dtype {eligible.dtype}")
    if tuple(t.shape) not in ((x0.shape[0],), tuple(x0.shape)):
        raise ValueError(f"t has shape {tuple(t.shape)}, expected ({x0.shape[0]},) or a rate per "
                         f"token {tuple(x0.shape)} (block diffusion)")


def _make_view(x0: torch.Tensor, masked: torch.Tensor, inclusion_prob: torch.Tensor,
               mask_token_id: int) -> View:
    xt = torch.where(masked, torch.full_like(x0, mask_token_id), x0)
    return View(xt=xt, masked=masked, inclusion_prob=inclusion_prob)


class Masker(ABC):
    """``views(x0, eligible, t, generator, mask_token_id) -> list[View]``.

    ``t`` is one rate per example (B,) or one per token (B, L): every masker works per token,
    so under block diffusion MIRROR complements within each block at that block's rate."""

    name: ClassVar[str]
    # Constructor arguments the task supplies, by the need they meet (maskdiff.core.methods.NEEDS):
    # the trainer fills them in from the task when a configuration leaves them out.
    task_params: ClassVar[dict[str, str]] = {}

    @property
    def n_uniform_sets(self) -> int:
        """How many independent (B, L) uniform arrays one call consumes."""
        return 1

    @property
    def n_views(self) -> int:
        """Views per example, hence forward passes per example."""
        return 1

    @abstractmethod
    def views_from_uniforms(self, x0: torch.Tensor, eligible: torch.Tensor, t: torch.Tensor,
                            uniforms: torch.Tensor, mask_token_id: int) -> list[View]:
        """Views from ready-made uniforms of shape (n_uniform_sets, B, L)."""

    def views(self, x0: torch.Tensor, eligible: torch.Tensor, t: torch.Tensor,
              generator: torch.Generator, mask_token_id: int) -> list[View]:
        """Draw the uniforms from ``generator`` (on the CPU) and build the views."""
        _check_inputs(x0, eligible, t)
        uniforms = torch.rand((self.n_uniform_sets, *x0.shape), generator=generator)
        return self.views_from_uniforms(x0, eligible, t, uniforms.to(x0.device), mask_token_id)

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


MASKERS: Registry[Masker] = Registry("masker")


def register_masker(cls: type[Masker]) -> type[Masker]:
    """Class decorator: make ``cls`` buildable by its ``name`` through :func:`build_masker`."""
    return MASKERS.register(cls)


def build_masker(name: str, **kwargs: Any) -> Masker:
    """Build a registered masker by name, e.g. ``build_masker("isad", token_ids=[5], delta=0.2)``."""
    return MASKERS.build(name, **kwargs)


def _rates(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Each token's rate, (B, L) float32: one per example broadcast, or one per token already
    (block diffusion's per-block rates, docs/method.md §12)."""
    t = t.to(device=like.device, dtype=torch.float32)
    return t if t.dim() == 2 else t[:, None].expand(like.shape)


@register_masker
class Bernoulli(Masker):
    """The standard forward process: eligible token i is masked iff ``U_i < t``."""

    name = "bernoulli"

    def views_from_uniforms(self, x0, eligible, t, uniforms, mask_token_id):
        _check_inputs(x0, eligible, t)
        rate = _rates(t, uniforms[0])
        masked = eligible & (uniforms[0] < rate)
        return [_make_view(x0, masked, rate, mask_token_id)]


@register_masker
class Mirror(Masker):
    """MIRROR (variance paper §3.1.2): two complementary views from one draw of ``U``.

    View 1 masks ``U_i < t``, view 2 masks ``U_i > 1 - t``; each alone is a standard Bernoulli(t)
    sample, so averaging their losses stays unbiased. The views are disjoint for ``t <= 1/2``
    and cover every eligible token for ``t >= 1/2`` (joint coverage ``min(1, 2t)``).
    """

    name = "mirror"

    @property
    def n_views(self) -> int:
        return 2

    def views_from_uniforms(self, x0, eligible, t, uniforms, mask_token_id):
        _check_inputs(x0, eligible, t)
        u = uniforms[0]
        rate = _rates(t, u)
        first = eligible & (u < rate)
        second = eligible & (u > 1.0 - rate)
        return [_make_view(x0, first, rate, mask_token_id),
                _make_view(x0, second, rate, mask_token_id)]


@register_masker
class MultiSample(Masker):
    """``k`` independent Bernoulli views of the same ``(x0, t)``: the §3.1.2 comparison."""

    name = "multisample"

    def __init__(self, k: int = 2) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got k={k!r}")
        self.k = k

    @property
    def n_uniform_sets(self) -> int:
        return self.k

    @property
    def n_views(self) -> int:
        return self.k

    def views_from_uniforms(self, x0, eligible, t, uniforms, mask_token_id):
        _check_inputs(x0, eligible, t)
        rate = _rates(t, uniforms[0])
        return [_make_view(x0, eligible & (uniforms[s] < rate), rate, mask_token_id)
                for s in range(self.k)]

    def config(self) -> dict[str, Any]:
        return {"k": self.k}


@register_masker
class ISAD(Masker):
    """ISAD (variance paper §3.2.1): answer delimiters are masked more often.

    Tokens whose id is in ``token_ids`` are masked with probability ``q = min(1, t + delta)``,
    the others with ``t``; the objective divides each masked token's loss by its own inclusion
    probability, which keeps the estimator unbiased.
    """

    name = "isad"
    task_params = {"token_ids": "delimiters"}

    def __init__(self, token_ids: Iterable[int], delta: float = 0.2) -> None:
        ids = sorted({int(i) for i in token_ids})
        if not ids:
            raise ValueError("token_ids must name at least one answer-delimiter token id")
        if any(i < 0 for i in ids):
            raise ValueError(f"token_ids must be non-negative, got {ids}")
        if not (0.0 <= delta <= 1.0):
            raise ValueError(f"delta must lie in [0, 1], got delta={delta}")
        self.token_ids, self.delta = ids, float(delta)

    def views_from_uniforms(self, x0, eligible, t, uniforms, mask_token_id):
        _check_inputs(x0, eligible, t)
        rate = _rates(t, uniforms[0])
        delimiter = torch.isin(x0, torch.tensor(self.token_ids, device=x0.device))
        q = torch.where(delimiter, (rate + self.delta).clamp(max=1.0), rate)
        masked = eligible & (uniforms[0] < q)
        return [_make_view(x0, masked, q, mask_token_id)]

    def config(self) -> dict[str, Any]:
        return {"token_ids": self.token_ids, "delta": self.delta}


def syrm_eligible(eligible: torch.Tensor, syntax: torch.Tensor) -> torch.Tensor:
    """SyRM (variance paper §3.2.2): response tokens plus the prompt's syntax tokens."""
    if tuple(syntax.shape) != tuple(eligible.shape):
        raise ValueError(f"syntax has shape {tuple(syntax.shape)}, eligible has {tuple(eligible.shape)}")
    return eligible | syntax.to(torch.bool)
