"""Where can fine-tuning show estimator noise at all? The noise-ceiling search
(docs/method.md §11, "The noise ceiling"; ``benchmarks/ceiling_search.py``).

No unbiased estimator of one batch reduces the gradient noise more than averaging four
batches does, so when ``standard@4x`` (standard with four times the batch) does not move
pass@1 significantly, no estimator can be seen to move it either. The search runs standard and
``standard@4x`` in a few fine-tuning regimes — variations of the ``full`` preset, each an
ordinary compare job — and then, in the regime whose ceiling gain on pass@1 is significant
with the smallest p, the unbiased methods on **fresh** seeds, so that the ceiling there is
measured again rather than taken from the regime that was selected for it (the winner's curse
would inflate it and shrink every share).

Every job lies under the search's folder (resumable: finished runs are reused); regimes with
the same starting checkpoint share it, its P-POTS density and its window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from maskdiff.core.methods import BASELINE
from maskdiff.experiments.compare import CompareJob
from maskdiff.experiments.compare_presets import PRESETS, SEEDS, ComparePreset, with_base
from maskdiff.experiments.compare_report import p_eq
from maskdiff.experiments.report_md import interval

CEILING = "standard@4x"
SEARCH_SEEDS = SEEDS[:10]
CONFIRM_SEEDS = SEEDS[10:20]  # fresh seeds for the chosen regime
# The unbiased methods of the confirmation (every registered one that is cheap to run here):
# one view (P-POTS, its gradient-targeted twin, StraTS, ISAD, the weighted bell), two views
# (MIRROR, P-POTS+MIRROR) and the equal-compute control of the two-view ones.
CONFIRM_METHODS = (BASELINE, CEILING, "standard@2x", "mirror", "ppots", "ppots_mirror", "gpots",
                   "strats", "isad", "bell_iw")
ALPHA = 0.05


@dataclass(frozen=True)
class Regime:
    """A fine-tuning regime: the ``full`` preset with its optimiser's fields ``optim`` changed,
    and its starting checkpoint trained for ``pretrain_steps`` (None: the preset's)."""

    name: str
    what: str
    optim: dict = field(default_factory=dict)
    pretrain_steps: int | None = None

    def preset(self, base: ComparePreset, methods: tuple[str, ...]) -> ComparePreset:
        """``base`` in this regime, running ``methods`` (no gradient-noise measurement); the
        starting checkpoint keeps ``base``'s batch and learning rate whatever the regime's are."""
        preset = replace(base, name=f"{base.name}-{self.name}", methods=methods,
                         equal_compute=False, grad_noise_draws=0,
                         pretrain_batch=base.start_batch,
                         pretrain_lr=base.pretrain_lr or base.base.optim.lr,
                         pretrain_steps=self.pretrain_steps or base.pretrain_steps)
        return with_base(preset, optim=self.optim) if self.optim else preset

    def start_folder(self, base: ComparePreset) -> str:
        return f"start{self.pretrain_steps or base.pretrain_steps}"


# The regimes tried, in the order the search runs them (issue 26 item 5's suggestions: smaller
# batches, a higher learning rate, a starting checkpoint that knows less of the task).
REGIMES = (
    Regime("full", "the full preset: batch 32, lr 1e-3, 150 steps"),
    Regime("batch8", "batch 8: a quarter of the examples, 4× the gradient noise per step",
           optim={"batch_size": 8}),
    Regime("lr3e-3", "3× the fine-tuning learning rate (3e-3)", optim={"lr": 3e-3}),
    Regime("weak-start", "a starting checkpoint of 250 steps instead of 1,000: a start that "
           "knows less of the task", pretrain_steps=250),
)


def regime(name: str) -> Regime:
    for r in REGIMES:
        if r.name == name:
            return r
    raise ValueError(f"unknown regime {name!r}; known: {[r.name for r in REGIMES]}")


def _summary(results: dict) -> dict:
    """What the search keeps of a regime's compare job: standard's pass@1 and ELBO, and the
    ceiling's paired gains."""
    std = results["methods"][BASELINE]
    ceiling = results.get("ceiling") or {}
    return {"seeds": results["seeds"],  # wall time: every invocation of the job, summed
            "seconds": sum(results.get("invocations") or [results["seconds"]]),
            "config": results["config"],
            "standard": {k: std[f"{k}_ci"] for k in ("pass_at_1", "test_loss")},
            "standard_sd": {k: std[f"{k}_sd"] for k in ("pass_at_1", "test_loss")},
            "ceiling": {k: ceiling.get(k) for k in ("pass_at_1", "test_loss")}}


def choose(regimes: dict) -> str | None:
    """The regime whose ceiling gain on pass@1 is positive and significant with the smallest p
    (None when no regime's is)."""
    best = None
    for name, r in regimes.items():
        d = r["ceiling"]["pass_at_1"]
        if d and d["mean"] > 0 and d["p"] < ALPHA and (best is None or d["p"] < best[1]):
            best = (name, d["p"])
    return None if best is None else best[0]


@dataclass
class CeilingSearch:
    """Runs the search into ``out_dir``: ``OUT/<regime>/`` per regime, then
    ``OUT/<chosen>-confirm/`` (an ordinary compare job's results.json and report)."""

    out_dir: Path
    regimes: tuple[Regime, ...] = REGIMES
    base: ComparePreset = PRESETS["full"]
    search_seeds: tuple[int, ...] = SEARCH_SEEDS
    confirm_seeds: tuple[int, ...] = CONFIRM_SEEDS
    confirm_methods: tuple[str, ...] = CONFIRM_METHODS
    workers: int = 1
    threads: int | None = None
    progress: bool = True

    def job(self, r: Regime, methods: tuple[str, ...], seeds, folder: str) -> CompareJob:
        out = Path(self.out_dir)
        return CompareJob(r.preset(self.base, methods), out / folder, seeds=seeds,
                          progress=self.progress, workers=self.workers, threads=self.threads,
                          shared_dir=out / r.start_folder(self.base),
                          runs_root=out / r.name / "runs")

    def run(self, confirm: bool = True) -> dict:
        started = time.perf_counter()
        regimes = {}
        for r in self.regimes:
            results = self.job(r, (BASELINE, CEILING), self.search_seeds, r.name).run()
            regimes[r.name] = {"what": r.what, "optim": r.optim,
                               "pretrain_steps": r.pretrain_steps or self.base.pretrain_steps,
                               **_summary(results)}
        chosen = choose(regimes)
        doc = {"base": self.base.name, "ceiling": CEILING, "alpha": ALPHA,
               "search_seeds": list(self.search_seeds), "regimes": regimes, "chosen": chosen,
               "confirm": None}
        if chosen is not None and confirm:
            picked = next(r for r in self.regimes if r.name == chosen)
            job = self.job(picked, self.confirm_methods, self.confirm_seeds, f"{chosen}-confirm")
            results = job.run()
            doc["confirm"] = {"regime": chosen, "results": f"{job.out_dir.name}/results.json",
                              **_summary(results)}
        doc["seconds"] = time.perf_counter() - started
        return doc


def _diff(d: dict | None, scale: float, digits: int) -> str:
    """A paired difference with its interval and p, in bold when significant."""
    if not d:
        return "–"
    text = f"{interval(d, scale=scale, digits=digits, sign='+')} ({p_eq(d['p'])})"
    return f"**{text}**" if d["p"] < ALPHA else text


def _rows(doc: dict, sep: str) -> list[tuple[str, dict]]:
    """(name, summary) per regime, then the confirmation's, named ``REGIME<sep>fresh seeds``."""
    rows = list(doc["regimes"].items())
    if doc.get("confirm"):
        c = doc["confirm"]
        rows.append((f"{c['regime']}{sep}fresh seeds", {**c, "what": "the confirmation"}))
    return rows


def search_table(doc: dict) -> list[str]:
    """One row per regime (and the confirmation on fresh seeds): standard's pass@1, its seed
    sd, and the ceiling's paired gains on pass@1 and the test ELBO (bold: significant)."""
    lines = [f"| regime | what changes | seeds | standard pass@1 % [95% CI] | seed sd | "
             f"{doc['ceiling']} − standard: pass@1, points | test ELBO, nats | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in _rows(doc, ", "):
        s = r["standard"]["pass_at_1"]
        lines.append(
            f"| {name} | {r['what']} | {len(r['seeds'])} | {100 * s['mean']:.1f} "
            f"[{100 * s['lo']:.1f}, {100 * s['hi']:.1f}] | {100 * r['standard_sd']['pass_at_1']['sd']:.1f} | "
            f"{_diff(r['ceiling']['pass_at_1'], 100, 1)} | {_diff(r['ceiling']['test_loss'], 1, 4)} | "
            f"{r['seconds'] / 60:.1f} min |")
    return lines


def plot_search(path: Path, doc: dict) -> None:
    """The ceiling's paired gains per regime with their 95% intervals: pass@1 and test ELBO."""
    from maskdiff.plotting import pyplot

    plt = pyplot()
    rows = _rows(doc, "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, scale, unit) in zip(axes, (("pass_at_1", 100, "points"),
                                             ("test_loss", 1, "nats"))):
        for i, (_, r) in enumerate(rows):
            d = r["ceiling"][key]
            if not d:
                continue
            color = "tab:green" if d["p"] < ALPHA else "tab:gray"
            ax.errorbar(i, scale * d["mean"], yerr=[[scale * (d["mean"] - d["lo"])],
                                                    [scale * (d["hi"] - d["mean"])]],
                        fmt="o", color=color, capsize=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
        what = "pass@1" if key == "pass_at_1" else "test ELBO (lower is better)"
        ax.set_title(f"{doc['ceiling']} − standard: {what}", fontsize=10)
        ax.set_ylabel(unit)
    fig.suptitle("noise ceiling per fine-tuning regime (95% CI; green: p < 0.05)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
