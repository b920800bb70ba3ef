"""``report.md`` of a ``maskdiff compare`` job, and the tables the README shows, from
``results.json`` alone (docs/method.md §11). The table functions return Markdown lines;
:mod:`maskdiff.experiments.readme_tables` puts them into the README from ``docs/results/``.
"""

from __future__ import annotations

from pathlib import Path

from maskdiff.core.methods import BASELINE
from maskdiff.experiments.compare_ceiling import ceiling_section
from maskdiff.experiments.prior_policy import prior_section
from maskdiff.experiments.compare_plots import write_plots
from maskdiff.experiments.compare_summary import paired_labels
from maskdiff.experiments.compare_eval import predicted_multiplier
from maskdiff.fileio import atomic_write_text

ALPHA = 0.05


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(p) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def p_eq(p) -> str:
    """``p = 0.12`` / ``p < 0.001``."""
    text = _p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def multiplier(comp: dict | None) -> str:
    """A compute multiplier with its interval; "not reached (< bound)" when censored."""
    if not comp:
        return "–"
    ci = "" if comp.get("lo") is None else f" [{comp['lo']:.2f}, {comp['hi']:.2f}]"
    if not comp.get("reached", comp["multiplier"] > 0):
        bound = comp.get("upper_bound")
        return "not reached" + ("" if bound is None else f" (< {bound:.2f})") + ci
    return f"{comp['multiplier']:.2f}{ci}"


def _ci(d: dict | None, fmt, key: str = "mean") -> str:
    if not d:
        return "–"
    return f"{fmt(d[key])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def _signed(fmt):
    return lambda x: "–" if x is None else ("+" if x > 0 else "") + fmt(x)


def _sd_cell(sd: dict | None, fmt) -> str:
    """The seed sd with its bootstrap interval and the chi-square one (normal seeds)."""
    if not sd:
        return "–"
    if sd.get("lo") is None:
        return fmt(sd["sd"])
    return (f"{fmt(sd['sd'])} [{fmt(sd['lo'])}, {fmt(sd['hi'])}]; "
            f"χ² [{fmt(sd['chi2_lo'])}, {fmt(sd['chi2_hi'])}]")


def _floor(m: dict, key: str, fmt) -> str:
    floor = m.get(f"{key}_floor")
    if not floor:
        return "–"
    half = floor.get("split_half", {})
    share = half.get("training_share")
    test = "" if share is None else f"; {100 * min(1.0, max(0.0, 1 - share)):.0f}%"
    return f"{fmt(floor['item_se'])}{test}"


def spread_cells(vs: dict) -> tuple[str, str]:
    """``("ratio [lo, hi]", "BF p / PM p")`` of a comparison's spread, or dashes."""
    sp = vs.get("spread") or {}
    if sp.get("ratio") is None:
        return "–", "–"
    ci = "" if sp.get("lo") is None else f" [{sp['lo']:.2f}, {sp['hi']:.2f}]"
    return f"{sp['ratio']:.2f}{ci}", f"{_p(sp['p_brown_forsythe'])} / {_p(sp['p_pitman_morgan'])}"


def pass_table(results: dict) -> list[str]:
    """pass@1 per method: mean, paired difference, seed sd, floor, spread ratio, worst seed."""
    lines = ["| method | pass@1 % [95% CI] | Δ vs standard, points [95% CI] (p) | seed sd "
             "[bootstrap 95% CI]; χ² CI | eval floor: item SE; test-set share | sd ratio "
             "[95% CI] | BF / PM p "
             "| worst − standard best | fwd / std |", "|---|---|---|---|---|---|---|---|---|"]
    for label, m in results["methods"].items():
        if not m.get("pass_at_1_stats"):
            continue
        vs = m.get("vs_standard", {})
        diff = vs.get("pass_at_1", {}).get("difference")
        is_base = m["method"] == BASELINE
        delta = "" if is_base or not diff else \
            f"{_ci(diff, _signed(_pct))} ({_p(diff['p'])})"
        ratio, tests = ("", "") if is_base else spread_cells(vs.get("pass_at_1", {}))
        wb = vs.get("worst_minus_standard_best")
        lines.append(
            f"| {label} | {_ci(m.get('pass_at_1_ci'), _pct)} | {delta} | "
            f"{_sd_cell(m.get('pass_at_1_sd'), _pct)} | {_floor(m, 'pass_at_1', _pct)} | "
            f"{ratio} | {tests} | {'' if is_base or wb is None else _signed(_pct)(wb)} | "
            f"{vs.get('fwd_ratio', 1.0):.2f} |")
    return lines


def elbo_table(results: dict) -> list[str]:
    """Test ELBO per method: mean, paired difference, seed sd, floor, spread, compute multiplier."""
    lines = ["| method | test ELBO [95% CI] | Δ vs standard [95% CI] (p) | seed sd "
             "[bootstrap 95% CI]; χ² CI | "
             "eval floor: item SE; test-set share | sd ratio [95% CI] | BF / PM p | "
             "compute multiplier [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    f4 = lambda x: _num(x, 4)  # noqa: E731
    for label, m in results["methods"].items():
        vs = m.get("vs_standard", {})
        diff = vs.get("test_loss", {}).get("difference")
        is_base = m["method"] == BASELINE
        kind = "" if m["test_loss_kind"] == "ELBO" else f" ({m['test_loss_kind']})"
        delta = "" if is_base or not diff or kind else f"{_ci(diff, _signed(f4))} ({_p(diff['p'])})"
        ratio, tests = ("", "") if is_base or kind else spread_cells(vs.get("test_loss", {}))
        comp = vs.get("compute")
        mult = "" if not comp or is_base else multiplier(comp)
        fmt = f4 if not kind else (lambda x: "–" if x is None else f"{x:.2e}")
        lines.append(
            f"| {label} | {_ci(m.get('test_loss_ci'), fmt)}{kind} | {delta} | "
            f"{_sd_cell(m.get('test_loss_sd'), fmt)} | "
            f"{_floor(m, 'test_loss', fmt)} | {ratio} | {tests} | {mult} |")
    return lines


def noise_table(results: dict) -> list[str]:
    """Gradient noise scale per method and the compute multiplier it predicts vs the measured."""
    noise = results.get("grad_noise") or {}
    rows = noise.get("methods") or {}
    base = rows.get(BASELINE, {}).get("b_noise")
    batch = results["config"]["batch_size"]
    lines = [f"| method | tr Σ (per example) | B_noise = tr Σ / \\|G\\|² | predicted multiplier "
             f"at batch {batch} | measured multiplier [95% CI] |", "|---|---|---|---|---|"]
    for name, v in rows.items():
        m = next((mm for mm in results["methods"].values()
                  if mm["method"] == name and mm["task"] == results["task"]["name"]), {})
        comp = m.get("vs_standard", {}).get("compute")
        pred = (predicted_multiplier(base, v["b_noise"], batch, v["forward_passes"])
                if base and v.get("b_noise") else None)
        measured = "" if not comp or name == BASELINE else multiplier(comp)
        lines.append(f"| {name} | {v['trace_cov']:.3g} ± {v['trace_cov_se']:.2g} | "
                     f"{_num(v.get('b_noise'), 1)} | {_num(pred, 2)} | {measured} |")
    return lines


# (key, name, unit, format, lower is better) of the two scores every comparison reports.
_METRICS = (("pass_at_1", "pass@1", " points", _pct, False),
            ("test_loss", "test ELBO", "", lambda x: _num(x, 4), True))


def _words_mean(label: str, diff: dict, unit: str, fmt, better_low: bool,
                than: str = BASELINE) -> str:
    sig = diff["p"] < ALPHA
    direction = (diff["mean"] < 0) == better_low
    verdict = (f"**significantly {'better' if direction else 'worse'}** than {than}"
               if sig else f"not significantly different from {than}")
    return (f"{label} {_signed(fmt)(diff['mean'])} [{_signed(fmt)(diff['lo'])}, "
            f"{_signed(fmt)(diff['hi'])}]{unit} (paired t, {p_eq(diff['p'])}): {verdict}")


def _words_spread(sp: dict, than: str = BASELINE) -> str:
    if not sp or sp.get("ratio") is None:
        return ""
    sig = min(sp["p_brown_forsythe"] or 1, sp["p_pitman_morgan"] or 1) < ALPHA
    ci = "" if sp.get("lo") is None else f" [{sp['lo']:.2f}, {sp['hi']:.2f}]"
    verdict = (f"the spread is **significantly {'smaller' if sp['ratio'] < 1 else 'larger'}**"
               if sig else f"the spread is not distinguishable from {than}'s")
    return f"; sd ratio {sp['ratio']:.2f}{ci}: {verdict}"


def paired_elbo_methods(results: dict):
    """``(label, vs_standard)`` of each method compared with standard on the same ELBO (the
    causal twin, scored by its NLL, is left out)."""
    for label in paired_labels(results):
        m = results["methods"][label]
        if m["test_loss_kind"] == "ELBO":
            yield label, m["vs_standard"]


def _metric_words(vs: dict, than: str = BASELINE) -> list[str]:
    """pass@1 and test ELBO against ``than`` in words (and their spreads)."""
    parts = []
    for key, name, unit, fmt, low in _METRICS:
        diff = (vs.get(key) or {}).get("difference")
        if diff:
            parts.append(_words_mean(name, diff, unit, fmt, low, than)
                         + _words_spread(vs[key].get("spread"), than))
    return parts


def words(results: dict) -> list[str]:
    """One plain sentence per method and metric: the effect with its CI, significant or not."""
    out = []
    for label, vs in paired_elbo_methods(results):
        parts = _metric_words(vs)
        comp = vs.get("compute")
        if comp:
            reached = comp.get("reached", comp["multiplier"] > 0)
            parts.append(("does not reach standard's final validation ELBO within its budget "
                          "(compute multiplier " if not reached else
                          "compute multiplier to standard's final validation ELBO ")
                         + multiplier(comp) + (")" if not reached else "")
                         + ("" if not reached else
                            (": **less compute** than standard" if comp["lo"] and comp["lo"] > 1
                             else ": **more compute** than standard" if comp["hi"] and comp["hi"] < 1
                             else ": not distinguishable from standard's")))
        out.append(f"- **{label}** — " + "; ".join(parts) + ".")
    return out


def equal_compute_table(results: dict) -> list[str]:
    """Each k-view method against standard with k times the batch: the same forward passes per
    step, so a difference here is what the estimator buys at equal compute."""
    rows = [(label, m["vs_equal_compute"]) for label, m in results["methods"].items()
            if m.get("vs_equal_compute")]
    if not rows:
        return []
    lines = ["| method | against | pass@1 Δ, points [95% CI] (p) | test ELBO Δ [95% CI] (p) | "
             "test ELBO sd ratio [95% CI] | compute multiplier to its final validation ELBO "
             "[95% CI] |", "|---|---|---|---|---|---|"]
    for label, vs in rows:
        cells = []
        for key, _, _, fmt, _ in _METRICS:
            d = (vs.get(key) or {}).get("difference")
            cells.append("–" if not d else f"{_ci(d, _signed(fmt))} ({_p(d['p'])})")
        ratio = spread_cells(vs.get("test_loss") or {})[0]
        lines.append(f"| {label} | {vs['baseline']} | {cells[0]} | {cells[1]} | {ratio} | "
                     f"{multiplier(vs.get('compute'))} |")
    return lines


def equal_compute_words(results: dict) -> list[str]:
    """The equal-compute table in words: better, worse or not distinguishable, per metric."""
    out = []
    for label, m in results["methods"].items():
        vs = m.get("vs_equal_compute")
        if not vs:
            continue
        parts = _metric_words(vs, than=vs["baseline"])
        out.append(f"- **{label}** at equal compute — " + "; ".join(parts) + ".")
    return out


def power_lines(results: dict) -> list[str]:
    """The power calculation, in words."""
    power = results.get("power") or {}
    out = []
    for key, unit, fmt in (("pass_at_1", "points", _pct), ("test_loss", "nats", lambda x: f"{x:.4f}")):
        m = power.get("metrics", {}).get(key)
        if not m:
            continue
        dd = ", ".join(f"{n} seeds: {fmt(v)}" for n, v in m["detectable_difference"].items())
        out.append(f"- {key}: sd of a paired difference {fmt(m['sd_diff'])} {unit} (median over "
                   f"methods); smallest difference detected with 80% power at 5% — {dd} {unit}.")
    if power.get("detectable_sd_ratio"):
        dr = ", ".join(f"{n} seeds: {v:.2f}" for n, v in power["detectable_sd_ratio"].items())
        out.append(f"- spread: smallest sd ratio (either way) the F test detects with 80% power "
                   f"— {dr}.")
    return out


def _header(results: dict) -> list[str]:
    cfg, task = results["config"], results["task"]
    dec = cfg["decoding"]
    source = (f"your data `{task['train_file']}` ({task['n_train']} train / {task['n_val']} "
              f"validation = test rows)" if task.get("train_file") else
              f"task `{task['name']}` {task.get('difficulty') or cfg['difficulty']}")
    decoder = ("the whole region after the prompt, one token per step" if not dec["gen_length"]
               else f"{dec['gen_length']} positions, blocks of {dec['block_length']}, "
                    f"{dec['steps']} steps")
    return [
        f"# maskdiff compare — preset `{results['preset']}`", "",
        f"Task: {source}. Model d_model={cfg['model']['d_model']}, {cfg['model']['n_layers']} "
        f"layers; starting checkpoint {cfg['pretrain_steps']} steps of the standard objective. "
        f"Fine-tuning {cfg['finetune_steps']} steps × batch {cfg['batch_size']} (lr "
        f"{cfg['lr']}), validation ELBO every {cfg['eval_every']} steps on {cfg['n_val']} "
        f"examples, the best checkpoint scored. {len(results['seeds'])} paired seeds "
        f"{results['seeds']} (seed s = the same data order, rates and masks streams for every "
        f"method). pass@1 on {cfg['n_test']} test problems (greedy low-confidence decoding: "
        f"{decoder}); test ELBO on {cfg['n_test_elbo']} test examples × {cfg['elbo_rates']} "
        f"stratified rates, the same draws for every run.", *block_lines(results),
        f"Machine: {results['machine']}; {_processes(results)}; "
        f"{wall_time(results)}.", ""]


def block_lines(results: dict) -> list[str]:
    """What a block job (``--block-size``) changes, in words; nothing for a plain job."""
    block = results.get("block")
    if not block:
        return []
    scored = [r.get("pass_at_1") is not None for r in results.get("runs", [])
              if r.get("block_size") is not None]
    how = ("pass@1 decoded under the block layout" if scored and all(scored) else
           "**pass@1 not scored** (this maskdiff's pass@1 has no block decoder; rerun the job "
           "with one: the runs are rescored, not retrained)" if not any(scored) else
           "pass@1 only partly scored (rerun the job)")
    return [f"**Block diffusion, block size {block['block_size']}** (one rate per "
            f"{block['rates']}): every diffusion method trains on `[xt ; x0]` (2L input "
            f"positions) from the plain masked-diffusion starting checkpoint; the test and "
            f"validation losses are the **block ELBO** (not comparable with a plain job's "
            f"ELBO); {how}. The causal twin, if any, is the plain job's run."]


def _processes(results: dict) -> str:
    """How the runs trained: worker processes × intra-op threads (float results depend on it)."""
    workers, threads = results.get("workers", 1), results.get("threads")
    shown = "?" if threads is None else threads
    how = (f"{workers} worker processes × {shown} thread(s) each" if workers > 1
           else f"one process, {shown} thread(s)")
    used = sorted({r["threads"] for r in results.get("runs", []) if r.get("threads") is not None})
    if used and used != [threads]:  # runs reused from an earlier invocation
        how += f"; the runs trained with {', '.join(map(str, used))} thread(s)"
    return how


def wall_time(results: dict) -> str:
    """The job's wall time, over its invocations (a resumed or re-summarised job adds one)."""
    runs = results.get("invocations") or [results["seconds"]]
    if len(runs) == 1:
        return f"whole job {runs[0] / 60:.1f} min"
    return (f"whole job {runs[0] / 60:.1f} min, then {len(runs) - 1} more invocation(s) of "
            f"{sum(runs[1:]) / 60:.1f} min (finished runs reused)")


def write_report(out_dir: Path, results: dict) -> None:
    images = write_plots(out_dir, results)
    lines = _header(results)
    if any(m.get("pass_at_1_stats") for m in results["methods"].values()):
        lines += ["## pass@1", ""] + pass_table(results) + [""]
    lines += ["## Test ELBO and compute to target", ""] + elbo_table(results) + [""]
    lines += ["Δ: method − standard over the paired seeds (paired t interval and p; lower ELBO "
              "is better). Seed sd: bootstrap (BCa) interval over seeds (too narrow with few seeds) and "
              "the chi-square interval (exact for normal seeds). Eval floor: the "
              "bootstrap SE over test items of one run's score, and the split-half estimate of "
              "the share of the seed variance that the finite test set adds. sd ratio: "
              "sd(method) / sd(standard) with the interval inverting the Pitman–Morgan test; "
              "BF = Brown–Forsythe (independent samples), PM = Pitman–Morgan (paired). Compute "
              "multiplier: forward passes standard needs to reach its own final validation ELBO "
              "over those the method needs (> 1 = less compute; 'not reached' = not within the "
              "budget, with the bound reaching it at the end would give), seeds resampled. Tests are two-sided at 5%, not adjusted for the number of methods.",
              "", "## In words", ""] + words(results) + [""]
    if equal := equal_compute_table(results):
        lines += ["## Equal compute", "", "Each two-view method against standard with twice the "
                  "batch (the same forward passes), paired by seed:", "", *equal, "",
                  *equal_compute_words(results), ""]
    lines += ceiling_section(results) + prior_section(results)
    if results.get("grad_noise"):
        lines += ["## Gradient noise scale on the starting checkpoint", ""] + noise_table(results)
        lines += ["", "Predicted multiplier: (1 + B_std/B) / ((1 + B_m/B) · forward passes per "
                  "example), from steps ∝ 1 + B_noise/B (McCandlish et al. 2018).", ""]
    lines += ["## Power", ""] + power_lines(results) + [""]
    lines += _per_seed(results) + _extras(results)
    lines += [f"![{name}]({name})" for name in images]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def _per_seed(results: dict) -> list[str]:
    seeds = results["seeds"]
    lines = ["## Per seed (pass@1 % / test loss)", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for label, m in results["methods"].items():
        by_seed = dict(zip(m["seeds"], zip(m["pass_at_1"], m["test_loss"])))
        cells = [f"{_pct(by_seed[s][0])} / {by_seed[s][1]:.4f}" if s in by_seed else ""
                 for s in seeds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _extras(results: dict) -> list[str]:
    lines = []
    if results.get("ppots"):
        p, block = results["ppots"], results.get("block")
        folder = f"ppots-b{block['block_size']}" if block else "ppots"
        line = (f"P-POTS: estimated once on the starting checkpoint in {p['seconds']:.1f} s "
                f"({p['forward_passes']} forward passes), EPR KL {p['epr']['kl']:.2e}, "
                f"poly7 KL {p['poly7']['kl']:.2e}; see `{folder}/ppots.png`.")
        if p.get("cost_fraction") is not None:
            line += (f" Its cost is {100 * p['cost_fraction']:.1f}% of one P-POTS run's "
                     "training time (it serves every P-POTS run of the job).")
        lines += [line, ""]
    if results.get("window"):
        lo, hi = results["window"]
        lines += [f"Signal-rich window: U[{lo:.3f}, {hi:.3f}] (t* of the task's character "
                  "n-grams).", ""]
    return lines
