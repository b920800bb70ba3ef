"""``maskdiff lm-eval ...``: the lm-evaluation-harness command line with the ``maskdiff`` model
registered (docs/evaluation.md). Every argument goes to the harness unchanged, e.g.
``maskdiff lm-eval --model maskdiff --model_args run=runs/mirror --tasks TASK``."""

from __future__ import annotations


def register(subparsers) -> None:
    # prefix_chars="+": every "-x"/"--x" is the harness's, kept as a positional and forwarded.
    p = subparsers.add_parser(
        "lm-eval", prefix_chars="+", add_help=False,
        help="lm-evaluation-harness with the maskdiff model (pip install -e '.[eval]')",
        description="Forwards its arguments to lm-eval (`lm-eval --help` lists them).")
    p.add_argument("harness_args", nargs="*")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from maskdiff.evaluation.harness import cli
    except ImportError as err:
        raise ValueError(f"maskdiff lm-eval needs lm-evaluation-harness: pip install -e "
                         f"'.[eval]' ({err})") from err
    return cli(list(args.harness_args))
