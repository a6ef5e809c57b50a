"""The stages with their observers wired in: what the CLI and notebooks call.

Stages (:mod:`kallos_models.stages`) know nothing of MLflow. This thin layer resolves what
must be resolved before a stage runs (a ``models:/`` URI becomes a downloaded, verified
bundle), runs the stage, and lets tracking (:mod:`kallos_models.mlops.tracking`) observe the
result: a tune gets a parent run and a child run per trial, a trained bundle is registered,
an evaluation is logged to the version that holds the bundle. With ``tracking_uri`` unset
every function here is exactly its stage. MLflow missing while tracking is asked for fails
before any data is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy.engine import URL

from kallos_models.config import Settings, resolve_settings
from kallos_models.errors import ConfigError
from kallos_models.stage_settings import evaluate_settings, train_settings, tune_settings

if TYPE_CHECKING:
    import optuna

    from kallos_models.live_settings import PredictSettings
    from kallos_models.modelling.ensemble import EnsembleSpec
    from kallos_models.modelling.intervals import IntervalSpec
    from kallos_models.stages.evaluate import EvaluationResult
    from kallos_models.stages.predict import PredictResult
    from kallos_models.stages.train import TrainResult
    from kallos_models.stages.tune import TuneResult

__all__ = ["evaluate", "predict", "run_tuning", "train", "tune"]


def tune(
    settings: Settings,
    *,
    show_progress: bool = False,
    search_space: Any = None,
    pruner: Any = None,
    warm_start_from: str | None = None,
    space: str = "auto",
) -> TuneResult:
    """:func:`kallos_models.stages.tune.tune`, tracked in MLflow when ``tracking_uri`` is set.

    Parameters
    ----------
    settings : Settings
        Resolved settings (see the stage). No default.
    show_progress : bool, default False
        Lightning progress bars and Optuna's own log lines.
    search_space : callable or None, default None
        ``(trial, timeframe) -> params`` replacing the registry's search space.
    pruner : optuna.pruners.BasePruner or None, default None
        None: the one ``settings.pruner`` names.
    warm_start_from : str or None, default None
        A study (same model, same storage) whose best configurations are tried first.
    space : {"auto", "cpu", "full"}, default "auto"
        The search space and epoch budget (:mod:`kallos_models.stages.tune.budget`).

    Returns
    -------
    TuneResult
    """
    from kallos_models.mlops import tracking
    from kallos_models.stages import tune as tune_stage

    stage = tune_settings(settings)  # required values checked before anything else
    observers = [tracking.TuneTracker(settings)] if tracking.enabled(settings) else []
    # only what the caller chose: the stage's own defaults stay in one place
    chosen = {"search_space": search_space, "pruner": pruner, "warm_start_from": warm_start_from}
    return tune_stage.tune(
        stage,
        show_progress=show_progress,
        observers=observers,
        space=space,
        **{key: value for key, value in chosen.items() if value is not None},
    )


def train(
    settings: Settings,
    params: Mapping[str, Any] | str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = False,
    intervals: IntervalSpec | None = None,
    members: EnsembleSpec | None = None,
) -> TrainResult:
    """:func:`kallos_models.stages.train.train_model`, then register the bundle when tracking.

    Parameters
    ----------
    settings : Settings
        Resolved settings (see the stage). No default.
    params : Mapping or str or Path
        Hyperparameters or a params file. No default.
    overwrite : bool, default False
        Replace an existing bundle.
    show_progress : bool, default False
        Lightning's progress bar and model summary.
    intervals : IntervalSpec or None, default None
        Quantile regression and/or conformal prediction (see the stage); None: a point model.
    members : EnsembleSpec or None, default None
        The members of an ensemble (``model_name`` ``ensemble``; see the stage).

    Returns
    -------
    TrainResult
        With ``tracking`` (registered model, version, run id) when tracking is on.

    Raises
    ------
    TrackingError
        Tracking is on and MLflow refused the run or the registration (the bundle is kept).
    """
    from kallos_models.mlops import tracking
    from kallos_models.stages.train import train_model

    stage = train_settings(settings)  # required values checked before anything else
    tracking.require_mlflow(settings)  # before any training: a missing extra fails now
    result = train_model(
        stage,
        params,
        overwrite=overwrite,
        show_progress=show_progress,
        intervals=intervals,
        members=members,
    )
    tracked = tracking.log_training(settings, result)
    return dataclasses.replace(result, tracking=tracked) if tracked else result


def evaluate(
    settings: Settings,
    *,
    model_path: str | Path,
    scaler_path: str | Path | None = None,
    horizon: int | None = None,
    retrain_every: int | str | None = None,
    params_file: str | Path | None = None,
    show_progress: bool = False,
) -> EvaluationResult:
    """:func:`kallos_models.stages.evaluate.evaluate_model` on a bundle or a registry URI, or
    with ``retrain_every`` the retraining backtest
    (:func:`kallos_models.stages.evaluate.retrain_backtest`).

    Parameters
    ----------
    settings : Settings
        Resolved settings (see the stage). No default.
    model_path : str or Path
        The bundle's ``.pt`` file, or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``: that
        version's bundle is downloaded to a temporary directory and verified like a local one
        (needs ``tracking_uri``). No default.
    scaler_path : str or Path or None, default None
        The bundle's scaler; None: the one its manifest names. Not with a registry URI.
    horizon : int or None, default None
        Forecast step scored; None: ``settings.horizon``.
    retrain_every : int or str or None, default None
        Refit the bundle's recipe every that many bars through the window; None: the
        bundle's model, fitted once.
    params_file : str or Path or None, default None
        Hyperparameters of the refits (``train --params-file``'s format); None: the
        bundle's. Only with ``retrain_every``.
    show_progress : bool, default False
        Lightning's progress bars during the refits.

    Returns
    -------
    EvaluationResult
        With ``tracking`` when tracking is on: the metrics and plot are logged to the run of
        the model version trained as this bundle. A retraining backtest is not logged: it
        judges the recipe, not that version's weights, whose ``holdout.*`` numbers stay.

    Raises
    ------
    ConfigError
        ``scaler_path`` with a registry URI, a bad ``retrain_every``, ``params_file``
        without it, and the stage's errors.
    TrackingError
        A registry URI names no registered model, version or alias; MLflow refused to log.
    """
    import logging

    from kallos_models.mlops import registry, tracking
    from kallos_models.modelling.bundles import is_registry_uri
    from kallos_models.stages.evaluate import evaluate_model, retrain_backtest

    # required values and the retrain options checked before anything else
    stage = evaluate_settings(settings, retrain_every=retrain_every, params_file=params_file)
    tracking.require_mlflow(settings)

    def run(local: str | Path, scaler: str | Path | None, source: str | None) -> Any:
        if stage.retrain_every is None:
            return evaluate_model(
                stage, model_path=local, scaler_path=scaler, horizon=horizon, source=source
            )
        return retrain_backtest(
            stage,
            model_path=local,
            scaler_path=scaler,
            horizon=horizon,
            source=source,
            show_progress=show_progress,
        )

    def log(result: EvaluationResult) -> dict[str, Any] | None:
        if stage.retrain_every is None:
            return _log_evaluation(settings, result)
        if tracking.enabled(settings):
            logging.getLogger(__name__).info(
                "retraining backtest not logged to tracking: it judges the recipe, not the "
                "registered weights"
            )
        return None

    if is_registry_uri(model_path):
        if scaler_path is not None:
            raise ConfigError(
                "--scaler-path does not go with a models:/ URI: the registered bundle brings "
                "its own scaler"
            )
        with registry.downloaded_bundle(settings, str(model_path)) as (local_model, _, _):
            result = run(local_model, None, str(model_path))
            tracked = log(result)
    else:
        result = run(model_path, scaler_path, None)
        tracked = log(result)
    return dataclasses.replace(result, tracking=tracked) if tracked else result


def predict(settings: Settings, stage: PredictSettings, *, model_path: str | Path) -> PredictResult:
    """:func:`kallos_models.stages.predict.predict` on a bundle or a registry URI.

    Parameters
    ----------
    settings : Settings
        Resolved settings: ``tracking_uri`` for a registry URI. No default.
    stage : PredictSettings
        The stage's settings (:func:`kallos_models.stage_settings.predict_settings`).
    model_path : str or Path
        The bundle's ``.pt`` file, or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``: that
        version's bundle is downloaded, verified, and the forecast records its registered
        name and version. No default.

    Returns
    -------
    PredictResult
    """
    from kallos_models.modelling.bundles import is_registry_uri
    from kallos_models.stages.predict import predict as predict_stage

    if not is_registry_uri(model_path):
        return predict_stage(stage, model_path=model_path)
    from kallos_models.mlops import registry, tracking

    tracking.require_mlflow(settings)
    with registry.downloaded_bundle(settings, str(model_path)) as (local, name, version):
        return predict_stage(
            stage,
            model_path=local,
            source=str(model_path),
            registered={
                "name": name,
                "version": int(version) if str(version).isdigit() else version,
            },
        )


def _log_evaluation(settings: Settings, result: EvaluationResult) -> dict[str, Any] | None:
    from kallos_models.mlops import tracking

    if result.manifest_path is None:
        return None
    return tracking.log_evaluation(
        settings, result.manifest_path, result.metrics, result.metrics_path, result.plot_path
    )


def run_tuning(
    asset_id: str,
    end_date: str | pd.Timestamp,
    db_kwargs: Mapping[str, Any] | str | URL | None,
    optuna_schema: str | None,
    model_name: str,
    study_name: str | None,
    target_col: str | None,
    feature_groups: Mapping[str, list[str]] | None,
    n_trials: int,
    **kwargs: Any,
) -> optuna.Study:
    """Tune a model from a notebook; the seed's signature.

    Settings not given here come from ``config.resolve_settings``: the environment
    (``KALLOS_*``, ``POSTGRES_*``, ``.env``), ``config.json`` in the working directory, then
    the defaults. So ``KALLOS_MAX_EPOCHS=2`` in the environment shortens a notebook run.

    Parameters
    ----------
    asset_id : str
        Asset as ingested, e.g. ``"BTC"``.
    end_date : str or pandas.Timestamp
        Last bar tuning may see (``YYYY-MM-DD``).
    db_kwargs : dict, str, URL or None
        The seed's dict (``postgres_user``, ``postgres_password``, ``postgres_host``,
        ``postgres_port``, ``postgres_db``) or a database URL; None: from the environment or
        config.json.
    optuna_schema : str or None
        PostgreSQL schema for Optuna's tables (created when missing); None: the default schema.
    model_name : str
        Registry key, e.g. ``"gru"``.
    study_name : str or None
        None: ``{model}_{asset}_{timeframe}``.
    target_col : str or None
        None: ``"close"`` (or the configured value).
    feature_groups : dict or None
        Group name -> columns; None: the configured or default groups.
    n_trials : int
        Finished trials (COMPLETE + PRUNED) the study should have.
    **kwargs
        Any other setting (``timeframe``, ``start_date``, ``max_epochs``, ``metric``,
        ``seed``, ``storage_url``, ``workers``, ``heartbeat_interval``, ``grace_period``,
        ``timeout``, ``output_path``, ...), plus ``show_progress`` (default False),
        ``search_space``, ``pruner``, ``warm_start_from`` and ``space`` (see :func:`tune`). With
        ``tracking_uri`` set (argument, ``KALLOS_TRACKING_URI``, config.json or
        ``MLFLOW_TRACKING_URI``) the study is tracked in MLflow like ``kallos-run tune``.

    Returns
    -------
    optuna.Study
        The study, with at least ``n_trials`` finished trials unless a timeout stopped it.

    Raises
    ------
    KallosError
        See :func:`kallos_models.stages.tune.tune`; an unknown keyword is a
        :class:`ConfigError` listing the valid ones.
    """
    show_progress = bool(kwargs.pop("show_progress", False))
    search_space = kwargs.pop("search_space", None)
    pruner = kwargs.pop("pruner", None)
    warm_start_from = kwargs.pop("warm_start_from", None)
    space = str(kwargs.pop("space", "auto"))
    if isinstance(pruner, str):  # a name, as --pruner takes: a setting like any other
        kwargs["pruner"], pruner = pruner, None
    overrides: dict[str, Any] = {
        "asset_id": asset_id,
        "tune_end_date": None if end_date is None else str(end_date),
        "optuna_schema": optuna_schema,
        "model_name": model_name,
        "study_name": study_name,
        "target_col": target_col,
        "feature_groups": None if feature_groups is None else dict(feature_groups),
        "n_trials": n_trials,
        **kwargs,
    }
    if isinstance(db_kwargs, URL):
        overrides["db_url"] = db_kwargs.render_as_string(hide_password=False)
    elif isinstance(db_kwargs, str):
        overrides["db_url"] = db_kwargs
    elif db_kwargs is not None:
        overrides["db_kwargs"] = dict(db_kwargs)
    settings = resolve_settings(overrides)
    result = tune(
        settings,
        show_progress=show_progress,
        search_space=search_space,
        pruner=pruner,
        warm_start_from=warm_start_from,
        space=space,
    )
    return result.study
