"""The named training methods of the benchmarks (docs/method.md §11): one registered, typed
:class:`Method` each.

A method is configuration, never a branch in the training loop. It is declared once, here, with
what it needs (:data:`NEEDS`), what it costs (forward passes per example, and a batch factor for
the equal-compute variants) and the estimator configuration it trains with. ``train``,
``compare``, ``decompose``, ``image`` and the Hugging Face helpers ask this registry; no code
outside it compares method names (docs/architecture.md). ``docs/adding-a-method.md`` walks
through adding one.

P-POTS methods need a fitted density: pass it as ``density`` (a ``{"t": [...], "p": [...]}``
table; :func:`maskdiff.ppots.density_from_ppots` makes one from a ``ppots.json``).
``ppots_online`` takes that density when given, else starts from the uniform one, and refits it
during training from the training losses (docs/method.md §4 [beyond]). The ``gpots`` methods
target the gradient instead of the loss (docs/method.md §4 [beyond] "Gradient-targeted
densities"): their density (``density_target="gradient"``) is ``p ∝ sqrt(E[‖∇θ l‖² | t])``,
fitted by ``maskdiff fit-pots --target gradient`` or tracked online from a free proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from maskdiff.core.config import ComponentConfig, EstimatorConfig, RefitConfig
from maskdiff.core.masking import MASKERS
from maskdiff.core.samplers import DEFAULT_EPS

C = ComponentConfig

# What a method can need. Inputs of :meth:`Method.estimator_config` ("density", "window"), what
# the task must provide (the trainer fills the ids in: maskdiff.training.needs), or the model.
NEEDS: dict[str, str] = {
    "density": "a fitted P-POTS density (e.g. --ppots ppots.json)",
    "window": "a masking-rate window (t_min, t_max) (e.g. --window 0.45 0.55)",
    "delimiters": "the task's answer-delimiter token ids",
    "syntax": "the task's syntax tokens (markup, e.g. --task table)",
    "causal": "a causal (autoregressive) model instead of a bidirectional one",
}
INPUTS = ("density", "window")  # the needs that are arguments of Method.estimator_config
BASELINE = "standard"  # the method every report compares against
DEFAULT_WINDOW = (0.45, 0.55)  # the window of `maskdiff train --method window` and decompose
DEFAULT_MIX = 0.05  # the importance sampler's uniform share when neither caller nor density says
# What a method's density is fitted to (docs/method.md §4): the loss's second moment (P-POTS) or
# the parameter gradient's (gradient-targeted P-POTS).
DENSITY_TARGETS = ("loss", "gradient")


def uniform_density() -> dict[str, list[float]]:
    """The uniform density as a ``{"t", "p"}`` table: where ``ppots_online`` starts by default."""
    return {"t": [0.0, 1.0], "p": [1.0, 1.0]}


def config_needs(config: EstimatorConfig) -> frozenset[str]:
    """What an estimator configuration needs from the task: its masker class's declared
    :attr:`~maskdiff.core.masking.Masker.task_params` and SyRM's syntax tokens."""
    needs = set(MASKERS[config.masker.name].task_params.values())
    if config.syntax_eligible:
        needs.add("syntax")
    return frozenset(needs)


@dataclass(frozen=True, kw_only=True)
class Method:
    """One named training method.

    Attributes:
        name: the name of ``--method`` / ``--methods``.
        summary: one line for ``--help`` and reports.
        estimator: the estimator configuration; for the ``density`` and ``window`` needs its
            rate sampler is filled in by :meth:`estimator_config`.
        forward_passes: model forward passes per example per step (its views).
        needs: a subset of :data:`NEEDS`; what the estimator's masker declares it needs from the
            task (:func:`config_needs`) is added on construction.
        optional: inputs taken when given, else defaulted (``ppots_online``: a start density).
        task: the built-in task ``compare`` runs it on when not the main one (SyRM: ``table``),
            next to :data:`BASELINE` on that task.
        base, batch_factor: an equal-compute variant: method ``base`` with ``batch_factor``
            times the batch, so that it spends what a method with that many forward passes does.
        density_target: for a method that takes a density, what it is fitted to (one of
            :data:`DENSITY_TARGETS`): ``compare`` and ``decompose`` estimate that one, and
            ``train --ppots`` refuses a file fitted to another.
    """

    name: str
    summary: str
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    forward_passes: int = 1
    needs: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    task: str | None = None
    base: str | None = None
    batch_factor: int = 1
    density_target: str = "loss"

    def __post_init__(self) -> None:
        if self.density_target not in DENSITY_TARGETS:
            raise ValueError(f"method {self.name!r}: density_target must be one of "
                             f"{DENSITY_TARGETS}, got {self.density_target!r}")
        object.__setattr__(self, "needs", frozenset(self.needs) | config_needs(self.estimator))
        object.__setattr__(self, "optional", frozenset(self.optional))
        if not self.name or any(c.isspace() or c == "," for c in self.name):
            raise ValueError(f"a method name must be non-empty, without spaces or commas, "
                             f"got {self.name!r}")
        unknown = sorted((self.needs | self.optional) - set(NEEDS))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown needs {unknown}; known: {sorted(NEEDS)}")
        if not self.optional <= set(INPUTS):
            raise ValueError(f"method {self.name!r}: optional must be among {list(INPUTS)}, "
                             f"got {sorted(self.optional)}")
        for key in ("forward_passes", "batch_factor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"method {self.name!r}: {key} must be an int >= 1, got {value!r}")
        if (self.base is None) != (self.batch_factor == 1):
            raise ValueError(f"method {self.name!r}: an equal-compute variant names its base and "
                             f"a batch_factor > 1 (got base={self.base!r}, "
                             f"batch_factor={self.batch_factor})")

    @property
    def causal(self) -> bool:
        """Trains the causal twin (next-token loss) instead of a masked diffusion model."""
        return "causal" in self.needs

    @property
    def cost(self) -> int:
        """Forward passes per step relative to standard's (views × batch factor)."""
        return self.forward_passes * self.batch_factor

    def estimator_config(self, *, density: dict[str, Any] | None = None,
                         window: tuple[float, float] | None = None,
                         mix: float | None = None, eps: float | None = None) -> EstimatorConfig:
        """The estimator configuration, with the ``density`` / ``window`` it needs filled in
        (inputs it does not take are ignored). ValueError names a missing one.

        The importance sampler's ``mix`` and ``eps`` are the arguments when given, else the
        fitted density's own (``density_from_ppots`` carries the ``ppots.json``'s ``mix`` and
        ``eps`` in the table), else :data:`DEFAULT_MIX` and the sampler's default rate floor."""
        given = {"density": density, "window": window}
        for need in INPUTS:
            if need in self.needs and given[need] is None:
                hint = ("" if need != "density" or self.density_target == "loss" else
                        f", fitted to the {self.density_target} (maskdiff fit-pots --target "
                        f"{self.density_target})")
                raise ValueError(f"method {self.name!r} needs {NEEDS[need]}{hint}")
        config = self.estimator
        if "density" in self.needs | self.optional:
            config = replace(config, sampler=C(name="importance", params=importance_params(
                density if density is not None else uniform_density(), mix=mix, eps=eps)))
        if "window" in self.needs | self.optional and window is not None:
            config = replace(config, sampler=C(name="window", params={"t_min": window[0],
                                                                       "t_max": window[1]}))
        return config


def importance_params(density: Any, *, mix: float | None = None,
                      eps: float | None = None) -> dict[str, Any]:
    """The ``importance`` sampler's parameters for a fitted ``density``: the ``{"t", "p"}``
    table, and ``mix`` / ``eps`` from the arguments, else from the density (a fitted table
    carries its ``ppots.json``'s), else :data:`DEFAULT_MIX` and the sampler's default floor
    (``eps`` is written only when it is not that default, so configs of older runs stay
    identical)."""
    fitted = density if isinstance(density, Mapping) else {}
    table = ({"t": density["t"], "p": density["p"]}
             if isinstance(density, Mapping) and "t" in density and "p" in density else density)
    mix = mix if mix is not None else fitted.get("mix", DEFAULT_MIX)
    eps = eps if eps is not None else fitted.get("eps")
    params: dict[str, Any] = {"density": table, "mix": mix}
    if eps is not None and eps != DEFAULT_EPS:
        params["eps"] = eps
    return params


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (its name must be new); returns it."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method expects a Method, got {type(method).__name__}")
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if method.base is not None and method.base not in METHODS:
        raise ValueError(f"method {method.name!r}: its base {method.base!r} is not registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError listing the known names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {list(METHODS)}")
    return METHODS[name]


def equal_compute(base: str, factor: int) -> Method:
    """``base`` trained with ``factor`` times the batch: ``"{base}@{factor}x"``, the control
    that spends what a ``factor``-view method spends at the same steps and batch."""
    method = get_method(base)
    return replace(method, name=f"{base}@{factor}x", base=base, batch_factor=factor,
                   summary=f"{base} with {factor}x the batch: the compute of {factor}-view methods")


def method_config(name: str, *, density: dict[str, Any] | None = None,
                  window: tuple[float, float] | None = None, mix: float | None = None,
                  eps: float | None = None) -> EstimatorConfig:
    """``get_method(name).estimator_config(...)``: the estimator configuration of ``name``."""
    return get_method(name).estimator_config(density=density, window=window, mix=mix, eps=eps)


def method_estimator(name: str, *, density: dict[str, Any] | None = None,
                     window: tuple[float, float] = DEFAULT_WINDOW,
                     mix: float | None = None) -> EstimatorConfig:
    """Deprecated alias of :func:`method_config` (it returns a configuration, not an
    :class:`~maskdiff.core.objective.Estimator`), with the old default window."""
    return method_config(name, density=density, window=window, mix=mix)


for _method in (
    Method(name="standard", summary="uniform rates, Bernoulli masks: the unbiased ELBO baseline"),
    Method(name="clipped", summary="rates clipped to [0.45, 0.95]: a different (biased) objective",
           estimator=EstimatorConfig(sampler=C(name="clipped"))),
    Method(name="strats", summary="StraTS: stratified rates across the batch",
           estimator=EstimatorConfig(sampler=C(name="stratified"))),
    Method(name="ema", summary="EMA control variate per rate bin (detached baseline)",
           estimator=EstimatorConfig(control=C(name="ema"))),
    Method(name="isad", summary="ISAD: answer delimiters masked more often (importance-weighted)",
           estimator=EstimatorConfig(masker=C(name="isad"))),
    Method(name="syrm", summary="SyRM: the task's syntax tokens are eligible too", task="table",
           estimator=EstimatorConfig(syntax_eligible=True)),
    Method(name="mirror", summary="MIRROR: two complementary views of one uniform draw",
           estimator=EstimatorConfig(masker=C(name="mirror")), forward_passes=2),
    Method(name="multisample2", summary="two independent Bernoulli views of the same rate",
           estimator=EstimatorConfig(masker=C(name="multisample", params={"k": 2})),
           forward_passes=2),
    Method(name="ppots", summary="P-POTS: rates from the fitted variance-optimal density",
           needs=frozenset({"density"})),
    Method(name="ppots_online", summary="P-POTS refitted online from the training losses",
           optional=frozenset({"density"}),
           estimator=EstimatorConfig(sampler=C(name="importance", params={"density": uniform_density()}),
                                     refit=RefitConfig())),
    Method(name="ppots_mirror", summary="P-POTS rates with MIRROR's two views",
           needs=frozenset({"density"}), estimator=EstimatorConfig(masker=C(name="mirror")),
           forward_passes=2),
    Method(name="window", summary="rates uniform in a signal-rich window (a biased objective)",
           needs=frozenset({"window"})),
    Method(name="ar", summary="the autoregressive twin: a causal model, next-token loss",
           needs=frozenset({"causal"})),
):
    register_method(_method)
register_method(equal_compute("standard", 2))
register_method(equal_compute("standard", 4))  # the noise ceiling (docs/method.md §11)
for _method in (  # gradient-targeted P-POTS (docs/method.md §4 [beyond])
    Method(name="gpots", summary="gradient-targeted P-POTS: rates from sqrt(E[|grad l|^2 | t])",
           needs=frozenset({"density"}), density_target="gradient"),
    Method(name="gpots_mirror", summary="gradient-targeted P-POTS rates with MIRROR's two views",
           needs=frozenset({"density"}), estimator=EstimatorConfig(masker=C(name="mirror")),
           forward_passes=2, density_target="gradient"),
    Method(name="gpots_online", summary="gradient-targeted P-POTS tracked online from the "
                                        "free logit-gradient proxy",
           optional=frozenset({"density"}), density_target="gradient",
           estimator=EstimatorConfig(sampler=C(name="importance", params={"density": uniform_density()}),
                                     refit=RefitConfig(statistic="logits"))),
):
    register_method(_method)
# Pretraining rate samplers (docs/method.md §3 "Bell-shaped rates" / "Annealed windows"):
# bell-shaped time sampling (arXiv 2605.13026; the family is a stand-in, the paper's exact density
# was not readable) as its biased form and importance-weighted back to U[eps, 1]; the parity
# paper's fixed SFT windows; a window that widens to U[eps, 1] over the first half of the run.
BELL_BETA = {"family": "beta", "alpha": 4.0}  # the `bell` methods' density: Beta(4, 4)
BELL_LOGIT_NORMAL = {"family": "logit_normal", "mu": 0.0, "sigma": 1.0}


def _sampler(name: str, **params: Any) -> EstimatorConfig:
    return EstimatorConfig(sampler=C(name=name, params=params))


for _method in (
    Method(name="bell", summary="bell-shaped rates Beta(4, 4), unweighted (2605.13026's recipe; "
                                "a biased objective)", estimator=_sampler("bell", **BELL_BETA)),
    Method(name="bell_iw", summary="Beta(4, 4) rates weighted back to U[eps, 1] (unbiased)",
           estimator=_sampler("bell_iw", **BELL_BETA, mix=DEFAULT_MIX)),
    Method(name="bell2", summary="bell-shaped rates Beta(2, 2), unweighted (biased)",
           estimator=_sampler("bell", family="beta", alpha=2.0)),
    Method(name="bell8", summary="bell-shaped rates Beta(8, 8), unweighted (biased)",
           estimator=_sampler("bell", family="beta", alpha=8.0)),
    Method(name="bell_ln", summary="logit-normal(0, 1) rates, unweighted (biased)",
           estimator=_sampler("bell", **BELL_LOGIT_NORMAL)),
    Method(name="bell_ln_iw", summary="logit-normal(0, 1) rates weighted back to U[eps, 1] "
                                      "(unbiased)",
           estimator=_sampler("bell_iw", **BELL_LOGIT_NORMAL, mix=DEFAULT_MIX)),
    *(Method(name=f"window_{lo:g}_{hi:g}", summary=f"rates uniform in [{lo:g}, {hi:g}] (the "
                                                   f"parity paper's SFT table; biased)",
             estimator=_sampler("window", t_min=lo, t_max=hi))
      for lo, hi in ((0.45, 0.55), (0.2, 1.0), (0.3, 1.0), (0.5, 1.0))),
    Method(name="annealed", summary="[0.45, 0.55] widening linearly to U[eps, 1] by half the run's "
                                    "steps (biased, then unbiased)",
           estimator=_sampler("annealed", start=[0.45, 0.55], widen_fraction=0.5)),
):
    register_method(_method)
del _method

METHOD_NAMES = tuple(METHODS)  # the built-in methods; METHODS also holds later registrations
