"""A synthetic market for the quickstart: clearly labelled, never mistaken for real data.

Log returns follow a GARCH(1,1) process (volatility clusters) with Student-t shocks and a
small drift; prices are their exponential. Each bar's open is the previous close, high and
low extend beyond the body by a volatility-scaled amount, and volume rises with volatility.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kallos_models.config import timeframe_to_freq, timeframe_to_timedelta
from kallos_models.errors import ConfigError

SYNTHETIC_ASSET_ID = "SYNTHETIC"
DESCRIPTION = (
    "SYNTHETIC market data (GARCH(1,1) log returns with Student-t shocks, volume tied to "
    "volatility); not real prices"
)


def generate_market(
    n_bars: int = 1500,
    *,
    timeframe: str = "1d",
    start: str = "2020-01-01",
    seed: int = 7,
    start_price: float = 20_000.0,
) -> pd.DataFrame:
    """Generate OHLCV bars indexed by open time.

    Parameters
    ----------
    n_bars
        Number of bars; default 1500.
    timeframe
        Bar size; default ``1d``. Volatility per bar scales with the square root of its length.
    start
        First open time; default ``2020-01-01``.
    seed
        Random seed; default 7.
    start_price
        First open; default 20000.

    Returns
    -------
    pandas.DataFrame
        Columns ``open, high, low, close, volume``; every bar satisfies
        ``low <= min(open, close) <= max(open, close) <= high`` and all prices are positive.
    """
    if n_bars < 2:
        raise ConfigError(f"--bars must be at least 2, got {n_bars}")
    rng = np.random.default_rng(seed)
    scale = np.sqrt(timeframe_to_timedelta(timeframe) / pd.Timedelta(days=1))
    omega, alpha, beta = 2e-5 * scale**2, 0.08, 0.90
    drift = 0.0008 * scale**2  # a mild up-trend net of the variance drag
    variance = omega / (1 - alpha - beta)
    shocks = rng.standard_t(df=5, size=n_bars) / np.sqrt(5 / 3)
    returns = np.empty(n_bars)
    sigma = np.empty(n_bars)
    for i in range(n_bars):
        sigma[i] = np.sqrt(variance)
        returns[i] = drift + sigma[i] * shocks[i]
        variance = omega + alpha * returns[i] ** 2 + beta * variance
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[start_price], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.6, (2, n_bars))) * sigma * close
    high = np.maximum(open_, close) + wick[0]
    low = np.maximum(np.minimum(open_, close) - wick[1], 1e-6)
    volume = 1_000.0 * (sigma / sigma.mean()) ** 1.5 * rng.lognormal(0.0, 0.3, n_bars)
    index = pd.date_range(
        start, periods=n_bars, freq=timeframe_to_freq(timeframe), name="open_time"
    )
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def write_market_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write bars as a plain OHLCV CSV (``timestamp,open,high,low,close,volume``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.reset_index().rename(columns={"open_time": "timestamp"})
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    tmp = path.with_name(path.name + ".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
