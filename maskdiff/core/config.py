"""Configuration dataclasses of the estimator, and the JSON round trip every config uses.

Frozen, nested, keyword-only dataclasses (docs/architecture.md, "Configuration").

Each config validates itself in ``__post_init__`` with a ``ValueError`` naming the field, the bad
value and what is allowed, and builds the object it describes with ``build()``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from maskdiff import jsonio
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.control import CONTROLS, build_control
from maskdiff.core.masking import MASKERS, build_masker
from maskdiff.core.objective import GRAD_PROXIES, NORMALIZERS, Estimator
from maskdiff.core.samplers import SAMPLERS, build_sampler
from maskdiff.core import shaped_samplers  # noqa: F401  (registers bell, bell_iw, annealed)
from maskdiff.core.weighting import DEFAULT_CART_P, WEIGHTINGS, loss_convention
from maskdiff.fileio import atomic_write_text
from maskdiff.core.checks import int_at_least

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if _is_dataclass_type(tp):
        return from_dict(tp, value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if _is_dataclass_type(arg) and isinstance(value, dict):
                return from_dict(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config dataclass from :func:`to_dict`'s output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def save_json(config: Any, path: str | Path) -> None:
    atomic_write_text(path, jsonio.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[C], path: str | Path) -> C:
    return from_dict(cls, jsonio.load(path))  # a bad file: one line naming it and its line


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


@dataclass(frozen=True, kw_only=True)
class ComponentConfig:
    """A registered component by name plus its keyword arguments."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


_PRIMITIVES = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float)}


def check_fields(config: Any, owner: str) -> None:
    """Every ``str``/``bool``/``int``/``float`` field (optional or not) of a config dataclass
    holds a value of that type, and every number is finite: a ``ValueError`` naming the field
    and the value otherwise (``--set optim.lr=abc``, ``lr=inf``, ``weight_decay=NaN``)."""
    for f in dataclasses.fields(config):
        kind = str(f.type).replace(" | None", "").replace("Optional[", "").rstrip("]")
        if kind not in _PRIMITIVES:
            continue
        value = getattr(config, f.name)
        if value is None and "None" in str(f.type):
            continue
        allowed = _PRIMITIVES[kind]
        if not isinstance(value, allowed) or (kind != "bool" and isinstance(value, bool)):
            noun = {"str": "a string", "bool": "true or false", "int": "an integer",
                    "float": "a number"}[kind]
            raise ValueError(f"{owner}.{f.name} must be {noun}, got {value!r}")
        if kind in ("int", "float") and not math.isfinite(value):
            raise ValueError(f"{owner}.{f.name} must be finite, got {value!r}")


REFIT_STATISTICS = ("loss",) + GRAD_PROXIES


@dataclass(frozen=True, kw_only=True)
class RefitConfig:
    """Online P-POTS (docs/method.md §4 [beyond]): refit the importance density during training.

    The trainer tracks ``E[l² | t]`` per bin of t from its own training losses (no extra
    forward passes; :class:`maskdiff.ppots.estimate.SecondMomentTracker`, all-reduced across ranks) and
    every ``refit_every`` steps fits EPR to the tracked p̂ and hands it to the sampler. Bins with
    fewer than ``min_count`` draws are left out of the fit; ``decay`` < 1 forgets old losses.
    ``statistic``: what is tracked, ``"loss"`` (P-POTS: ``p ∝ sqrt(E[l² | t])``) or a free
    gradient-norm proxy, ``"logits"`` / ``"bias"`` (gradient-targeted P-POTS:
    ``p ∝ sqrt(E[‖∇θ l‖² | t])``, docs/method.md §4 [beyond] "Gradient-targeted densities").
    """

    refit_every: int = 50
    n_bins: int = 20
    min_count: float = 8.0
    decay: float = 1.0
    restarts: int = 4
    statistic: str = "loss"

    def __post_init__(self) -> None:
        check_fields(self, "estimator.refit")
        if self.statistic not in REFIT_STATISTICS:
            raise ValueError(f"estimator.refit.statistic must be one of {REFIT_STATISTICS}, "
                             f"got {self.statistic!r}")
        int_at_least(self.refit_every, "estimator.refit.refit_every")
        int_at_least(self.n_bins, "estimator.refit.n_bins", minimum=8)
        int_at_least(self.restarts, "estimator.refit.restarts")
        if not self.min_count > 0:
            raise ValueError(f"estimator.refit.min_count must be > 0, got {self.min_count!r}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"estimator.refit.decay must lie in (0, 1], got {self.decay!r}")


@dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """Sampler + masker + optional control variate (docs/architecture.md §3 "Estimator").

    P-POTS+MIRROR is ``EstimatorConfig(sampler=ComponentConfig(name="importance",
    params={"density": {...}}), masker=ComponentConfig(name="mirror"))``.
    ``normalizer`` and ``weighting`` (+ ``cart_p``) choose the loss convention
    (docs/method.md §1 "Loss conventions"); :meth:`with_convention` sets them by a peer's name.
    """

    sampler: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="uniform"))
    masker: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="bernoulli"))
    control: ComponentConfig | None = None
    normalizer: str = "eligible"
    syntax_eligible: bool = False
    fuse_views: bool = True
    refit: RefitConfig | None = None  # online P-POTS: needs the "importance" sampler
    weighting: str = "elbo"  # "elbo" (1/pi), "uniform" or "cart" (maskdiff.core.weighting)
    cart_p: float = DEFAULT_CART_P

    def __post_init__(self) -> None:
        check_fields(self, "estimator")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"estimator.weighting={self.weighting!r} is not one of {WEIGHTINGS}")
        if not 0.0 < self.cart_p < 1.0:
            raise ValueError(f"estimator.cart_p must lie in (0, 1), got {self.cart_p!r}")
        if (self.refit is not None and self.refit.statistic != "loss"
                and self.weighting != "elbo"):
            raise ValueError(f"estimator.refit.statistic={self.refit.statistic!r} needs "
                             f"estimator.weighting='elbo', got {self.weighting!r}")
        if self.refit is not None and self.sampler.name != "importance":
            raise ValueError(f"estimator.refit (online P-POTS) needs sampler 'importance', "
                             f"got {self.sampler.name!r}")
        if self.sampler.name not in SAMPLERS:
            raise ValueError(f"sampler.name={self.sampler.name!r} is not one of {sorted(SAMPLERS)}")
        if self.masker.name not in MASKERS:
            raise ValueError(f"masker.name={self.masker.name!r} is not one of {sorted(MASKERS)}")
        if self.control is not None and self.control.name not in CONTROLS:
            raise ValueError(f"control.name={self.control.name!r} is not one of {sorted(CONTROLS)}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer={self.normalizer!r} is not one of {NORMALIZERS}")

    def with_convention(self, name: str) -> "EstimatorConfig":
        """This config with a named peer's loss convention (its normaliser and weighting):
        ``dllm-sequence``, ``dllm-token``, ``dllm-batch``, ``dream-cart``, ``llada-sft``,
        ``llada-pretrain`` or ``maskdiff`` (:data:`maskdiff.core.weighting.LOSS_CONVENTIONS`)."""
        return dataclasses.replace(self, **loss_convention(name).fields())

    def build(self, *, mask_token_id: int, layout: BlockLayout | None = None,
              run: Mapping[str, Any] | None = None) -> Estimator:
        """The estimator; ``layout`` trains a block-diffusion model (docs/method.md §12);
        ``run``: the run's fields a sampler declares in ``run_params`` and the configuration
        leaves out (the annealed schedule's ``total_steps`` from ``{"max_steps": N}``)."""
        params = dict(self.sampler.params)
        for arg, name in SAMPLERS[self.sampler.name].run_params.items():
            if arg not in params and run is not None and run.get(name) is not None:
                params[arg] = run[name]
        control = None
        if self.control is not None:
            control = build_control(self.control.name, **self.control.params)
        return Estimator(
            rate_sampler=build_sampler(self.sampler.name, **params),
            masker=build_masker(self.masker.name, **self.masker.params),
            mask_token_id=mask_token_id,
            control=control,
            normalizer=self.normalizer,
            syntax_eligible=self.syntax_eligible,
            fuse_views=self.fuse_views,
            grad_proxy=(self.refit.statistic if self.refit is not None
                        and self.refit.statistic != "loss" else None),
            weighting=self.weighting, cart_p=self.cart_p, layout=layout,
        )
