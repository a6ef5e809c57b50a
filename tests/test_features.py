from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib

from kallos_models.data.features import FEATURE_COLUMNS, FEATURE_GROUPS, compute_features
from tests.helpers import make_ohlcv

SEED_COLUMNS = ("rsi", "mfi", "macd_diff")


def test_seed_names_and_groups_present() -> None:
    for name in SEED_COLUMNS:
        assert name in FEATURE_COLUMNS
    feats = compute_features(make_ohlcv(200))
    assert list(feats.columns) == [*FEATURE_COLUMNS, "warmup"]


def test_values_match_talib_and_definitions() -> None:
    bars = make_ohlcv(200)
    feats = compute_features(bars)
    c = bars["close"].to_numpy()
    np.testing.assert_allclose(feats["rsi"], talib.RSI(c, 14), equal_nan=True)
    np.testing.assert_allclose(feats["macd_diff"], talib.MACD(c, 12, 26, 9)[2], equal_nan=True)
    np.testing.assert_allclose(feats["log_return"].iloc[1:], np.diff(np.log(c)))
    atr = talib.ATR(bars["high"].to_numpy(), bars["low"].to_numpy(), c, 14)
    np.testing.assert_allclose(feats["atr_rel"], atr / c, equal_nan=True)
    assert feats["obv_change"].dropna().between(-1, 1).all()
    assert feats["rsi"].dropna().between(0, 100).all()


def test_warmup_marked_not_filled() -> None:
    feats = compute_features(make_ohlcv(200))
    indicator_cols = [c for c in FEATURE_COLUMNS if c not in FEATURE_GROUPS["calendar"]]
    undefined = feats[indicator_cols].isna().any(axis=1)
    assert (feats["warmup"] == undefined).all()
    assert feats["warmup"].iloc[0] and not feats["warmup"].iloc[-1]
    # the longest warm-up is the 50-bar SMA ratio: nothing invented before it
    assert feats["price_sma_ratio"].iloc[:49].isna().all()
    assert feats["price_sma_ratio"].iloc[49:].notna().all()


def test_calendar_features_by_bar_time() -> None:
    feats = compute_features(make_ohlcv(12, freq="2h", start="2024-01-01"))
    assert feats["hour_sin"].iloc[0] == pytest.approx(0.0)
    assert feats["hour_cos"].iloc[0] == pytest.approx(1.0)
    assert feats["hour_sin"].iloc[3] == pytest.approx(1.0)  # 06:00
    assert feats["dow_sin"].iloc[0] == pytest.approx(0.0)  # 2024-01-01 is a Monday


def test_group_selection_and_order_checks() -> None:
    feats = compute_features(make_ohlcv(60), groups=("momentum",))
    assert list(feats.columns) == [*FEATURE_GROUPS["momentum"], "warmup"]
    with pytest.raises(ValueError, match="unknown feature groups"):
        compute_features(make_ohlcv(60), groups=("astrology",))
    with pytest.raises(ValueError, match="sorted"):
        compute_features(make_ohlcv(60).iloc[::-1])


def test_zero_volume_bars_do_not_break_indicators() -> None:
    bars = make_ohlcv(120)
    bars.loc[bars.index[60:70], "volume"] = 0.0
    feats = compute_features(bars)
    assert np.isfinite(feats["mfi"].iloc[80:]).all()
    assert not pd.isna(feats["obv_change"].iloc[-1])
