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
``E[−log σ(βΔ̂)] − (−log σ(βΔ))``, of its gradient weight ``E[σ(−βΔ̂)] − σ(−βΔ)`` and of the
batch-mean loss gradient along the unit direction in which the policy's margin rises fastest
(central differences under the same draws, step ``--h``); the same at the start of DPO (policy = reference, Δ = 0),
where shared draws give Δ̂ = 0 exactly.

    python benchmarks/dpo_bias.py [--run RUN] [--out DIR] [--pairs 16] [--reps 64] [--budget 8]
"""

from __future__ import annotations

import argparse
import copy
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


def perturbed(model, direction, h: float):
    """Copies of ``model`` at θ + h·v and θ − h·v (finite differences along ``v``)."""
    out = []
    for sign in (1.0, -1.0):
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            for p, v in zip(copy_.parameters(), direction):
                p.add_(sign * h * v)
        out.append(copy_.eval())
    return out


@torch.no_grad()
def deltas(estimator, policies, reference, batches, *, budget, seed, mask_id, h):
    """Δ̂ per pair (P,), B̂_π of the chosen responses (P,), and the derivative of the policy's
    part of Δ̂ along the direction (P,): a central difference over ``policies = (θ, θ+hv, θ−hv)``
    under the same draws. Float64."""
    def elbo(model, batch, role):
        return estimator.log_likelihood(model, batch, seed=seed, budget=budget,
                                        mask_token_id=mask_id, role=role).double()
    d, b, dd = [], [], []
    for chosen, rejected in batches:
        chosen_elbos = [elbo(m, chosen, "policy") for m in policies]
        policy_part = [w - elbo(m, rejected, "policy") for m, w in zip(policies, chosen_elbos)]
        pw = chosen_elbos[0]
        rw, rl = elbo(reference, chosen, "reference"), elbo(reference, rejected, "reference")
        d.append(policy_part[0] - (rw - rl))
        b.append(pw)
        dd.append((policy_part[1] - policy_part[2]) / (2 * h))
    return torch.cat(d).numpy(), torch.cat(b).numpy(), torch.cat(dd).numpy()


def loss(x):
    return np.logaddexp(0.0, -x)  # −log σ(x)


def weight(x):
    return 1.0 / (1.0 + np.exp(x))  # σ(−x)


def summarise(draws: np.ndarray, derivs: np.ndarray, truth: np.ndarray,
              truth_deriv: np.ndarray, betas) -> dict:
    """``draws`` (R, P) of Δ̂ and ``derivs`` (R, P) of its derivative along the direction;
    ``truth``, ``truth_deriv`` (P,): SE, mean error, and per β the bias of the loss, of its
    gradient weight σ(−βΔ̂) and of the batch-mean loss gradient along the direction."""
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
        grads = (-beta * weight(beta * draws) * derivs).mean(axis=1)  # (R,) batch-mean gradient
        true_grad = float((-beta * weight(beta * truth) * truth_deriv).mean())
        row["grad_true"] = true_grad
        row["grad_bias"] = float(grads.mean() - true_grad)
        row["grad_bias_se"] = float(grads.std(ddof=1) / np.sqrt(reps))
        row["grad_sd"] = float(grads.std(ddof=1))  # the noise of one step's gradient
        out["beta"][str(beta)] = row
    return out


def high_budget(policies, reference, batches, args, mask_id):
    """Δ and its derivative per pair from ``lowvar`` at ``--high-budget`` passes, in 16
    independent chunks: (Δ, SE of Δ, derivative, SE of the derivative)."""
    est = PREFERENCE_ESTIMATORS["lowvar"]
    chunk = args.high_budget // 16
    parts = [deltas(est, policies, reference, batches, budget=chunk, seed=10 ** 6 + c,
                    mask_id=mask_id, h=args.h) for c in range(16)]
    d, dd = np.stack([p[0] for p in parts]), np.stack([p[2] for p in parts])
    return d.mean(axis=0), d.std(axis=0, ddof=1) / 4.0, dd.mean(axis=0), dd.std(axis=0, ddof=1) / 4.0


def measure(args, policies, reference, batches, mask_id, names, truth, truth_deriv):
    out = {}
    for name in names:
        est = PREFERENCE_ESTIMATORS[name]
        started = time.time()
        d, b, dd = zip(*[deltas(est, policies, reference, batches, budget=args.budget, seed=s,
                                mask_id=mask_id, h=args.h) for s in range(args.reps)])
        d, b, dd = np.stack(d), np.stack(b), np.stack(dd)
        out[name] = {**summarise(d, dd, truth, truth_deriv, args.betas),
                     "se_elbo": float(np.sqrt(b.var(axis=0, ddof=1).mean())),
                     "seconds": time.time() - started}
        first = out[name]["beta"][str(args.betas[0])]
        print(f"{name:24s} SE(B̂) {out[name]['se_elbo']:8.3f}  SE(Δ̂) {out[name]['se_delta']:7.3f}"
              f"  β={args.betas[0]}: loss bias {first['loss_bias']:+.4f}"
              f" grad bias {first['grad_bias']:+.4f} (true {first['grad_true']:+.4f})", flush=True)
    return out


def margin_direction(model, batches, mask_id) -> list[torch.Tensor]:
    """The unit direction in which the policy's part of the DPO margin,
    Σ_pairs (B_π(y_w) − B_π(y_l)), rises fastest (``lowvar`` at 64 passes): where DPO's
    gradient points, so the measured gradient is a large signal, not a random projection."""
    est, params = PREFERENCE_ESTIMATORS["lowvar"], list(model.parameters())
    total = sum((est.log_likelihood(model, w, seed=2 * 10 ** 6, budget=64, mask_token_id=mask_id)
                 - est.log_likelihood(model, l, seed=2 * 10 ** 6, budget=64,
                                      mask_token_id=mask_id)).sum() for w, l in batches)
    grads = torch.autograd.grad(total, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [g.detach() / norm for g in grads]


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
    p.add_argument("--h", type=float, default=1e-2,
                   help="finite-difference step along the unit margin direction (the gradient)")
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
    names, start_names = args.estimators.split(","), args.start_estimators.split(",")
    trained = (policy, *perturbed(policy, margin_direction(policy, batches, mask_id), args.h))
    start = (reference, *perturbed(reference, margin_direction(reference, batches, mask_id),
                                   args.h))
    truth, truth_se, truth_d, truth_d_se = high_budget(trained, reference, batches, args, mask_id)
    start_d = high_budget(start, reference, batches, args, mask_id)[2]
    print(f"high-budget Δ: mean |Δ| {np.abs(truth).mean():.3f}, SE {truth_se.mean():.3f}; "
          f"derivative mean |D| {np.abs(truth_d).mean():.3f}, SE {truth_d_se.mean():.3f}")
    result = {
        "command": "python benchmarks/dpo_bias.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(run), "pairs": len(pairs), "reps": args.reps, "budget": args.budget,
        "passes_per_pair": 4 * args.budget, "high_budget": args.high_budget, "h": args.h,
        "betas": args.betas, "dpo_steps": args.dpo_steps, "dpo_lr": args.dpo_lr,
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "truth": {"mean_abs_delta": float(np.abs(truth).mean()),
                  "se_mean": float(truth_se.mean()),
                  "mean_abs_derivative": float(np.abs(truth_d).mean()),
                  "derivative_se_mean": float(truth_d_se.mean())},
        "trained": measure(args, trained, reference, batches, mask_id, names, truth, truth_d),
        "start": measure(args, start, reference, batches, mask_id, start_names,
                         np.zeros(len(pairs)), start_d)}
    result["seconds"] = time.time() - started
    write(result, out)
    return 0


def write(result: dict, out: Path) -> None:
    (out / "dpo_bias.json").write_text(json.dumps(result, indent=2) + "\n")
    betas = [str(b) for b in result["betas"]]
    columns = (("loss_bias", "loss bias"), ("weight_bias", "weight bias"),
               ("grad_bias", "gradient bias"), ("grad_sd", "gradient SD"))
    for where, title in (("trained", "policy after DPO steps"),
                         ("start", "start: policy = reference, Δ = 0")):
        print(f"\n{title}: {result['pairs']} pairs × {result['reps']} reps, "
              f"{result['passes_per_pair']} passes per pair")
        true_grads = ", ".join(f"β={b}: {next(iter(result[where].values()))['beta'][b]['grad_true']:+.4f}"
                               for b in betas)
        print(f"true gradient along the direction: {true_grads}")
        print("| estimator | SE(B̂) | SE(Δ̂) | mean Δ̂ − Δ | " + " | ".join(
            f"{label} β={b}" for _, label in columns for b in betas) + " |")
        print("|---" * (4 + len(columns) * len(betas)) + "|")
        for name, r in result[where].items():
            cells = [f"{r['se_elbo']:.3f}", f"{r['se_delta']:.3f}",
                     f"{r['delta_error']:+.3f} ± {r['delta_error_se']:.3f}"]
            cells += [f"{r['beta'][b][key]:+.4f}" + (
                f" ± {r['beta'][b][key + '_se']:.4f}" if key + "_se" in r["beta"][b] else "")
                for key, _ in columns for b in betas]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
