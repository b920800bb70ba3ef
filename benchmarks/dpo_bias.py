"""DPO on ELBOs: the noise of the ELBO difference and the bias it puts into the DPO loss, per
estimator at equal forward passes (docs/method.md §13).

A briefly trained smoke run is the reference; the policy is that run after a few DPO steps
(``maskdiff dpo``, ``vrpo``) on pairs built from its task without labels (chosen: the gold
response; rejected: the same chain with the final answer off by one). For every pair the bracket
``Δ = (B_π(y_w) − B_ref(y_w)) − (B_π(y_l) − B_ref(y_l))`` is estimated ``--reps`` times per
estimator at ``--budget`` forward passes per response per model (4·budget per pair), and
compared with a high-budget value (``lowvar`` at ``--high-budget`` passes, its SE from
independent chunks). Reported per estimator: the SE of one ELBO and of Δ̂ (RMS over pairs),
the mean error of Δ̂ (≈ 0: unbiased), and, per β, the bias of the DPO loss
``E[−log σ(βΔ̂)] − (−log σ(βΔ))`` and of its gradient weight ``E[σ(−βΔ̂)] − σ(−βΔ)``; the same
at the start of DPO (policy = reference, Δ = 0), where shared draws give Δ̂ = 0 exactly.

    python benchmarks/dpo_bias.py [--run RUN] [--out DIR] [--pairs 16] [--reps 64] [--budget 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from maskdiff.preference import PREFERENCE_ESTIMATORS, DPOConfig, load_pairs, pair_batches, train_dpo
from maskdiff.data import Collator, CollatorConfig
from maskdiff.data.setup import load_task
from maskdiff.training.presets import preset
from maskdiff.training.runs import load_run
from maskdiff.training.trainer import Trainer


def smoke_run(out: Path, steps: int, seed: int) -> Path:
    config = preset("smoke", out_dir=str(out / "run"), seed=seed)
    config = replace(config, optim=replace(config.optim, max_steps=steps))
    Trainer(config, quiet=True).fit()
    return out / "run"


def make_pairs(run: Path, path: Path, n: int) -> Path:
    loaded = load_run(run)
    tok, max_len = loaded.tokenizer, loaded.config.data.max_len
    rows = []
    for ex in load_task(loaded.config.data).test:
        head, _, gold = ex.response.rpartition("#### ")
        if not gold.strip().lstrip("-").isdigit():
            continue
        wrong = f"{head}#### {int(gold) + 1}"
        if len(tok.encode(ex.prompt)) + len(tok.encode(wrong)) + 1 > max_len:
            continue
        rows.append(json.dumps({"prompt": ex.prompt, "chosen": ex.response, "rejected": wrong}))
        if len(rows) == n:
            break
    path.write_text("\n".join(rows) + "\n")
    return path


@torch.no_grad()
def deltas(estimator, policy, reference, batches, *, budget, seed, mask_id):
    """Δ̂ per pair (P,) and B̂_π of the chosen responses (P,), float64."""
    def elbo(model, batch, role):
        return estimator.log_likelihood(model, batch, seed=seed, budget=budget,
                                        mask_token_id=mask_id, role=role).double()
    d, b = [], []
    for chosen, rejected in batches:
        pw, pl = elbo(policy, chosen, "policy"), elbo(policy, rejected, "policy")
        rw, rl = elbo(reference, chosen, "reference"), elbo(reference, rejected, "reference")
        d.append((pw - rw) - (pl - rl))
        b.append(pw)
    return torch.cat(d).numpy(), torch.cat(b).numpy()


def loss(x):
    return np.logaddexp(0.0, -x)  # −log σ(x)


def weight(x):
    return 1.0 / (1.0 + np.exp(x))  # σ(−x)


def summarise(draws: np.ndarray, truth: np.ndarray, betas) -> dict:
    """``draws`` (R, P) of Δ̂, ``truth`` (P,): SE, mean error, loss and weight bias per β."""
    reps = draws.shape[0]
    out = {"se_delta": float(np.sqrt(draws.var(axis=0, ddof=1).mean())),
           "delta_error": float((draws.mean(axis=0) - truth).mean()),
           "delta_error_se": float(np.sqrt((draws.var(axis=0, ddof=1) / reps).sum())
                                   / draws.shape[1]), "beta": {}}
    for beta in betas:
        row = {}
        for name, f in (("loss_bias", loss), ("weight_bias", weight)):
            values = f(beta * draws)
            per_pair = values.mean(axis=0) - f(beta * truth)
            se = np.sqrt((values.var(axis=0, ddof=1) / reps).sum()) / draws.shape[1]
            row[name], row[name + "_se"] = float(per_pair.mean()), float(se)
        row["loss_true"] = float(loss(beta * truth).mean())
        out["beta"][str(beta)] = row
    return out


def high_budget(policy, reference, batches, args, mask_id):
    """Δ per pair from ``lowvar`` at ``--high-budget`` passes, in 16 independent chunks."""
    est = PREFERENCE_ESTIMATORS["lowvar"]
    chunk = args.high_budget // 16
    parts = np.stack([deltas(est, policy, reference, batches, budget=chunk,
                             seed=10 ** 6 + c, mask_id=mask_id)[0] for c in range(16)])
    return parts.mean(axis=0), parts.std(axis=0, ddof=1) / 4.0


def measure(args, policy, reference, batches, mask_id, names, truth):
    out = {}
    for name in names:
        est = PREFERENCE_ESTIMATORS[name]
        started = time.time()
        d, b = zip(*[deltas(est, policy, reference, batches, budget=args.budget, seed=s,
                            mask_id=mask_id) for s in range(args.reps)])
        d, b = np.stack(d), np.stack(b)
        out[name] = {**summarise(d, truth, args.betas),
                     "se_elbo": float(np.sqrt(b.var(axis=0, ddof=1).mean())),
                     "seconds": time.time() - started}
        print(f"{name:24s} SE(B̂) {out[name]['se_elbo']:8.3f}  SE(Δ̂) {out[name]['se_delta']:7.3f}"
              f"  loss bias β={args.betas[0]}: {out[name]['beta'][str(args.betas[0])]['loss_bias']:+.4f}",
              flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="the reference run (default: train the smoke preset here)")
    p.add_argument("--run-steps", type=int, default=60, help="steps of the smoke run")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--reps", type=int, default=64)
    p.add_argument("--budget", type=int, default=8, help="forward passes per response per model")
    p.add_argument("--high-budget", type=int, default=1024)
    p.add_argument("--betas", default="0.1,0.5,1.0")
    p.add_argument("--dpo-steps", type=int, default=20)
    p.add_argument("--dpo-lr", type=float, default=1e-3)
    p.add_argument("--estimators", default=",".join(PREFERENCE_ESTIMATORS))
    p.add_argument("--start-estimators", default="naive,vrpo",
                   help="estimators measured at the start (shared ones give Δ̂ = 0 exactly)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/dpo_bias")
    args = p.parse_args(argv)
    args.betas = [float(b) for b in args.betas.split(",")]
    torch.set_num_threads(args.threads)
    started, out = time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else smoke_run(out, args.run_steps, args.seed)
    pairs_path = make_pairs(run, out / "pairs.jsonl", args.pairs)
    train_dpo(DPOConfig(run=str(run), pairs=str(pairs_path), out_dir=str(out / "policy"),
                        estimator="vrpo", budget=8, steps=args.dpo_steps, lr=args.dpo_lr,
                        beta=0.5, seed=args.seed), quiet=True)
    reference, policy = load_run(run).model, load_run(out / "policy", "latest").model
    loaded = load_run(run)
    collate = Collator(loaded.tokenizer, CollatorConfig(
        max_len=loaded.config.data.max_len, pad_policy=loaded.config.data.pad_policy))
    pairs = load_pairs(pairs_path)
    batches = [pair_batches(pairs, list(range(s, min(s + 16, len(pairs)))), collate)
               for s in range(0, len(pairs), 16)]
    mask_id = loaded.tokenizer.mask_id
    names = args.estimators.split(",")
    truth, truth_se = high_budget(policy, reference, batches, args, mask_id)
    print(f"high-budget Δ: mean |Δ| {np.abs(truth).mean():.3f}, SE {truth_se.mean():.3f}")
    result = {
        "command": "python benchmarks/dpo_bias.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(run), "pairs": len(pairs), "reps": args.reps, "budget": args.budget,
        "passes_per_pair": 4 * args.budget, "high_budget": args.high_budget,
        "betas": args.betas, "dpo_steps": args.dpo_steps, "dpo_lr": args.dpo_lr,
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "truth": {"mean_abs_delta": float(np.abs(truth).mean()),
                  "se_mean": float(truth_se.mean())},
        "trained": measure(args, policy, reference, batches, mask_id, names, truth),
        "start": measure(args, reference, reference, batches, mask_id,
                         args.start_estimators.split(","), np.zeros(len(pairs)))}
    result["seconds"] = time.time() - started
    write(result, out)
    return 0


def write(result: dict, out: Path) -> None:
    (out / "dpo_bias.json").write_text(json.dumps(result, indent=2) + "\n")
    betas = [str(b) for b in result["betas"]]
    for where, title in (("trained", "policy after DPO steps"), ("start", "start: policy = reference, Δ = 0")):
        print(f"\n{title}: {result['pairs']} pairs × {result['reps']} reps, "
              f"{result['passes_per_pair']} passes per pair")
        print("| estimator | SE(B̂) | SE(Δ̂) | mean Δ̂ − Δ | "
              + " | ".join(f"loss bias β={b}" for b in betas)
              + " | " + " | ".join(f"weight bias β={b}" for b in betas) + " |")
        print("|---" * (4 + 2 * len(betas)) + "|")
        for name, r in result[where].items():
            cells = [f"{r['se_elbo']:.3f}", f"{r['se_delta']:.3f}",
                     f"{r['delta_error']:+.3f} ± {r['delta_error_se']:.3f}"]
            cells += [f"{r['beta'][b]['loss_bias']:+.4f} ± {r['beta'][b]['loss_bias_se']:.4f}"
                      for b in betas]
            cells += [f"{r['beta'][b]['weight_bias']:+.4f} ± {r['beta'][b]['weight_bias_se']:.4f}"
                      for b in betas]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
