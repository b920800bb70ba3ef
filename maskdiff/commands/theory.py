"""``maskdiff theory``: the k-parity closed forms and the window signal (docs/method.md §9, §10).

    maskdiff theory parity --k 6 [--t0 0 --t1 0.246] [--n 20 --delta 0.05] [--json]
    maskdiff theory window --weights 0.7427,0.2063,0.0401,0.0084,0.0024 [--power 2] [--json]
"""

from __future__ import annotations

import argparse
import math

from maskdiff import jsonio
from maskdiff.labs import theory

ORDERS = (2, 3, 4, 5, 6)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "theory",
        help="k-parity closed forms and the signal-rich window (docs/method.md §9, §10)",
        description="Closed-form quantities of the parity paper (arXiv 2601.22450).",
    )
    kinds = parser.add_subparsers(dest="theory_command", metavar="KIND")
    kinds.required = True

    parity = kinds.add_parser(
        "parity",
        help="P_S, its optimal rate and window, the Cor. 4.7 window and the Thm. 4.2 bound",
        description="k-parity theory for t ~ U[t0, t1] (parity paper Thm. 4.2-4.3, Cor. 4.7-4.8).",
    )
    parity.add_argument("--k", type=int, required=True, help="secret-set size k >= 1")
    parity.add_argument(
        "--t0", type=float, default=0.0, help="lower end of the rate window (default 0)"
    )
    parity.add_argument(
        "--t1", type=float, default=1.0, help="upper end of the rate window (default 1)"
    )
    parity.add_argument(
        "--n", type=int, default=20, help="input bits n >= k for the Thm. 4.2 bound (default 20)"
    )
    parity.add_argument(
        "--delta", type=float, default=0.05, help="failure probability for the bound (default 0.05)"
    )
    parity.add_argument("--json", action="store_true", help="print one JSON object")
    parity.set_defaults(func=run)

    window = kinds.add_parser(
        "window",
        help="Signal(t) = sum_i w_i t (1-t)^(i-1) and its argmax t* (parity paper App. F.4)",
        description="The signal-rich masking rate for n-gram dependency shares w2..w6.",
    )
    window.add_argument(
        "--weights", required=True, help="w2,w3,w4,w5,w6: five non-negative numbers, sum > 0"
    )
    window.add_argument(
        "--power", type=int, default=1, help="1: linear in P_S (F.4); 2: quadratic variant"
    )
    window.add_argument(
        "--points", type=int, default=101, help="points of the curve on [0, 1] (default 101)"
    )
    window.add_argument("--json", action="store_true", help="print one JSON object")
    window.set_defaults(func=run)


def parse_weights(text: str) -> dict[int, float]:
    """``"w2,w3,w4,w5,w6"`` -> ``{2: w2, ..., 6: w6}``; a ValueError naming ``--weights``."""
    problem = (
        "--weights must be 5 comma-separated non-negative numbers w2..w6 with a positive sum, "
        f"got {text!r}"
    )
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != len(ORDERS):
        raise ValueError(problem)
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(problem) from None
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(problem)
    return dict(zip(ORDERS, values))


def parity_report(k: int, t0: float, t1: float, n: int, delta: float) -> dict[str, float]:
    """Every §9 quantity for ``k`` and the window ``U[t0, t1]`` (``t0 < t1``)."""
    if k < 1:
        raise ValueError(f"--k must be an integer >= 1, got {k}")
    if not (0.0 <= t0 < t1 <= 1.0):
        raise ValueError(f"--t0 and --t1 must satisfy 0 <= t0 < t1 <= 1, got --t0 {t0} --t1 {t1}")
    rate = theory.signal_optimal_rate(k)
    best_t1 = theory.ps_optimal_t1(k)
    sample_t1 = theory.sample_complexity_t1(k)
    return {
        "k": k,
        "t0": t0,
        "t1": t1,
        "signal_probability": theory.signal_probability(k, t0, t1),
        "signal_optimal_rate": rate,
        "signal_probability_at_optimal_rate": theory.signal_probability(k, rate, rate),
        "ps_optimal_t1": best_t1,
        "signal_probability_at_ps_optimal_t1": theory.signal_probability(k, 0.0, best_t1),
        "sample_complexity_t1": sample_t1,
        "n": n,
        "delta": delta,
        "sample_complexity_bound": theory.sample_complexity_bound(k, n, delta, t0, t1),
        "sample_complexity_bound_at_optimal_t1": theory.sample_complexity_bound(
            k, n, delta, 0.0, sample_t1
        ),
    }


def window_report(weights: dict[int, float], power: int, points: int) -> dict:
    t, signal = theory.window_signal_curve(weights, num=points, power=power)
    total = sum(weights.values())
    return {
        "weights": {str(order): value / total for order, value in weights.items()},
        "power": power,
        "t_star": theory.window_t_star(weights, power=power),
        "t": t.tolist(),
        "signal": signal.tolist(),
    }


def _print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        shown = f"{value:.10g}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown}")


def run(args: argparse.Namespace) -> int:
    if args.theory_command == "parity":
        report = parity_report(args.k, args.t0, args.t1, args.n, args.delta)
        if args.json:
            print(jsonio.dumps(report, indent=2))
        else:
            print(f"k-parity theory, k = {args.k}, t ~ U[{args.t0:g}, {args.t1:g}]")
            _print_table(
                [(name, value) for name, value in report.items() if name not in ("k", "t0", "t1")]
            )
        return 0
    if args.theory_command == "window":
        report = window_report(parse_weights(args.weights), args.power, args.points)
        if args.json:
            print(jsonio.dumps(report, indent=2))
        else:
            print(
                "weights  "
                + "  ".join(f"w{order}={value:.4f}" for order, value in report["weights"].items())
            )
            print(f"t_star   {report['t_star']:.6f}   (power {report['power']})")
            print("t        Signal(t)")
            step = max(1, (len(report["t"]) - 1) // 10)
            for t, value in list(zip(report["t"], report["signal"]))[::step]:
                print(f"{t:<8.3f} {value:.6f}")
        return 0
    raise ValueError(f"unknown theory kind {args.theory_command!r}")
