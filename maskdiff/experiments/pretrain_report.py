"""``report.md`` and ``curves.png`` of ``maskdiff compare --regime pretrain``, from
``results.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskdiff.experiments.report_md import interval, write_report_md


def _ci(d: dict | None, digits: int = 4, sign: str = "") -> str:
    return interval(d, digits=digits, sign=sign, p=True)


def multiplier_cell(row: dict, sep: str = "; ") -> str:
    """``1.32 [1.10, 1.61]``; censored: ``not reached (2/6 seeds); ≤ 0.85`` (``sep`` before
    the bound)."""
    if row["multiplier"] is None:
        bound = f"{sep}≤ {row['upper_bound']:.2f}" if row.get("upper_bound") is not None else ""
        return f"not reached ({row['censored']}/{row['n']} seeds){bound}"
    if row["lo"] is None:
        return f"{row['multiplier']:.2f}"
    return f"{row['multiplier']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}]"


def _label(name: str, m: dict) -> str:
    w = m.get("window")
    return f"{name} [{w[0]:.3f}, {w[1]:.3f}]" if name == "window" and w else name


def setup_lines(results: dict) -> list[str]:
    cfg, task, train = results["config"], results["task"], results["config"]["train"]
    pred = results.get("prediction")
    source = (f"`{task['train_file']}` (its held-out rows are the validation and the test split)"
              if task.get("train_file")
              else f"the World English Bible ({task['chunk_chars']}-character chunks)")
    lines = [
        f"Pretraining from scratch on {source}: {task['n_train']} training examples, "
        f"{task['tokenizer']} tokenizer ({task['vocab_size']} tokens); a "
        f"{train['model']['n_layers']}-layer, {train['model']['d_model']}-wide transformer, "
        f"{train['optim']['max_steps']} steps × batch {train['optim']['batch_size']} "
        f"(`standard@2x`: twice the batch), lr {train['optim']['lr']}, for every method; "
        f"{len(results['seeds'])} paired seeds {results['seeds']} (seed s: the same "
        "initialisation, data order and rate/mask streams for every method).",
        "",
        f"Yardstick: the full-range test ELBO over U[eps, 1] (nats per token) on "
        f"{cfg['n_test']} test examples × {cfg['test_rates']} stratified rates with common "
        f"random numbers (seed {cfg['test_seed']}), at initialisation and every "
        f"{train['optim']['max_steps'] // cfg['curve_points']} steps. Compute to target: "
        "forward passes to reach standard's (same seed) best test ELBO at "
        + ", ".join(f"{q:g}" for q in cfg["targets"]) + " of its training, interpolated on "
        "each seed's curve; multiplier = mean standard passes / mean method passes (> 1: "
        "faster), 95% paired bootstrap CI over seeds; 'not reached': censored seeds and the "
        "largest multiplier the method could have.",
    ]
    if pred:
        lines += ["", f"Signal-rich window: t* = {pred['t_star']:.3f} "
                      f"(`predict-window`, {pred['level']} level, {pred['corpus_chars']} "
                      f"characters of the training split) → `window` trains on "
                      f"[{pred['window'][0]:.3f}, {pred['window'][1]:.3f}]."]
    lines += ["", f"{results['machine']}; {results['workers']} worker(s) × "
                  f"{results['threads']} thread(s); {results['seconds'] / 60:.1f} min."]
    return lines


def tables(results: dict) -> list[str]:
    fractions = results["config"]["targets"]
    head = ("| method | cost × | final test ELBO [95% CI] | Δ vs standard [95% CI] (p) | "
            + " | ".join(f"compute × to std@{q:g} [95% CI]" for q in fractions) + " |")
    lines = [head, "|" + "---|" * (4 + len(fractions))]
    for name, m in results["methods"].items():
        if m["loss_kind"] != "ELBO":
            continue
        vs = m.get("vs_standard") or {}
        ctt = vs.get("compute_to_target") or []
        cost = results["config"]["costs"].get(name, 1)
        cells = [_label(name, m), str(cost), _ci(m["final_ci"]),
                 _ci(vs.get("final_test_loss"), 4, "+") if vs else "–",
                 *([multiplier_cell(r) for r in ctt] if ctt else ["–"] * len(fractions))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gen(m: dict, key: str, sign: str = "+") -> str:
    g = (m.get("generation") or {}).get(key) or {}
    if g.get("mean") is None:
        return "–"
    vs = g.get("vs_standard")
    return f"{g['mean']:.3f}" + (f" ({_ci(vs, 3, sign)})" if vs else "")


def generation_table(results: dict) -> list[str]:
    """Per diffusion method: the judge's NLL per token of its samples from all-masks and of
    its continuations, distinct-2, and the probe's masked-token accuracy at each rate; each
    with the paired difference to standard."""
    rows = {k: m for k, m in results["methods"].items() if m.get("generation")}
    if not rows:
        return []
    rates = sorted({k.split("_")[1] for m in rows.values() for k in m["generation"]
                    if k.startswith("probe_") and k.endswith("_accuracy")}, key=float)
    lines = ["| method | judge NLL, from all-masks (Δ vs std [CI], p) | judge NLL, continuations "
             "| distinct-2, from all-masks | "
             + " | ".join(f"probe r={r}: masked accuracy" for r in rates) + " |",
             "|" + "---|" * (4 + len(rates))]
    for name, m in rows.items():
        lines.append("| " + " | ".join([
            _label(name, m), _gen(m, "unconditional_nll"), _gen(m, "continuation_nll"),
            _gen(m, "unconditional_distinct_2"),
            *[_gen(m, f"probe_{r}_accuracy") for r in rates]]) + " |")
    return lines


def judge_lines(results: dict) -> list[str]:
    ar = results["methods"].get("ar")
    if ar is None:
        return []
    table = generation_table(results)
    return ["## Generation, judged by the causal twin", "",
            f"The causal twin (`ar`) trained on the same data and seeds: final test NLL "
            f"{_ci(ar['final_ci'])} nats per token (exact; not comparable with the ELBOs). It "
            "scores each diffusion run's final model (maskdiff.training.judge): samples decoded "
            "from all-masks and continuations of the first half of test chunks (its NLL per "
            "token: lower is more like the corpus; distinct-2 guards against repetition), and "
            "the partial-mask probe (greedy fills of test text masked at rate r).", "",
            *(table or ["No run was judged (preset judge None)."]), ""]


def write_report(out_dir: Path, results: dict) -> Path:
    power = results.get("power") or {}
    lines = [f"# compare --regime pretrain — preset `{results['preset']}`", "",
             *setup_lines(results), "", "## Test ELBO and compute to target", "",
             *tables(results), "", "![test ELBO against forward passes](curves.png)", "",
             *judge_lines(results)]
    if power:
        lines += ["## Power", "", "Smallest final-ELBO difference the paired t-test detects "
                  "with 80% power at these seeds, from each method's seed sd of the paired "
                  "difference:", "", "| method | sd of Δ | detectable Δ |", "|---|---|---|"]
        lines += [f"| {k} | {v['sd_diff']:.4f} | {v['detectable']:.4f} |"
                  for k, v in power.items()]
        lines.append("")
    return write_report_md(Path(out_dir), lines)


def plot_curves(path: Path, results: dict) -> None:
    """Test ELBO against forward passes: every method's mean over seeds with the seed range."""
    from maskdiff.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    by: dict[str, list] = {}
    for r in results["runs"]:
        if not r["causal"]:
            by.setdefault(r["method"], []).append(r["curve"])
    for i, (name, curves) in enumerate(by.items()):
        n = min(len(c) for c in curves)
        x = np.mean([[p["fwd"] for p in c[:n]] for c in curves], axis=0)
        y = np.array([[p["test_loss"] for p in c[:n]] for c in curves])
        style = {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
        ax.plot(x[1:], y.mean(0)[1:], marker="o", ms=2.5,
                label=_label(name, results["methods"][name]), **style)
        ax.fill_between(x[1:], y.min(0)[1:], y.max(0)[1:], color=style["color"], alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("forward passes (examples × views)")
    ax.set_ylabel("test ELBO (nats per token, CRN)")
    ax.set_title(f"compare --regime pretrain {results['preset']}: mean over "
                 f"{len(results['seeds'])} seeds, band = seed range", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
