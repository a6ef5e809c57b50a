"""Hold-out evaluation: rolling forecasts, metrics, the DM test, the plot, evaluate_model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.errors import ArtifactError, ConfigError, DataError
from kallos_models.files import safe_file_stem as safe_asset_name
from kallos_models.modelling.forecasting import lookback_bars, rolling_forecasts
from kallos_models.modelling.metrics import compute_metrics, diebold_mariano
from kallos_models.stages.evaluate import plot_evaluation
from tests.helpers import (
    cpu_trainer_kwargs,
    make_ohlcv,
    tiny_params,
    train_sqlite_bundle,
    write_ohlcv_csv,
)

INPUT_CHUNK = 12
OUTPUT_CHUNK = 2
TINY_GRU = tiny_params(
    "gru", input_chunk_length=INPUT_CHUNK, output_chunk_length=OUTPUT_CHUNK, batch_size=32
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _feature_frame(n: int = 340) -> pd.DataFrame:
    """Generated daily bars with features, warm-up rows dropped, on a regular 1D grid."""
    from kallos_models.data.features import compute_features

    raw = make_ohlcv(n)
    full = pd.concat([raw, compute_features(raw)], axis=1)
    full = full[~full["warmup"]].drop(columns="warmup")
    return full.asfreq("1D")


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    """A 1-epoch GRU (width 8) fitted on the first 200 bars of a ~300-bar frame."""
    from kallos_models.modelling.series import prepare_darts_timeseries
    from kallos_models.modelling.zoo import create_model

    frame = _feature_frame()
    prepared = prepare_darts_timeseries(frame.iloc[:200])
    model = create_model(
        "gru", TINY_GRU, trainer_kwargs=cpu_trainer_kwargs(), random_state=0, n_epochs=1
    )
    model.fit(series=prepared.train_target, past_covariates=prepared.train_covariates)
    return {"frame": frame, "model": model, "preprocessor": prepared.preprocessor}


# --------------------------------------------------------------------------------------------
# rolling_forecasts
# --------------------------------------------------------------------------------------------


def test_rolling_forecasts_one_row_per_bar_and_naive_is_previous_close(fitted):
    frame = fitted["frame"]
    start = frame.index[230]
    out = rolling_forecasts(fitted["model"], fitted["preprocessor"], frame, start=start)
    assert list(out.columns) == ["actual", "forecast", "naive", "origin_close"]
    assert out.index.equals(frame.index[230:])
    assert (out.index >= start).all()
    close = frame["close"]
    np.testing.assert_allclose(out["actual"], close.iloc[230:].to_numpy())
    np.testing.assert_allclose(out["naive"], close.iloc[229:-1].to_numpy())
    np.testing.assert_allclose(out["origin_close"], out["naive"])
    assert np.isfinite(out["forecast"]).all()
    assert not np.allclose(out["forecast"], out["naive"])


def test_rolling_forecast_equals_a_direct_predict_from_the_origin(fitted):
    """Alignment: the row for bar T is the model's forecast made with data up to T - h."""
    from kallos_models.modelling.series import to_series

    frame, model, pre = fitted["frame"], fitted["model"], fitted["preprocessor"]
    offset = frame.index.freq
    target = to_series(pre.transform_target(frame), offset)
    covariates = to_series(pre.transform_covariates(frame), offset)
    for horizon in (1, 2):
        out = rolling_forecasts(model, pre, frame, start=frame.index[240], horizon=horizon)
        assert out.index.equals(frame.index[240:])
        row = 5  # forecast for bar 245, made at the origin 245 - horizon
        origin = 245 - horizon
        history = target.drop_after(frame.index[origin + 1])
        assert history.end_time() == frame.index[origin]
        path = model.predict(horizon, series=history, past_covariates=covariates, verbose=False)
        anchor = float(frame["close"].iloc[origin])
        expected = pre.to_prices(path.values()[:, 0], anchor)[horizon - 1]
        assert out["forecast"].iloc[row] == pytest.approx(expected, rel=1e-5)
        assert out["naive"].iloc[row] == pytest.approx(anchor)
        np.testing.assert_allclose(
            out["naive"], frame["close"].iloc[240 - horizon : len(frame) - horizon].to_numpy()
        )


def test_rolling_forecasts_horizon_above_output_chunk_length_is_refused(fitted):
    frame = fitted["frame"]
    with pytest.raises(ConfigError, match="horizon 3 exceeds the model's output_chunk_length 2"):
        rolling_forecasts(
            fitted["model"], fitted["preprocessor"], frame, start=frame.index[230], horizon=3
        )
    with pytest.raises(ConfigError, match="horizon must be"):
        rolling_forecasts(
            fitted["model"], fitted["preprocessor"], frame, start=frame.index[230], horizon=0
        )


def test_rolling_forecasts_too_little_lookback_is_a_data_error(fitted):
    frame = fitted["frame"]
    needed = lookback_bars(INPUT_CHUNK, 1, "log_return")
    assert needed == INPUT_CHUNK + 1
    short = frame.iloc[230 - needed + 1 :]  # one bar short
    with pytest.raises(DataError, match=rf"needs {needed} bars of lookback.*has {needed - 1}"):
        rolling_forecasts(fitted["model"], fitted["preprocessor"], short, start=frame.index[230])
    # exactly enough works
    out = rolling_forecasts(
        fitted["model"], fitted["preprocessor"], frame.iloc[230 - needed :], start=frame.index[230]
    )
    assert len(out) == len(frame) - 230


def test_rolling_forecasts_start_after_the_frame_is_a_data_error(fitted):
    frame = fitted["frame"]
    with pytest.raises(DataError, match="no bar at or after start"):
        rolling_forecasts(
            fitted["model"],
            fitted["preprocessor"],
            frame,
            start=frame.index[-1] + pd.Timedelta(days=3),
        )


# --------------------------------------------------------------------------------------------
# compute_metrics and the Diebold-Mariano test
# --------------------------------------------------------------------------------------------


def test_compute_metrics_on_hand_made_arrays():
    actual = np.array([100.0, 110.0, 105.0, 120.0])
    forecast = np.array([102.0, 108.0, 107.0, 116.0])
    naive = np.array([98.0, 100.0, 110.0, 105.0])
    m = compute_metrics(actual, forecast, naive)
    # errors 2, -2, 2, -4 (actual - forecast)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(2.5)
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 4 + 4 + 16) / 4))
    assert m["mape"] == pytest.approx(100 * np.mean([2 / 100, 2 / 110, 2 / 105, 4 / 120]))
    assert m["smape"] == pytest.approx(100 * np.mean([4 / 202, 4 / 218, 4 / 212, 8 / 236]))
    # MASE scale default: mean |one-step change| of actual = (10 + 5 + 15) / 3
    assert m["mase_scale"] == pytest.approx(10.0)
    assert m["mase"] == pytest.approx(0.25)
    # direction vs the origin (= naive): actual moves +2 +10 -5 +15, forecast +4 +8 -3 +11
    assert m["directional_accuracy"] == pytest.approx(1.0)
    # naive errors 2, 10, -5, 15
    assert m["naive"]["rmse"] == pytest.approx(math.sqrt((4 + 100 + 25 + 225) / 4))
    assert m["naive"]["mae"] == pytest.approx(8.0)
    assert m["naive"]["mase"] == pytest.approx(0.8)
    assert m["naive"]["directional_accuracy"] is None
    assert m["rmse_ratio"] == pytest.approx(m["rmse"] / m["naive"]["rmse"])
    assert m["diebold_mariano"]["loss"] == "squared"
    assert m["diebold_mariano"]["horizon"] == 1
    json.dumps(m, allow_nan=False)  # JSON-able


def test_directional_accuracy_uses_the_origin_and_counts_misses():
    actual = np.array([11.0, 9.0, 10.0, 12.0])
    forecast = np.array([10.5, 10.5, 9.0, 13.0])
    origin = np.array([10.0, 10.0, 10.0, 10.0])
    m = compute_metrics(actual, forecast, origin, origin=origin, mase_scale=2.0)
    # actual signs + - 0 +; forecast signs + + - +  -> hits 1, 0, 0, 1
    assert m["directional_accuracy"] == pytest.approx(0.5)
    assert m["mase_scale"] == 2.0
    assert m["mase"] == pytest.approx(m["mae"] / 2.0)


def test_compute_metrics_refuses_mismatched_or_nan_input():
    with pytest.raises(DataError, match="forecast has 2 values but actual has 3"):
        compute_metrics(np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(DataError, match="NaN"):
        compute_metrics(np.array([1.0, np.nan]), np.ones(2), np.ones(2))
    with pytest.raises(DataError, match="empty"):
        compute_metrics(np.array([]), np.array([]), np.array([]))


def _dm_by_hand(e1: list[float], e2: list[float], h: int) -> tuple[float, float]:
    """DM with HLN correction, written out term by term (R forecast::dm.test, Bartlett)."""
    from scipy import stats

    n = len(e1)
    d = [a * a - b * b for a, b in zip(e1, e2, strict=True)]
    mean = sum(d) / n
    gamma = []
    for k in range(h):
        total = 0.0
        for t in range(k, n):
            total += (d[t] - mean) * (d[t - k] - mean)
        gamma.append(total / n)
    var = gamma[0]
    for k in range(1, h):
        var += 2 * (1 - k / h) * gamma[k]
    var /= n
    dm = mean / math.sqrt(var)
    dm *= math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return dm, 2 * stats.t.cdf(-abs(dm), df=n - 1)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_diebold_mariano_matches_a_hand_computation(h):
    e_model = [0.5, -1.0, 0.2, 0.8, -0.3, 1.1, -0.4, 0.1]
    e_naive = [1.5, -2.0, 0.1, 1.9, -1.3, 0.9, -1.4, 1.2]
    got = diebold_mariano(np.array(e_model), np.array(e_naive), horizon=h)
    stat, p = _dm_by_hand(e_model, e_naive, h)
    assert got["statistic"] == pytest.approx(stat, rel=1e-12)
    assert got["p_value"] == pytest.approx(p, rel=1e-10)
    assert got["statistic"] < 0  # model errors are smaller
    assert got["loss"] == "squared" and got["horizon"] == h and got["n"] == 8


def test_diebold_mariano_h1_known_value():
    """h = 1 by hand: d = [-3, 3, -1], mean -1/3, gamma0 = 56/9, V = gamma0 / 3 = 56/27."""
    got = diebold_mariano(np.array([1.0, 2.0, 0.0]), np.array([2.0, 1.0, 1.0]))
    dm = (-1 / 3) / math.sqrt(56 / 27) * math.sqrt((3 + 1 - 2) / 3)
    assert got["statistic"] == pytest.approx(dm)


def test_diebold_mariano_zero_variance_returns_nulls_with_a_note():
    actual = np.array([10.0, 11.0, 12.0, 11.5])
    same = np.array([10.5, 10.5, 11.0, 12.0])
    m = compute_metrics(actual, same, same)
    dm = m["diebold_mariano"]
    assert dm["statistic"] is None and dm["p_value"] is None
    assert "zero variance" in dm["note"]
    assert m["rmse_ratio"] == pytest.approx(1.0)
    one = diebold_mariano(np.array([1.0]), np.array([2.0]))
    assert one["statistic"] is None and "at least 2" in one["note"]


def test_rmse_ratio_is_null_when_naive_is_perfect():
    actual = np.array([1.0, 2.0, 3.0])
    m = compute_metrics(actual, actual + 1.0, actual)
    assert m["naive"]["rmse"] == 0.0
    assert m["rmse_ratio"] is None
    json.dumps(m, allow_nan=False)


# --------------------------------------------------------------------------------------------
# plot and file names
# --------------------------------------------------------------------------------------------


def test_plot_evaluation_writes_a_png_atomically(tmp_path, fitted):
    frame = fitted["frame"]
    out = rolling_forecasts(fitted["model"], fitted["preprocessor"], frame, start=frame.index[230])
    metrics = compute_metrics(
        out["actual"].to_numpy(),
        out["forecast"].to_numpy(),
        out["naive"].to_numpy(),
        origin=out["origin_close"].to_numpy(),
    )
    target = tmp_path / "plots" / "BTC_evaluation_plot.png"
    written = plot_evaluation(out, metrics, title="BTC 1d - gru - test", path=target)
    assert written == target
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left
    with pytest.raises(DataError, match="no forecasts"):
        plot_evaluation(out.iloc[:0], metrics, title="x", path=tmp_path / "empty.png")


def test_safe_asset_name():
    assert safe_asset_name("BTC") == "BTC"
    assert safe_asset_name("BTC/USDT").startswith("BTC_USDT-")
    assert safe_asset_name("BTC/USDT") != safe_asset_name("BTC_USDT")
    for unsafe in ("../etc", "a/b\\c", ".hidden"):
        name = safe_asset_name(unsafe)
        assert "/" not in name and "\\" not in name and not name.startswith(".")


# --------------------------------------------------------------------------------------------
# evaluate_model end to end (needs kallos_models.stages.train and kallos_models.modelling.bundles)
# --------------------------------------------------------------------------------------------

TRAIN_END = "2021-09-15"
TEST_START = "2021-09-17"
TEST_END = "2021-11-10"


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> dict[str, Any]:
    """A 1-epoch GRU bundle trained by kallos_models.stages.train on an ingested SQLite database."""
    root = tmp_path_factory.mktemp("evaluate")
    settings, trained = train_sqlite_bundle(
        root,
        write_ohlcv_csv(make_ohlcv(330), root / "btc.csv"),
        TINY_GRU,
        train_end_date=TRAIN_END,
        test_start_date=TEST_START,
        test_end_date=TEST_END,
    )
    return {"settings": settings, "paths": trained.paths, "root": root}


def _eval_settings(bundle: dict[str, Any], tmp_path: Path, **changes: Any):
    return bundle["settings"].replace(output_path=str(tmp_path / "eval"), **changes)


def test_evaluate_model_writes_metrics_and_plot(trained_bundle, tmp_path):
    from kallos_models.stages.evaluate import evaluate_model

    settings = _eval_settings(trained_bundle, tmp_path)
    result = evaluate_model(settings, model_path=trained_bundle["paths"].model)
    window = pd.date_range(TEST_START, TEST_END, freq="1D")
    assert list(result.forecasts.index) == list(window)  # one row per bar of the window
    assert result.metrics_path == tmp_path / "eval" / "BTC_evaluation_metrics.json"
    assert result.plot_path == tmp_path / "eval" / "BTC_evaluation_plot.png"
    written = json.loads(result.metrics_path.read_text())
    assert written == json.loads(json.dumps(result.metrics))
    for key in ("rmse", "mae", "mape", "smape", "mase", "directional_accuracy", "rmse_ratio"):
        assert isinstance(written[key], float)
    assert written["n"] == len(window)
    assert written["model_name"] == "gru" and written["asset_id"] == "BTC"
    assert written["horizon"] == 1 and written["timeframe"] == "1d"
    assert written["train_end"].startswith(TRAIN_END)
    assert written["naive"]["directional_accuracy"] is None
    assert set(written["diebold_mariano"]) >= {"statistic", "p_value", "loss", "horizon"}
    assert result.plot_path.read_bytes().startswith(PNG_MAGIC)
    assert written["gap"] == 1
    # horizon 2 (= output_chunk_length) also scores every bar of the window; one bar between
    # training and window is the least it needs (its first origin is the last training bar)
    h2 = evaluate_model(
        settings.replace(gap=1), model_path=trained_bundle["paths"].model, horizon=2
    )
    assert len(h2.forecasts) == len(window) and h2.metrics["horizon"] == 2


def test_evaluate_model_refuses_a_window_inside_training(trained_bundle, tmp_path):
    from kallos_models.stages.evaluate import evaluate_model

    settings = _eval_settings(trained_bundle, tmp_path, test_start_date="2021-09-01")
    with pytest.raises(DataError, match=r"leakage.*2021-09-15"):
        evaluate_model(settings, model_path=trained_bundle["paths"].model)
    assert not (tmp_path / "eval").exists()


def test_evaluate_model_refuses_a_window_inside_the_gap(trained_bundle, tmp_path):
    """The window must start --gap bars (default: the horizon) after the last training bar,
    and never so close that a forecast's origin lies inside the training data."""
    from kallos_models.stages.evaluate import evaluate_model

    model = trained_bundle["paths"].model
    adjacent = _eval_settings(trained_bundle, tmp_path, test_start_date="2021-09-16")
    with pytest.raises(DataError) as err:
        evaluate_model(adjacent, model_path=model)
    message = str(err.value)
    assert "starts 0 bar(s) after" in message and "a gap of 1 bar(s)" in message
    assert "--test-start-date 2021-09-17 or later" in message and "--gap 0" in message
    assert not (tmp_path / "eval").exists()
    one_bar = _eval_settings(trained_bundle, tmp_path)  # 2021-09-17: one bar between
    with pytest.raises(DataError, match=r"at horizon 2 a gap of 2.*2021-09-18 or later"):
        evaluate_model(one_bar, model_path=model, horizon=2)
    # --gap 0 accepts an adjacent window at horizon 1, never at horizon 2 (origin in training)
    with pytest.raises(DataError, match=r"at horizon 2 a gap of 1 bar"):
        evaluate_model(adjacent.replace(gap=0), model_path=model, horizon=2)
    assert not (tmp_path / "eval").exists()
    accepted = evaluate_model(adjacent.replace(gap=0), model_path=model)
    assert accepted.metrics["gap"] == 0 and accepted.forecasts.index[0] == pd.Timestamp(
        "2021-09-16"
    )


def test_evaluate_model_refuses_a_tampered_bundle(trained_bundle, tmp_path):
    import shutil

    from kallos_models.stages.evaluate import evaluate_model

    copy = tmp_path / "bundle"
    paths = trained_bundle["paths"]
    copy.mkdir()
    for p in (paths.model, paths.checkpoint, paths.scaler, paths.manifest):
        shutil.copy2(p, copy / Path(p).name)
    scaler = copy / Path(paths.scaler).name
    scaler.write_bytes(scaler.read_bytes() + b"tampered")
    settings = _eval_settings(trained_bundle, tmp_path)
    with pytest.raises(ArtifactError):
        evaluate_model(settings, model_path=copy / Path(paths.model).name)
    assert not (tmp_path / "eval").exists()


def test_evaluate_model_refuses_other_model_asset_or_horizon(trained_bundle, tmp_path):
    from kallos_models.stages.evaluate import evaluate_model

    model_path = trained_bundle["paths"].model
    with pytest.raises(ConfigError, match=r"'tcn'.*--model-name gru"):
        evaluate_model(
            _eval_settings(trained_bundle, tmp_path, model_name="tcn"), model_path=model_path
        )
    with pytest.raises(ConfigError, match=r"'ETH'.*--asset-id BTC"):
        evaluate_model(
            _eval_settings(trained_bundle, tmp_path, asset_id="ETH"), model_path=model_path
        )
    with pytest.raises(ConfigError, match="horizon 3 exceeds"):
        evaluate_model(_eval_settings(trained_bundle, tmp_path), model_path=model_path, horizon=3)


# These need no bundle: the window is checked first.


def test_evaluate_model_needs_both_window_dates(tmp_path):
    from kallos_models.config import Settings
    from kallos_models.stages.evaluate import evaluate_model

    settings = Settings(asset_id="BTC", test_start_date="2024-07-01")
    with pytest.raises(ConfigError, match="--test-start-date and --test-end-date"):
        evaluate_model(settings, model_path=tmp_path / "missing.pt")


def test_evaluate_model_refuses_a_reversed_window(tmp_path):
    from kallos_models.config import Settings
    from kallos_models.stages.evaluate import evaluate_model

    settings = Settings(asset_id="BTC", test_start_date="2024-07-01", test_end_date="2024-06-01")
    with pytest.raises(ConfigError, match="reversed"):
        evaluate_model(settings, model_path=tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------
# The backtest inside evaluation (kallos_models.modelling.backtest)
# --------------------------------------------------------------------------------------------


def test_plot_evaluation_draws_the_backtest_panel(tmp_path, fitted):
    from kallos_models.modelling.backtest import BacktestConfig, backtest_curves, run_backtest

    frame = fitted["frame"]
    out = rolling_forecasts(fitted["model"], fitted["preprocessor"], frame, start=frame.index[230])
    metrics = compute_metrics(
        out["actual"].to_numpy(), out["forecast"].to_numpy(), out["naive"].to_numpy()
    )
    config = BacktestConfig(mode="long_short", fee_bps=10.0)
    backtest = run_backtest(out, timeframe="1d", config=config)
    curves = backtest_curves(out, timeframe="1d", config=config)
    two = plot_evaluation(out, metrics, title="two panels", path=tmp_path / "two.png")
    three = plot_evaluation(
        out,
        {**metrics, "backtest": backtest},
        title="three panels",
        path=tmp_path / "three.png",
        curves=curves,
    )
    from matplotlib import image

    assert image.imread(two).shape[:2] == (770, 1320)
    assert image.imread(three).shape[:2] == (1045, 1320)  # 12 x 9.5 inches at 110 dpi
    with pytest.raises(DataError, match="curves lack"):
        plot_evaluation(
            out,
            metrics,
            title="x",
            path=tmp_path / "bad.png",
            curves=curves.drop(columns="position"),
        )


def test_evaluate_model_backtests_at_horizon_1_only(trained_bundle, tmp_path):
    from kallos_models.stages.evaluate import evaluate_model

    settings = _eval_settings(
        trained_bundle, tmp_path, backtest_mode="long_short", backtest_threshold=0.001, fee_bps=5
    )
    result = evaluate_model(settings, model_path=trained_bundle["paths"].model)
    backtest = json.loads(result.metrics_path.read_text())["backtest"]
    assert backtest["config"] == {
        "mode": "long_short",
        "threshold": 0.001,
        "fee_bps": 5.0,
        "execution": "close",
    }
    assert backtest["timeframe"] == "1d" and backtest["bars_per_year"] == 365.0
    fc = result.forecasts
    hold = backtest["buy_and_hold"]
    expected = fc["actual"].iloc[-1] / fc["origin_close"].iloc[0] * (1 - 5e-4) - 1
    assert hold["total_return"] == pytest.approx(expected, rel=1e-9)
    assert hold["n_bars"] == len(fc) and hold["n_trades"] == 1 and hold["exposure"] == 1.0
    strategy = backtest["strategy"]
    for key in ("total_return", "max_drawdown", "exposure"):
        assert isinstance(strategy[key], float)
    assert strategy["max_drawdown"] <= 0.0 and 0.0 <= strategy["exposure"] <= 1.0
    from matplotlib import image

    assert image.imread(result.plot_path).shape[:2] == (1045, 1320)

    h2 = evaluate_model(
        settings.replace(gap=1), model_path=trained_bundle["paths"].model, horizon=2
    )
    assert h2.metrics["backtest"]["strategy"] is None
    assert "--horizon 1" in h2.metrics["backtest"]["note"]
    assert image.imread(h2.plot_path).shape[:2] == (770, 1320)


def test_evaluate_model_refuses_bad_backtest_settings_before_loading(tmp_path):
    from kallos_models.config import Settings
    from kallos_models.stages.evaluate import evaluate_model

    settings = Settings(
        asset_id="BTC",
        test_start_date="2024-07-01",
        test_end_date="2024-08-01",
        fee_bps=-1,
        db_url=f"sqlite:///{tmp_path / 'never-created.db'}",
    )
    with pytest.raises(ConfigError, match="fee_bps"):
        evaluate_model(settings, model_path=tmp_path / "missing.pt")
    assert not list(tmp_path.iterdir())
