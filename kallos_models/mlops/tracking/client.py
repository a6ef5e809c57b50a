"""The switch, the MLflow import and session, and the helpers every tracked run logs with.

:func:`session` is the one way into MLflow: an ``MlflowClient`` on the tracking URI, with
MLflow's chatter kept quiet and its errors turned into :class:`TrackingError` (passwords
masked with :func:`kallos_models.data.db.scrub`). MLflow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kallos_models.config import Settings
from kallos_models.data import db
from kallos_models.errors import ConfigError, TrackingError
from kallos_models.files import safe_file_stem

logger = logging.getLogger(__name__)

__all__ = [
    "HOLDOUT",
    "MISSING_EXTRA",
    "TAG_KIND",
    "TAG_MANIFEST",
    "TAG_RETIRED",
    "TrackingError",
    "enabled",
    "registered_model_name",
    "require_mlflow",
    "session",
]

#: The message when tracking is asked for and MLflow is not installed.
MISSING_EXTRA = '--tracking-uri needs MLflow: pip install -e ".[mlflow]" (or pip install mlflow)'
#: Run tag saying which command wrote the run: tune, tune-trial, train or evaluate.
TAG_KIND = "kallos.kind"
#: Model version tag holding the sha256 of the bundle's manifest file.
TAG_MANIFEST = "manifest_sha256"
#: Model version tag set to "true" by ``kallos-run registry archive``.
TAG_RETIRED = "retired"
#: Prefix of the hold-out numbers, as run metrics and as model version tags.
HOLDOUT = "holdout."
_MLFLOW_LOGGERS = ("mlflow", "alembic")


def enabled(settings: Settings) -> bool:
    """Whether ``settings`` ask for tracking (``tracking_uri`` set).

    Parameters
    ----------
    settings : Settings
        Resolved settings (``MLFLOW_TRACKING_URI`` is already folded into ``tracking_uri``).

    Returns
    -------
    bool
    """
    return bool(settings.tracking_uri)


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    # no download progress bars on stderr: they drown the one-line logs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return mlflow


def require_mlflow(settings: Settings) -> None:
    """Fail early, before any data is read, when tracking is asked for without MLflow.

    Parameters
    ----------
    settings : Settings
        Nothing happens unless ``settings.tracking_uri`` is set.

    Raises
    ------
    ConfigError
        Tracking is on and ``import mlflow`` fails; the message names the package to install.
    """
    if enabled(settings):
        _import_mlflow()


def registered_model_name(model_name: str, asset_id: str, timeframe: str) -> str:
    """``{model}_{asset}_{timeframe}``, the registered model of a bundle (file-name-safe parts).

    Parameters
    ----------
    model_name, asset_id, timeframe : str
        As in the bundle's manifest. No defaults.

    Returns
    -------
    str
    """
    return f"{safe_file_stem(model_name)}_{safe_file_stem(asset_id)}_{safe_file_stem(timeframe)}"


def _tracking_uri(settings: Settings) -> str:
    if not settings.tracking_uri:
        raise ConfigError(
            "no MLflow tracking URI: pass --tracking-uri (e.g. sqlite:///mlflow.db), or set "
            "KALLOS_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    uri = str(settings.tracking_uri)
    if uri.split("://", 1)[0] in ("postgres", "postgresql"):
        # the driver this package installs, as for --db-url (else SQLAlchemy wants psycopg 3)
        uri = db.resolve_url(uri).render_as_string(hide_password=False)
    return uri


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines (table creation, "registered model") and warnings only with -vv."""
    verbose = logging.getLogger("kallos_models").getEffectiveLevel() <= logging.DEBUG
    loggers = [logging.getLogger(name) for name in _MLFLOW_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            if not verbose:
                for lg in loggers:
                    lg.setLevel(logging.WARNING)
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[Any]:
    """An ``MlflowClient`` on ``settings.tracking_uri`` (tracking and registry), quietly.

    MLflow's process-wide tracking and registry URIs are set to it too, since model logging
    goes through MLflow's fluent API. An ``MlflowException`` raised in the block becomes a
    :class:`TrackingError` with any password in the URI masked.

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` is required.

    Yields
    ------
    mlflow.MlflowClient

    Raises
    ------
    ConfigError
        No tracking URI, or MLflow is not installed.
    TrackingError
        MLflow refused a request.
    """
    uri = _tracking_uri(settings)
    mlflow = _import_mlflow()
    import sqlalchemy as sa
    from mlflow.exceptions import MlflowException

    with _quiet_mlflow():
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        except (MlflowException, sa.exc.SQLAlchemyError) as exc:
            detail = getattr(exc, "orig", None) or getattr(exc, "message", None) or exc
            text = db.scrub(str(detail), uri).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise TrackingError(
                f"MLflow at {db.mask_url(uri)}: {first}; check --tracking-uri "
                "(KALLOS_TRACKING_URI, MLFLOW_TRACKING_URI) and that its server or database is "
                "reachable"
            ) from None
        except ModuleNotFoundError as exc:  # a database driver the URI needs
            raise TrackingError(
                f"MLflow at {db.mask_url(uri)} needs the Python module {exc.name!r}, which is not "
                f"installed: pip install {exc.name}, or use sqlite:/// or postgresql:// "
                "(psycopg2 is installed)"
            ) from None


def _experiment_id(client: Any, settings: Settings) -> str:
    """The id of ``settings.tracking_experiment``, created when missing."""
    from mlflow.exceptions import MlflowException

    name = settings.tracking_experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = settings.tracking_artifact_location
        if location and "://" not in location:
            location = Path(location).expanduser().resolve().as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location or None))
        except MlflowException as exc:  # created at the same moment by another process
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
            "--experiment-id ...) or choose another tracking_experiment "
            "(KALLOS_TRACKING_EXPERIMENT)"
        )
    return str(experiment.experiment_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # Optuna stores naive local times
        return int(moment.timestamp() * 1000)
    return int(moment.astimezone(timezone.utc).timestamp() * 1000)


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _log(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    steps: Iterable[tuple[str, float, int]] = (),
    tags: Mapping[str, Any] | None = None,
) -> None:
    """One ``log_batch``: params as text, finite numbers as metrics, tags as text."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = _now_ms()
    metric_rows = [
        Metric(key, number, stamp, 0)
        for key, value in (metrics or {}).items()
        if (number := _finite(value)) is not None
    ]
    metric_rows += [
        Metric(key, number, stamp, step)
        for key, value, step in steps
        if (number := _finite(value)) is not None
    ]
    client.log_batch(
        run_id,
        metrics=metric_rows,
        params=[Param(k, _param_value(v)) for k, v in (params or {}).items() if v is not None],
        tags=[RunTag(k, _param_value(v)) for k, v in (tags or {}).items() if v is not None],
    )


@contextlib.contextmanager
def _ends_failed_on_error(client: Any, run_id: str) -> Iterator[None]:
    """Mark the run FAILED when the block raises, so no run is left RUNNING."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
