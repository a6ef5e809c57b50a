"""series.prepare_darts_timeseries on small generated frames with real TA-Lib features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kallos_models.data.features import compute_features
from kallos_models.errors import DataError
from kallos_models.modelling.series import PreparedSeries, prepare_darts_timeseries

N_BARS = 300
N_VAL = 60


def make_feature_frame(
    n: int = N_BARS, *, taker: bool = True, seed: int = 0, freq: str = "1D"
) -> pd.DataFrame:
    """A frame shaped like load_features_from_db's: GBM bars + TA-Lib features, warm-up dropped.

    ``taker=False`` mimics a plain OHLCV file: the Binance taker column exists but is all NaN.
    """
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2021-01-01", periods=n, freq=freq, name="open_time")
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.03, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.01, n)) * close
    volume = rng.lognormal(8, 0.5, n)
    bars = pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": volume,
            "taker_buy_base_asset_volume": volume * rng.uniform(0.3, 0.7, n) if taker else np.nan,
        },
        index=idx,
    )
    frame = bars.join(compute_features(bars))
    first_ready = int(np.argmin(frame["warmup"].to_numpy()))
    frame = frame.iloc[first_ready:].drop(columns=["warmup"])
    frame["filled"] = False
    frame.index = pd.DatetimeIndex(frame.index, freq=freq, name="open_time")
    return frame


def split(frame: pd.DataFrame, n_val: int = N_VAL) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame.iloc[:-n_val], frame.iloc[-n_val:]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_feature_frame()


@pytest.fixture(scope="module")
def prepared(frame: pd.DataFrame) -> PreparedSeries:
    train, val = split(frame)
    return prepare_darts_timeseries(train, val)


def test_series_are_float32(prepared: PreparedSeries) -> None:
    for name in ("train_target", "train_covariates", "val_target", "val_covariates"):
        assert getattr(prepared, name).dtype == np.float32, name
    assert prepared.covariates.dtype == np.float32 and prepared.target.dtype == np.float32


def test_lengths_and_alignment(frame: pd.DataFrame, prepared: PreparedSeries) -> None:
    train, val = split(frame)
    freq = pd.Timedelta("1D")
    assert len(prepared.train_covariates) == len(train)
    assert prepared.train_covariates.start_time() == train.index[0]
    # log-return target: the first training bar has no previous close
    assert len(prepared.train_target) == len(train) - 1
    assert prepared.train_target.start_time() == train.index[1]
    assert prepared.train_target.end_time() == train.index[-1]
    assert len(prepared.val_target) == len(val) == len(prepared.val_covariates)
    assert prepared.val_target.start_time() == prepared.train_target.end_time() + freq
    assert prepared.val_covariates.time_index.equals(prepared.val_target.time_index)
    # covariates cover the whole target range, train and val concatenated
    assert prepared.covariates.start_time() <= prepared.target.start_time()
    assert prepared.covariates.end_time() >= prepared.target.end_time()
    assert len(prepared.covariates) == len(frame) and len(prepared.target) == len(frame) - 1
    assert (
        prepared.target.freq == prepared.covariates.freq == pd.tseries.frequencies.to_offset("1D")
    )
    assert np.array_equal(prepared.target.values()[-len(val) :], prepared.val_target.values())
    assert list(prepared.covariates.components) == prepared.preprocessor.feature_columns


def test_first_val_return_uses_last_train_close(
    frame: pd.DataFrame, prepared: PreparedSeries
) -> None:
    train, val = split(frame)
    first = prepared.preprocessor.inverse_target(prepared.val_target.values()[0, 0])
    expected = np.log(val["close"].iloc[0] / train["close"].iloc[-1])
    assert np.isclose(first, expected, rtol=1e-4, atol=1e-7)


def test_to_prices_of_scaled_future_returns_reproduces_closes(
    frame: pd.DataFrame, prepared: PreparedSeries
) -> None:
    train, val = split(frame)
    prices = prepared.preprocessor.to_prices(
        prepared.val_target.values()[:, 0], anchor_close=float(train["close"].iloc[-1])
    )
    assert np.allclose(prices, val["close"].to_numpy(), rtol=1e-4)


def test_default_groups_keep_taker_volume_when_present(prepared: PreparedSeries) -> None:
    assert prepared.preprocessor.feature_columns == [
        "volume",
        "taker_buy_base_asset_volume",
        "rsi",
        "mfi",
        "macd_diff",
    ]


def test_optional_column_dropped_for_ohlcv_only_frame() -> None:
    train, val = split(make_feature_frame(taker=False))
    out = prepare_darts_timeseries(train, val)
    assert "taker_buy_base_asset_volume" not in out.preprocessor.feature_columns
    assert list(out.covariates.components) == ["volume", "rsi", "mfi", "macd_diff"]
    # a column missing altogether is dropped the same way
    out2 = prepare_darts_timeseries(
        train.drop(columns=["taker_buy_base_asset_volume"]),
        val.drop(columns=["taker_buy_base_asset_volume"]),
    )
    assert out2.preprocessor.feature_columns == out.preprocessor.feature_columns


def test_missing_required_column_is_a_data_error(frame: pd.DataFrame) -> None:
    train, val = split(frame.drop(columns=["rsi"]))
    with pytest.raises(DataError) as err:
        prepare_darts_timeseries(train, val)
    assert "'rsi'" in str(err.value) and "'bounded_features'" in str(err.value)


def test_changing_val_rows_leaves_train_series_and_fit_unchanged(frame: pd.DataFrame) -> None:
    train, val = split(frame)
    other_val = val.copy()
    other_val[["open", "high", "low", "close"]] *= 3.0
    other_val[["volume", "taker_buy_base_asset_volume"]] *= 100.0
    other_val[["rsi", "mfi"]] = 1.0
    other_val["macd_diff"] += 25.0
    a = prepare_darts_timeseries(train, val)
    b = prepare_darts_timeseries(train, other_val)
    assert np.array_equal(a.train_target.values(), b.train_target.values())
    assert np.array_equal(a.train_covariates.values(), b.train_covariates.values())
    for group in a.preprocessor.pipelines:
        sa, sb = a.preprocessor.pipelines[group][-1], b.preprocessor.pipelines[group][-1]
        for attr in ("center_", "scale_", "data_min_", "data_max_"):
            if hasattr(sa, attr):
                assert np.array_equal(getattr(sa, attr), getattr(sb, attr)), (group, attr)
    assert np.array_equal(a.preprocessor.target_scaler.mean_, b.preprocessor.target_scaler.mean_)
    assert np.array_equal(a.preprocessor.target_scaler.scale_, b.preprocessor.target_scaler.scale_)
    # ...while the validation series do see the change (the test can tell them apart)
    assert not np.allclose(a.val_covariates.values(), b.val_covariates.values())
    # and fitting on train + val would have given other statistics
    both = prepare_darts_timeseries(pd.concat([train, other_val]))
    assert not np.allclose(
        both.preprocessor.target_scaler.mean_, a.preprocessor.target_scaler.mean_
    )


def test_train_only(frame: pd.DataFrame) -> None:
    train, _ = split(frame)
    out = prepare_darts_timeseries(train)
    assert out.val_target is None and out.val_covariates is None
    assert out.covariates == out.train_covariates and out.target == out.train_target


def test_price_target(frame: pd.DataFrame) -> None:
    train, val = split(frame)
    out = prepare_darts_timeseries(train, val, target_transform="price")
    assert len(out.train_target) == len(train)
    back = out.preprocessor.inverse_target(out.val_target.values()[:, 0])
    assert np.allclose(back, val["close"], rtol=1e-5)


def test_val_must_start_at_the_next_bar(frame: pd.DataFrame) -> None:
    train, val = split(frame)
    with pytest.raises(DataError, match="starts at"):
        prepare_darts_timeseries(train, val.iloc[1:])
    with pytest.raises(DataError, match="starts at"):
        prepare_darts_timeseries(train.iloc[:-5], val)
    with pytest.raises(DataError, match="regular"):
        prepare_darts_timeseries(train, val.drop(index=val.index[10]))


def test_irregular_train_index_is_a_data_error(frame: pd.DataFrame) -> None:
    train, _ = split(frame)
    gappy = train.drop(index=train.index[20:23])
    gappy.index = pd.DatetimeIndex(gappy.index, freq=None)
    with pytest.raises(DataError, match="regular"):
        prepare_darts_timeseries(gappy)


def test_group_scalers_for_dropped_group_are_ignored() -> None:
    train, val = split(make_feature_frame(taker=False))
    out = prepare_darts_timeseries(
        train,
        val,
        feature_groups={"taker": ["taker_buy_base_asset_volume"], "bounded_features": ["rsi"]},
        group_scalers={"taker": "standard", "bounded_features": "standard"},
    )
    assert out.preprocessor.group_scalers == {"bounded_features": "standard"}


def test_four_hour_bars(frame: pd.DataFrame) -> None:
    frame_4h = make_feature_frame(seed=3, freq="4h")
    train, val = split(frame_4h)
    out = prepare_darts_timeseries(train, val)
    assert out.val_target.start_time() == train.index[-1] + pd.Timedelta("4h")
    assert out.target.freq == pd.tseries.frequencies.to_offset("4h")
