"""Experiment tracking on MLflow: tune, train and evaluate runs, registered model versions.

Tracking is off unless a tracking URI is set: ``--tracking-uri`` (``tracking_uri``,
``KALLOS_TRACKING_URI``), else MLflow's own ``MLFLOW_TRACKING_URI``. The embedded choice is a
SQLite file, ``sqlite:///mlflow.db``; a PostgreSQL URL or an ``http(s)://`` tracking server
work the same way. The model registry lives at the same URI.

What is logged (all runs in the experiment ``tracking_experiment``, default ``kallos-models``):

- ``tune``: one parent run per call of :func:`kallos_models.pipeline.tune` and one child run per
  trial that call ran (parameters, per-fold scores as the metric ``fold_score`` with the fold
  as step, ``value``, the trial state as the tag ``optuna.state``), plus the best-params file
  and report plots on the parent. Child runs are written by the parent process after the
  trials finish, for one worker or many alike (each keeps its own start and end time).
- ``train``: one run with the hyperparameters and data range as params, the manifest as
  ``manifest.json``, and the bundle files inside an MLflow pyfunc model (``name="model"``)
  registered as a new version of ``{model}_{asset}_{timeframe}``; the version carries the
  bundle manifest's sha256 as the tag ``manifest_sha256``.
- ``evaluate``: the hold-out metrics (``holdout.*``) and the metrics file and plot
  (``evaluation/``) on the run of the model version whose ``manifest_sha256`` matches the
  evaluated bundle; the headline numbers are copied to that version's tags for
  ``kallos-run registry``. A bundle that was never registered gets its own ``evaluate`` run.

MLflow is the optional ``mlflow`` extra and is imported only inside the functions here, so
``kallos-run --help`` and runs without tracking never load it. Passwords in tracking URIs are
masked in every message. See ``documentation/tracking.md``.

The package: :mod:`~kallos_models.mlops.tracking.client` (the switch, the MLflow session,
logging helpers), :mod:`~kallos_models.mlops.tracking.tune` (:class:`TuneTracker`),
:mod:`~kallos_models.mlops.tracking.train` (:func:`log_training`, the pyfunc model) and
:mod:`~kallos_models.mlops.tracking.evaluate` (:func:`log_evaluation`,
:func:`download_model_version`); every public name is importable from here.
"""

from __future__ import annotations

from kallos_models.errors import TrackingError
from kallos_models.mlops.tracking.client import (
    HOLDOUT,
    MISSING_EXTRA,
    TAG_KIND,
    TAG_MANIFEST,
    TAG_RETIRED,
    enabled,
    registered_model_name,
    require_mlflow,
    session,
)
from kallos_models.mlops.tracking.evaluate import download_model_version, log_evaluation
from kallos_models.mlops.tracking.train import MODEL_ARTIFACT, log_training, pyfunc_model
from kallos_models.mlops.tracking.tune import TuneTracker
from kallos_models.modelling.metrics import HEADLINE_METRICS, headline

__all__ = [
    "HEADLINE_METRICS",
    "HOLDOUT",
    "MISSING_EXTRA",
    "MODEL_ARTIFACT",
    "TAG_KIND",
    "TAG_MANIFEST",
    "TAG_RETIRED",
    "TrackingError",
    "TuneTracker",
    "download_model_version",
    "enabled",
    "headline",
    "log_evaluation",
    "log_training",
    "pyfunc_model",
    "registered_model_name",
    "require_mlflow",
    "session",
]
