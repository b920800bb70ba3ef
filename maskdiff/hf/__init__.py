"""Hugging Face integration: adapter, collators and a ``transformers.Trainer`` (docs/method.md §1).

Three pieces, each usable alone:

- :class:`HFAdapter` makes a Hugging Face model satisfy maskdiff's model contract
  ``model(input_ids (B, L) long, attention_mask (B, L) bool) -> logits (B, L, V)``: a
  bidirectional masked LM (``AutoModelForMaskedLM``) or a diffusion LLM loaded with
  ``trust_remote_code`` (LLaDA, Dream). The mask token id, the pad/EOS policy, the attention-mask
  format and any logit shift (Dream predicts token ``i`` at position ``i - 1``) are explicit
  :class:`AdapterOptions`, never guessed.
- :class:`MaskedDiffusionCollator` (rows ``{"input_ids", "eligible", ["syntax"]}``) and
  :class:`ChatCollator` (prompt/response or chat ``messages``: the eligible mask is the
  assistant turns, the SyRM syntax mask comes from a list of syntax tokens).
- :class:`MaskedDiffusionTrainer`, a ``transformers.Trainer`` whose loss is maskdiff's own
  :class:`~maskdiff.core.objective.Estimator`, with rates and masks from
  :class:`~maskdiff.core.seeding.BatchRandomness` keyed on (seed, global step, example index): the
  same numbers maskdiff's trainer computes, on any number of ranks, with gradient accumulation,
  and after a resume. It logs the per-t-bin statistics of :mod:`maskdiff.training.trainer` and can refit
  a P-POTS importance density online (docs/method.md §4 [beyond]).
- :class:`MaskedDiffusionDPOTrainer`: DPO / ELBO-KTO on ELBO differences (docs/method.md §13)
  from TRL's ``{"prompt", "chosen", "rejected"}`` rows, with :mod:`maskdiff.preference`'s
  estimators; the reference a frozen copy, the PEFT base model or precomputed ELBOs.

``transformers`` is imported lazily by the functions that need it and by the first use of
``MaskedDiffusionTrainer`` (:mod:`maskdiff.hf.trainer` imports it), so ``import maskdiff.hf``
costs nothing until a model is loaded or a trainer is built.
"""

from maskdiff.hf.adapter import (  # noqa: F401
    ATTENTION_FORMATS,
    CHAT_METHODS,
    STATE_FILE,
    AdapterOptions,
    HFAdapter,
)
from maskdiff.hf.loading import load_hf_model  # noqa: F401
from maskdiff.data.collate import PAD_POLICIES  # noqa: F401 (one vocabulary for both paths)
from maskdiff.hf.collate import (  # noqa: F401
    ChatCollator,
    IndexedDataset,
    MaskedDiffusionCollator,
    batch_from_inputs,
    encode_chat,
    encode_row,
    hf_batch,
    syntax_token_ids,
)
from maskdiff.core.config import EstimatorConfig  # noqa: F401 (the trainer's estimator=)
from maskdiff.hf.methods import method_estimator, method_trainer_kwargs  # noqa: F401
from maskdiff.hf.source import HFSource, load_hf_source  # noqa: F401
from maskdiff.training.stats import T_BINS  # noqa: F401  (the bins of loss_per_t_bin_j)

__all__ = [
    "AdapterOptions", "HFAdapter", "load_hf_model", "MaskedDiffusionCollator", "IndexedDataset",
    "batch_from_inputs", "syntax_token_ids", "encode_chat", "ChatCollator", "encode_row", "hf_batch",
    "MaskedDiffusionTrainer",  # noqa: F822 -- built on first access by the module __getattr__
    "MaskedDiffusionDPOTrainer",  # noqa: F822 -- likewise
    "PreferenceCollator", "encode_pair", "encode_pairs",  # noqa: F822 -- likewise
    "HFSource", "load_hf_source", "EstimatorConfig", "method_estimator",
    "method_trainer_kwargs",
]


_PAIRS = ("PreferenceCollator", "encode_pair", "encode_pairs")


def __getattr__(name: str):
    # The Trainer subclass imports transformers: import its module on first use.
    if name == "MaskedDiffusionTrainer":
        from maskdiff.hf.trainer import MaskedDiffusionTrainer

        return MaskedDiffusionTrainer
    if name in _PAIRS:  # they import maskdiff.preference: on first use too
        import maskdiff.hf.pairs as pairs

        return getattr(pairs, name)
    if name == "MaskedDiffusionDPOTrainer":
        from maskdiff.hf.dpo import MaskedDiffusionDPOTrainer

        return MaskedDiffusionDPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
