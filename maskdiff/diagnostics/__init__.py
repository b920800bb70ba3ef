"""Variance diagnostics: the A/B/C decomposition, batch and gradient variance, curves.

One nested-loss engine (:mod:`.nested`, :mod:`.probe`) serves the decomposition here and the
P-POTS estimation in :mod:`maskdiff.ppots`; :mod:`.variance` holds the estimators on arrays,
:mod:`.estimators` applies them to an estimator on a model (docs/method.md §2).
"""
