"""Per-group scalers and the target transform: fit on training rows only, invertible, picklable."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kallos_models.config import DEFAULT_FEATURE_GROUPS
from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling.preprocessing import (
    DEFAULT_GROUP_SCALERS,
    SCALER_NAMES,
    FeaturePreprocessor,
    resolve_feature_groups,
)

GROUPS = {k: list(v) for k, v in DEFAULT_FEATURE_GROUPS.items()}
N_TRAIN = 150


def make_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Daily bars with the default feature columns, values in their realistic ranges."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2022-01-01", periods=n, freq="D", name="open_time")
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.03, n)))
    volume = rng.lognormal(8, 0.6, n)
    return pd.DataFrame(
        {
            "close": close,
            "volume": volume,
            "taker_buy_base_asset_volume": volume * rng.uniform(0.3, 0.7, n),
            "rsi": rng.uniform(10, 90, n),
            "mfi": rng.uniform(5, 95, n),
            "macd_diff": rng.normal(0, 2, n),
            "filled": False,
        },
        index=idx,
    )


def fitted(frame: pd.DataFrame, **kwargs) -> FeaturePreprocessor:
    return FeaturePreprocessor(GROUPS, **kwargs).fit(frame)


def state(pre: FeaturePreprocessor) -> dict[str, np.ndarray]:
    """Every fitted statistic of a preprocessor, by name."""
    out: dict[str, np.ndarray] = {}
    for group, pipeline in pre.pipelines.items():
        scaler = pipeline[-1]
        for attr in ("center_", "scale_", "mean_", "var_", "data_min_", "data_max_", "min_"):
            if hasattr(scaler, attr):
                out[f"{group}.{attr}"] = np.asarray(getattr(scaler, attr), dtype="float64")
    out["target.mean_"] = pre.target_scaler.mean_.copy()
    out["target.scale_"] = pre.target_scaler.scale_.copy()
    return out


# -- resolve_feature_groups ------------------------------------------------------------------


def test_resolve_drops_absent_optional_column_from_names() -> None:
    cols = ["close", "volume", "rsi", "mfi", "macd_diff"]
    groups = resolve_feature_groups(cols, GROUPS, optional_features=["taker_buy_base_asset_volume"])
    assert groups == {
        "volume_features": ["volume"],
        "bounded_features": ["rsi", "mfi"],
        "unbounded_features": ["macd_diff"],
    }


def test_resolve_drops_all_nan_optional_column_from_frame() -> None:
    frame = make_frame()
    frame["taker_buy_base_asset_volume"] = np.nan  # plain OHLCV file: the column exists, empty
    groups = resolve_feature_groups(
        frame, GROUPS, optional_features=["taker_buy_base_asset_volume"]
    )
    assert groups["volume_features"] == ["volume"]


def test_resolve_keeps_present_optional_column() -> None:
    groups = resolve_feature_groups(
        make_frame(), GROUPS, optional_features=["taker_buy_base_asset_volume"]
    )
    assert groups["volume_features"] == ["volume", "taker_buy_base_asset_volume"]


def test_resolve_missing_required_column_names_column_group_and_available() -> None:
    frame = make_frame().drop(columns=["mfi"])
    with pytest.raises(DataError) as err:
        resolve_feature_groups(frame, GROUPS, optional_features=["taker_buy_base_asset_volume"])
    msg = str(err.value)
    assert "'mfi'" in msg and "'bounded_features'" in msg and "rsi" in msg and "macd_diff" in msg


def test_resolve_all_nan_required_column_is_an_error() -> None:
    frame = make_frame()
    frame["macd_diff"] = np.nan
    with pytest.raises(DataError, match="macd_diff.*all NaN"):
        resolve_feature_groups(frame, GROUPS)


def test_resolve_drops_empty_group_and_fails_when_none_left() -> None:
    groups = {"taker": ["taker_buy_base_asset_volume"], "bounded_features": ["rsi"]}
    resolved = resolve_feature_groups(["rsi"], groups, ["taker_buy_base_asset_volume"])
    assert resolved == {"bounded_features": ["rsi"]}
    with pytest.raises(DataError, match="no feature group"):
        resolve_feature_groups(
            ["close"], {"taker": ["taker_buy_base_asset_volume"]}, ["taker_buy_base_asset_volume"]
        )


@pytest.mark.parametrize(
    "groups",
    [{"a": "volume"}, {"a": ["volume"], "b": ["volume"]}, ["volume"]],
)
def test_resolve_rejects_malformed_groups(groups) -> None:
    with pytest.raises(ConfigError):
        resolve_feature_groups(["volume"], groups)


# -- configuration -----------------------------------------------------------------------------


def test_default_scalers_per_group_and_fallback() -> None:
    pre = FeaturePreprocessor({**GROUPS, "momentum": ["stoch_k"]})
    assert pre.group_scalers == {**DEFAULT_GROUP_SCALERS, "momentum": "robust"}
    assert pre.feature_columns == [
        "volume",
        "taker_buy_base_asset_volume",
        "rsi",
        "mfi",
        "macd_diff",
        "stoch_k",
    ]
    assert pre.fitted is False


def test_unknown_scaler_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        FeaturePreprocessor(GROUPS, group_scalers={"bounded_features": "zscore"})
    for name in SCALER_NAMES:
        assert name in str(err.value)


def test_unknown_target_transform_and_unknown_scaler_group() -> None:
    with pytest.raises(ConfigError, match="log_return"):
        FeaturePreprocessor(GROUPS, target_transform="returns")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not feature groups"):
        FeaturePreprocessor(GROUPS, group_scalers={"volumes": "standard"})


def test_not_fitted_is_an_error() -> None:
    pre = FeaturePreprocessor(GROUPS)
    with pytest.raises(DataError, match="not fitted"):
        pre.transform_covariates(make_frame())
    with pytest.raises(DataError, match="not fitted"):
        pre.inverse_target(np.zeros(3))


# -- fit on training rows only -----------------------------------------------------------------


def test_fitted_statistics_are_those_of_the_training_rows() -> None:
    frame = make_frame()
    train = frame.iloc[:N_TRAIN]
    pre = fitted(train)
    robust = pre.pipelines["unbounded_features"][-1]
    macd = train["macd_diff"].to_numpy()
    assert np.allclose(robust.center_, [np.median(macd)])
    q25, q75 = np.percentile(macd, [25, 75])
    assert np.allclose(robust.scale_, [q75 - q25])

    minmax = pre.pipelines["bounded_features"][-1]
    assert np.allclose(minmax.data_min_, train[["rsi", "mfi"]].min().to_numpy())
    assert np.allclose(minmax.data_max_, train[["rsi", "mfi"]].max().to_numpy())

    log_vol = np.log1p(train[["volume", "taker_buy_base_asset_volume"]].to_numpy())
    vol_scaler = pre.pipelines["volume_features"][-1]
    assert np.allclose(vol_scaler.center_, np.median(log_vol, axis=0))

    returns = np.diff(np.log(train["close"].to_numpy()))
    assert np.allclose(pre.target_scaler.mean_, [returns.mean()])
    assert np.allclose(pre.target_scaler.scale_, [returns.std()])
    assert pre.n_train_rows == N_TRAIN and pre.train_end == train.index[-1]


def test_changing_validation_rows_leaves_the_fit_unchanged() -> None:
    frame = make_frame()
    other = frame.copy()
    val_rows = other.index[N_TRAIN:]
    other.loc[val_rows, ["close", "volume", "taker_buy_base_asset_volume"]] *= 50.0
    other.loc[val_rows, ["rsi", "mfi"]] = 99.0
    other.loc[val_rows, "macd_diff"] += 40.0

    pre_a = fitted(frame.iloc[:N_TRAIN])
    pre_a.transform_covariates(frame.iloc[N_TRAIN:])  # transforming must not refit
    pre_a.transform_target(frame.iloc[N_TRAIN:], previous_close=frame["close"].iloc[N_TRAIN - 1])
    pre_b = fitted(other.iloc[:N_TRAIN])
    pre_b.transform_covariates(other.iloc[N_TRAIN:])
    state_a, state_b = state(pre_a), state(pre_b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key

    # The test can fail: the same rows fit with the validation part included differ.
    leaked = state(fitted(other))
    assert any(not np.allclose(leaked[k], state_a[k]) for k in state_a)


def test_validation_rows_are_scaled_with_the_training_statistics() -> None:
    frame = make_frame()
    train, val = frame.iloc[:N_TRAIN], frame.iloc[N_TRAIN:]
    pre = fitted(train)
    out = pre.transform_covariates(val)
    macd = train["macd_diff"].to_numpy()
    q25, q75 = np.percentile(macd, [25, 75])
    expected = (val["macd_diff"] - np.median(macd)) / (q75 - q25)
    assert np.allclose(out["macd_diff"], expected, atol=1e-5)
    lo, hi = train["rsi"].min(), train["rsi"].max()
    assert np.allclose(out["rsi"], (val["rsi"] - lo) / (hi - lo), atol=1e-5)


def test_minmax_maps_train_range_to_unit_interval_and_output_is_float32() -> None:
    train = make_frame().iloc[:N_TRAIN]
    out = fitted(train).transform_covariates(train)
    assert list(out.columns) == fitted(train).feature_columns
    assert (out.dtypes == np.float32).all()
    assert out.index.equals(train.index)
    assert np.allclose(out[["rsi", "mfi"]].min(), 0.0) and np.allclose(
        out[["rsi", "mfi"]].max(), 1.0
    )


@pytest.mark.parametrize("name", SCALER_NAMES)
def test_every_scaler_fits_and_transforms(name: str) -> None:
    train = make_frame().iloc[:N_TRAIN]
    # log1p_* needs values >= 0, so it is tried on the non-negative groups only
    groups = [g for g in GROUPS if not (name.startswith("log1p") and g == "unbounded_features")]
    pre = fitted(train, group_scalers={g: name for g in groups})
    out = pre.transform_covariates(train)
    assert np.isfinite(out.to_numpy()).all()
    if name == "none":
        assert np.allclose(out["macd_diff"], train["macd_diff"], rtol=1e-6)
    if name == "standard":
        assert np.allclose(out.mean(), 0.0, atol=1e-5)
    if name == "log1p_standard":
        expected = np.log1p(train["volume"])
        expected = (expected - expected.mean()) / expected.std(ddof=0)
        assert np.allclose(out["volume"], expected, atol=1e-5)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_rejects_nan_or_inf_naming_column_and_timestamp(bad: float) -> None:
    train = make_frame().iloc[:N_TRAIN].copy()
    when = train.index[17]
    train.loc[when, "mfi"] = bad
    with pytest.raises(DataError) as err:
        fitted(train)
    assert "'mfi'" in str(err.value) and str(when) in str(err.value)


def test_fit_rejects_nan_in_target() -> None:
    train = make_frame().iloc[:N_TRAIN].copy()
    train.loc[train.index[5], "close"] = np.nan
    with pytest.raises(DataError, match="'close'"):
        fitted(train)


def test_transform_rejects_nan() -> None:
    frame = make_frame()
    pre = fitted(frame.iloc[:N_TRAIN])
    val = frame.iloc[N_TRAIN:].copy()
    val.loc[val.index[3], "volume"] = np.nan
    with pytest.raises(DataError, match=r"'volume'.*" + str(val.index[3].date())):
        pre.transform_covariates(val)


def test_log1p_scaler_rejects_negative_values() -> None:
    train = make_frame().iloc[:N_TRAIN].copy()
    train.loc[train.index[2], "volume"] = -1.0
    with pytest.raises(DataError, match="negative.*'volume'.*log1p_robust"):
        fitted(train)


def test_log_return_target_needs_positive_prices() -> None:
    train = make_frame().iloc[:N_TRAIN].copy()
    train.loc[train.index[4], "close"] = 0.0
    with pytest.raises(DataError, match="price"):
        fitted(train)
    fitted(train, target_transform="price")  # a price target takes it


def test_missing_feature_column_in_transform() -> None:
    frame = make_frame()
    pre = fitted(frame.iloc[:N_TRAIN])
    with pytest.raises(DataError, match="rsi"):
        pre.transform_covariates(frame.iloc[N_TRAIN:].drop(columns=["rsi"]))


# -- target ------------------------------------------------------------------------------------


def test_target_values_log_return_and_price() -> None:
    frame = make_frame()
    train = frame.iloc[:N_TRAIN]
    pre = fitted(train)
    raw = pre.target_values(train)
    assert len(raw) == N_TRAIN - 1 and raw.index[0] == train.index[1]
    assert np.isclose(raw.iloc[0], np.log(train["close"].iloc[1] / train["close"].iloc[0]))
    with_prev = pre.target_values(train, previous_close=50.0)
    assert len(with_prev) == N_TRAIN
    assert np.isclose(with_prev.iloc[0], np.log(train["close"].iloc[0] / 50.0))

    price = fitted(train, target_transform="price")
    assert np.allclose(price.target_values(train), train["close"])
    assert len(price.target_values(train, previous_close=50.0)) == N_TRAIN


def test_transform_target_is_float32_and_inverse_round_trips() -> None:
    frame = make_frame()
    train = frame.iloc[:N_TRAIN]
    for transform in ("log_return", "price"):
        pre = fitted(train, target_transform=transform)
        scaled = pre.transform_target(train)
        assert scaled.dtype == np.float32
        assert abs(float(scaled.mean())) < 1e-4 and abs(float(scaled.std(ddof=0)) - 1) < 1e-3
        back = pre.inverse_target(scaled.to_numpy())
        assert np.allclose(back, pre.target_values(train), rtol=1e-5, atol=1e-6)


def test_to_prices_rebuilds_closes_from_scaled_returns() -> None:
    frame = make_frame()
    train, val = frame.iloc[:N_TRAIN], frame.iloc[N_TRAIN:]
    pre = fitted(train)
    anchor = float(train["close"].iloc[-1])
    scaled = pre.transform_target(val, previous_close=anchor).to_numpy()
    prices = pre.to_prices(scaled, anchor)
    assert np.allclose(prices, val["close"], rtol=1e-4)
    # Darts layout (time, component, sample): steps along axis 0 for every sample.
    paths = np.stack([scaled, scaled], axis=-1)[:, None, :]
    assert np.allclose(pre.to_prices(paths, anchor)[:, 0, 1], val["close"], rtol=1e-4)
    with pytest.raises(DataError, match="anchor_close"):
        pre.to_prices(scaled, 0.0)


def test_to_prices_for_price_target_is_inverse_scaling() -> None:
    frame = make_frame()
    train, val = frame.iloc[:N_TRAIN], frame.iloc[N_TRAIN:]
    pre = fitted(train, target_transform="price")
    scaled = pre.transform_target(val).to_numpy()
    assert np.allclose(pre.to_prices(scaled, anchor_close=1.0), val["close"], rtol=1e-5)


# -- persistence and manifest ------------------------------------------------------------------


def test_pickle_round_trip_transforms_identically() -> None:
    frame = make_frame()
    pre = fitted(frame.iloc[:N_TRAIN])
    clone = pickle.loads(pickle.dumps(pre))
    val = frame.iloc[N_TRAIN:]
    assert clone.fitted
    pd.testing.assert_frame_equal(clone.transform_covariates(val), pre.transform_covariates(val))
    assert np.array_equal(clone.inverse_target(np.arange(3.0)), pre.inverse_target(np.arange(3.0)))


def test_describe_is_json_able() -> None:
    pre = FeaturePreprocessor(GROUPS, group_scalers={"bounded_features": "standard"})
    assert json.loads(json.dumps(pre.describe()))["fitted"] is False
    pre.fit(make_frame().iloc[:N_TRAIN])
    info = json.loads(json.dumps(pre.describe()))
    assert info["group_scalers"]["bounded_features"] == "standard"
    assert info["group_scalers"]["volume_features"] == "log1p_robust"
    assert info["feature_columns"] == pre.feature_columns
    assert info["feature_groups"] == GROUPS
    assert info["target_transform"] == "log_return" and info["target_col"] == "close"
    assert info["n_train_rows"] == N_TRAIN and info["train_start"].startswith("2022-01-01")


def test_importing_does_not_load_torch_or_darts() -> None:
    code = (
        "import sys, kallos_models.modelling.preprocessing, kallos_models.data.datasets; "
        "print(sorted(m for m in ('torch', 'darts', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
