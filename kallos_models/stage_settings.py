"""Typed settings per stage, built once from the resolved :class:`~kallos_models.config.Settings`.

The one resolver (:func:`kallos_models.config.resolve_settings`: flags > environment/.env >
config.json > defaults) yields the whole bag; each stage reads a small frozen object built
from it here, holding only what that stage reads:

- dates are parsed once (:class:`pandas.Timestamp`, UTC, naive);
- the database is resolved once (:class:`DataSource`: the URL with its password, shown only
  through :attr:`DataSource.masked`), from ``db_url`` or the seed's ``db_kwargs``;
- ``output_path`` has one meaning, "the folder this command writes to", with one default per
  stage in :data:`DEFAULT_OUTPUT_DIRS`;
- each required value is checked once, here, with one message naming its flag, its config
  key and its environment variable (:class:`MissingSettingError`; the CLI reports it as a
  usage error, exit status 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.config import BacktestMode, Settings, asset_list, parse_date
from kallos_models.errors import ConfigError
from kallos_models.files import basket_name
from kallos_models.urls import mask_url, resolve_url

__all__ = [
    "DEFAULT_OUTPUT_DIRS",
    "DataSource",
    "EvaluateSettings",
    "FeatureSettings",
    "MissingSettingError",
    "TrainSettings",
    "TrainerSettings",
    "TuneSettings",
    "data_source",
    "evaluate_settings",
    "require",
    "run_label",
    "storage_source",
    "study_name_for",
    "train_settings",
    "tune_settings",
]

#: The folder each command writes to when ``output_path`` is not set.
DEFAULT_OUTPUT_DIRS: dict[str, Path] = {
    "tune": Path("."),  # the best-params file and report plots
    "train": Path("trained_models"),  # the bundle
    "evaluate": Path("evaluation_results"),  # the metrics file and the plot
    "score": Path("scores"),  # the live-score plot (kallos_models.live_settings)
}

_WINDOW = (
    "evaluation needs a hold-out window: set --test-start-date and --test-end-date, e.g. "
    "2024-07-01 and 2025-06-30"
)
#: Required values: config key -> (command-line flag, what it is for).
REQUIRED: dict[str, tuple[str, str]] = {
    "asset_id": ("--asset-id", "name the asset, e.g. --asset-id BTC"),
    "tune_end_date": (
        "--end-date",
        "tuning needs an end date, the last date it may see (rows after it are never seen "
        "by tuning)",
    ),
    "train_end_date": ("--end-date", "train needs the last date of its training data"),
    "test_start_date": ("--test-start-date", _WINDOW),
    "test_end_date": ("--test-end-date", _WINDOW),
    "tracking_uri": (
        "--tracking-uri",
        "the model registry lives in MLflow, e.g. --tracking-uri sqlite:///mlflow.db",
    ),
}


class MissingSettingError(ConfigError):
    """A required setting is unset; the message names its flag, config key and variable."""


def require(settings: Settings, key: str) -> Any:
    """The value of a required setting, or :class:`MissingSettingError` with the one message.

    Parameters
    ----------
    settings : Settings
        Resolved settings. No default.
    key : str
        A key of :data:`REQUIRED`. No default.

    Returns
    -------
    Any
        The value, never None or empty.
    """
    value = getattr(settings, key)
    if value is None or value == "":
        flag, why = REQUIRED[key]
        raise MissingSettingError(
            f"missing {flag}: {why} ({key} in config.json, KALLOS_{key.upper()} in the environment)"
        )
    return value


@dataclass(frozen=True)
class DataSource:
    """A database, resolved once: the URL with its password (never print it)."""

    url: str

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return mask_url(self.url)

    def __repr__(self) -> str:  # dataclass repr would show the password
        return f"DataSource({self.masked!r})"


def data_source(settings: Settings) -> DataSource:
    """The market database of ``settings``: ``db_url``, else the seed's ``db_kwargs``.

    The one place the database is worked out, for every command.

    Raises
    ------
    MissingSettingError
        Neither is set (the resolver defaults to ``./kallos.db``, so only hand-built
        :class:`Settings` get here).
    ConfigError
        The URL does not parse, or ``db_kwargs`` lack a user or database.
    """
    source: str | Mapping[str, Any] | None = settings.db_url or settings.db_kwargs
    if not source:
        raise MissingSettingError(
            "missing --db-url: no database is configured (db_url or db_kwargs in config.json, "
            "KALLOS_DB_URL or POSTGRES_* in the environment)"
        )
    return DataSource(resolve_url(source).render_as_string(hide_password=False))


def storage_source(settings: Settings) -> DataSource:
    """Optuna's storage of ``settings``: ``storage_url``, else the market database."""
    if settings.storage_url:
        return DataSource(resolve_url(settings.storage_url).render_as_string(hide_password=False))
    return data_source(settings)


@dataclass(frozen=True)
class FeatureSettings:
    """What turns candles into a model's inputs: indicators, feature groups, target."""

    target_col: str = "close"
    target_transform: str = "log_return"
    feature_groups: Mapping[str, list[str]] = field(default_factory=dict)
    optional_features: tuple[str, ...] = ()
    group_scalers: Mapping[str, str] = field(default_factory=dict)
    indicators: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureSettings:
        """The feature choices of ``settings``."""
        return cls(
            target_col=settings.target_col,
            target_transform=settings.target_transform,
            feature_groups={g: list(c) for g, c in settings.feature_groups.items()},
            optional_features=tuple(settings.optional_features),
            group_scalers=dict(settings.group_scalers),
            indicators=None if settings.indicators is None else dict(settings.indicators),
        )


@dataclass(frozen=True)
class TrainerSettings:
    """Lightning and fitting choices shared by tune and train."""

    accelerator: str = "auto"
    devices: str = "auto"
    precision: str | None = None
    seed: int = 42
    max_epochs: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainerSettings:
        """The trainer choices of ``settings``."""
        return cls(
            accelerator=settings.accelerator,
            devices=settings.devices,
            precision=settings.precision,
            seed=settings.seed,
            max_epochs=settings.max_epochs,
        )


def _output_dir(settings: Settings, stage: str) -> Path:
    """The folder the stage writes to, checked now (not after a whole fit): it must be a
    folder, or not exist yet below a folder this process may write in."""
    out = Path(settings.output_path) if settings.output_path else DEFAULT_OUTPUT_DIRS[stage]
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"is below the file {existing}"
        raise ConfigError(
            f"--output-path {out} {where}; pass a folder (output_path in config.json, "
            "KALLOS_OUTPUT_PATH in the environment)"
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output-path {out}: {existing} is not writable by this user; pass a folder you "
            "may write in"
        )
    return out


def _date(settings: Settings, key: str) -> pd.Timestamp | None:
    return parse_date(getattr(settings, key), key)


def _required_date(settings: Settings, key: str) -> pd.Timestamp:
    value = parse_date(require(settings, key), key)
    if value is None:  # parse_date returns None for an empty value only, refused above
        raise MissingSettingError(f"missing {REQUIRED[key][0]}: {REQUIRED[key][1]}")
    return value


def run_label(settings: Settings) -> str | None:
    """The name a run's files, study and registered model carry: the asset, or a basket's
    short name (``--run-name``, else :func:`kallos_models.files.basket_name`); None without
    an asset."""
    assets = asset_list(settings.asset_id)
    if len(assets) > 1:
        return basket_name(assets, settings.run_name)
    return assets[0] if assets else None


def basket_of(settings: Settings) -> tuple[tuple[str, ...], str]:
    """The required ``asset_id`` as its assets and :func:`run_label`."""
    assets = asset_list(require(settings, "asset_id"))
    if len(assets) == 1 and settings.run_name:
        raise ConfigError(
            f"--run-name names the files of a basket (--asset-id A,B,...), but the run is of "
            f"one asset, {assets[0]!r}, whose name its files carry: drop --run-name"
        )
    return assets, str(run_label(settings))


@dataclass(frozen=True)
class TrainSettings:
    """What ``train`` reads; ``asset_id`` names the files (a basket's short name for a global
    model over ``assets``)."""

    model_name: str
    asset_id: str
    timeframe: str
    database: DataSource
    start: pd.Timestamp | None
    end: pd.Timestamp
    max_gap_bars: int
    features: FeatureSettings
    trainer: TrainerSettings
    output_dir: Path
    assets: tuple[str, ...] = ()


def train_settings(settings: Settings) -> TrainSettings:
    """The train stage's settings; required: ``asset_id``, ``train_end_date``."""
    assets, asset_id = basket_of(settings)
    end = _required_date(settings, "train_end_date")
    return TrainSettings(
        model_name=settings.model_name,
        asset_id=asset_id,
        assets=assets,
        timeframe=settings.timeframe,
        database=data_source(settings),
        start=_date(settings, "start_date"),
        end=end,
        max_gap_bars=settings.max_gap_bars,
        features=FeatureSettings.from_settings(settings),
        trainer=TrainerSettings.from_settings(settings),
        output_dir=_output_dir(settings, "train"),
    )


@dataclass(frozen=True)
class EvaluateSettings:
    """What ``evaluate`` reads (the timeframe and features come from the bundle)."""

    model_name: str
    asset_id: str
    database: DataSource
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    horizon: int
    max_gap_bars: int
    output_dir: Path
    #: Bars required between the training data's end and the window; None: the horizon.
    gap: int | None = None
    backtest_mode: BacktestMode = "long"
    backtest_threshold: float = 0.0
    fee_bps: float = 10.0
    #: Refit every this many bars through the window (a retraining backtest); None: fit once.
    retrain_every: int | None = None
    #: Hyperparameters of the refits (as for train); None: the bundle's.
    params_file: Path | None = None


def evaluate_settings(
    settings: Settings,
    *,
    retrain_every: int | str | None = None,
    params_file: str | Path | None = None,
) -> EvaluateSettings:
    """The evaluate stage's settings; required: ``asset_id`` and the hold-out window.

    ``retrain_every`` (bars, a whole number >= 1) and ``params_file`` come from the
    arguments only, like predict's options: they choose the retraining backtest for one run.
    """
    every = None if retrain_every is None else str(retrain_every).strip()
    whole = every is not None and every.isascii() and every.isdigit()
    if every is not None and (isinstance(retrain_every, bool) or not whole or int(every) < 1):
        raise ConfigError(
            f"--retrain-every must be a whole number of bars >= 1 (refit every that many "
            f"bars), got {retrain_every!r}; e.g. --retrain-every 30"
        )
    if params_file is not None and every is None:
        raise ConfigError(
            "--params-file sets the hyperparameters of the refits and goes with "
            "--retrain-every N; without it evaluate refits nothing and would ignore the file: "
            "add --retrain-every or drop --params-file"
        )
    asset_id = str(require(settings, "asset_id"))
    start = _required_date(settings, "test_start_date")
    end = _required_date(settings, "test_end_date")
    if start > end:
        raise ConfigError(
            f"test window is reversed: --test-start-date {start.date()} is after "
            f"--test-end-date {end.date()}; swap them"
        )
    return EvaluateSettings(
        model_name=settings.model_name,
        asset_id=asset_id,
        database=data_source(settings),
        test_start=start,
        test_end=end,
        horizon=settings.horizon,
        gap=settings.gap,
        max_gap_bars=settings.max_gap_bars,
        output_dir=_output_dir(settings, "evaluate"),
        backtest_mode=settings.backtest_mode,
        backtest_threshold=float(settings.backtest_threshold),
        fee_bps=float(settings.fee_bps),
        retrain_every=None if every is None else int(every),
        params_file=None if params_file is None else Path(params_file),
    )


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` reads. ``storage`` is Optuna's database: ``storage_url``, else the data
    database; ``asset_id`` names the files and study (a basket's short name over ``assets``)."""

    model_name: str
    asset_id: str
    timeframe: str
    database: DataSource
    storage: DataSource
    optuna_schema: str | None
    start: pd.Timestamp | None
    end: pd.Timestamp
    max_gap_bars: int
    features: FeatureSettings
    trainer: TrainerSettings
    n_trials: int
    metric: str
    study_name: str
    workers: int
    timeout: float | None
    heartbeat_interval: int
    grace_period: int
    output_dir: Path
    assets: tuple[str, ...] = ()
    #: Bars left out between each fold's training and validation rows.
    gap: int = 1
    #: The pruner's name (``pruning.PRUNERS``).
    pruner: str = "median"


def study_name_for(settings: Settings) -> str:
    """``study_name``, or ``{model}_{asset}_{timeframe}`` (``gru_BTC_1d``; a basket's short
    name for the asset: ``gru_BTC-ETH-SOL_4h``)."""
    return (
        settings.study_name or f"{settings.model_name}_{run_label(settings)}_{settings.timeframe}"
    )


#: Tuning scores that mean the same on every asset's prices, so a basket's may be averaged.
SCALE_FREE_METRICS = ("rmse_rel_naive", "mape", "smape")


def _tune_metric(settings: Settings, assets: tuple[str, ...]) -> str:
    if len(assets) == 1:
        return settings.metric or "rmse"
    if settings.metric is not None and settings.metric not in SCALE_FREE_METRICS:
        raise ConfigError(
            f"--metric {settings.metric} is in each asset's own price units, so a basket's "
            f"assets cannot be averaged on it; choose one of {', '.join(SCALE_FREE_METRICS)} "
            "(rmse_rel_naive, the RMSE ratio to naive persistence, is the default)"
        )
    return settings.metric or "rmse_rel_naive"


def tune_settings(settings: Settings) -> TuneSettings:
    """The tune stage's settings; required: ``asset_id``, ``tune_end_date``."""
    assets, asset_id = basket_of(settings)
    end = _required_date(settings, "tune_end_date")
    database = data_source(settings)
    storage = storage_source(settings)
    return TuneSettings(
        model_name=settings.model_name,
        asset_id=asset_id,
        timeframe=settings.timeframe,
        database=database,
        storage=storage,
        optuna_schema=settings.optuna_schema or None,
        start=_date(settings, "start_date"),
        end=end,
        max_gap_bars=settings.max_gap_bars,
        features=FeatureSettings.from_settings(settings),
        trainer=TrainerSettings.from_settings(settings),
        n_trials=settings.n_trials,
        metric=_tune_metric(settings, assets),
        study_name=study_name_for(settings),
        workers=settings.workers,
        timeout=settings.timeout,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        output_dir=_output_dir(settings, "tune"),
        assets=assets,
        gap=settings.horizon if settings.gap is None else settings.gap,
        pruner=settings.pruner,
    )
