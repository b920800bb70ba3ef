"""Evaluation and decoding for any model maskdiff trains: native runs and Hugging Face models
(plain or PEFT), through one ELBO evaluator and one decoder (docs/evaluation.md, docs/method.md §8).

- :func:`load_eval_model` / :class:`EvalModel`: a run directory or a HF model behind one interface.
- :func:`loglikelihoods`: the Monte-Carlo ELBO of continuations given contexts, with per-request
  standard errors; :func:`generate`: low-confidence block decoding with stop sequences.
- :mod:`maskdiff.evaluation.harness`: the lm-evaluation-harness model ``maskdiff``; it imports
  ``lm_eval`` (``pip install -e '.[eval]'``), so it is imported only on demand.
"""

from maskdiff.evaluation.model import EvalModel, load_eval_model  # noqa: F401
from maskdiff.evaluation.scoring import (  # noqa: F401
    DEFAULT_RATES, Score, cut_at_stops, generate, loglikelihoods,
)

__all__ = ["EvalModel", "load_eval_model", "Score", "loglikelihoods", "generate", "cut_at_stops",
           "DEFAULT_RATES"]
