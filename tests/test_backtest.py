"""The backtest: no look-ahead, fees, buy-and-hold by hand, annualisation, refusals."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling.backtest import (
    CURVE_COLUMNS,
    BacktestConfig,
    backtest_curves,
    bars_per_year,
    run_backtest,
    signal_positions,
)


def _forecasts(
    closes: list[float] | np.ndarray,
    forecast: list[float] | np.ndarray | None = None,
    *,
    freq: str = "1D",
) -> pd.DataFrame:
    """What rolling_forecasts returns at horizon 1 for ``closes`` (the first is an origin only).

    Row ``t`` (``t = 1 .. n-1``): actual ``closes[t]``, origin_close ``closes[t-1]``. Default
    forecast: naive (the origin close).
    """
    closes = np.asarray(closes, dtype="float64")
    origin = closes[:-1]
    actual = closes[1:]
    fc = origin.copy() if forecast is None else np.asarray(forecast, dtype="float64")
    index = pd.date_range("2024-01-02", periods=len(actual), freq=freq, name="open_time")
    return pd.DataFrame(
        {"actual": actual, "forecast": fc, "naive": origin, "origin_close": origin}, index=index
    )


def _random_walk(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(np.concatenate([[0.0], rng.normal(0.0, 0.02, n)])))


# --------------------------------------------------------------------------------------------
# No look-ahead
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["long", "long_short"])
def test_a_forecast_that_peeks_at_the_future_profits(mode):
    """Sanity: forecast_t = actual_t (impossible in reality) must make money on every path."""
    for seed in range(5):
        closes = _random_walk(200, seed)
        frame = _forecasts(closes, forecast=closes[1:])
        bt = run_backtest(frame, timeframe="1d", config=BacktestConfig(mode=mode, fee_bps=0.0))
        s = bt["strategy"]
        assert s["total_return"] > 0.5
        assert s["hit_rate"] == 1.0  # every bar in the market is right (no zero moves here)
        assert s["max_drawdown"] == 0.0  # never loses a bar
        assert s["total_return"] > bt["buy_and_hold"]["total_return"]
        if mode == "long_short":
            assert s["exposure"] == 1.0


def test_forecasts_from_the_past_cannot_systematically_profit_on_a_random_walk():
    """forecast_t from closes up to t-1 only: naive, and momentum (the last move repeated)."""
    pooled = []
    for seed in range(40):
        closes = _random_walk(250, seed)
        naive = run_backtest(_forecasts(closes), timeframe="1d")
        # naive predicts no move: never in the market, nothing earned, no trades
        assert naive["strategy"]["total_return"] == 0.0
        assert naive["strategy"]["n_trades"] == 0 and naive["strategy"]["exposure"] == 0.0
        assert naive["strategy"]["hit_rate"] is None
        origin = closes[:-1]
        previous = np.concatenate([[origin[0]], origin[:-1]])
        momentum = origin * origin / previous  # uses closes[t-1] and closes[t-2] only
        curves = backtest_curves(
            _forecasts(closes, momentum),
            timeframe="1d",
            config=BacktestConfig(mode="long_short", fee_bps=0.0),
        )
        pooled.append(curves["strategy_return"].to_numpy())
    returns = np.concatenate(pooled)
    standard_error = returns.std(ddof=1) / math.sqrt(len(returns))
    assert abs(returns.mean()) < 4 * standard_error  # no edge beyond noise (~0.02% per bar)


def test_the_position_for_a_bar_never_depends_on_that_bars_close():
    """The shift check: perturb close_t (actual_t and origin_close_{t+1}, as a different
    realised close would); the positions up to t do not move; t+1 may, but only as the
    decision rule applied to (forecast_{t+1}, the new origin_close_{t+1})."""
    closes = _random_walk(60, 3)
    rng = np.random.default_rng(7)
    forecast = closes[:-1] * np.exp(rng.normal(0.0, 0.01, 60))
    config = BacktestConfig(mode="long_short", threshold=0.002, fee_bps=10.0)
    base = backtest_curves(_forecasts(closes, forecast), timeframe="1d", config=config)
    for t in (0, 17, 58):
        for factor in (0.5, 0.99, 1.01, 2.0):
            moved = closes.copy()
            moved[t + 1] *= factor  # the close of row t
            frame = _forecasts(moved, forecast)
            curves = backtest_curves(frame, timeframe="1d", config=config)
            np.testing.assert_array_equal(
                curves["position"].to_numpy()[: t + 1], base["position"].to_numpy()[: t + 1]
            )
            np.testing.assert_array_equal(  # the P&L before t is untouched too
                curves["strategy_equity"].to_numpy()[:t], base["strategy_equity"].to_numpy()[:t]
            )
            expected_next = signal_positions(
                forecast[t + 1 : t + 2],
                moved[t + 1 : t + 2],
                mode="long_short",
                threshold=0.002,
            )
            np.testing.assert_array_equal(
                curves["position"].to_numpy()[t + 1 : t + 2], expected_next
            )
            np.testing.assert_array_equal(
                curves["position"].to_numpy()[t + 2 :], base["position"].to_numpy()[t + 2 :]
            )
    # the last bar's close changes only the last bar's return
    moved = closes.copy()
    moved[-1] *= 1.5
    curves = backtest_curves(_forecasts(moved, forecast), timeframe="1d", config=config)
    np.testing.assert_array_equal(curves["position"], base["position"])
    assert curves["strategy_return"].iloc[-1] != base["strategy_return"].iloc[-1]


def test_later_rows_do_not_change_earlier_results():
    """Cutting the window short leaves every earlier bar's position, return and equity as is."""
    closes = _random_walk(80, 11)
    forecast = closes[:-1] * np.exp(np.random.default_rng(1).normal(0.0, 0.01, 80))
    frame = _forecasts(closes, forecast)
    config = BacktestConfig(mode="long_short", fee_bps=10.0)
    full = backtest_curves(frame, timeframe="1d", config=config)
    for k in (1, 10, 79):
        head = backtest_curves(frame.iloc[:k], timeframe="1d", config=config)
        pd.testing.assert_frame_equal(head, full.iloc[:k])


def test_pnl_is_the_position_times_the_move_from_the_origin_close():
    """Row t earns p_t * (actual_t / origin_close_t - 1), p_t from forecast_t vs origin_close_t."""
    closes = [100.0, 110.0, 99.0, 99.0, 121.0, 110.0]
    forecast = [101.0, 109.0, 100.0, 98.0, 120.0]  # up, down, up, down, down vs the origin
    frame = _forecasts(closes, forecast)
    curves = backtest_curves(
        frame, timeframe="1d", config=BacktestConfig(mode="long_short", fee_bps=0.0)
    )
    assert curves["position"].tolist() == [1.0, -1.0, 1.0, -1.0, -1.0]
    moves = [0.1, -0.1, 0.0, 121 / 99 - 1, 110 / 121 - 1]
    expected = [p * m for p, m in zip([1, -1, 1, -1, -1], moves, strict=True)]
    np.testing.assert_allclose(curves["strategy_return"], expected, rtol=1e-12)
    np.testing.assert_allclose(curves["strategy_equity"], np.cumprod(1 + np.array(expected)))
    long_only = backtest_curves(frame, timeframe="1d", config=BacktestConfig(fee_bps=0.0))
    assert long_only["position"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_threshold_keeps_small_forecasts_out_of_the_market():
    origin = np.array([100.0, 100.0, 100.0, 100.0, 100.0])
    forecast = np.array([100.1, 100.3, 99.9, 99.7, 100.0])  # log returns ~ +0.1%, +0.3%, ...
    got = signal_positions(forecast, origin, mode="long_short", threshold=0.002)
    assert got.tolist() == [0.0, 1.0, 0.0, -1.0, 0.0]
    assert signal_positions(forecast, origin).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------
# Fees
# --------------------------------------------------------------------------------------------


def test_flipping_every_bar_loses_exactly_the_fees():
    closes = _random_walk(30, 5)
    origin = closes[:-1]
    up = np.where(np.arange(30) % 2 == 0, 1.01, 0.99)  # forecast up, down, up, down, ...
    frame = _forecasts(closes, origin * up)
    fee = 25.0 / 1e4
    for mode in ("long", "long_short"):
        free = backtest_curves(frame, timeframe="1d", config=BacktestConfig(mode=mode, fee_bps=0))
        paid = backtest_curves(frame, timeframe="1d", config=BacktestConfig(mode=mode, fee_bps=25))
        summary = run_backtest(frame, timeframe="1d", config=BacktestConfig(mode=mode, fee_bps=25))
        n_trades = summary["strategy"]["n_trades"]
        ratio = paid["strategy_equity"].iloc[-1] / free["strategy_equity"].iloc[-1]
        if mode == "long":  # long, flat, long, ...: 15 entries and 15 exits, 1 unit each
            assert n_trades == 30
            assert ratio == pytest.approx((1 - fee) ** n_trades, rel=1e-12)
        else:  # one entry from flat, then 29 flips of 2 units
            assert n_trades == 30 and summary["strategy"]["turnover"] == 59
            assert ratio == pytest.approx((1 - fee) * (1 - 2 * fee) ** 29, rel=1e-12)
        assert paid["fee"].sum() == pytest.approx(summary["strategy"]["turnover"] * fee)


def test_no_trade_no_fee_and_holding_pays_one_entry():
    frame = _forecasts([100.0, 101.0, 102.0, 103.0], [105.0, 106.0, 107.0])
    curves = backtest_curves(frame, timeframe="1d", config=BacktestConfig(fee_bps=10))
    assert curves["fee"].tolist() == [0.001, 0.0, 0.0]  # entered once, never closed
    np.testing.assert_allclose(curves["strategy_equity"], curves["buy_and_hold_equity"])


# --------------------------------------------------------------------------------------------
# Buy-and-hold and the summary numbers, by hand
# --------------------------------------------------------------------------------------------


def test_buy_and_hold_on_five_bars_matches_a_hand_computation():
    closes = [100.0, 110.0, 99.0, 99.0, 121.0, 110.0]
    bt = run_backtest(_forecasts(closes), timeframe="1d", config=BacktestConfig(fee_bps=10.0))
    hold = bt["buy_and_hold"]
    # long at 100 (fee 0.1%) to 110: equity 0.999 * 1.1
    assert hold["total_return"] == pytest.approx(0.999 * 1.1 - 1)
    equity = [0.999 * 1.1, 0.999 * 0.99, 0.999 * 0.99, 0.999 * 1.21, 0.999 * 1.1]
    returns = [equity[0] - 1] + [b / a - 1 for a, b in zip(equity, equity[1:], strict=False)]
    assert returns[1:] == pytest.approx([-0.1, 0.0, 121 / 99 - 1, 110 / 121 - 1])
    sharpe = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(365)
    assert hold["annualised_sharpe"] == pytest.approx(sharpe, rel=1e-12)
    # peak 1.0989 then 0.98901: -10%; peak 1.20879 then 1.0989: -9.09%
    assert hold["max_drawdown"] == pytest.approx(-0.1)
    assert hold["n_trades"] == 1 and hold["turnover"] == 1.0
    assert hold["exposure"] == 1.0
    assert hold["hit_rate"] == pytest.approx(2 / 5)  # up bars 1 and 4; the flat bar is no hit
    assert hold["n_bars"] == 5
    assert bt["bars_per_year"] == 365.0
    assert bt["first_bar"] == "2024-01-02T00:00:00" and bt["last_bar"] == "2024-01-06T00:00:00"
    assert bt["config"] == {"mode": "long", "threshold": 0.0, "fee_bps": 10.0, "execution": "close"}
    # naive forecasts: the strategy stays flat
    assert bt["strategy"]["total_return"] == 0.0 and bt["strategy"]["annualised_sharpe"] is None
    assert bt["strategy"]["max_drawdown"] == 0.0
    json.dumps(bt, allow_nan=False)
    curves = backtest_curves(_forecasts(closes), timeframe="1d")
    assert tuple(curves.columns) == CURVE_COLUMNS
    np.testing.assert_allclose(curves["buy_and_hold_equity"], equity, rtol=1e-12)


def test_a_drawdown_from_the_start_counts():
    bt = run_backtest(_forecasts([100.0, 90.0, 95.0]), timeframe="1d")
    assert bt["buy_and_hold"]["max_drawdown"] == pytest.approx(-0.1 - 0.001 * 0.9)


def test_sharpe_annualisation_1d_against_4h():
    closes = _random_walk(50, 2)
    forecast = closes[:-1] * 1.01
    daily = run_backtest(_forecasts(closes, forecast), timeframe="1d")
    four_hourly = run_backtest(_forecasts(closes, forecast, freq="4h"), timeframe="4h")
    assert bars_per_year("1d") == 365.0 and bars_per_year("4h") == 2190.0
    assert bars_per_year("15m") == 35040.0 and bars_per_year("1w") == pytest.approx(365 / 7)
    assert four_hourly["bars_per_year"] == 2190.0
    for key in ("strategy", "buy_and_hold"):
        assert four_hourly[key]["annualised_sharpe"] == pytest.approx(
            daily[key]["annualised_sharpe"] * math.sqrt(6), rel=1e-12
        )
        assert four_hourly[key]["total_return"] == daily[key]["total_return"]


def test_a_short_through_a_tripling_bar_is_ruin_not_a_negative_equity():
    frame = _forecasts([100.0, 300.0, 310.0], [90.0, 200.0])
    config = BacktestConfig(mode="long_short", fee_bps=0.0)
    curves = backtest_curves(frame, timeframe="1d", config=config)
    assert curves["strategy_equity"].tolist() == [0.0, 0.0]
    assert curves["strategy_return"].tolist() == [-1.0, 0.0]
    s = run_backtest(frame, timeframe="1d", config=config)["strategy"]
    assert s["total_return"] == -1.0 and s["max_drawdown"] == -1.0


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_horizon_above_one_is_refused():
    frame = _forecasts([100.0, 101.0, 102.0, 103.0])
    with pytest.raises(ConfigError, match="one-step forecasts only.*--horizon 1"):
        run_backtest(frame, timeframe="1d", horizon=2)
    # horizon-2 rows: origin_close_t is the close two bars back, not the previous actual
    closes = np.array([100.0, 101.0, 103.0, 102.0, 104.0])
    two_step = pd.DataFrame(
        {"actual": closes[2:], "forecast": closes[:-2], "origin_close": closes[:-2]},
        index=pd.date_range("2024-01-03", periods=3, freq="1D"),
    )
    with pytest.raises(DataError, match="not one-step"):
        run_backtest(two_step, timeframe="1d")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "short"}, "long_short"),
        ({"threshold": -0.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"fee_bps": -1.0}, "fee_bps"),
        ({"fee_bps": 5000.0}, "fee_bps"),
        ({"execution": "open"}, "close"),
    ],
)
def test_bad_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BacktestConfig(**kwargs)


def test_bad_forecast_frames_are_data_errors():
    frame = _forecasts([100.0, 101.0, 102.0, 103.0])
    with pytest.raises(DataError, match="lack columns"):
        run_backtest(frame.drop(columns="origin_close"), timeframe="1d")
    with pytest.raises(DataError, match="empty"):
        run_backtest(frame.iloc[:0], timeframe="1d")
    bad = frame.copy()
    bad.loc[bad.index[1], "forecast"] = np.nan
    with pytest.raises(DataError, match="non-positive"):
        run_backtest(bad, timeframe="1d")
    with pytest.raises(DataError, match="not one 4h bar apart"):
        run_backtest(frame, timeframe="4h")
    with pytest.raises(DataError, match="not one 1d bar apart"):
        run_backtest(frame.iloc[[0, 2]], timeframe="1d")
    with pytest.raises(ConfigError, match="bar size"):
        run_backtest(frame, timeframe="1M")
