"""Variance diagnostics: the A/B/C decomposition, batch and gradient variance, curves.

One nested-loss engine (:mod:`.nested`, :mod:`.probe`) serves the decomposition here and the
P-POTS estimation in :mod:`maskdiff.ppots`. The estimators on arrays: :mod:`.variance` (A/B/C,
total and batch variance), :mod:`.gradient` (``tr Cov`` of gradients), :mod:`.curves` (``g(t)``,
``v(t)``), sharing :mod:`.stats`; :mod:`.measure` applies them to an estimator on a model and
:mod:`.estimators` runs them all as one suite (docs/method.md §2).
"""
