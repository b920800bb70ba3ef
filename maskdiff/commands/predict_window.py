"""``maskdiff predict-window``: the signal-rich masking rate of a corpus (docs/method.md §10).

    maskdiff predict-window --corpus wiki.train.tokens [--level word|char] [--min-count 5] [--json]

Estimates the n-gram dependency shares w2..w6 (parity paper App. F.4; the estimator is documented
in :mod:`maskdiff.labs.ngram`) and ``t* = argmax Signal(t)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskdiff import jsonio
from maskdiff.labs.ngram import ESTIMATORS, LEVELS, predict_window


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict-window",
        help="predict the signal-rich masking rate t* from a corpus' n-gram statistics (docs/method.md §10)",
        description="Estimate a corpus' n-gram dependency shares w2..w6 and t* = argmax Signal(t).",
    )
    parser.add_argument("--corpus", required=True, help="path of a UTF-8 text file")
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="word",
        help="tokens: whitespace words (default) or characters",
    )
    parser.add_argument(
        "--min-count", type=int, default=5, help="discard n-grams seen fewer times (default 5)"
    )
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="information",
        help="information: shares of conditional-entropy gain (default); "
        "types: shares of kept n-gram types",
    )
    parser.add_argument(
        "--power", type=int, default=1, help="1: Signal linear in P_S (F.4); 2: quadratic variant"
    )
    parser.add_argument(
        "--width",
        type=float,
        default=0.1,
        help="width of the suggested window around t* (default 0.1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def read_corpus(path: str) -> str:
    """The text of ``path``; a ValueError naming ``--corpus`` if missing, not a file or empty."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"--corpus: no such file: {path!r}")
    if not file.is_file():
        raise ValueError(f"--corpus: not a regular file: {path!r}")
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"--corpus: the file is empty (no tokens): {path!r}")
    return text


def run(args: argparse.Namespace) -> int:
    if args.min_count < 1:
        raise ValueError(f"--min-count must be an integer >= 1, got {args.min_count}")
    prediction = predict_window(
        read_corpus(args.corpus),
        level=args.level,
        min_count=args.min_count,
        estimator=args.estimator,
        power=args.power,
    )
    low, high = prediction.window(args.width)
    report = {
        "corpus": str(args.corpus),
        "level": prediction.level,
        "min_count": prediction.min_count,
        "estimator": prediction.estimator,
        "power": prediction.power,
        "n_tokens": prediction.n_tokens,
        "weights": {str(order): value for order, value in prediction.weights.items()},
        "statistics": {str(order): value for order, value in prediction.statistics.items()},
        "t_star": prediction.t_star,
        "window": [low, high],
    }
    if args.json:
        print(jsonio.dumps(report, indent=2))
        return 0
    unit = (
        "nats of information gain" if prediction.estimator == "information" else "kept n-gram types"
    )
    print(
        f"corpus {args.corpus}: {prediction.n_tokens} {prediction.level} tokens, "
        f"min count {prediction.min_count}"
    )
    print(f"order  weight   statistic ({unit})")
    for order, weight in prediction.weights.items():
        print(f"{order:<6d} {weight:.4f}   {prediction.statistics[order]:.6g}")
    print(f"t_star {prediction.t_star:.4f}   suggested window U[{low:.3f}, {high:.3f}]")
    return 0
