"""Prediction intervals: quantile regression and conformal prediction, judged against the naive
interval, in train, evaluate, predict and the backtest.

The calibration tests use a market whose true quantiles are known: the closes are a geometric
random walk with i.i.d. normal log returns (mean 0.0005, sd 0.03, :func:`make_ohlcv`), so the
true ``q`` quantile of the next close is ``close * exp(0.0005 + 0.03 * z_q)``. A calibrated
interval covers its nominal share of the test bars within binomial sampling error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling import intervals
from kallos_models.modelling.backtest import BacktestConfig, run_backtest, signal_positions
from tests.helpers import assert_error, make_ohlcv, run_cli, run_cli_json, write_binance_csv

MU, SIGMA = 0.0005, 0.03
BARS = make_ohlcv(1500, seed=11)
TRAIN_END = BARS.index[1099]
TEST_START, TEST_END = BARS.index[1101], BARS.index[-1]
N_TEST = len(BARS) - 1101


def _ingest(url: str, tmp_path: Path, frame: pd.DataFrame = BARS) -> None:
    csv = write_binance_csv(frame, tmp_path / "bars.csv")
    run_cli_json("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--file", str(csv),
                 "--db-url", url)  # fmt: skip


def _params(tmp_path: Path, name: str, params: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}_params.json"
    path.write_text(json.dumps(params))
    return path


def _train(url: str, tmp_path: Path, model: str, params: dict[str, Any], *flags: str) -> dict:
    return run_cli_json(
        "train", "--model-name", model, "--asset-id", "BTC", "--end-date", str(TRAIN_END.date()),
        "--params-file", str(_params(tmp_path, model, params)), "--db-url", url,
        "--output-path", str(tmp_path / "models"), "--overwrite", "--seed", "0", *flags,
    )  # fmt: skip


def _evaluate(url: str, tmp_path: Path, trained: dict, *flags: str, start=TEST_START) -> dict:
    return run_cli_json(
        "evaluate", "--model-name", trained["model_name"], "--asset-id", "BTC",
        "--model-path", trained["paths"]["model"], "--test-start-date", str(start.date()),
        "--test-end-date", str(TEST_END.date()), "--db-url", url,
        "--output-path", str(tmp_path / "eval"), *flags,
    )  # fmt: skip


def _within_sampling_error(coverage: float, level: float, n: int) -> bool:
    """Coverage within 3 binomial standard deviations of the nominal level."""
    return abs(coverage - level) <= 3.0 * math.sqrt(level * (1.0 - level) / n)


# -- the pieces --------------------------------------------------------------------------------


def test_quantile_lists_are_checked_where_they_enter() -> None:
    assert intervals.parse_quantiles("0.05, 0.1,0.5,0.9,0.95") == (0.05, 0.1, 0.5, 0.9, 0.95)
    assert intervals.interval_levels((0.05, 0.1, 0.5, 0.9, 0.95)) == [
        (0.8, 0.1, 0.9),
        (0.9, 0.05, 0.95),
    ]
    for text, message in (
        ("0.1,0.9", "must include the median 0.5"),
        ("0.1,0.5,0.8", "pairs q and 1 - q"),
        ("0.5,0.1,0.9", "strictly increasing"),
        ("0,0.5,1", "strictly between 0 and 1"),
        ("a,b", "not a comma-separated list"),
        ("0.5", "pairs q and 1 - q"),
    ):
        with pytest.raises(ConfigError, match=message):
            intervals.parse_quantiles(text)
    with pytest.raises(ConfigError, match="--calibration-bars sets the conformal"):
        intervals.IntervalSpec.from_flags(None, False, 50)
    with pytest.raises(ConfigError, match="calibration_bars must be a whole number of bars >= 10"):
        intervals.IntervalSpec.from_flags(None, True, 5)
    assert intervals.IntervalSpec.from_flags(None, False, None) is None
    spec = intervals.IntervalSpec.from_flags(None, True, None)
    assert spec is not None and spec.conformal and not spec.quantile_regression
    assert spec.record()["conformal_model"] == "ConformalNaiveModel"
    both = intervals.IntervalSpec.from_flags("0.1,0.5,0.9", True, 30)
    assert both is not None and both.record()["conformal_model"] == "ConformalQRModel"


def test_interval_metrics_match_their_formulas() -> None:
    actual = np.array([100.0, 110.0, 90.0, 100.0])
    origin = np.full(4, 100.0)
    # the 80% interval [95, 105] around each point; the median 100
    model = np.column_stack([np.full(4, 95.0), np.full(4, 100.0), np.full(4, 105.0)])
    naive = np.column_stack([np.full(4, 80.0), np.full(4, 100.0), np.full(4, 120.0)])
    out = intervals.interval_metrics(actual, origin, model, naive, (0.1, 0.5, 0.9))
    level = out["levels"][0]
    assert level["level"] == 0.8 and level["coverage"] == 0.5 and level["mean_width"] == 10.0
    assert level["mean_relative_width"] == pytest.approx(0.1)
    # Winkler: width + 2/alpha * miss; misses of 5 (110 > 105) and 5 (90 < 95), alpha 0.2
    assert level["winkler"] == pytest.approx(10.0 + (10.0 * 5 + 10.0 * 5) / 4)
    assert level["naive"]["coverage"] == 1.0 and level["naive"]["winkler"] == 40.0
    assert level["winkler_ratio"] == pytest.approx(level["winkler"] / 40.0)
    # pinball of q0.9 at 95..105: mean of max(0.9 d, -0.1 d) with d = actual - 105
    d = actual - 105.0
    assert out["pinball"]["0.9"]["model"] == pytest.approx(np.mean(np.maximum(0.9 * d, -0.1 * d)))
    with pytest.raises(DataError, match="do not match"):
        intervals.interval_metrics(actual, origin, model[:, :2], naive, (0.1, 0.5, 0.9))


def test_the_naive_interval_uses_only_returns_known_at_the_origin() -> None:
    close = 100.0 * np.exp(np.cumsum(np.r_[0.0, np.tile([0.01, -0.01], 50)]))
    out = intervals.naive_quantiles(
        close, np.array([60, 80]), horizon=1, quantiles=(0.1, 0.5, 0.9), window=40
    )
    # the returns are +-1%: the 10% and 90% quantiles are -1% and +1% from the origin close
    assert out[0, 0] == pytest.approx(close[60] * math.exp(-0.01))
    assert out[1, 2] == pytest.approx(close[80] * math.exp(0.01))
    # a jump after the origin changes nothing at that origin
    jumped = close.copy()
    jumped[61:] *= 3.0
    again = intervals.naive_quantiles(
        jumped, np.array([60]), horizon=1, quantiles=(0.1, 0.5, 0.9), window=40
    )
    assert np.allclose(again[0], out[0])
    early = intervals.naive_quantiles(close, np.array([5]), horizon=1, quantiles=(0.1, 0.5, 0.9))
    assert np.isnan(early).all()  # fewer than 20 returns before it


def test_backtest_modes_read_the_intervals_only() -> None:
    origin = np.full(4, 100.0)
    forecast = np.array([101.0, 101.0, 99.0, 99.0])
    quantiles = {
        0.1: np.array([100.5, 98.0, 97.0, 99.0]),
        0.5: forecast,
        0.9: np.array([102.0, 104.0, 99.5, 103.0]),
    }
    long_iv = signal_positions(forecast, origin, mode="long_interval", quantiles=quantiles)
    assert list(long_iv) == [1.0, 0.0, 0.0, 0.0]  # only the first interval excludes 100
    both_iv = signal_positions(forecast, origin, mode="long_short_interval", quantiles=quantiles)
    assert list(both_iv) == [1.0, 0.0, -1.0, 0.0]
    sized = signal_positions(forecast, origin, mode="long_short_confidence", quantiles=quantiles)
    # P(up) from the quantile function through (100.5, 0.1): below its lowest quantile -> 0.1
    assert sized[0] == pytest.approx(2 * 0.9 - 1)
    assert sized[2] == pytest.approx(2 * (1 - 0.9) - 1)  # above its 0.9 quantile
    long_sized = signal_positions(forecast, origin, mode="long_confidence", quantiles=quantiles)
    assert (long_sized >= 0).all() and long_sized[2] == 0.0
    with pytest.raises(ConfigError, match="have none"):
        signal_positions(forecast, origin, mode="long_interval")
    frame = pd.DataFrame(
        {"actual": [101.0, 100.0, 99.0, 99.5], "forecast": forecast, "origin_close": origin},
        index=pd.date_range("2024-01-01", periods=4, freq="1D"),
    )
    frame["origin_close"] = [100.0, 101.0, 100.0, 99.0]
    with pytest.raises(ConfigError, match="have none"):
        run_backtest(frame, timeframe="1d", config=BacktestConfig(mode="long_interval"))


# -- calibration on a market whose quantiles are known ------------------------------------------


def _true_quantile_prices(origin_close: np.ndarray, q: float) -> np.ndarray:
    return origin_close * np.exp(MU + SIGMA * stats.norm.ppf(q))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "params", "flags"),
    [
        ("linear", {"input_chunk_length": 5}, ("--conformal", "--calibration-bars", "200")),
        (
            "lightgbm",
            {"input_chunk_length": 5, "n_estimators": 60, "num_leaves": 4, "min_child_samples": 40},
            ("--quantiles", "0.05,0.1,0.5,0.9,0.95"),
        ),  # fmt: skip
        (
            "gru",
            {
                "input_chunk_length": 10,
                "hidden_dim": 8,
                "n_rnn_layers": 1,
                "dropout": 0.0,
                "batch_size": 32,
                "n_epochs": 12,
                "learning_rate": 3e-3,
            },
            ("--quantiles", "0.05,0.1,0.5,0.9,0.95"),
        ),  # fmt: skip
    ],
    ids=["conformal-linear", "quantile-lightgbm", "quantile-gru"],
)
def test_intervals_are_calibrated_where_the_truth_is_known(
    sqlite_url: str, tmp_path: Path, model: str, params: dict, flags: tuple[str, ...]
) -> None:
    _ingest(sqlite_url, tmp_path)
    trained = _train(sqlite_url, tmp_path, model, params, *flags)
    metrics = _evaluate(sqlite_url, tmp_path, trained)
    record = metrics["intervals"]
    assert record["n"] == N_TEST
    for level in record["levels"]:
        assert _within_sampling_error(level["coverage"], level["level"], N_TEST), level
    # the interval is as wide as the truth's, within 25%
    from kallos_models.config import Settings
    from kallos_models.stages.evaluate import evaluate_model

    result = evaluate_model(
        Settings(
            db_url=sqlite_url, asset_id="BTC", model_name=model, test_start_date=str(TEST_START),
            test_end_date=str(TEST_END), output_path=str(tmp_path / "lib"),
        ),
        model_path=trained["paths"]["model"],
    )  # fmt: skip
    forecasts = result.forecasts
    origin = forecasts["origin_close"].to_numpy()
    true_width = _true_quantile_prices(origin, 0.9) - _true_quantile_prices(origin, 0.1)
    width = (forecasts["q0.9"] - forecasts["q0.1"]).to_numpy()
    assert 0.75 < float(np.mean(width / true_width)) < 1.25
    assert (forecasts["q0.1"] <= forecasts["forecast"]).all()
    assert (forecasts["forecast"] <= forecasts["q0.9"]).all()


# -- through the commands, on both backends -----------------------------------------------------


@pytest.mark.slow
def test_conformal_bundle_round_trips_train_evaluate_predict(db_url: str, tmp_path: Path) -> None:
    frame = BARS.iloc[:1300]
    _ingest(db_url, tmp_path, frame)
    params = {"input_chunk_length": 6, "output_chunk_length": 2, "n_estimators": 20}
    trained = _train(db_url, tmp_path, "lightgbm", params, "--conformal", "--calibration-bars",
                     "150")  # fmt: skip
    iv = trained["intervals"]
    assert iv["method"] == "conformal" and iv["calibration_bars"] == 150
    assert iv["calibration_end"] == TRAIN_END.isoformat()
    assert pd.Timestamp(trained["train_end"]) == TRAIN_END - 150 * pd.Timedelta(days=1)

    # a window inside the calibration: refused
    inside = TRAIN_END - pd.Timedelta(days=10)
    result = run_cli(
        "evaluate", "--model-name", "lightgbm", "--asset-id", "BTC",
        "--model-path", trained["paths"]["model"], "--test-start-date", str(inside.date()),
        "--test-end-date", str(TEST_END.date()), "--db-url", db_url,
    )  # fmt: skip
    assert_error(result, "conformal calibration window")

    end = frame.index[-1]
    metrics = run_cli_json(
        "evaluate", "--model-name", "lightgbm", "--asset-id", "BTC",
        "--model-path", trained["paths"]["model"], "--test-start-date", str(TEST_START.date()),
        "--test-end-date", str(end.date()), "--db-url", db_url,
        "--output-path", str(tmp_path / "eval"), "--backtest-mode", "long_short_interval",
    )  # fmt: skip
    assert [lv["level"] for lv in metrics["intervals"]["levels"]] == [0.8, 0.9]
    assert metrics["intervals"]["levels"][0]["naive"]["coverage"] is not None
    assert metrics["backtest"]["config"]["mode"] == "long_short_interval"
    assert (tmp_path / "eval" / "BTC_evaluation_plot.png").stat().st_size > 10_000
    # horizon 2 of a log-return target: no interval, and the record says why
    two = _evaluate(db_url, tmp_path, trained, "--horizon", "2")
    assert two["intervals"]["levels"] is None and "horizon 2" in two["intervals"]["note"]

    as_of = end + pd.Timedelta(days=1, hours=1)
    out = run_cli_json(
        "predict", "--model-path", trained["paths"]["model"], "--db-url", db_url,
        "--as-of", as_of.isoformat(), "--horizon", "2",
    )  # fmt: skip
    first, second = out["steps"]
    assert out["intervals"]["method"] == "conformal"
    assert first["quantiles"]["0.05"] < first["forecast"] < first["quantiles"]["0.95"]
    assert [iv["level"] for iv in first["intervals"]] == [0.8, 0.9]
    assert first["intervals"][1]["lower"] <= first["intervals"][0]["lower"]
    assert second["quantiles"] is None and second["intervals"] is None
    # predicting from inside the calibration window: refused
    early = run_cli(
        "predict", "--model-path", trained["paths"]["model"], "--db-url", db_url,
        "--as-of", (TRAIN_END - pd.Timedelta(days=3)).isoformat(), "--no-store",
    )  # fmt: skip
    assert_error(early, "conformal calibration window")


def test_interval_options_refuse_what_cannot_work(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path, BARS.iloc[:400])
    base = ("train", "--model-name", "linear", "--asset-id", "BTC", "--end-date",
            str(BARS.index[300].date()), "--db-url", sqlite_url,
            "--params-file", str(_params(tmp_path, "linear", {"input_chunk_length": 5})),
            "--output-path", str(tmp_path / "models"))  # fmt: skip
    assert_error(run_cli(*base, "--quantiles", "0.1,0.9"), "median 0.5")
    assert_error(run_cli(*base, "--calibration-bars", "50"), "pass --conformal")
    assert_error(run_cli(*base, "--conformal", "--calibration-bars", "5000"), "calibration bars")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    point = run_cli_json(*base)
    assert point["intervals"] is None
    result = run_cli(
        "evaluate", "--model-name", "linear", "--asset-id", "BTC",
        "--model-path", point["paths"]["model"], "--test-start-date",
        str(BARS.index[320].date()), "--test-end-date", str(BARS.index[399].date()),
        "--db-url", sqlite_url, "--backtest-mode", "long_confidence",
        "--output-path", str(tmp_path / "eval"),
    )  # fmt: skip
    assert_error(result, "long_confidence", "--quantiles or --conformal")
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())
    conformal = run_cli_json(*base, "--conformal", "--calibration-bars", "60", "--overwrite")
    retrain = run_cli(
        "evaluate", "--model-name", "linear", "--asset-id", "BTC",
        "--model-path", conformal["paths"]["model"], "--test-start-date",
        str(BARS.index[320].date()), "--test-end-date", str(BARS.index[399].date()),
        "--db-url", sqlite_url, "--retrain-every", "20",
    )  # fmt: skip
    assert_error(retrain, "refits point models only")


def test_the_zoo_says_every_model_is_probabilistic() -> None:
    listed = {m["name"]: m for m in run_cli_json("models", "--json")}
    assert all(m["probabilistic"] is True for m in listed.values())
