"""``maskdiff dpo``: DPO (or ELBO-KTO) of a native run on preference pairs, with a named ELBO
estimator (docs/method.md §13)."""

from __future__ import annotations

from maskdiff.commands import add_threads_argument, apply_threads, positive


def register(subparsers) -> None:
    from maskdiff.preference.elbo import DEFAULT_ESTIMATOR, PREFERENCE_ESTIMATORS
    from maskdiff.preference.losses import LOSSES

    p = subparsers.add_parser(
        "dpo", help="preference-tune a run (DPO / ELBO-KTO on ELBO estimates)",
        description="Preference-tune a run's checkpoint on JSONL rows {\"prompt\", \"chosen\", "
                    "\"rejected\"}; resumable (rerun the same command).")
    p.add_argument("--run", required=True, help="the fine-tuned run directory to start from")
    p.add_argument("--pairs", required=True, help='rows {"prompt", "chosen", "rejected"} (JSONL)')
    p.add_argument("--out", required=True, help="the output directory (itself a run directory)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of --run to start from")
    p.add_argument("--loss", choices=LOSSES, default="dpo")
    p.add_argument("--estimator", choices=sorted(PREFERENCE_ESTIMATORS), default=DEFAULT_ESTIMATOR,
                   help="how each ELBO is estimated (docs/method.md §13)")
    p.add_argument("--budget", type=positive, default=8,
                   help="forward passes per response per model (a *-mirror estimator: even)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--steps", type=positive, default=100)
    p.add_argument("--batch-size", type=positive, default=4, help="pairs per step")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--seed", type=int, default=0, help="pair order and ELBO draws")
    p.add_argument("--precompute-reference", action="store_true",
                   help="compute the reference ELBOs once (reference_elbos.json in --out) "
                        "instead of keeping a frozen copy of the model")
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: at the end only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="start over in a used --out")
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from maskdiff.preference.trainer import DPOConfig, train_dpo

    apply_threads(args)
    config = DPOConfig(
        run=args.run, pairs=args.pairs, out_dir=args.out, checkpoint=args.checkpoint,
        loss=args.loss, estimator=args.estimator, budget=args.budget, beta=args.beta,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
        precompute_reference=args.precompute_reference,
        checkpoint_every=args.checkpoint_every, device=args.device)
    result = train_dpo(config, overwrite=args.overwrite)
    if result["final_loss"] is None:
        print(f"maskdiff dpo: {result['steps']} steps; {args.out}/results.json")
    else:
        print(f"maskdiff dpo: {result['steps']} steps, final {config.loss} loss "
              f"{result['final_loss']:.4f}, reward margin {result['reward_margin']:+.4f}; "
              f"{args.out}/results.json")
    return 0
