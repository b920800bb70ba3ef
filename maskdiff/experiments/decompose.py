"""The variance-diagnostics experiment (docs/method.md §2): A/B/C, batch and gradient variance of every
training method on one model, written as ``decompose.json`` + ``report.md`` + PNG plots.

The model comes from :func:`maskdiff.experiments.sources.load_model_source` (a run directory, a preset
trained once into the output directory, or a Hugging Face model); the methods are the named estimator configurations of
:mod:`maskdiff.core.methods`; the P-POTS density of the methods that need one is estimated once
from the model itself (:func:`maskdiff.ppots.estimate_ppots`, cached as ``ppots.json``). Every
configuration is measured on the same examples with the same seed (common random numbers).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdiff.jsonio import finite_or_none
from maskdiff import jsonio
from maskdiff.core.checks import int_at_least
from maskdiff.core.batch import Batch
from maskdiff.diagnostics.estimators import DiagnosticsDesign, run_diagnostics, with_extra
from maskdiff.core.methods import DEFAULT_WINDOW, METHODS, get_method
from maskdiff.core.objective import Estimator
from maskdiff.experiments.decompose_plots import plot_components, plot_curves  # noqa: F401
from maskdiff.experiments.sources import ModelSource, load_model_source  # noqa: F401  (re-exported)
from maskdiff.fileio import atomic_write_text
from maskdiff.jobs import reuse_or_run

__all__ = [
    "DEFAULT_METHODS", "DESIGN_DEFAULTS", "DecomposeSettings", "ModelSource", "build_method",
    "design_defaults", "load_model_source",
    "plot_components", "plot_curves", "ppots_density", "run_decompose", "write_outputs",
    "write_report",
]

DEFAULT_METHODS = ("standard", "clipped", "strats", "ema", "isad", "syrm", "mirror",
                   "multisample2", "ppots", "ppots_mirror", "gpots", "gpots_mirror")
JSON_FORMAT = "maskdiff.decompose"
JSON_VERSION = 1
MODEL_FIELDS = ("run", "checkpoint", "preset", "task", "hf", "data")  # what names the model


def ppots_density(source: ModelSource, batch: Batch, *, out: Path, n_rates: int, n_masks: int,
                  seed: int, path: str | Path | None = None,
                  progress: bool = False) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The P-POTS density for the ``ppots`` methods: from ``path`` (a ``ppots.json``), else
    estimated once from the model on ``batch`` (docs/method.md §4; ``n_rates`` grid rates × ``n_masks``
    masks) and cached as ``out/ppots.json`` (a :mod:`maskdiff.jobs` record: reused when its
    settings and model match, else estimated again)."""
    from maskdiff.ppots import cached_density, density_from_ppots, estimate_ppots

    if path is not None:
        return density_from_ppots(path), {"source": str(path)}
    settings = {"a": len(batch), "b": n_rates, "c": n_masks, "seed": seed,
                "normalizer": source.config.estimator.normalizer}
    model = {k: v for k, v in source.description.items() if k in MODEL_FIELDS}
    density = cached_density(out, lambda: estimate_ppots(
        source.model, batch, mask_token_id=source.mask_token_id, n_rates=n_rates,
        n_masks=n_masks, seed=seed, normalizer=settings["normalizer"], progress=progress),
        key={**settings, "model": model})
    return density, {"source": str(out / "ppots.json"), **settings}


def build_method(name: str, source: ModelSource,
                 density: dict[str, list[float]] | None) -> tuple[Estimator | None, str | None]:
    """The estimator of method ``name`` for ``source``'s model and data, or ``(None, reason)``
    when the method does not apply: a causal method (no masked-diffusion estimator), or a task
    that lacks what the method needs (SyRM's syntax tokens, ISAD's delimiters). An
    equal-compute variant measures its base's per-example estimator; ``window`` uses
    :data:`~maskdiff.core.methods.DEFAULT_WINDOW`."""
    from maskdiff.training.needs import resolve_estimator, unmet_need

    method = get_method(name)
    if method.causal:
        return None, f"method {name!r} trains a causal model: no masked-diffusion estimator"
    reason = unmet_need(method.needs, source.task)
    if reason is not None:
        return None, reason
    config = method.estimator_config(density=density if "density" in method.needs else None,
                                     window=DEFAULT_WINDOW)
    config = replace(config, normalizer=source.config.estimator.normalizer)
    config = resolve_estimator(config, source.task)
    return config.build(mask_token_id=source.mask_token_id), None


# The design sizes of the command line, by preset: ``smoke`` is a seconds-long check of the whole
# path (docs/method.md §2 sizes are for real models); everything else gets the full default design.
DESIGN_DEFAULTS: dict[str, dict[str, int]] = {
    "default": {"a": 32, "b": 8, "c": 8, "batch_size": 16, "n_batches": 100, "grad_draws": 64,
                "grad_batch_draws": 32, "curve_rates": 16, "ema_warmup": 2048, "n_boot": 1000,
                "ppots_b": 32, "ppots_c": 4},
    "smoke": {"a": 16, "b": 4, "c": 4, "batch_size": 8, "n_batches": 40, "grad_draws": 32,
              "grad_batch_draws": 16, "curve_rates": 8, "ema_warmup": 512, "n_boot": 300,
              "ppots_b": 16, "ppots_c": 2},
}


def design_defaults(preset: str | None) -> dict[str, int]:
    """The default design sizes for ``preset`` (see :data:`DESIGN_DEFAULTS`)."""
    return dict(DESIGN_DEFAULTS.get(preset or "default", DESIGN_DEFAULTS["default"]))


@dataclass(frozen=True, kw_only=True)
class DecomposeSettings:
    """What :func:`run_decompose` measures: the methods, the number of examples ``a``, the
    per-configuration design, and the P-POTS estimation's size."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    n_examples: int = 32
    design: DiagnosticsDesign = field(default_factory=DiagnosticsDesign)
    ppots_rates: int = 32
    ppots_masks: int = 4
    ppots_path: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods must name at least one configuration")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods has duplicates: {list(self.methods)}")
        int_at_least(self.n_examples, "n_examples (a)", minimum=2)
        from maskdiff.ppots import MIN_TABLE_POINTS  # the EPR fit needs this many grid rates

        for name, minimum in (("ppots_rates", MIN_TABLE_POINTS), ("ppots_masks", 1)):
            int_at_least(getattr(self, name), name, minimum=minimum)


def run_decompose(source: ModelSource, settings: DecomposeSettings, out: str | Path, *,
                  progress: bool = True) -> dict[str, Any]:
    """Measure every configuration of ``settings`` on ``source``; write ``decompose.json``,
    ``report.md``, ``components.png`` and ``curves.png`` into ``out``; return the JSON. Each
    configuration's measurement is a :mod:`maskdiff.jobs` record
    (``out/configurations/NAME.json``): a restarted job reuses those of the same method,
    estimator, density, design and model, and measures the rest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    batch = source.examples(settings.n_examples)
    design = settings.design
    densities, infos = _densities(source, batch, settings, out)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    model = {k: v for k, v in source.description.items() if k in MODEL_FIELDS}
    bar = tqdm(settings.methods, desc="configurations", unit="config", disable=not progress)
    for name in bar:
        bar.set_postfix(method=name)
        density = densities.get(get_method(name).density_target)
        estimator, reason = build_method(name, source, density)
        if estimator is None:
            skipped[name] = reason
            continue
        key = {"method": name, "estimator": repr(estimator),  # its density, its token ids
               "design": asdict(design), "n_examples": len(batch), "model": model,
               "normalizer": source.config.estimator.normalizer}
        record = reuse_or_run(out / "configurations" / f"{name}.json", key,
                              lambda: _measure(source, batch, estimator, design),
                              on_change="recompute", what="measurement", required=("result",))
        results[name] = record["result"]
        if record.get("curves") is not None:
            curves[name] = record["curves"]
    doc = {
        "format": JSON_FORMAT, "version": JSON_VERSION,
        "model": source.description,
        "n_examples": len(batch),
        "design": asdict(design),
        "ppots": infos.get("loss"),
        "gpots": infos.get("gradient"),
        "configurations": results,
        "skipped": skipped,
        "curves": curves,
        "seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    write_outputs(out, doc)
    return finite_or_none(doc)


def _measure(source: ModelSource, batch: Batch, estimator: Estimator,
             design: DiagnosticsDesign) -> dict[str, Any]:
    """One configuration's diagnostics: the record of ``OUT/configurations/NAME.json``."""
    diag = with_extra(run_diagnostics(source.model, batch, estimator, design),
                      estimator=repr(estimator))
    return finite_or_none({"result": diag.to_dict(),
                    "curves": None if diag.curves is None else diag.curves.to_dict()})


def _densities(source: ModelSource, batch: Batch, settings: DecomposeSettings,
               out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """The densities of the methods that need one, by target: P-POTS's (loss) and, for the
    ``gpots`` methods, the exact-gradient one with its validation record
    (:mod:`maskdiff.experiments.gradient_targets`), both on the P-POTS design sizes."""
    targets = {get_method(m).density_target for m in settings.methods
               if "density" in get_method(m).needs}
    densities, infos = {}, {}
    for target in sorted(targets):
        t0 = time.perf_counter()
        if target == "loss":
            densities[target], infos[target] = ppots_density(
                source, batch, out=out, n_rates=settings.ppots_rates,
                n_masks=settings.ppots_masks, seed=settings.design.seed,
                path=settings.ppots_path, progress=False)
        else:
            from maskdiff.experiments.gradient_targets import gradient_density

            densities[target], infos[target] = gradient_density(
                source.model, batch, out=out, mask_token_id=source.mask_token_id,
                normalizer=source.config.estimator.normalizer, n_rates=settings.ppots_rates,
                n_masks=settings.ppots_masks, seed=settings.design.seed,
                grad_draws=settings.design.grad_draws)
        infos[target]["seconds"] = time.perf_counter() - t0
    return densities, infos



def write_outputs(out: str | Path, doc: dict[str, Any]) -> None:
    """``decompose.json``, ``components.png``, ``curves.png`` and ``report.md`` of ``doc``
    (also regenerates the plots and report of an earlier ``decompose.json``)."""
    out = Path(out)
    doc = finite_or_none(doc)
    atomic_write_text(out / "decompose.json", jsonio.dumps(doc, indent=1) + "\n")
    if doc["configurations"]:
        plot_components(out / "components.png", doc["configurations"])
    if doc.get("curves"):
        plot_curves(out / "curves.png", doc["curves"])
    write_report(out / "report.md", doc)


# ---------------------------------------------------------------------------------- report


def _fmt(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:.4g}"
    return text if se is None else f"{text} ± {se:.2g}"


def write_report(path: str | Path, doc: dict[str, Any]) -> None:
    """``report.md``: the table of every configuration, the plots and how to read them."""
    configs = doc["configurations"]
    design = doc["design"]
    lines = [
        "# Variance decomposition (docs/method.md §2)",
        "",
        f"Model: `{jsonio.dumps(doc['model'])}`",
        "",
        f"Design: a = {doc['n_examples']} examples × b = {design['n_rates']} i.i.d. rates × "
        f"c = {design['n_masks']} masks per configuration (unbiased nested ANOVA, bootstrap SE "
        f"over examples, {design['n_boot']} replicates); batch variance over "
        f"{design['n_batches']} batches of n = {design['batch_size']}; gradient variance over "
        f"{design['grad_draws']} per-example and {design['grad_batch_draws']} per-batch draws "
        f"({'all parameters' if design['parameters'] is None else design['parameters']}); "
        f"seed {design['seed']}; {doc['seconds']:.0f} s on {doc.get('machine', '?')} with "
        f"{doc.get('torch_threads', '?')} torch thread(s).",
        "",
        "| config | passes | mean | A | B | C | total | plug-in B | plug-in C | batch var × n | "
        "grad tr Cov (n=1) | grad tr Cov (batch) | total × passes | grad × passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in configs.items():
        se = r["se"]
        bv = r["batch_variance"]["per_example"]
        gv = r["gradient_variance"]
        gb = r["gradient_variance_batch"]
        lines.append(
            f"| {name} | {r['forward_passes']} | {_fmt(r['mean']['value'], r['mean']['se'])} "
            f"| {_fmt(r['A'], se['A'])} | {_fmt(r['B'], se['B'])} "
            f"| {_fmt(r['C'], se['C'])} | {_fmt(r['total'], se['total'])} "
            f"| {_fmt(r['plugin']['B'])} | {_fmt(r['plugin']['C'])} "
            f"| {_fmt(bv['value'], bv['se']) if bv else '–'} "
            f"| {_fmt(gv['trace_cov']['value'], gv['trace_cov']['se']) if gv else '–'} "
            f"| {_fmt(gb['trace_cov']['value'], gb['trace_cov']['se']) if gb else '–'} "
            f"| {_fmt(r['cost_aware']['total'])} | {_fmt(r['cost_aware']['gradient'])} |")
    lines += ["", "![A/B/C per configuration](components.png)", "",
              "![g(t) and v(t)](curves.png)", "", "## How to read it", "",
              "- A = E Var(l | x0, t) (masking pattern), B = E Var_t(g | x0) (masking rate), "
              "C = Var(E_t g) (data); the per-example value is what the trainer averages "
              "(w·l, the MIRROR mean, the EMA-adjusted loss). Unbiased estimates are unclipped "
              "and may be slightly negative when a component is ~0; the bars clip at 0.",
              "- Plug-in B and C are the biased nested-design spreads (E = B + A/c and "
              "C + (B + A/c)/b): compare them with the unbiased columns to see the bias the "
              "estimators of docs/method.md §2 remove.",
              "- StraTS acts on a batch, not on one example: its per-example A/B/C equal the "
              "standard ones (same seed); its effect is in `batch var × n` (n × the variance of "
              "the mini-batch mean over repeated batches, each drawn by the estimator itself).",
              "- EMA's control variate was warmed up on "
              f"{design['control_warmup']} training-like draws before measuring (a fresh one "
              "adjusts nothing). Its baseline is detached, so its gradient equals the standard "
              "one (docs/method.md §6 [fix]): compare the gradient columns. Its `mean` is the adjusted "
              "value, shifted by the subtracted c_j·b_j (the reported loss is not the ELBO).",
              "- `× passes` is the cost-aware variance: variance × forward passes per example "
              "(MIRROR and multisample2 pay 2), i.e. the variance at equal compute.",
              "- Clipped samples t in [0.45, 0.95]: it is a different (biased) objective, so its "
              "variance is not comparable in kind, only in size.",
              "- SyRM makes the prompt's syntax tokens eligible: a different objective (more "
              "terms, a larger normaliser N). On a model not trained with SyRM those tokens are "
              "unpredicted and dominate the loss; diagnose a model trained with `--method syrm` "
              "(`--run DIR`) to compare it fairly.", ""]
    if doc["skipped"]:
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in doc["skipped"].items()] + [""]
    if doc.get("ppots"):
        lines += [f"P-POTS density: `{jsonio.dumps(doc['ppots'])}`", ""]
    if doc.get("gpots"):
        from maskdiff.experiments.gradient_targets import report_lines

        lines += report_lines(doc["gpots"])
    atomic_write_text(path, "\n".join(lines))
