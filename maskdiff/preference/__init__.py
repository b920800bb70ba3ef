"""Preference optimisation of masked diffusion models on ELBO estimates (docs/method.md §13):
the ELBO estimators (:mod:`~maskdiff.preference.elbo`), DPO and ELBO-KTO losses
(:mod:`~maskdiff.preference.losses`), pairs (:mod:`~maskdiff.preference.pairs`), the reference
table (:mod:`~maskdiff.preference.reference`) and the native trainer behind ``maskdiff dpo``
(:mod:`~maskdiff.preference.trainer`)."""

from maskdiff.preference.elbo import (
    DEFAULT_ESTIMATOR, PREFERENCE_ESTIMATORS, PreferenceEstimator, count_weights,
    exact_log_likelihood, lowvar_view, preference_estimator,
)
from maskdiff.preference.losses import (
    LOSSES, dpo_loss, dpo_margin, kto_loss, kto_reference_point, pair_kto_loss, preference_loss,
)
from maskdiff.preference.pairs import PreferencePair, check_pairs_fit, load_pairs, pair_batches
from maskdiff.preference.reference import reference_elbos
from maskdiff.preference.trainer import DPOConfig, DPOTrainer, train_dpo

__all__ = [
    "DEFAULT_ESTIMATOR", "PREFERENCE_ESTIMATORS", "PreferenceEstimator", "count_weights",
    "exact_log_likelihood", "lowvar_view", "preference_estimator", "LOSSES", "dpo_loss",
    "dpo_margin", "kto_loss", "kto_reference_point", "pair_kto_loss", "preference_loss",
    "PreferencePair", "check_pairs_fit", "load_pairs", "pair_batches", "reference_elbos",
    "DPOConfig", "DPOTrainer", "train_dpo",
]
