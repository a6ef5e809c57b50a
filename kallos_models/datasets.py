"""The seed's ``kallos_models.datasets`` names.

Loading and walk-forward splits live in :mod:`kallos_models.data.datasets`; turning frames
into Darts series with the fitted preprocessing lives in :mod:`kallos_models.modelling.series`.
"""

from kallos_models.data.datasets import (
    calculate_dynamic_wf_kwargs,
    get_walk_forward_splits,
    load_features_from_db,
)
from kallos_models.modelling.series import PreparedSeries, prepare_darts_timeseries

__all__ = [
    "PreparedSeries",
    "calculate_dynamic_wf_kwargs",
    "get_walk_forward_splits",
    "load_features_from_db",
    "prepare_darts_timeseries",
]
