"""A simple, honest backtest of one-step forecasts: trade the forecast's sign, pay a fee.

:func:`run_backtest` takes what :func:`kallos_models.modelling.forecasting.rolling_forecasts`
returns at horizon 1 (one row per bar ``t``: ``actual`` = close of ``t``, ``forecast`` of that
close, ``origin_close`` = close of ``t - 1``) and trades it:

- **Decision.** The forecast for bar ``t`` is made at the close of bar ``t - 1``. The position
  held over bar ``t`` is ``+1`` when ``log(forecast_t / origin_close_t) > threshold``, ``-1``
  when it is below ``-threshold`` (``long_short`` mode only), else ``0``. It is a function of
  ``forecast_t`` and ``origin_close_t`` alone (:func:`signal_positions` takes nothing else):
  ``actual_t`` never decides the trade made for bar ``t``.
- **Execution** (``"close"``). The position is entered at ``origin_close_t``, the close of the
  bar the forecast was made on, i.e. the next bar's open in a continuous market, and held to
  ``actual_t``. No slippage beyond the fee; no funding, borrow or interest.
- **Fees.** Each change of position costs ``|p_t - p_{t-1}| * fee_bps / 1e4`` of equity,
  charged at the entry (the first position, from flat, counts; a flip long -> short is 2
  units). The position left open at the end is not closed (no exit fee).

Buy-and-hold over the same window is the benchmark: long from the first origin close to the
last actual close, one entry fee. See ``documentation/evaluation.md`` (Backtest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from kallos_models.config import BacktestMode, timeframe_to_timedelta
from kallos_models.errors import ConfigError, DataError
from kallos_models.files import json_float
from kallos_models.modelling.intervals import frame_quantiles

__all__ = [
    "CURVE_COLUMNS",
    "BacktestConfig",
    "backtest_curves",
    "bars_per_year",
    "run_backtest",
    "signal_positions",
]

#: Columns of :func:`backtest_curves`.
CURVE_COLUMNS: tuple[str, ...] = (
    "position",
    "fee",
    "strategy_return",
    "strategy_equity",
    "buy_and_hold_return",
    "buy_and_hold_equity",
)

_INPUT_COLUMNS = ("actual", "forecast", "origin_close")
_MODES: tuple[str, ...] = get_args(BacktestMode)


@dataclass(frozen=True)
class BacktestConfig:
    """How forecasts are turned into trades.

    Attributes
    ----------
    mode
        ``"long"`` (long or flat) or ``"long_short"`` (long, flat or short); default ``"long"``.
    threshold
        Minimum forecast log return ``log(forecast / origin_close)`` to go long (strictly
        above it); strictly below ``-threshold`` goes short in ``long_short`` mode. At least 0;
        default 0.0.
    fee_bps
        Cost per unit of position change, in basis points of equity (a flip long -> short
        costs 2 units). In ``[0, 5000)``; default 10.0.
    execution
        Only ``"close"``: trade at the close of the bar the forecast was made on (the next
        bar's open in a continuous market), no slippage beyond the fee. Default ``"close"``.

    Raises
    ------
    ConfigError
        A value outside the ranges above.
    """

    mode: BacktestMode = "long"
    threshold: float = 0.0
    fee_bps: float = 10.0
    execution: Literal["close"] = "close"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ConfigError(
                f"backtest mode {self.mode!r} is not one of {', '.join(_MODES)}; "
                "e.g. --backtest-mode long or --backtest-mode long_short"
            )
        if self.execution != "close":
            raise ConfigError(
                f"backtest execution {self.execution!r} is not supported; only 'close' (trade "
                "at the close of the bar the forecast was made on)"
            )
        if not _finite(self.threshold) or float(self.threshold) < 0:
            raise ConfigError(
                f"backtest threshold must be a finite log return >= 0, got {self.threshold!r} "
                "(e.g. --backtest-threshold 0.002 trades only forecasts beyond 0.2%)"
            )
        if not _finite(self.fee_bps) or not 0 <= float(self.fee_bps) < 5000:
            raise ConfigError(
                f"fee_bps must be in [0, 5000) basis points, got {self.fee_bps!r} "
                "(e.g. --fee-bps 10 for 0.1% per unit traded)"
            )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def bars_per_year(timeframe: str) -> float:
    """Bars in a year of a market that trades every day: ``365 days / bar size``.

    Parameters
    ----------
    timeframe
        Bar size such as ``1d`` (365 bars), ``4h`` (2190) or ``15m`` (35040). No default.

    Raises
    ------
    ConfigError
        ``timeframe`` is not a bar size (see :func:`kallos_models.config.timeframe_to_timedelta`).
    """
    return pd.Timedelta(days=365) / timeframe_to_timedelta(timeframe)


def signal_positions(
    forecast: np.ndarray,
    origin_close: np.ndarray,
    *,
    mode: BacktestMode = "long",
    threshold: float = 0.0,
    quantiles: Mapping[float, np.ndarray] | None = None,
) -> np.ndarray:
    """The position held over each bar, from that bar's forecast and origin close only.

    Parameters
    ----------
    forecast
        Forecast close of each bar, made at the close of the bar before.
    origin_close
        Close of the bar before each bar: the last price known when the forecast was made.
    mode
        ``"long"``/``"long_short"``: the forecast's sign. ``"long_interval"``/
        ``"long_short_interval"``: long only when the narrowest interval's lower bound is
        above the origin close, short only when its upper bound is below it (flat when the
        interval straddles it). ``"long_confidence"``/``"long_short_confidence"``: a
        fractional position ``2 P(up) - 1`` (clipped at 0 for long), ``P(up) = 1 - F(origin
        close)`` with ``F`` interpolated linearly between the forecast's price quantiles
        (beyond the outer ones, their levels: with 0.05 and 0.95 the size is at most 0.9).
        Default ``"long"``.
    threshold
        Minimum ``|log(forecast / origin_close)|`` to be in the market (for the interval
        modes, of the bound's log return); default 0.0.
    quantiles
        Price quantiles per bar, made with the forecast (``{0.05: array, ...}``); needed by
        the interval and confidence modes.

    Returns
    -------
    numpy.ndarray
        Per bar: ``+1.0``, ``0.0`` or ``-1.0``; a fraction in ``[-1, 1]`` in the confidence
        modes.

    Raises
    ------
    ConfigError
        An interval or confidence mode without quantiles.
    """
    origin = np.asarray(origin_close, dtype="float64")
    predicted = np.log(np.asarray(forecast, dtype="float64")) - np.log(origin)
    short = mode.startswith("long_short")
    if mode in ("long", "long_short"):
        positions = np.where(predicted > threshold, 1.0, 0.0)
        if short:
            positions = np.where(predicted < -threshold, -1.0, positions)
        return positions
    levels = sorted(quantiles or {})
    if len(levels) < 3:
        raise ConfigError(
            f"backtest mode {mode!r} sizes trades by the forecast's intervals, but these "
            "forecasts have none: evaluate a bundle trained with --quantiles or --conformal, "
            "or use --backtest-mode long / long_short"
        )
    table = np.column_stack([quantiles[q] for q in levels])  # type: ignore[index]
    if mode.endswith("_interval"):
        below = [q for q in levels if q < 0.5]
        lower, upper = quantiles[max(below)], quantiles[1.0 - max(below)]  # type: ignore[index]
        positions = np.where(np.log(lower / origin) > threshold, 1.0, 0.0)
        if short:
            positions = np.where(np.log(upper / origin) < -threshold, -1.0, positions)
        return positions
    cdf = np.array([np.interp(o, row, levels) for o, row in zip(origin, table, strict=True)])
    positions = 2.0 * (1.0 - cdf) - 1.0
    positions = np.where(np.abs(predicted) > threshold, positions, 0.0)
    return positions if short else np.clip(positions, 0.0, None)


def _check_forecasts(forecasts: pd.DataFrame, timeframe: str, horizon: int) -> None:
    if isinstance(horizon, bool) or horizon != 1:
        raise ConfigError(
            f"the backtest trades one-step forecasts only, got horizon {horizon!r}: an h-step "
            "forecast is made h bars before its bar, so its trades would overlap; evaluate "
            "with --horizon 1 to get a backtest"
        )
    missing = [c for c in _INPUT_COLUMNS if c not in forecasts.columns]
    if missing:
        raise DataError(
            f"forecasts lack columns {missing}; pass the output of evaluation.rolling_forecasts"
        )
    if forecasts.empty:
        raise DataError("no forecasts to backtest; the evaluation window is empty")
    if not isinstance(forecasts.index, pd.DatetimeIndex):
        raise DataError("forecasts must be indexed by bar timestamps (a DatetimeIndex)")
    values = forecasts[list(_INPUT_COLUMNS)].to_numpy(dtype="float64")
    if not np.isfinite(values).all() or (values <= 0).any():
        bad = forecasts.index[~(np.isfinite(values) & (values > 0)).all(axis=1)][0]
        raise DataError(
            f"forecasts hold a NaN, infinite or non-positive price at {bad}; the backtest "
            "needs positive prices in actual, forecast and origin_close"
        )
    bar = timeframe_to_timedelta(timeframe)
    steps = np.diff(forecasts.index.asi8)
    if len(steps) and not (steps == bar.value).all():
        at = forecasts.index[int(np.argmax(steps != bar.value)) + 1]
        raise DataError(
            f"forecasts are not one {timeframe} bar apart (first break at {at}); the backtest "
            "needs every bar of the window, as rolling_forecasts returns them"
        )
    actual = values[:, 0]
    origin = values[:, 2]
    chained = np.isclose(origin[1:], actual[:-1], rtol=1e-9, atol=0.0)
    if not chained.all():
        at = forecasts.index[int(np.argmax(~chained)) + 1]
        raise DataError(
            f"origin_close at {at} is not the previous bar's actual close: these are not "
            "one-step (horizon 1) forecasts; the backtest trades horizon 1 only "
            "(evaluate with --horizon 1)"
        )


def _equity(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equity after each bar and each bar's simple return, from per-bar growth factors.

    A factor below 0 (a short through a rise of more than 100%) is ruin: equity 0 from then on,
    and no return is earned on nothing.
    """
    factors = np.clip(factors, 0.0, None)
    equity = np.cumprod(factors)
    returns = factors - 1.0
    dead = np.concatenate([[False], equity[:-1] <= 0.0])
    returns[dead] = 0.0
    return equity, returns


def _simulate(
    forecasts: pd.DataFrame, timeframe: str, config: BacktestConfig, horizon: int
) -> pd.DataFrame:
    _check_forecasts(forecasts, timeframe, horizon)
    actual = forecasts["actual"].to_numpy(dtype="float64")
    origin = forecasts["origin_close"].to_numpy(dtype="float64")
    # The decision sees the forecast and the origin close; actual is only used for the P&L.
    position = signal_positions(
        forecasts["forecast"].to_numpy(dtype="float64"),
        origin,
        mode=config.mode,
        threshold=float(config.threshold),
        quantiles=frame_quantiles(forecasts),
    )
    fee_rate = float(config.fee_bps) / 1e4
    bar_return = actual / origin - 1.0
    fee = np.abs(np.diff(position, prepend=0.0)) * fee_rate
    strategy_equity, strategy_return = _equity((1.0 - fee) * (1.0 + position * bar_return))
    hold_fee = np.zeros_like(bar_return)
    hold_fee[0] = fee_rate
    hold_equity, hold_return = _equity((1.0 - hold_fee) * (1.0 + bar_return))
    return pd.DataFrame(
        {
            "position": position,
            "fee": fee,
            "strategy_return": strategy_return,
            "strategy_equity": strategy_equity,
            "buy_and_hold_return": hold_return,
            "buy_and_hold_equity": hold_equity,
        },
        index=forecasts.index.copy(),
    )


def _summary(
    position: np.ndarray,
    returns: np.ndarray,
    equity: np.ndarray,
    bar_return: np.ndarray,
    annual_bars: float,
) -> dict[str, Any]:
    n = len(returns)
    in_market = position != 0
    std = float(np.std(returns, ddof=1)) if n > 1 else 0.0
    sharpe = float(np.mean(returns)) / std * math.sqrt(annual_bars) if std > 0 else None
    peaks = np.maximum.accumulate(np.concatenate([[1.0], equity]))
    drawdown = float(np.min(np.concatenate([[1.0], equity]) / peaks - 1.0))
    hits = (position * bar_return > 0)[in_market]
    return {
        "total_return": json_float(equity[-1] - 1.0),
        "annualised_sharpe": None if sharpe is None else json_float(sharpe),
        "max_drawdown": json_float(drawdown),
        "n_trades": int(np.count_nonzero(np.diff(position, prepend=0.0))),
        "turnover": json_float(np.abs(np.diff(position, prepend=0.0)).sum()),
        "hit_rate": json_float(hits.mean()) if hits.size else None,
        "exposure": json_float(in_market.mean()),
        "n_bars": n,
    }


def backtest_curves(
    forecasts: pd.DataFrame,
    *,
    timeframe: str,
    config: BacktestConfig | None = None,
    horizon: int = 1,
) -> pd.DataFrame:
    """Per-bar positions, fees, returns and equity of the strategy and of buy-and-hold.

    Parameters
    ----------
    forecasts
        Output of :func:`kallos_models.modelling.forecasting.rolling_forecasts` at horizon 1.
    timeframe
        Bar size of the forecasts, e.g. ``1d``; the index must step by exactly one bar.
    config
        Trading rules; default None uses ``BacktestConfig()`` (long only, threshold 0, 10 bps).
    horizon
        Horizon of the forecasts; default 1, the only one accepted.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``forecasts``, with :data:`CURVE_COLUMNS`: ``position`` held over the bar
        (+1, 0, -1), ``fee`` charged at its entry (fraction of equity), ``strategy_return``
        (simple, net of the fee), ``strategy_equity`` (after the bar's close, starting from
        1.0 before the first bar), and the same ``buy_and_hold_*`` for the benchmark.

    Raises
    ------
    ConfigError
        ``horizon`` other than 1, or a bad ``timeframe``.
    DataError
        Missing columns, empty input, NaN or non-positive prices, bars not one ``timeframe``
        apart, or ``origin_close`` that is not the previous bar's ``actual`` (not one-step).
    """
    return _simulate(forecasts, timeframe, config or BacktestConfig(), horizon)


def run_backtest(
    forecasts: pd.DataFrame,
    *,
    timeframe: str,
    config: BacktestConfig | None = None,
    horizon: int = 1,
) -> dict[str, Any]:
    """Trade one-step forecasts and compare with buy-and-hold over the same bars.

    Parameters
    ----------
    forecasts
        Output of :func:`kallos_models.modelling.forecasting.rolling_forecasts` at horizon 1:
        columns ``actual``, ``forecast`` and ``origin_close`` (``naive`` is not used), one row
        per bar.
    timeframe
        Bar size of the forecasts, e.g. ``1d`` or ``4h``; sets the annualisation
        (:func:`bars_per_year`) and the bar spacing checked.
    config
        Trading rules; default None uses ``BacktestConfig()`` (long only, threshold 0, 10 bps).
    horizon
        Horizon of the forecasts; default 1, the only one accepted.

    Returns
    -------
    dict
        JSON-able: ``config`` (the rules used), ``timeframe``, ``bars_per_year``,
        ``first_bar``/``last_bar`` (ISO), and ``strategy`` and ``buy_and_hold``, each with
        ``total_return`` (compounded simple return, net of fees), ``annualised_sharpe``
        (mean / sample std of per-bar net simple returns times ``sqrt(bars_per_year)``, zero
        risk-free rate; None when the std is 0), ``max_drawdown`` (deepest fall of equity from
        its running peak, a fraction <= 0, the start at 1.0 counting as a peak),
        ``n_trades`` (bars whose position differs from the previous one, the first entry
        included), ``turnover`` (units traded), ``hit_rate`` (share of bars in the market
        whose price move had the position's sign; None when never in the market),
        ``exposure`` (share of bars in the market) and ``n_bars``.

    Raises
    ------
    ConfigError
        ``horizon`` other than 1, or a bad ``timeframe``.
    DataError
        As :func:`backtest_curves`.
    """
    config = config or BacktestConfig()
    curves = _simulate(forecasts, timeframe, config, horizon)
    annual_bars = bars_per_year(timeframe)
    bar_return = (forecasts["actual"] / forecasts["origin_close"] - 1.0).to_numpy(dtype="float64")
    position = curves["position"].to_numpy()
    hold = np.ones_like(position)
    return {
        "config": asdict(config),
        "timeframe": timeframe,
        "bars_per_year": annual_bars,
        "first_bar": curves.index[0].isoformat(),
        "last_bar": curves.index[-1].isoformat(),
        "strategy": _summary(
            position,
            curves["strategy_return"].to_numpy(),
            curves["strategy_equity"].to_numpy(),
            bar_return,
            annual_bars,
        ),
        "buy_and_hold": _summary(
            hold,
            curves["buy_and_hold_return"].to_numpy(),
            curves["buy_and_hold_equity"].to_numpy(),
            bar_return,
            annual_bars,
        ),
    }
