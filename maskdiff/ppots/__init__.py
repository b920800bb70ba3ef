"""P-POTS, the Pareto-optimal masking-rate sampler (docs/method.md §4).

- :mod:`.estimate` -- p̂ from the nested design on a model, the fitted result;
- :mod:`.fit`      -- the EPR and degree-7 polynomial fits, density tables;
- :mod:`.io`       -- the result file (``ppots.json``, plot) and its per-directory cache;
- :mod:`.schema`   -- what a valid ``ppots.json`` holds, checked field by field;
- :mod:`.online`   -- the online second-moment tracker and the trainer's refit hook.

Everything public is re-exported here: ``from maskdiff.ppots import estimate_ppots, fit_epr``.
"""

from maskdiff.ppots.estimate import (  # noqa: F401
    ESTIMATORS, TARGETS, ModelPHat, PHat, PPotsResult, estimate_p_hat, estimate_ppots, fit_ppots,
    inverse_rate_density, model_p_hat,
)
from maskdiff.ppots.fit import (  # noqa: F401
    EPR_KEYS, MIN_GRID_POINTS, MIN_TABLE_POINTS, DensityTable, EPRFit, PolyFit, check_table,
    epr_density, epr_log_p, epr_p, fit_epr, fit_poly7, poly_density,
)
from maskdiff.ppots.io import (  # noqa: F401
    JSON_FORMAT, JSON_VERSION, cached_density, coverage_note, density_for_method, density_from_ppots,
    density_table, load_ppots_json, plot_ppots, save_ppots_json,
)
from maskdiff.ppots.schema import PPotsFileError, check_ppots_doc  # noqa: F401
from maskdiff.ppots.online import (  # noqa: F401
    OnlineRefitter, SecondMomentTracker, TrackedPHat, TrackerRefit,
)
