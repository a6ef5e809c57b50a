"""The seed's notebook entry point: ``from kallos_models import tuner; tuner.run_tuning(...)``.

The tune stage lives in :mod:`kallos_models.stages.tune`; :func:`run_tuning` and :func:`tune`
here are the pipeline's (tracked in MLflow when ``tracking_uri`` is set, like the CLI).
"""

from kallos_models.pipeline import run_tuning, tune
from kallos_models.stages.tune import (
    TuneResult,
    default_study_name,
    list_studies,
    storage_url_for,
)

__all__ = [
    "TuneResult",
    "default_study_name",
    "list_studies",
    "run_tuning",
    "storage_url_for",
    "tune",
]
