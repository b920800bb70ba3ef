"""maskdiff: stable training of masked diffusion language models.

The layers (docs/architecture.md), each importing only from those above it in this list:

- :mod:`maskdiff.core`        -- the estimator library: batch, seeding, rate samplers, maskers, the
  control variate, the objective and :class:`Estimator`, the method registry. Pure tensors.
- :mod:`maskdiff.diagnostics` -- the A/B/C variance decomposition, batch and gradient variance.
- :mod:`maskdiff.ppots`       -- P-POTS: nested estimation, EPR/polynomial fits, the online refit.
- :mod:`maskdiff.data`, :mod:`maskdiff.models` -- tokenisers, tasks, JSONL; the built-in transformer.
- :mod:`maskdiff.training`    -- configuration, the trainer, checkpoints, distributed runs,
  evaluation and decoding.
- :mod:`maskdiff.hf`          -- optional Hugging Face integration on top of the training runtime.
- :mod:`maskdiff.labs`        -- research laboratories: k-parity, closed forms, n-gram windows.
- :mod:`maskdiff.experiments`, :mod:`maskdiff.commands` -- reports and the command line.

The names a user composes an estimator from are re-exported here::

    from maskdiff import Batch, BatchRandomness, Estimator, Importance, Mirror, Uniform
"""

import importlib
import sys

from maskdiff.core.batch import Batch
from maskdiff.core.control import BinEMA
from maskdiff.core.masking import ISAD, Bernoulli, Masker, Mirror, MultiSample, View
from maskdiff.core.methods import METHODS, Method, get_method, register_method
from maskdiff.core.objective import Estimator, EstimatorOutput, Objective, per_example_loss
from maskdiff.core.samplers import Clipped, Importance, RateSampler, Stratified, Uniform, Window
from maskdiff.core.seeding import BatchRandomness
from maskdiff.core.shaped_samplers import Annealed, Bell, BellImportance

__version__ = "0.1.0"

__all__ = [
    "Annealed", "Batch", "BatchRandomness", "Bell", "BellImportance", "Bernoulli", "BinEMA",
    "Clipped", "Estimator", "EstimatorOutput", "ISAD", "Importance", "METHODS", "Masker", "Method", "Mirror", "Objective", "MultiSample", "RateSampler",
    "Stratified", "Uniform", "View", "Window", "get_method", "per_example_loss", "register_method",
]

# The module paths of maskdiff 0.1, before the estimator library moved into maskdiff.core: code
# written against them (``from maskdiff.samplers import Uniform``) keeps working.
_MOVED_MODULES = {name: f"maskdiff.core.{name}" for name in (
    "batch", "seeding", "samplers", "masking", "control", "objective", "methods")}
for _old, _new in _MOVED_MODULES.items():
    sys.modules.setdefault(f"maskdiff.{_old}", importlib.import_module(_new))
del _old, _new
