"""What a valid ``ppots.json`` holds (docs/method.md §4): every field checked before anything
is computed from it, so that a bad file fails in one line naming the file and the field.

:func:`check_ppots_doc` is what ``maskdiff train --ppots``, ``decompose --ppots``, the
experiments' caches and ``maskdiff fit-pots`` (before it writes) all run; a file it accepts is
one every consumer can train from (:func:`maskdiff.ppots.io.density_table` checks the one
remaining thing, that the fitted density is finite and has mass on ``[eps, 1]``).
"""

from __future__ import annotations

import math
from typing import Any

from maskdiff.ppots.estimate import ESTIMATORS, TARGETS
from maskdiff.ppots.fit import EPR_KEYS, MIN_TABLE_POINTS, POLY_DEGREE

JSON_FORMAT = "maskdiff.ppots"
JSON_VERSION = 1
REQUIRED = ("t", "p_hat", "epr", "mix", "estimator")
DEFAULT_EPS = 1e-3  # the rate floor of a file written before ``eps`` was recorded

# EPR's parameter ranges (docs/method.md §4, eq. 5): a, b, A, κ > 0; r, q ≥ 0; m > 1.
_EPR_RANGES = {"a": (0.0, False), "b": (0.0, False), "A": (0.0, False), "kappa": (0.0, False),
               "r": (0.0, True), "q": (0.0, True), "m": (1.0, False)}


class PPotsFileError(ValueError):
    """A ``ppots.json`` that cannot be used; its message is one line naming the file and field."""


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, why: str) -> None:
        raise PPotsFileError(f"{self.where}: field {field!r} {why}")

    def number(self, field: str, value: Any, *, low: float | None = None,
               low_ok: bool = True, high: float | None = None, high_ok: bool = True,
               what: str = "a finite number") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be {what}, got {_describe(value)} ({type(value).__name__})")
        if not math.isfinite(value):
            self.fail(field, f"must be {what}, got {_describe(value)}")
        if low is not None and (value < low or (value == low and not low_ok)):
            self.fail(field, f"must be {what}, got {_describe(value)}")
        if high is not None and (value > high or (value == high and not high_ok)):
            self.fail(field, f"must be {what}, got {_describe(value)}")
        return float(value)

    def numbers(self, field: str, value: Any, *, size: int | None = None) -> list[float]:
        if not isinstance(value, list):
            self.fail(field, f"must be a list of numbers, got {_describe(value)}")
        if size is None and len(value) < MIN_TABLE_POINTS:
            self.fail(field, f"needs at least {MIN_TABLE_POINTS} rates, got {len(value)}")
        if size is not None and len(value) != size:
            self.fail(field, f"must have one value per rate of 't' ({size}), got {len(value)}")
        for i, item in enumerate(value):
            self.number(f"{field}[{i}]", item)
        return [float(v) for v in value]

    def choice(self, field: str, value: Any, choices: tuple[str, ...]) -> None:
        if not isinstance(value, str) or value not in choices:
            self.fail(field, f"must be one of {list(choices)}, got {_describe(value)}")

    def table(self, doc: dict, eps: float) -> None:
        t = self.numbers("t", doc["t"])
        for i in range(len(t)):
            if not 0.0 < t[i] <= 1.0:
                self.fail(f"t[{i}]", f"must lie in (0, 1], got {t[i]!r}")
            if i and t[i] <= t[i - 1]:
                self.fail("t", f"must be strictly increasing, but t[{i}] = {t[i]!r} follows "
                               f"{t[i - 1]!r}")
        if t[0] < eps:
            self.fail("eps", f"is {eps!r}, above the first rate t[0] = {t[0]!r} of the table "
                             f"(the density lives on [eps, 1])")
        for name in ("p_hat", "p_hat_paper", "p_hat_direct"):
            if name == "p_hat" or doc.get(name) is not None:
                p = self.numbers(name, doc[name], size=len(t))
                bad = [i for i, v in enumerate(p) if v < 0]
                if bad:
                    self.fail(f"{name}[{bad[0]}]", f"must be >= 0, got {p[bad[0]]!r}")
                total = math.fsum(p) if all(abs(v) < 1e300 for v in p) else math.inf
                if not 0.0 < total < math.inf:
                    self.fail(name, f"must have a finite, positive sum, got {total!r}")

    def fits(self, doc: dict) -> None:
        epr = doc["epr"]
        if not isinstance(epr, dict):
            self.fail("epr", f"must be an object {{params, kl}}, got {_describe(epr)}")
        params = epr.get("params")
        if not isinstance(params, dict):
            self.fail("epr.params", f"must be an object with keys {list(EPR_KEYS)}, "
                                    f"got {_describe(params)}")
        for key in EPR_KEYS:
            if key not in params:
                self.fail(f"epr.params.{key}", "is missing")
            low, low_ok = _EPR_RANGES[key]
            self.number(f"epr.params.{key}", params[key], low=low, low_ok=low_ok,
                        what=f"a finite number {'>=' if low_ok else '>'} {low:g}")
        self.number("epr.kl", epr.get("kl"))
        if not isinstance(epr.get("restarts", []), list):
            self.fail("epr.restarts", f"must be a list, got {_describe(epr['restarts'])}")
        poly = doc.get("poly7")
        if poly is None:
            return
        if not isinstance(poly, dict):
            self.fail("poly7", f"must be an object {{coeffs, kl, floor}}, got {_describe(poly)}")
        coeffs = poly.get("coeffs")
        if not isinstance(coeffs, list) or len(coeffs) != POLY_DEGREE + 1:
            self.fail("poly7.coeffs", f"must be a list of {POLY_DEGREE + 1} numbers, "
                                      f"got {_describe(coeffs)}")
        for i, value in enumerate(coeffs):
            self.number(f"poly7.coeffs[{i}]", value)
        self.number("poly7.kl", poly.get("kl"))
        self.number("poly7.floor", poly.get("floor"), low=0.0, low_ok=False,
                    what="a finite number > 0")


def check_ppots_doc(doc: Any, where: str = "ppots.json") -> dict:
    """Check a ``ppots.json`` document field by field; returns it. :class:`PPotsFileError`
    (a ValueError) in one line naming ``where`` and the first bad field: a missing required
    field, a wrong type, a NaN or infinite number, ``mix`` outside [0, 1), ``eps`` outside
    (0, 1) or above the first rate, rates outside (0, 1] or not increasing, fewer than 8 rates,
    a negative or all-zero p̂, EPR parameters outside their ranges."""
    check = _Checker(where)
    if not isinstance(doc, dict):
        raise PPotsFileError(f"{where}: not a P-POTS result (a JSON object is expected, "
                             f"found {type(doc).__name__})")
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        check.fail(missing[0], "is missing (a P-POTS result from `maskdiff fit-pots` has "
                               f"{', '.join(REQUIRED)})")
    if "format" in doc and doc["format"] != JSON_FORMAT:
        check.fail("format", f"must be {JSON_FORMAT!r}, got {_describe(doc['format'])}")
    if "version" in doc and doc["version"] != JSON_VERSION:
        check.fail("version", f"is {_describe(doc['version'])}; this maskdiff reads version "
                              f"{JSON_VERSION}")
    check.choice("estimator", doc["estimator"], ESTIMATORS)
    check.choice("target", doc.get("target", "loss"), TARGETS)
    check.number("mix", doc["mix"], low=0.0, high=1.0, high_ok=False,
                 what="a number in [0, 1) (the uniform share of the sampler; weights <= 1/mix)")
    eps = check.number("eps", doc.get("eps", DEFAULT_EPS), low=0.0, low_ok=False, high=1.0,
                       high_ok=False, what="a number in (0, 1) (the rate floor)")
    check.table(doc, eps)
    check.fits(doc)
    if doc.get("forward_passes") is not None:
        value = doc["forward_passes"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            check.fail("forward_passes", f"must be an integer >= 0, got {_describe(value)}")
    if doc.get("seconds") is not None:
        check.number("seconds", doc["seconds"], low=0.0, what="a finite number >= 0")
    return doc
