"""Indicators as data: a declarative spec computed from candles whenever a window is loaded.

The market table holds candles only. The columns a model sees besides them are named in an
indicator spec, a mapping of column name -> entry, where an entry is:

- any TA-Lib function by its name, through ``talib.abstract``, with its parameters and, for
  a function of several outputs, the one to keep::

      "cci_20":   {"function": "CCI", "timeperiod": 20}
      "bb_upper": {"function": "BBANDS", "output": "upperband", "timeperiod": 20}

  and optionally ``"transform": "per_close"`` (the value divided by the close: ATR as a share
  of price) or ``"close_ratio"`` (``close / value - 1``: how far price is above a moving
  average), so a feature stays comparable when the price level moves;
- or one of the built-ins below for what TA-Lib has no function for (lower-case names):
  ``log_return``, ``realized_vol`` (``window``), ``bb_width`` and ``bb_position``
  (``timeperiod``, ``nbdev``), ``obv_change`` (``window``), ``calendar`` (``part``: one of
  ``hour_sin hour_cos dow_sin dow_cos month_sin month_cos``).

:data:`DEFAULT_INDICATORS` reproduces the columns kallos-models stored before indicators
became data (the seed's ``rsi``, ``mfi``, ``macd_diff`` among them); config.json's
``indicators`` key adds entries to it or replaces entries of the same name
(:func:`resolve_indicators`). A bad entry is a :class:`ConfigError` naming the column and
listing what is valid.

Every indicator is causal: its value at bar t uses bars <= t only (tested by a look-ahead
audit). Indicators are computed over the stored bars in time order; a gap in the exchange's
data is not bridged by invented bars. Rows where an indicator is still undefined (its
warm-up) stay NaN and are marked ``warmup = True``; nothing is back-filled.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.errors import ConfigError

logger = logging.getLogger(__name__)

#: Candle columns an indicator may read (TA-Lib's input names).
CANDLE_INPUTS = ("open", "high", "low", "close", "volume")
#: Column names an indicator may not take: the candles' own and the loader's flags.
RESERVED_NAMES = frozenset(
    {
        *CANDLE_INPUTS,
        "quote_asset_volume",
        "number_of_trades",
        "taker_buy_base_asset_volume",
        "taker_buy_quote_asset_volume",
        "warmup",
        "filled",
        "asset_id",
        "timeframe",
        "open_time",
    }
)
TRANSFORMS = ("per_close", "close_ratio")
CALENDAR_PARTS = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "month_sin", "month_cos")
#: Built-in functions: name -> default parameters.
BUILTINS: dict[str, dict[str, Any]] = {
    "log_return": {},
    "realized_vol": {"window": 20},
    "bb_width": {"timeperiod": 20, "nbdev": 2.0},
    "bb_position": {"timeperiod": 20, "nbdev": 2.0},
    "obv_change": {"window": 20},
    "calendar": {"part": "hour_sin"},
}
#: Extra bars loaded before a window, per bar of the spec's longest warm-up (at least
#: :data:`MIN_HISTORY_BARS`): indicators with memory (EMA, RSI, ADX) have converged by then,
#: so a value does not depend on where the loaded window starts.
HISTORY_PER_WARMUP_BAR = 5
MIN_HISTORY_BARS = 100

_CAL = {part: {"function": "calendar", "part": part} for part in CALENDAR_PARTS}

#: The default spec: the columns of the first round, with their classic parameters.
DEFAULT_INDICATORS: dict[str, dict[str, Any]] = {
    "log_return": {"function": "log_return"},
    "realized_vol": {"function": "realized_vol", "window": 20},
    "rsi": {"function": "RSI", "timeperiod": 14},
    "mfi": {"function": "MFI", "timeperiod": 14},
    "macd_diff": {
        "function": "MACD",
        "output": "macdhist",
        "fastperiod": 12,
        "slowperiod": 26,
        "signalperiod": 9,
    },
    "stoch_k": {
        "function": "STOCH",
        "output": "slowk",
        "fastk_period": 14,
        "slowk_period": 3,
        "slowd_period": 3,
    },
    "stoch_d": {
        "function": "STOCH",
        "output": "slowd",
        "fastk_period": 14,
        "slowk_period": 3,
        "slowd_period": 3,
    },
    "atr_rel": {"function": "ATR", "timeperiod": 14, "transform": "per_close"},
    "bb_width": {"function": "bb_width", "timeperiod": 20, "nbdev": 2.0},
    "bb_position": {"function": "bb_position", "timeperiod": 20, "nbdev": 2.0},
    "adx": {"function": "ADX", "timeperiod": 14},
    "price_ema_ratio": {"function": "EMA", "timeperiod": 20, "transform": "close_ratio"},
    "price_sma_ratio": {"function": "SMA", "timeperiod": 50, "transform": "close_ratio"},
    "obv_change": {"function": "obv_change", "window": 20},
    **_CAL,
}

#: The default columns by theme (the seed's groups of computed features).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "returns": ("log_return", "realized_vol"),
    "momentum": ("rsi", "mfi", "macd_diff", "stoch_k", "stoch_d"),
    "volatility": ("atr_rel", "bb_width", "bb_position"),
    "trend": ("adx", "price_ema_ratio", "price_sma_ratio"),
    "volume": ("obv_change",),
    "calendar": CALENDAR_PARTS,
}
FEATURE_COLUMNS: tuple[str, ...] = tuple(DEFAULT_INDICATORS)


#: A few bars of made-up candles on which every entry is computed once when it is checked.
_PROBE = {
    name: np.linspace(1.0, 2.0, 64) * (1.0 + 0.01 * offset)
    for offset, name in enumerate(CANDLE_INPUTS)
}


@functools.cache
def _talib_names() -> tuple[str, ...]:  # imported lazily: keeps `kallos-run --help` fast
    import talib

    return tuple(talib.get_functions())


def _talib_function(name: str, column: str) -> Any:
    abstract: Any = importlib.import_module("talib.abstract")  # untyped C extension
    names = _talib_names()
    if name not in names:
        close = [f for f in names if f.startswith(name.upper()[:3])][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(
            f"indicator {column!r}: {name!r} is neither a TA-Lib function{hint} nor a "
            f"built-in ({', '.join(BUILTINS)}); TA-Lib names are upper case, e.g. RSI, CCI, "
            "BBANDS (python -c 'import talib; print(talib.get_functions())' lists all 158+)"
        )
    return abstract.Function(name)


def _check_entry(column: str, entry: Any) -> dict[str, Any]:
    """One spec entry, checked against TA-Lib or the built-ins; returns a normalised copy."""
    if not isinstance(column, str) or not column.strip():
        raise ConfigError(f"indicator names must be non-empty strings, got {column!r}")
    if column in RESERVED_NAMES:
        raise ConfigError(
            f"indicator {column!r} would replace a candle column or flag; choose another name"
        )
    if not isinstance(entry, Mapping) or not isinstance(entry.get("function"), str):
        raise ConfigError(
            f'indicator {column!r} must be an object with a "function", e.g. '
            '{"function": "CCI", "timeperiod": 20}'
        )
    entry = dict(entry)
    function = entry.pop("function")
    output = entry.pop("output", None)
    transform = entry.pop("transform", None)
    if transform is not None and transform not in TRANSFORMS:
        raise ConfigError(
            f"indicator {column!r}: transform {transform!r} is not one of {', '.join(TRANSFORMS)}"
        )
    fn: Any = None
    if function in BUILTINS:
        allowed = BUILTINS[function]
        outputs: list[str] = []
    else:
        fn = _talib_function(function, column)
        allowed = dict(fn.parameters)
        outputs = list(fn.output_names)
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ConfigError(
            f"indicator {column!r}: {function} takes no parameter {', '.join(unknown)}; "
            f"its parameters: {valid}"
        )
    for key, value in entry.items():
        if function == "calendar":
            if value not in CALENDAR_PARTS:
                raise ConfigError(
                    f"indicator {column!r}: calendar part {value!r} is not one of "
                    f"{', '.join(CALENDAR_PARTS)}"
                )
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"indicator {column!r}: {function} parameter {key} must be a number, got {value!r}"
            )
        if function in BUILTINS and key in ("window", "timeperiod"):
            if not float(value).is_integer() or value < 2:
                raise ConfigError(
                    f"indicator {column!r}: {function} parameter {key} must be a whole number "
                    f">= 2, got {value!r}"
                )
        if function in BUILTINS and key == "nbdev" and not value > 0:
            raise ConfigError(
                f"indicator {column!r}: {function} parameter nbdev must be above 0, got {value!r}"
            )
    if len(outputs) > 1 and output not in outputs:
        raise ConfigError(
            f'indicator {column!r}: {function} has several outputs; name one with "output": '
            f"{', '.join(outputs)}"
        )
    if output is not None and output not in outputs:
        only = f" ({outputs[0]})" if outputs else ""
        raise ConfigError(
            f'indicator {column!r}: {function} has one output{only}; drop "output": {output!r}'
        )
    if fn is not None:
        try:
            fn.set_parameters(**entry)
            int(fn.lookback)
            fn(_PROBE, **entry)  # TA-Lib checks some ranges only when it computes
        except Exception as exc:  # TA-Lib's own type/range checks
            raise ConfigError(f"indicator {column!r}: {function}{entry}: {exc}") from None
    normalised: dict[str, Any] = {"function": function, **entry}
    if output is not None:
        normalised["output"] = output
    if transform is not None:
        normalised["transform"] = transform
    return normalised


def resolve_indicators(
    extra: Mapping[str, Any] | None = None, *, base: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The indicator spec to compute: ``base`` (default :data:`DEFAULT_INDICATORS`) with
    ``extra`` added over it, every entry checked.

    Parameters
    ----------
    extra : Mapping or None, default None
        config.json's ``indicators``: column name -> entry (see the module docstring). An
        entry replaces the base entry of the same name.
    base : Mapping or None, default None
        The spec to start from; None: :data:`DEFAULT_INDICATORS`. A bundle's manifest passes
        the spec it was trained with and no ``extra``.

    Returns
    -------
    dict
        Column name -> normalised entry, in order: base columns first, then new ones.

    Raises
    ------
    ConfigError
        An unknown function, parameter, output or transform, a reserved column name, or a
        parameter TA-Lib refuses; the message names the column and lists the valid choices.
    """
    merged: dict[str, Any] = dict(DEFAULT_INDICATORS if base is None else base)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ConfigError(
                "indicators must be an object of column name -> entry, e.g. "
                '{"cci_20": {"function": "CCI", "timeperiod": 20}}'
            )
        merged.update(extra)
    return {column: _check_entry(column, entry) for column, entry in merged.items()}


def warmup_bars(spec: Mapping[str, Mapping[str, Any]]) -> int:
    """The longest warm-up of ``spec`` in bars (TA-Lib's lookback; built-ins' windows)."""
    longest = 0
    for column, entry in spec.items():
        params = {k: v for k, v in entry.items() if k not in ("function", "output", "transform")}
        function = entry["function"]
        if function in BUILTINS:
            merged = {**BUILTINS[function], **params}
            bars = int(merged.get("window", merged.get("timeperiod", 1)))
        else:
            fn = _talib_function(function, column)
            fn.set_parameters(**params)
            bars = int(fn.lookback)
        longest = max(longest, bars)
    return longest


def history_bars(spec: Mapping[str, Mapping[str, Any]]) -> int:
    """Bars to load before a window so that every indicator of ``spec`` has converged."""
    return max(MIN_HISTORY_BARS, HISTORY_PER_WARMUP_BAR * warmup_bars(spec))


def _builtin(function: str, params: Mapping[str, Any], df: pd.DataFrame) -> np.ndarray:
    p = {**BUILTINS[function], **params}
    c = df["close"].to_numpy(dtype="float64")
    if function in ("log_return", "realized_vol"):
        log_ret = np.full_like(c, np.nan)
        log_ret[1:] = np.diff(np.log(c))
        if function == "log_return":
            return log_ret
        window = int(p["window"])
        return pd.Series(log_ret).rolling(window, min_periods=window).std().to_numpy()
    if function in ("bb_width", "bb_position"):
        import talib

        nbdev = float(p["nbdev"])
        upper, middle, lower = talib.BBANDS(
            c, timeperiod=int(p["timeperiod"]), nbdevup=nbdev, nbdevdn=nbdev
        )
        width = upper - lower
        if function == "bb_width":
            return width / middle
        with np.errstate(divide="ignore", invalid="ignore"):
            position = np.where(width > 0, (c - lower) / width, 0.5)
        position[np.isnan(width)] = np.nan
        return position
    if function == "obv_change":
        import talib

        window = int(p["window"])
        v = df["volume"].to_numpy(dtype="float64")
        obv = pd.Series(talib.OBV(c, v))
        moved = obv.diff(window)
        traded = pd.Series(v).rolling(window, min_periods=window).sum()
        # Net signed volume over the window as a share of all volume traded in it: in [-1, 1].
        change = np.where(traded > 0, moved / traded.where(traded > 0), 0.0)
        change[traded.isna().to_numpy() | moved.isna().to_numpy()] = np.nan
        return change
    # calendar
    idx = pd.DatetimeIndex(df.index)
    part = str(p["part"])
    if part.startswith("hour"):
        value, period = (idx.hour + idx.minute / 60.0).to_numpy(dtype="float64"), 24.0
    elif part.startswith("dow"):
        value, period = idx.dayofweek.to_numpy(dtype="float64"), 7.0
    else:
        value, period = (idx.month - 1).to_numpy(dtype="float64"), 12.0
    angle = 2.0 * np.pi * value / period
    return np.sin(angle) if part.endswith("sin") else np.cos(angle)


def compute_indicators(
    candles: pd.DataFrame, spec: Mapping[str, Mapping[str, Any]] | None = None
) -> pd.DataFrame:
    """Compute the columns of ``spec`` from one asset's candles.

    Parameters
    ----------
    candles : pandas.DataFrame
        Indexed by open time (ascending, UTC) with ``open, high, low, close, volume``.
    spec : Mapping or None, default None
        A spec from :func:`resolve_indicators`; None: :data:`DEFAULT_INDICATORS`.

    Returns
    -------
    pandas.DataFrame
        Same index; one float64 column per entry, in spec order, plus ``warmup`` (True where
        any non-calendar indicator is undefined). Undefined values are NaN, never filled.
    """
    if not candles.index.is_monotonic_increasing:
        raise ValueError("compute_indicators needs bars sorted by open time")
    spec = resolve_indicators() if spec is None else spec
    inputs = {c: candles[c].to_numpy(dtype="float64") for c in CANDLE_INPUTS}
    close = inputs["close"]
    out = pd.DataFrame(index=candles.index)
    warmup = np.zeros(len(candles), dtype=bool)
    cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    for column, entry in spec.items():
        function = entry["function"]
        params = {k: v for k, v in entry.items() if k not in ("function", "output", "transform")}
        if not len(candles):
            values = np.array([], dtype="float64")
        elif function in BUILTINS:
            values = _builtin(function, params, candles)
        else:
            key = (function, tuple(sorted(params.items())))
            if key not in cache:
                fn = _talib_function(function, column)
                cache[key] = (fn.output_names, fn(inputs, **params))
            names, result = cache[key]
            if isinstance(result, list):
                values = result[names.index(entry.get("output", names[0]))]
            else:
                values = result
        col = np.asarray(values, dtype="float64").copy()
        transform = entry.get("transform")
        with np.errstate(divide="ignore", invalid="ignore"):
            if transform == "per_close":
                col = col / close
            elif transform == "close_ratio":
                col = close / col - 1.0
        col[~np.isfinite(col)] = np.nan
        out[column] = col
        if function != "calendar":
            warmup |= np.isnan(col)
    out["warmup"] = warmup
    return out


def compute_features(ohlcv: pd.DataFrame, groups: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The default spec's columns (all, or those of some :data:`FEATURE_GROUPS`).

    Parameters
    ----------
    ohlcv : pandas.DataFrame
        Frame indexed by open time (ascending, UTC) with ``open, high, low, close, volume``.
    groups : tuple of str or None, default None
        Feature groups to compute (keys of :data:`FEATURE_GROUPS`); None computes all.

    Returns
    -------
    pandas.DataFrame
        As :func:`compute_indicators`.
    """
    selected = tuple(FEATURE_GROUPS) if groups is None else groups
    unknown = [g for g in selected if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; known: {list(FEATURE_GROUPS)}")
    columns = [c for g in selected for c in FEATURE_GROUPS[g]]
    return compute_indicators(ohlcv, {c: DEFAULT_INDICATORS[c] for c in columns})
