"""Technical indicators (TA-Lib) and calendar features, computed by group.

All indicators are computed row by row over the stored bars in time order (a gap in the
exchange's data is not bridged by invented bars). Rows where an indicator is still undefined
(its warm-up) keep NULL/NaN and are marked with ``warmup = True``; nothing is back-filled.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Indicator parameters (classic defaults).
RSI_PERIOD = 14
MFI_PERIOD = 14
ATR_PERIOD = 14
ADX_PERIOD = 14
BB_PERIOD = 20
BB_NBDEV = 2.0
STOCH_K, STOCH_SMOOTH_K, STOCH_D = 14, 3, 3
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
VOL_WINDOW = 20
OBV_WINDOW = 20
EMA_PERIOD = 20
SMA_PERIOD = 50

#: Feature columns by group. Names are stable: users' feature groups refer to them.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "returns": ("log_return", "realized_vol"),
    "momentum": ("rsi", "mfi", "macd_diff", "stoch_k", "stoch_d"),
    "volatility": ("atr_rel", "bb_width", "bb_position"),
    "trend": ("adx", "price_ema_ratio", "price_sma_ratio"),
    "volume": ("obv_change",),
    "calendar": ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "month_sin", "month_cos"),
}
FEATURE_COLUMNS: tuple[str, ...] = tuple(c for cols in FEATURE_GROUPS.values() for c in cols)
#: Groups whose values never have a warm-up.
_NO_WARMUP = {"calendar"}


def _talib():  # imported lazily: keeps `kallos-run --help` fast
    import talib

    return talib


def _returns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    close = df["close"].to_numpy(dtype="float64")
    log_ret = np.full_like(close, np.nan)
    log_ret[1:] = np.diff(np.log(close))
    vol = pd.Series(log_ret).rolling(VOL_WINDOW, min_periods=VOL_WINDOW).std().to_numpy()
    return {"log_return": log_ret, "realized_vol": vol}


def _momentum(df: pd.DataFrame) -> dict[str, np.ndarray]:
    ta = _talib()
    h, low, c, v = (df[k].to_numpy(dtype="float64") for k in ("high", "low", "close", "volume"))
    _, _, hist = ta.MACD(c, fastperiod=MACD_FAST, slowperiod=MACD_SLOW, signalperiod=MACD_SIGNAL)
    k, d = ta.STOCH(
        h, low, c, fastk_period=STOCH_K, slowk_period=STOCH_SMOOTH_K, slowd_period=STOCH_D
    )
    return {
        "rsi": ta.RSI(c, timeperiod=RSI_PERIOD),
        "mfi": ta.MFI(h, low, c, v, timeperiod=MFI_PERIOD),
        "macd_diff": hist,
        "stoch_k": k,
        "stoch_d": d,
    }


def _volatility(df: pd.DataFrame) -> dict[str, np.ndarray]:
    ta = _talib()
    h, low, c = (df[k].to_numpy(dtype="float64") for k in ("high", "low", "close"))
    upper, middle, lower = ta.BBANDS(c, timeperiod=BB_PERIOD, nbdevup=BB_NBDEV, nbdevdn=BB_NBDEV)
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        position = np.where(width > 0, (c - lower) / width, 0.5)
    position[np.isnan(width)] = np.nan
    return {
        "atr_rel": ta.ATR(h, low, c, timeperiod=ATR_PERIOD) / c,
        "bb_width": width / middle,
        "bb_position": position,
    }


def _trend(df: pd.DataFrame) -> dict[str, np.ndarray]:
    ta = _talib()
    h, low, c = (df[k].to_numpy(dtype="float64") for k in ("high", "low", "close"))
    return {
        "adx": ta.ADX(h, low, c, timeperiod=ADX_PERIOD),
        "price_ema_ratio": c / ta.EMA(c, timeperiod=EMA_PERIOD) - 1.0,
        "price_sma_ratio": c / ta.SMA(c, timeperiod=SMA_PERIOD) - 1.0,
    }


def _volume(df: pd.DataFrame) -> dict[str, np.ndarray]:
    ta = _talib()
    c, v = df["close"].to_numpy(dtype="float64"), df["volume"].to_numpy(dtype="float64")
    obv = pd.Series(ta.OBV(c, v))
    moved = obv.diff(OBV_WINDOW)
    traded = pd.Series(v).rolling(OBV_WINDOW, min_periods=OBV_WINDOW).sum()
    # Net signed volume over the window as a share of all volume traded in it: in [-1, 1].
    change = np.where(traded > 0, moved / traded.where(traded > 0), 0.0)
    change[traded.isna().to_numpy() | moved.isna().to_numpy()] = np.nan
    return {"obv_change": change}


def _calendar(df: pd.DataFrame) -> dict[str, np.ndarray]:
    idx = pd.DatetimeIndex(df.index)
    hour = (idx.hour + idx.minute / 60.0).to_numpy(dtype="float64")
    dow = idx.dayofweek.to_numpy(dtype="float64")
    month = (idx.month - 1).to_numpy(dtype="float64")
    two_pi = 2.0 * np.pi
    return {
        "hour_sin": np.sin(two_pi * hour / 24.0),
        "hour_cos": np.cos(two_pi * hour / 24.0),
        "dow_sin": np.sin(two_pi * dow / 7.0),
        "dow_cos": np.cos(two_pi * dow / 7.0),
        "month_sin": np.sin(two_pi * month / 12.0),
        "month_cos": np.cos(two_pi * month / 12.0),
    }


_COMPUTE = {
    "returns": _returns,
    "momentum": _momentum,
    "volatility": _volatility,
    "trend": _trend,
    "volume": _volume,
    "calendar": _calendar,
}


def compute_features(ohlcv: pd.DataFrame, groups: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Compute indicator and calendar features for one asset's bars.

    Parameters
    ----------
    ohlcv
        Frame indexed by open time (ascending, UTC) with ``open, high, low, close, volume``.
    groups
        Feature groups to compute (keys of :data:`FEATURE_GROUPS`); default None computes all.

    Returns
    -------
    pandas.DataFrame
        Same index; one column per feature plus ``warmup`` (True where any computed
        indicator is undefined). Undefined values are NaN, never filled.
    """
    if not ohlcv.index.is_monotonic_increasing:
        raise ValueError("compute_features needs bars sorted by open time")
    selected = tuple(FEATURE_GROUPS) if groups is None else groups
    unknown = [g for g in selected if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; known: {list(FEATURE_GROUPS)}")
    out = pd.DataFrame(index=ohlcv.index)
    warmup = np.zeros(len(ohlcv), dtype=bool)
    for group in selected:
        values = (
            _COMPUTE[group](ohlcv)
            if len(ohlcv)
            else {c: np.array([]) for c in FEATURE_GROUPS[group]}
        )
        for name in FEATURE_GROUPS[group]:
            col = np.asarray(values[name], dtype="float64")
            col[~np.isfinite(col)] = np.nan
            out[name] = col
            if group not in _NO_WARMUP:
                warmup |= np.isnan(col)
    out["warmup"] = warmup
    return out
