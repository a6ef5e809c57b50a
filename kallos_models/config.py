"""Settings and the one resolver used by the CLI and by notebook calls alike.

Precedence, highest first:

1. explicit values (command-line flags, or keyword arguments of a library call);
2. the environment: ``KALLOS_<KEY>`` for every key below, and ``POSTGRES_*`` for the
   database; a ``.env`` file in the working directory is read too (the process
   environment wins over it);
3. ``config.json`` in the working directory, or the file given by ``kallos-run --config``;
4. built-in defaults.

``tracking_uri`` has one more source between 3 and 4: MLflow's own ``MLFLOW_TRACKING_URI``
(environment or ``.env``), used only when no flag, ``KALLOS_TRACKING_URI`` or config.json
value sets it. Unset everywhere, tracking is off.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pandas as pd

from kallos_models.errors import ConfigError

logger = logging.getLogger(__name__)

TargetTransform = Literal["log_return", "price"]
Metric = Literal["rmse", "mae", "mape", "smape", "rmse_rel_naive"]
Pruner = Literal["median", "hyperband", "halving", "none"]
#: long/long_short trade the forecast's sign; *_interval only when the narrowest interval lies
#: wholly above (below) the last close; *_confidence size by 2 P(up) - 1 from the quantiles.
BacktestMode = Literal[
    "long",
    "long_short",
    "long_interval",
    "long_short_interval",
    "long_confidence",
    "long_short_confidence",
]

#: The seed's feature groups. ``taker_buy_base_asset_volume`` exists only in Binance kline
#: files; it is listed in ``optional_features`` so plain OHLCV data works with the defaults.
DEFAULT_FEATURE_GROUPS: dict[str, list[str]] = {
    "volume_features": ["volume", "taker_buy_base_asset_volume"],
    "bounded_features": ["rsi", "mfi"],
    "unbounded_features": ["macd_diff"],
}

#: Lightning accelerators kallos-models passes on (``auto``: a CUDA GPU when one is visible).
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps")
#: Lightning 2 precision names (its ``_PRECISION_INPUT_STR``), plus the short legacy forms.
PRECISIONS: tuple[str, ...] = (
    "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
    "transformer-engine", "transformer-engine-float16", "64", "32", "16", "bf16",
)  # fmt: skip

#: The seed's db_kwargs keys, and the environment variable for each.
DB_KWARGS_KEYS: tuple[str, ...] = (
    "postgres_user",
    "postgres_password",
    "postgres_host",
    "postgres_port",
    "postgres_db",
)


@dataclass(frozen=True)
class Settings:
    """Every setting of kallos-models; each field is also a config.json key.

    Dates are kept as ISO strings (``YYYY-MM-DD`` or a full timestamp, UTC); use
    :func:`parse_date` to turn them into timestamps.
    """

    # data and database
    db_url: str | None = None
    db_kwargs: dict[str, Any] | None = None
    #: One asset, or a basket for one global model: a comma list (a list in config.json)
    asset_id: str | None = None
    #: The short name of a basket's files and study; None: made from the basket
    run_name: str | None = None
    timeframe: str = "1d"
    start_date: str | None = None
    max_gap_bars: int = 16
    # seed keys: dates, trials, output
    tune_end_date: str | None = None
    train_end_date: str | None = None
    test_start_date: str | None = None
    test_end_date: str | None = None
    n_trials: int = 20
    output_path: str | None = None
    # model and features
    model_name: str = "gru"
    target_col: str = "close"
    target_transform: TargetTransform = "log_return"
    feature_groups: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_FEATURE_GROUPS.items()}
    )
    optional_features: list[str] = field(default_factory=lambda: ["taker_buy_base_asset_volume"])
    #: Indicator columns added to (or replacing) the default spec: name -> {"function": ...}
    indicators: dict[str, Any] | None = None
    group_scalers: dict[str, str] = field(default_factory=dict)
    # training
    max_epochs: int = 100
    seed: int = 42
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str | None = None
    horizon: int = 1
    #: Bars left out between training and validation/test rows; None: the horizon
    gap: int | None = None
    # tuning
    #: The tuning score; None: rmse for one asset, rmse_rel_naive (scale-free) for a basket
    metric: Metric | None = None
    study_name: str | None = None
    optuna_schema: str | None = None
    storage_url: str | None = None
    workers: int = 1
    timeout: float | None = None
    pruner: Pruner = "median"
    heartbeat_interval: int = 60
    grace_period: int = 120
    # evaluation backtest
    backtest_mode: BacktestMode = "long"
    backtest_threshold: float = 0.0
    fee_bps: float = 10.0
    # ingest
    binance_archive_url: str = "https://data.binance.vision"
    binance_cache_dir: str | None = None
    # experiment tracking and model registry (MLflow, the optional "mlflow" extra)
    tracking_uri: str | None = None
    tracking_experiment: str = "kallos-models"
    tracking_artifact_location: str | None = None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated like any other source)."""
        return _build({**dataclasses.asdict(self), **changes}, source="arguments")


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Settings))


def parse_date(value: str | pd.Timestamp | None, name: str) -> pd.Timestamp | None:
    """Parse a date setting into a naive UTC timestamp.

    Parameters
    ----------
    value
        ``YYYY-MM-DD``, an ISO timestamp, a timestamp, or None (returned as None).
    name
        Setting name, used in the error message.
    """
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{name} {value!r} is not a date; write it as YYYY-MM-DD (e.g. 2024-06-30)"
        ) from exc
    if ts is pd.NaT:
        raise ConfigError(f"{name} is empty; write it as YYYY-MM-DD (e.g. 2024-06-30)")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert ``value`` (possibly a string from the environment) to the field's type."""
    if name == "asset_id" and isinstance(value, list):  # a basket, as config.json may hold it
        return ",".join(asset_list(value))
    hints = get_type_hints(Settings)
    tp = hints[name]
    args = [a for a in get_args(tp) if a is not type(None)]
    optional = type(None) in get_args(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} from {source} must not be null")
    base = args[0] if (optional and len(args) == 1) else tp
    origin = get_origin(base)
    try:
        if origin is Literal:
            choices = get_args(base)
            if value not in choices:
                raise ConfigError(
                    f"{name} from {source} is {value!r}; choose one of: {', '.join(choices)}"
                )
            return value
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if origin in (dict, list):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, origin):
                raise ValueError
            return value
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        kind = getattr(base, "__name__", None) or str(origin.__name__ if origin else base)
        raise ConfigError(
            f"{name} from {source} is {value!r}, which is not a valid {kind}"
        ) from exc
    return value


def asset_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The assets an ``asset_id`` names, in order: one id, or a basket as a comma list
    (``"BTC, ETH,SOL"``) or a list (config.json); None gives ``()``. ConfigError for an
    empty entry or an asset named twice."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    assets = tuple(part.strip() for part in parts)
    if any(not asset for asset in assets):
        raise ConfigError(
            f"asset_id {value!r} has an empty entry; name each asset once, separated by "
            "commas, e.g. --asset-id BTC,ETH,SOL"
        )
    twice = sorted({a for a in assets if assets.count(a) > 1})
    if twice:
        raise ConfigError(
            f"asset_id {value!r} names {', '.join(twice)} more than once; list each asset of "
            "the basket once"
        )
    return assets


def _build(values: Mapping[str, Any], source: str) -> Settings:
    kwargs = {k: _coerce(k, v, source) for k, v in values.items()}
    if "timeframe" in kwargs:
        kwargs["timeframe"] = normalise_timeframe(kwargs["timeframe"])
    settings = Settings(**kwargs)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    normalise_timeframe(s.timeframe)  # a bad bar size fails here, naming it
    asset_list(s.asset_id)  # an empty entry or a repeated asset fails here
    if s.accelerator not in ACCELERATORS:
        raise ConfigError(
            f"accelerator {s.accelerator!r} is not one of {', '.join(ACCELERATORS)} "
            "(--accelerator, KALLOS_ACCELERATOR); auto trains on a GPU when there is one"
        )
    if s.precision is not None and s.precision not in PRECISIONS:
        raise ConfigError(
            f"precision {s.precision!r} is not one of {', '.join(PRECISIONS)} (--precision, "
            "KALLOS_PRECISION); leave it unset to match the data (32-bit)"
        )
    devices = str(s.devices).strip()
    if not (devices == "auto" or devices == "-1" or all(p.isdigit() for p in devices.split(","))):
        raise ConfigError(
            f"devices {s.devices!r} is not auto, a count (1) or a list of device indices (0,1) "
            "(--devices, KALLOS_DEVICES)"
        )
    if s.n_trials < 1:
        raise ConfigError(f"n_trials must be at least 1, got {s.n_trials}")
    if s.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {s.workers}")
    if s.max_epochs < 1:
        raise ConfigError(f"max_epochs must be at least 1, got {s.max_epochs}")
    if s.horizon < 1:
        raise ConfigError(f"horizon must be at least 1, got {s.horizon}")
    if s.gap is not None and s.gap < 0:
        raise ConfigError(f"gap must be 0 or more bars, got {s.gap} (--gap)")
    if not s.tracking_experiment:
        raise ConfigError("tracking_experiment must not be empty; e.g. kallos-models")
    if s.max_gap_bars < 0:
        raise ConfigError(f"max_gap_bars must be 0 or more, got {s.max_gap_bars}")
    for key in (
        "start_date",
        "tune_end_date",
        "train_end_date",
        "test_start_date",
        "test_end_date",
    ):
        parse_date(getattr(s, key), key)
    if not isinstance(s.feature_groups, dict) or not all(
        isinstance(cols, list) and all(isinstance(c, str) for c in cols)
        for cols in s.feature_groups.values()
    ):
        raise ConfigError(
            "feature_groups must be an object of group name -> list of column names, "
            'e.g. {"volume_features": ["volume"], "bounded_features": ["rsi"]}'
        )
    if s.indicators is not None and not all(
        isinstance(entry, dict) and isinstance(entry.get("function"), str)
        for entry in s.indicators.values()
    ):
        raise ConfigError(
            'indicators must be an object of column name -> {"function": TA-Lib name or '
            'built-in, parameters...}, e.g. {"cci_20": {"function": "CCI", "timeperiod": 20}}'
        )
    if s.db_kwargs is not None:
        unknown = sorted(set(s.db_kwargs) - set(DB_KWARGS_KEYS))
        if unknown:
            raise ConfigError(
                f"db_kwargs has unknown keys {unknown}; valid keys: {', '.join(DB_KWARGS_KEYS)}"
            )


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist; check the --config path")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of settings")
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys allowed
    unknown = sorted(set(data) - set(SETTING_KEYS))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown keys: {', '.join(unknown)}; "
            f"valid keys: {', '.join(SETTING_KEYS)}"
        )
    return data


def _read_dotenv(path: Path) -> dict[str, str]:
    """Read ``.env``: KEY=VALUE lines, or the seed's JSON object of db_kwargs keys."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    fix = "it must hold KEY=VALUE lines (UTF-8 text); fix or remove it"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not a text file (byte {exc.start} is not UTF-8); {fix}"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path} is not a text file (it holds NUL bytes); {fix}")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} looks like JSON but does not parse: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object or KEY=VALUE lines")
        return {str(k).upper(): str(v) for k, v in data.items()}
    from dotenv import dotenv_values

    values = dotenv_values(stream=io.StringIO(text))
    return {k: v for k, v in values.items() if v is not None}


def _env_values(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings from KALLOS_* variables, and db_kwargs from POSTGRES_* variables."""
    values: dict[str, Any] = {}
    for key in SETTING_KEYS:
        var = f"KALLOS_{key.upper()}"
        if var in env and env[var] != "":
            values[key] = env[var]
    pg = {k: env[k.upper()] for k in DB_KWARGS_KEYS if env.get(k.upper())}
    if not (pg.get("postgres_user") and pg.get("postgres_db")):
        # A stray POSTGRES_HOST (or a partial set) does not name a database: ignore it.
        pg = {}
    return values, pg


def resolve_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    cwd: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from flags, environment, config file and defaults.

    Parameters
    ----------
    overrides
        Explicit values (flags or keyword arguments); ``None`` values are ignored.
        Default None.
    config_path
        A config file that must exist; default None reads ``config.json`` in ``cwd`` if present.
    cwd
        Directory searched for ``config.json`` and ``.env``; default the working directory.
    environ
        Environment to read; default ``os.environ``.

    Returns
    -------
    Settings
        The resolved, validated settings.

    Raises
    ------
    ConfigError
        Unknown keys in the config file, or a value of the wrong type.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    explicit_config = config_path is not None
    cfg_file = Path(config_path) if config_path is not None else base / "config.json"
    file_values = _read_config_file(cfg_file, explicit_config)

    env: dict[str, str] = _read_dotenv(base / ".env")
    env.update(os.environ if environ is None else environ)
    env_values, env_pg = _env_values(env)

    flag_values = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(flag_values) - set(SETTING_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown settings: {', '.join(unknown)}; valid: {', '.join(SETTING_KEYS)}"
        )

    merged: dict[str, Any] = {}
    for layer, label in (
        (file_values, str(cfg_file)),
        (env_values, "the environment"),
        (flag_values, "the arguments"),
    ):
        merged.update(
            {k: _coerce(k, v, label) for k, v in layer.items() if k not in ("db_url", "db_kwargs")}
        )

    # The database comes from the highest layer that names one, as a URL or as db_kwargs.
    for layer, pg, label in (
        (flag_values, None, "arguments"),
        (env_values, env_pg, "environment"),
        (file_values, None, str(cfg_file)),
    ):
        if layer.get("db_url"):
            merged["db_url"] = layer["db_url"]
            break
        kwargs = layer.get("db_kwargs") or pg
        if kwargs:
            merged["db_kwargs"] = _coerce("db_kwargs", kwargs, label)
            break
    if not merged.get("db_url") and not merged.get("db_kwargs"):
        merged["db_url"] = f"sqlite:///{(base / 'kallos.db').as_posix()}"
    if not merged.get("tracking_uri") and env.get("MLFLOW_TRACKING_URI"):
        merged["tracking_uri"] = env["MLFLOW_TRACKING_URI"]  # MLflow's own variable, lowest
    return _build(merged, source="settings")


_TIMEFRAME_UNITS = {"m": "min", "h": "h", "d": "D", "w": "W"}
_MINUTES = {"m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}
#: The longest bar size accepted: 52 weeks (anything longer is a typo, and would overflow).
MAX_TIMEFRAME_MINUTES = 52 * 7 * 24 * 60


def _timeframe_minutes(timeframe: str) -> int:
    text = str(timeframe).strip()
    unit = text[-1:]  # case-sensitive: Binance writes 1M for a month, 1m for a minute
    count = text[:-1]
    if unit not in _TIMEFRAME_UNITS or not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"timeframe {timeframe!r} is not a bar size; write it like 15m, 1h, 4h, 1d or 1w"
        )
    minutes = int(count) * _MINUTES[unit]
    if minutes > MAX_TIMEFRAME_MINUTES:
        raise ConfigError(
            f"timeframe {timeframe!r} is longer than the longest bar size accepted (52w); "
            "write it like 15m, 1h, 4h, 1d or 1w"
        )
    return minutes


def normalise_timeframe(timeframe: str) -> str:
    """The one spelling of a bar size: ``24h``, ``1440m`` and ``0001d`` are all ``1d``.

    The largest whole unit wins (weeks, then days, hours, minutes): ``7d`` is ``1w``, ``120m``
    is ``2h``, ``90m`` stays ``90m``. Data, files, studies and models are keyed by it, so one
    bar size is never stored or named twice.

    Raises
    ------
    ConfigError
        Not ``<number><m|h|d|w>``, or longer than 52 weeks.
    """
    minutes = _timeframe_minutes(timeframe)
    for unit in ("w", "d", "h"):
        if minutes % _MINUTES[unit] == 0:
            return f"{minutes // _MINUTES[unit]}{unit}"
    return f"{minutes}m"


def timeframe_to_timedelta(timeframe: str) -> pd.Timedelta:
    """Turn a bar size such as ``1m``, ``15m``, ``4h``, ``1d`` or ``1w`` into a Timedelta.

    Raises
    ------
    ConfigError
        The string is not ``<number><m|h|d|w>``, or it is longer than 52 weeks.
    """
    return pd.Timedelta(minutes=_timeframe_minutes(timeframe))


def timeframe_to_freq(timeframe: str) -> str:
    """Pandas frequency string for a timeframe (``4h`` -> ``4h``, ``1d`` -> ``1D``)."""
    delta = timeframe_to_timedelta(timeframe)
    minutes = int(delta.total_seconds() // 60)
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)}D"
    if minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}min"
