"""Likelihood evaluation: the standard error of the ELBO per forward pass, per scheme.

For a trained run, every example's ELBO term is estimated ``--reps`` times with independent
seeds at each budget of forward passes; the spread over the repetitions is the estimate's true
Monte-Carlo standard error at that budget (averaged over examples as a variance). Schemes
(``maskdiff.training.evaluate.ELBO_SCHEMES``, docs/method.md §8):

- ``mc``: plain Monte Carlo as LLaDA evaluates (iid U[eps, 1] rates, independent masks);
- ``stratified``: one rate per equal stratum of [eps, 1], Bernoulli masks;
- ``stratified-mirror``: one rate per stratum, MIRROR's two complementary masks per rate;
- ``sqrt-stratified`` (``-mirror``): one rate per quantile stratum of ``p(t) ∝ t^-1/2`` with
  importance weights (and MIRROR);
- ``lowvar`` (``-stratified``, ``-mirror``): LLaDA's low-variance estimator, exactly ``l``
  tokens masked (``l`` iid, stratified, or stratified with the complementary mask);
- ``ppots-stratified`` (``-mirror``): one rate per quantile stratum of a density fitted to the
  model, ``p(t) ∝ sqrt(E[l_t² | t])``, on the first ``FIT_EXAMPLES`` validation examples
  (cached in ``OUT/elbo_density``; its forward passes are reported, paid once per model).

It reports, per scheme, the SE at each budget, the passes that reach plain MC's SE at
``--target`` passes (log-log interpolation, 95% bootstrap interval over examples), whether the
per-example SE that the evaluator reports (``draws_se``) is calibrated, and the standard error of
the difference between two checkpoints with common random numbers vs independent draws.

    python benchmarks/elbo_se.py --run RUN --other RUN2 [--n 64] [--reps 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from maskdiff.data import Collator, CollatorConfig
from maskdiff.data.setup import load_task
from maskdiff.training.evaluate import (
    ELBO_SCHEMES, FIT_EXAMPLES, FIT_FORMS, FIT_MASKS, FIT_RATES, draws_se, elbo_draws,
    fit_elbo_density,
)
from maskdiff.training.runs import load_run


def estimates(model, batches, scheme, passes, reps, seed0, mask_id, normalizer, density=None):
    """(reps, n) estimates at ``passes`` forward passes, and (reps, n) their reported SEs."""
    chosen = ELBO_SCHEMES[scheme]
    rates = passes // chosen.passes(1)
    estimators = chosen.estimators(mask_token_id=mask_id, rates=rates, normalizer=normalizer,
                                   density=density if chosen.fitted else None)
    means, ses = [], []
    for rep in range(reps):
        draws = torch.cat([elbo_draws(model, b, estimators, seed0 + 1000 * rep) for b in batches])
        means.append(draws.mean(dim=1))
        ses.append(draws_se(draws, chosen.stratified))
    return torch.stack(means).numpy(), torch.stack(ses).numpy()


def fitted_density(args, loaded, collate):
    """The fitted schemes' density on the first validation examples, and what it cost."""
    held = list(load_task(loaded.config.data).split("val"))[:FIT_EXAMPLES]
    started = time.time()
    density = fit_elbo_density(loaded.model, collate(list(enumerate(held))),
                               mask_token_id=loaded.tokenizer.mask_id, seed=args.seed,
                               normalizer=loaded.config.estimator.normalizer,
                               cache_dir=Path(args.out) / "elbo_density", form=args.fit_form,
                               key={"run": str(args.run)})
    return density, {"form": args.fit_form, "examples": len(held), "rates": FIT_RATES,
                     "masks": FIT_MASKS, "forward_passes": len(held) * FIT_RATES * FIT_MASKS,
                     "seconds": time.time() - started}


def passes_to_reach(budgets, variances, target):
    """Forward passes at which the (log-log interpolated) variance curve reaches ``target``."""
    logk, logv = np.log(budgets), np.log(variances)
    if target >= variances[0]:
        return float(budgets[0] * variances[0] / target)  # below the first budget: 1/K scaling
    for i in range(len(budgets) - 1):
        if variances[i + 1] <= target:
            frac = (math.log(target) - logv[i]) / (logv[i + 1] - logv[i])
            return float(math.exp(logk[i] + frac * (logk[i + 1] - logk[i])))
    return float(budgets[-1] * variances[-1] / target)  # beyond the last budget: 1/K scaling


def summarise(per_example_var, budgets, target_var, rng, n_boot=1000):
    """Per budget SE (sqrt of the mean per-example variance) and passes-to-target with a CI."""
    mean_var = per_example_var.mean(axis=1)
    point = passes_to_reach(budgets, mean_var, target_var.mean())
    n = per_example_var.shape[1]
    boot = []
    for _ in range(n_boot):  # resample examples: the curve and the target together
        idx = rng.integers(0, n, n)
        boot.append(passes_to_reach(budgets, per_example_var[:, idx].mean(axis=1),
                                    target_var[idx].mean()))
    return mean_var, point, np.percentile(boot, [2.5, 97.5])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run directory (maskdiff train)")
    p.add_argument("--other", help="a second run (same task) for the common-random-numbers check")
    p.add_argument("--n", type=int, default=32, help="test examples")
    p.add_argument("--reps", type=int, default=6, help="independent repetitions per budget")
    p.add_argument("--budgets", default="2,4,8,16,32", help="forward passes per example")
    p.add_argument("--target", type=int, default=128, help="plain MC's budget to match")
    p.add_argument("--schemes", default="mc,stratified,sqrt-stratified,sqrt-stratified-mirror,"
                   "lowvar,lowvar-stratified,lowvar-mirror,ppots-stratified,"
                   "ppots-stratified-mirror")
    p.add_argument("--crn-schemes", default="mc,stratified-mirror",
                   help="schemes of the common-random-numbers check (with --other)")
    p.add_argument("--fit-form", choices=FIT_FORMS, default="moment",
                   help="the fitted schemes' density form (fit_elbo_density)")
    p.add_argument("--against", default="sqrt-stratified-mirror",
                   help="paired comparison: each scheme's saving over this one's, bootstrapped "
                        "over the same resampled examples")
    p.add_argument("--merge", help="an earlier elbo_se.json of the same run and settings: its "
                   "schemes not measured here are added (fitted ones named with their fit form)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/elbo_se")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    loaded = load_run(args.run, "best")
    config, tok = loaded.config, loaded.tokenizer
    examples = list(load_task(config.data).split("test"))[: args.n]
    collate = Collator(tok, CollatorConfig(max_len=config.data.max_len,
                                           pad_policy=config.data.pad_policy,
                                           overflow=config.data.overflow))
    batches = [collate([(start + k, ex) for k, ex in enumerate(examples[start:start + 64])])
               for start in range(0, len(examples), 64)]
    budgets = [int(b) for b in args.budgets.split(",")]
    schemes = args.schemes.split(",")
    normalizer = config.estimator.normalizer
    common = dict(mask_id=tok.mask_id, normalizer=normalizer)
    density, fit = (fitted_density(args, loaded, collate)
                    if any(ELBO_SCHEMES[s].fitted for s in schemes) else (None, None))
    result = {"run": args.run, "n": len(examples), "reps": args.reps, "budgets": budgets,
              "target": args.target, "seed": args.seed, "threads": args.threads,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "torch": torch.__version__, "normalizer": normalizer, "density_fit": fit,
              "schemes": {}}
    variances, reported = {}, {}
    for scheme in schemes:
        per_budget, se_ratio = [], []
        for k in budgets:
            est, ses = estimates(loaded.model, batches, scheme, k, args.reps, args.seed,
                                 density=density, **common)
            var = est.var(axis=0, ddof=1)  # (n,) per-example variance over repetitions
            per_budget.append(var)
            several = k > ELBO_SCHEMES[scheme].passes(1)  # an SE needs two draws of t
            se_ratio.append(float(np.mean(ses ** 2) / var.mean()) if several else float("nan"))
            print(f"{scheme:18s} passes {k:4d}  SE {math.sqrt(var.mean()):.4f}", flush=True)
        variances[scheme], reported[scheme] = np.stack(per_budget), se_ratio
    # plain MC's variance is exactly var_1 / K: its target is estimated from all its budgets
    mc = variances["mc"]
    var1 = (mc * np.array(budgets)[:, None]).mean(axis=0)  # (n,) single-pass variance
    target_var = var1 / args.target
    score(result, variances, reported, target_var, np.random.default_rng(args.seed))
    if args.against in variances:
        result["paired"] = paired(variances, np.array(budgets, float), target_var, args.against,
                                  np.random.default_rng(args.seed))
    result["target_se"] = math.sqrt(target_var.mean())
    if args.merge:
        merge(result, json.loads(Path(args.merge).read_text()), args.merge)
    if args.other:
        result["crn"] = crn_check(loaded.model, load_run(args.other, "best").model, batches,
                                  args.reps, args.seed, schemes=args.crn_schemes.split(","),
                                  **common)
    result["seconds"] = time.time() - started
    write(result, Path(args.out))
    return 0


def score(result, variances, reported, target_var, rng):
    """Each scheme's SE per budget and passes (and saving) to reach the target, with CIs."""
    budgets, target = np.array(result["budgets"], float), result["target"]
    for scheme, var in variances.items():
        mean_var, point, ci = summarise(var, budgets, target_var, rng)
        result["schemes"][scheme] = {
            "se": [math.sqrt(v) for v in mean_var], "passes_for_target": point,
            "passes_for_target_ci95": ci.tolist(), "saving": target / point,
            "saving_ci95": [target / ci[1], target / ci[0]],
            "reported_var_over_true_var": reported[scheme], "per_example_var": var.tolist()}


def paired(variances, budgets, target_var, against, rng, n_boot=1000):
    """Per scheme: passes(``against``) / passes(scheme) to reach the target, and its 95%
    interval with both curves and the target on the same resampled examples (paired)."""
    n = target_var.shape[0]
    idx = [rng.integers(0, n, n) for _ in range(n_boot)]

    def passes(var, i):
        return passes_to_reach(budgets, var[:, i].mean(axis=1), target_var[i].mean())

    out = {"against": against}
    for name, var in variances.items():
        ratios = [passes(variances[against], i) / passes(var, i) for i in idx]
        every = np.arange(n)
        out[name] = {"ratio": passes(variances[against], every) / passes(var, every),
                     "ratio_ci95": np.percentile(ratios, [2.5, 97.5]).tolist()}
    return out


def merge(result: dict, earlier: dict, where: str) -> None:
    """Add ``earlier``'s schemes to ``result`` (same run, examples, repetitions, budgets and
    seed: plain MC's draws, hence the target, are then identical); a fitted scheme is renamed
    ``NAME (FORM fit)``."""
    for field in ("run", "n", "reps", "budgets", "target", "seed", "normalizer"):
        if earlier.get(field) != result[field]:
            raise ValueError(f"{where}: field {field!r} is {earlier.get(field)!r}, this run's "
                             f"is {result[field]!r}: not comparable")
    # files written before --fit-form record no form: their fits were EPR's
    form = (earlier.get("density_fit") or {}).get("form", "epr")
    result["merged"] = {"file": where, "density_fit": earlier.get("density_fit"),
                        "seconds": earlier.get("seconds"), "target_se": earlier["target_se"]}
    for name, entry in earlier["schemes"].items():
        key = f"{name} ({form} fit)" if ELBO_SCHEMES[name].fitted else name
        if key not in result["schemes"]:
            result["schemes"][key] = entry


def crn_check(model_a, model_b, batches, reps, seed, *, schemes, mask_id, normalizer, passes=8):
    """SE of the per-example difference of two models' ELBOs: shared draws vs independent."""
    out = {"passes": passes}
    for scheme in schemes:
        a, _ = estimates(model_a, batches, scheme, passes, reps, seed, mask_id, normalizer)
        b_same, _ = estimates(model_b, batches, scheme, passes, reps, seed, mask_id, normalizer)
        b_indep, _ = estimates(model_b, batches, scheme, passes, reps, seed + 7, mask_id, normalizer)
        crn = (a - b_same).var(axis=0, ddof=1).mean()
        indep = (a - b_indep).var(axis=0, ddof=1).mean()
        out[scheme] = {"se_crn": math.sqrt(crn), "se_independent": math.sqrt(indep),
                       "variance_ratio": float(indep / crn),
                       "mean_difference": float((a - b_same).mean())}
    return out


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "elbo_se.json").write_text(json.dumps(result, indent=2) + "\n")
    budgets = result["budgets"]
    print(f"\nper-example SE of the ELBO (nats/token) over {result['n']} examples, "
          f"{result['reps']} repetitions; target: plain MC at {result['target']} passes "
          f"(SE {result['target_se']:.4f})")
    print("| scheme | " + " | ".join(f"{k} passes" for k in budgets)
          + f" | passes for MC@{result['target']}'s SE (95% CI) | saving |")
    print("|---" * (len(budgets) + 3) + "|")
    for name, s in result["schemes"].items():
        lo, hi = s["passes_for_target_ci95"]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in s["se"])
              + f" | {s['passes_for_target']:.1f} ({lo:.1f}–{hi:.1f}) | {s['saving']:.1f}× |")
    if "crn" in result:
        for name, c in result["crn"].items():
            if isinstance(c, dict):
                print(f"difference of two checkpoints, {name} @ {result['crn']['passes']} passes: "
                      f"SE {c['se_crn']:.4f} shared draws vs {c['se_independent']:.4f} independent "
                      f"(variance ÷ {c['variance_ratio']:.1f})")
    plot(result, out / "elbo_se.png")


def plot(result: dict, path: Path) -> None:
    from maskdiff.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, s in result["schemes"].items():
        ax.loglog(result["budgets"], s["se"], marker="o", label=name)
    ax.axhline(result["target_se"], color="grey", ls="--", lw=1,
               label=f"plain MC at {result['target']} passes")
    ax.set_xticks(result["budgets"], [str(b) for b in result["budgets"]])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("forward passes per example")
    ax.set_ylabel("SE of the per-example ELBO (nats/token)")
    ax.set_title("ELBO standard error per forward pass")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
