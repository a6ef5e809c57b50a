"""The tune stage: Optuna over walk-forward cross-validation (see :mod:`.api`)."""

from kallos_models.stages.tune.api import (
    TuneObserver,
    TuneResult,
    default_study_name,
    list_studies,
    storage_url_for,
    tune,
)

__all__ = [
    "TuneObserver",
    "TuneResult",
    "default_study_name",
    "list_studies",
    "storage_url_for",
    "tune",
]
