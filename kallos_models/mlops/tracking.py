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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kallos_models.config import Settings
from kallos_models.data import db
from kallos_models.errors import ArtifactError, ConfigError, KallosError

if TYPE_CHECKING:
    from kallos_models.stages.train import TrainResult

logger = logging.getLogger(__name__)

__all__ = [
    "MISSING_EXTRA",
    "TAG_MANIFEST",
    "TAG_RETIRED",
    "TrackingError",
    "TuneTracker",
    "download_model_version",
    "enabled",
    "log_evaluation",
    "log_training",
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
#: The hold-out numbers copied to a model version's tags, and where they sit in the metrics.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "rmse": ("rmse",),
    "naive_rmse": ("naive", "rmse"),
    "rmse_ratio": ("rmse_ratio",),
    "directional_accuracy": ("directional_accuracy",),
    "sharpe": ("backtest", "strategy", "annualised_sharpe"),
}
#: Evaluation record keys that describe the window, not the forecast quality.
_CONTEXT_KEYS = ("horizon", "input_chunk_length", "output_chunk_length", "n_filled")
#: Name of the pyfunc model inside a train run.
MODEL_ARTIFACT = "model"
#: The models-from-code file of the pyfunc model (MLflow 3's way, no pickled class).
_PYFUNC_CODE = '''"""kallos-models forecaster for mlflow.pyfunc (needs kallos-models installed)."""
import mlflow

from kallos_models.mlops.tracking import pyfunc_model

mlflow.models.set_model(pyfunc_model())
'''
_MLFLOW_LOGGERS = ("mlflow", "alembic")


class TrackingError(KallosError):
    """MLflow refused a request, or a registry name, version or alias does not exist."""


# --------------------------------------------------------------------------------------------
# Switch, import, session
# --------------------------------------------------------------------------------------------


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
    from kallos_models.files import safe_file_stem

    return f"{safe_file_stem(model_name)}_{safe_file_stem(asset_id)}_{safe_file_stem(timeframe)}"


def _masked(uri: str) -> str:
    return db.mask_url(uri)


def _hide_secret(text: str, uri: str) -> str:
    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


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
            text = _hide_secret(str(detail), uri).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise TrackingError(
                f"MLflow at {_masked(uri)}: {first}; check --tracking-uri (KALLOS_TRACKING_URI, "
                "MLFLOW_TRACKING_URI) and that its server or database is reachable"
            ) from None
        except ModuleNotFoundError as exc:  # a database driver the URI needs
            raise TrackingError(
                f"MLflow at {_masked(uri)} needs the Python module {exc.name!r}, which is not "
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


# --------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------


class TuneTracker:
    """One parent run per tune and one child run per trial it ran; a no-op without tracking.

    :func:`kallos_models.pipeline.tune` makes one at its start (which fails at once when MLflow
    is missing), calls :meth:`start` before the first trial and :meth:`finish` once the trials
    are over (also after Ctrl-C or an error). Child runs are written in :meth:`finish`, from
    the parent process, for the trials whose ``worker`` user attribute is one of this tune's
    processes and that started after :meth:`start`; so ``workers > 1`` needs nothing more.
    """

    def __init__(self, settings: Settings) -> None:
        require_mlflow(settings)
        self.settings = settings
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.started: datetime | None = None
        self.study_name: str | None = None

    def start(self, study_name: str, storage: str) -> None:
        """Open the parent run ``tune {study_name}`` with the tuning settings as params.

        Parameters
        ----------
        study_name : str
            The Optuna study. No default.
        storage : str
            The storage URL, password masked. No default.
        """
        if not enabled(self.settings):
            return
        s = self.settings
        self.started = datetime.now()
        self.study_name = study_name
        with session(s) as client:
            self.experiment_id = _experiment_id(client, s)
            run = client.create_run(
                self.experiment_id,
                run_name=f"tune {study_name}",
                tags={
                    TAG_KIND: "tune",
                    "optuna.study_name": study_name,
                    "kallos.model_name": s.model_name,
                    "kallos.asset_id": s.asset_id,
                    "kallos.timeframe": s.timeframe,
                },
            )
            with _ends_failed_on_error(client, run.info.run_id):
                _log(
                    client,
                    run.info.run_id,
                    params={
                        "model_name": s.model_name,
                        "asset_id": s.asset_id,
                        "timeframe": s.timeframe,
                        "metric": s.metric,
                        "n_trials": s.n_trials,
                        "tune_end_date": s.tune_end_date,
                        "start_date": s.start_date,
                        "max_epochs": s.max_epochs,
                        "seed": s.seed,
                        "workers": s.workers,
                        "target_col": s.target_col,
                        "target_transform": s.target_transform,
                        "study_name": study_name,
                        "storage": db.mask_url(storage),
                    },
                )
            self.run_id = run.info.run_id
        logger.info("tracking tune run %s in %s", self.run_id, _masked(_tracking_uri(s)))

    def finish(
        self,
        study: Any,
        owners: Iterable[str],
        *,
        status: str = "FINISHED",
        files: Iterable[Path | None] = (),
    ) -> int:
        """Log the trials this tune ran as child runs, the best value and files; end the run.

        Parameters
        ----------
        study : optuna.Study
            The study. No default.
        owners : iterable of str
            ``host:pid`` of this process and its workers (the trials' ``worker`` attribute).
        status : str, default "FINISHED"
            ``FINISHED``, ``FAILED`` or ``KILLED``. When not ``FINISHED`` a tracking error is
            logged as a warning instead of raised, so it never hides the first error.
        files : iterable of Path, default ()
            Files to attach to the parent run (the params file and report plots).

        Returns
        -------
        int
            Child runs written.
        """
        if self.run_id is None:
            return 0
        run_id, self.run_id = self.run_id, None
        try:
            with session(self.settings) as client:
                written = self._log_trials(client, run_id, study, set(owners))
                best = _best_trial(study)
                _log(
                    client,
                    run_id,
                    metrics={"best_value": None if best is None else best.value},
                    tags={"optuna.best_trial": None if best is None else best.number},
                )
                for path in files:
                    if path is not None and Path(path).is_file():
                        client.log_artifact(run_id, str(path))
                client.set_terminated(run_id, status)
        except Exception as exc:
            if status == "FINISHED":
                raise
            logger.warning("could not close the MLflow tune run %s: %s", run_id, exc)
            return 0
        logger.info("tracked %d trial run(s) under tune run %s", written, run_id)
        return written

    def _log_trials(self, client: Any, parent: str, study: Any, owners: set[str]) -> int:
        written = 0
        for trial in study.get_trials(deepcopy=False):
            if not trial.state.is_finished() or trial.user_attrs.get("worker") not in owners:
                continue
            if self.started and trial.datetime_start and trial.datetime_start < self.started:
                continue
            state = trial.state.name
            run = client.create_run(
                self.experiment_id,
                start_time=_ms(trial.datetime_start),
                run_name=f"trial {trial.number}",
                tags={
                    "mlflow.parentRunId": parent,
                    TAG_KIND: "tune-trial",
                    "optuna.study_name": self.study_name,
                    "optuna.trial_number": str(trial.number),
                    "optuna.state": state,
                    "optuna.worker": trial.user_attrs.get("worker"),
                },
            )
            attrs = trial.user_attrs
            error = attrs.get("error")
            _log(
                client,
                run.info.run_id,
                params={**(attrs.get("params") or {}), **trial.params},
                metrics={"value": trial.value, "n_epochs": attrs.get("n_epochs")},
                steps=[
                    ("fold_score", score, index)
                    for index, score in enumerate(attrs.get("fold_scores") or [])
                ],
                tags={"optuna.error": None if error is None else str(error)[:4000]},
            )
            client.set_terminated(
                run.info.run_id,
                "FAILED" if state == "FAIL" else "FINISHED",
                end_time=_ms(trial.datetime_complete),
            )
            written += 1
        return written


def _best_trial(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def pyfunc_model() -> Any:
    """The ``mlflow.pyfunc`` model of a bundle (used by the models-from-code file).

    ``load_context`` loads the bundle from the model's artifacts with
    :func:`kallos_models.modelling.bundles.load_bundle` (checksums verified). ``predict`` takes rows
    as :func:`kallos_models.data.datasets.load_features_from_db` returns them (a DatetimeIndex, or
    an ``open_time`` column; the target and feature columns) and returns one-step rolling
    forecasts in prices (``actual``, ``forecast``, ``naive``, ``origin_close``) for every bar
    after the model's lookback.
    """
    import mlflow.pyfunc

    # predict takes a whole frame, not rows: no type-hint schema (MLflow's validation would
    # want list[...] hints and, without them, warns on every log_model)
    base: Any = mlflow.pyfunc.PythonModel

    class KallosForecaster(base):
        _skip_type_hint_validation = True

        def load_context(self, context):
            from kallos_models.modelling import bundles

            self.bundle = bundles.load_bundle(
                context.artifacts["model"],
                context.artifacts["scaler"],
                manifest_path=context.artifacts["manifest"],
            )

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from kallos_models.modelling import forecasting

            frame = model_input
            if not isinstance(frame.index, pd.DatetimeIndex) and "open_time" in frame.columns:
                frame = frame.set_index(pd.DatetimeIndex(frame["open_time"], name="open_time"))
            model, preprocessor = self.bundle.model, self.bundle.preprocessor
            needed = forecasting.lookback_bars(
                int(model.input_chunk_length), 1, preprocessor.target_transform
            )
            if len(frame) <= needed:
                from kallos_models.errors import DataError

                raise DataError(f"predict needs more than {needed} rows, got {len(frame)}")
            return forecasting.rolling_forecasts(
                model, preprocessor, frame, start=frame.index[needed], horizon=1
            )

    return KallosForecaster()


def _requirements() -> list[str]:
    from importlib import metadata

    from kallos_models.modelling.bundles import library_versions

    pins = [f"{name}=={v}" for name, v in library_versions().items() if name != "python" and v]
    try:
        pins.append(f"kallos-models=={metadata.version('kallos-models')}")
    except metadata.PackageNotFoundError:
        pins.append("kallos-models")
    return pins


def _training_params(manifest: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "model_name",
        "asset_id",
        "timeframe",
        "train_start",
        "train_end",
        "train_rows",
        "start_date",
        "train_end_date",
        "seed",
        "target_col",
        "target_transform",
        "input_chunk_length",
        "output_chunk_length",
        "feature_columns",
        "accelerator",
        "precision",
    )
    params = {key: manifest.get(key) for key in keys}
    for key, value in (manifest.get("params") or {}).items():
        params.setdefault(key, value)
    return params


@contextlib.contextmanager
def _ends_failed_on_error(client: Any, run_id: str) -> Iterator[None]:
    """Mark the run FAILED when the block raises, so no run is left RUNNING."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise


def _log_bundle(
    client: Any, experiment_id: str, run_id: str, manifest: Mapping[str, Any], paths: Any
) -> Any:
    """Params, metrics and manifest of a train run, and the bundle as a pyfunc model."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    _log(
        client,
        run_id,
        params=_training_params(manifest),
        metrics={
            "training_seconds": manifest.get("training_seconds"),
            "epochs_run": manifest.get("epochs_run"),
            "train_rows": manifest.get("train_rows"),
        },
    )
    client.log_dict(run_id, dict(manifest), "manifest.json")
    # The logged model is created for this run by id, so no fluent "active run" (a notebook's
    # own run, its set_experiment) is touched; then it is linked as the run's output.
    logged = client.create_logged_model(
        experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id, model_type="kallos-bundle"
    )
    with tempfile.TemporaryDirectory(prefix="kallos-pyfunc-") as tmp:
        code = Path(tmp) / "kallos_pyfunc.py"
        code.write_text(_PYFUNC_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(code),
            artifacts={
                "model": str(paths.model),
                "checkpoint": str(paths.checkpoint),
                "scaler": str(paths.scaler),
                "manifest": str(paths.manifest),
            },
            pip_requirements=_requirements(),
            model_id=logged.model_id,
        )
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return info


def log_training(settings: Settings, result: TrainResult) -> dict[str, Any] | None:
    """Log a train run with the bundle and register it as a new model version.

    Parameters
    ----------
    settings : Settings
        Nothing happens unless ``tracking_uri`` is set.
    result : TrainResult
        The bundle just saved by :func:`kallos_models.stages.train.train_model`.

    Returns
    -------
    dict or None
        ``registered_model``, ``version``, ``run_id``, ``model_uri``
        (``models:/{name}/{version}``) and ``tracking_uri`` (password masked); None when
        tracking is off.

    Raises
    ------
    TrackingError
        MLflow refused a request (the bundle on disk is kept either way).
    """
    if not enabled(settings):
        return None
    from kallos_models.files import sha256_file

    manifest = result.manifest
    paths = result.paths
    name = registered_model_name(
        str(manifest["model_name"]), str(manifest["asset_id"]), str(manifest["timeframe"])
    )
    manifest_sha = sha256_file(paths.manifest)
    with session(settings) as client:
        experiment_id = _experiment_id(client, settings)
        run = client.create_run(
            experiment_id,
            run_name=f"train {name}",
            tags={TAG_KIND: "train", "kallos.registered_model": name, TAG_MANIFEST: manifest_sha},
        )
        run_id = run.info.run_id
        with _ends_failed_on_error(client, run_id):
            model_info = _log_bundle(client, experiment_id, run_id, manifest, paths)
        client.set_terminated(run_id)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name,
            source=model_info.model_uri,
            run_id=run_id,
            model_id=model_info.model_id,
            tags={
                TAG_MANIFEST: manifest_sha,
                "model_name": manifest.get("model_name"),
                "asset_id": manifest.get("asset_id"),
                "timeframe": manifest.get("timeframe"),
                "train_start": manifest.get("train_start"),
                "train_end": manifest.get("train_end"),
            },
        )
    tracked = {
        "registered_model": name,
        "version": int(version.version),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "tracking_uri": _masked(_tracking_uri(settings)),
    }
    logger.info("registered %s version %s (run %s)", name, version.version, run_id)
    return tracked


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="kallos-models bundles: {model}_{asset}_{timeframe}"
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _flatten(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if prefix == HOLDOUT and key in _CONTEXT_KEYS:
            continue
        if key == "config":  # the backtest rules: text and settings, not results
            continue
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif (number := _finite(value)) is not None:
            out[f"{prefix}{key}"] = number
    return out


def headline(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The hold-out numbers ``kallos-run registry`` shows and checks, from an evaluation record.

    Parameters
    ----------
    record : Mapping
        The metrics :func:`kallos_models.stages.evaluate.evaluate_model` writes.

    Returns
    -------
    dict
        ``rmse``, ``naive_rmse``, ``rmse_ratio``, ``directional_accuracy`` and ``sharpe`` (the
        backtest strategy's annualised Sharpe ratio); None where missing.
    """
    out: dict[str, float | None] = {}
    for name, path in HEADLINE_METRICS.items():
        value: Any = record
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        out[name] = _finite(value)
    return out


def log_evaluation(
    settings: Settings,
    manifest_path: Path,
    record: Mapping[str, Any],
    metrics_path: Path,
    plot_path: Path,
) -> dict[str, Any] | None:
    """Log an evaluation to the run of the model version trained as this bundle.

    The version is found by the sha256 of the bundle's manifest (its ``manifest_sha256``
    tag). Its run gets the ``holdout.*`` metrics and the files under ``evaluation/``; the
    version gets the headline numbers and the window as ``holdout.*`` tags. A bundle that no
    version holds is logged in a new ``evaluate`` run, with a warning.

    Parameters
    ----------
    settings : Settings
        Nothing happens unless ``tracking_uri`` is set.
    manifest_path : Path
        The evaluated bundle's manifest.
    record : Mapping
        The metrics written to ``metrics_path``.
    metrics_path, plot_path : Path
        The files written by the evaluation.

    Returns
    -------
    dict or None
        ``registered_model`` and ``version`` (None when no version holds the bundle) and
        ``run_id``; None when tracking is off.
    """
    if not enabled(settings):
        return None
    from kallos_models.files import sha256_file

    manifest_sha = sha256_file(manifest_path)
    with session(settings) as client:
        found = sorted(
            client.search_model_versions(f"tags.{TAG_MANIFEST} = '{manifest_sha}'"),
            key=lambda v: int(v.version),
        )
        version = found[-1] if found else None
        if version is not None and version.run_id:
            run_id = version.run_id
        else:
            logger.warning(
                "the evaluated bundle %s is not a registered model version (train it with "
                "--tracking-uri to register it); logging a separate evaluate run",
                manifest_path,
            )
            run = client.create_run(
                _experiment_id(client, settings),
                run_name=f"evaluate {record.get('model_name')}_{record.get('asset_id')}",
                tags={TAG_KIND: "evaluate", TAG_MANIFEST: manifest_sha},
            )
            run_id = run.info.run_id
        window = {
            f"{HOLDOUT}test_start": record.get("test_start"),
            f"{HOLDOUT}test_end": record.get("test_end"),
            f"{HOLDOUT}horizon": record.get("horizon"),
            f"{HOLDOUT}evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        own_run = version is None
        with _ends_failed_on_error(client, run_id) if own_run else contextlib.nullcontext():
            _log(client, run_id, metrics=_flatten(record, HOLDOUT), tags=window)
            client.log_artifact(run_id, str(metrics_path), "evaluation")
            client.log_artifact(run_id, str(plot_path), "evaluation")
        if version is not None:
            numbers = {f"{HOLDOUT}{k}": v for k, v in headline(record).items()}
            for key, value in {**numbers, **window}.items():
                text = "" if value is None else _param_value(value)
                client.set_model_version_tag(version.name, version.version, key, text)
        else:
            client.set_terminated(run_id)
    tracked = {
        "registered_model": None if version is None else version.name,
        "version": None if version is None else int(version.version),
        "run_id": run_id,
    }
    if version is not None:
        logger.info(
            "evaluation logged to %s version %s (run %s)", version.name, version.version, run_id
        )
    return tracked


# --------------------------------------------------------------------------------------------
# registry downloads
# --------------------------------------------------------------------------------------------


def download_model_version(client: Any, name: str, version: str, destination: Path) -> Path:
    """Download a model version's bundle; return the path of its ``.pt`` model file.

    Parameters
    ----------
    client : mlflow.MlflowClient
        From :func:`session` (whose URI the download uses).
    name, version : str
        The registered model and version.
    destination : Path
        An empty directory to download into.

    Returns
    -------
    Path
        The bundle's model file; the checkpoint, scaler and manifest are beside it, to be
        verified by :func:`kallos_models.modelling.bundles.load_bundle`.

    Raises
    ------
    ArtifactError
        The version holds no bundle, or its manifest is not the one registered (its sha256
        differs from the version's ``manifest_sha256`` tag).
    """
    import mlflow

    from kallos_models.files import sha256_file

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(destination),
            tracking_uri=mlflow.get_tracking_uri(),
            registry_uri=mlflow.get_registry_uri(),
        )
    )
    bundle_dir = local / "artifacts"
    manifests = sorted(bundle_dir.glob("*_manifest.json"))
    if len(manifests) != 1:
        raise ArtifactError(
            f"version {version} of {name} holds no kallos bundle (found {len(manifests)} "
            "manifests); register bundles with `kallos-run train --tracking-uri ...`"
        )
    manifest_file = manifests[0]
    expected = client.get_model_version(name, version).tags.get(TAG_MANIFEST)
    if expected and sha256_file(manifest_file) != expected:
        raise ArtifactError(
            f"the manifest of version {version} of {name} does not match the checksum "
            "registered with it: the artifacts were modified after training"
        )
    try:
        model_name = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]["model"]["name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"the manifest of version {version} of {name} is not valid") from exc
    if not isinstance(model_name, str) or Path(model_name).name != model_name:
        raise ArtifactError(f"the manifest of version {version} of {name} names no model file")
    return bundle_dir / model_name
