"""predict and score: live forecasts from a bundle, stored once per origin, scored later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.data import db, forecast_store
from kallos_models.errors import ConfigError
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    train_sqlite_bundle,
    write_binance_csv,
    write_ohlcv_csv,
)

N_BARS = 300
BARS = make_ohlcv(N_BARS, seed=3)
TRAIN_END = BARS.index[249]
LAST = BARS.index[-1]
DAY = pd.Timedelta(days=1)
TINY_GRU = tiny_params("gru", output_chunk_length=2, batch_size=32)


def _as_of(bar: pd.Timestamp, hours: int = 1) -> str:
    """A moment ``hours`` after the bar opened at ``bar`` closed."""
    return (bar + DAY + pd.Timedelta(hours=hours)).isoformat()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict[str, Any]:
    """A 1-epoch GRU (output chunk 2) trained on Binance-format bars up to TRAIN_END."""
    root = tmp_path_factory.mktemp("predict")
    csv = write_binance_csv(BARS, root / "btc.csv")
    _, trained = train_sqlite_bundle(
        root, csv, TINY_GRU, db_name="train.db", train_end_date=str(TRAIN_END.date())
    )
    return {"model": str(trained.paths.model), "csv": csv, "root": root}


def _ingest(url: str, frame: pd.DataFrame, path: Path, *, binance: bool = True) -> None:
    writer = write_binance_csv if binance else write_ohlcv_csv
    file = writer(frame, path)
    run_cli_json("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--file", str(file),
                 "--db-url", url)  # fmt: skip


def _predict(url: str, model: str, *args: str):
    return run_cli("predict", "--model-path", model, "--db-url", url, *args)


def _stored(url: str) -> pd.DataFrame:
    engine = db.create_db_engine(url)
    try:
        return forecast_store.forecasts_with_actuals(engine)
    finally:
        engine.dispose()


def test_predict_twice_for_one_origin_stores_one_set_of_rows(bundle, db_url, tmp_path):
    from kallos_models.modelling import bundles
    from kallos_models.modelling.forecasting import forecast_after

    _ingest(db_url, BARS, tmp_path / "btc.csv")
    args = ("--horizon", "2", "--as-of", _as_of(LAST))
    first = _predict(db_url, bundle["model"], *args)
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout)
    assert record["asset_id"] == "BTC" and record["timeframe"] == "1d"
    assert record["origin"]["time"] == LAST.isoformat()
    close = float(BARS["close"].iloc[-1])
    assert record["origin"]["close"] == pytest.approx(close)
    assert record["model"]["name"] == "gru" and len(record["model"]["bundle_sha256"]) == 64
    assert record["model"]["train_end"].startswith(str(TRAIN_END.date()))
    assert [s["time"] for s in record["steps"]] == [
        (LAST + DAY).isoformat(),
        (LAST + 2 * DAY).isoformat(),
    ]
    for step in record["steps"]:
        assert step["naive"] == pytest.approx(close)
        assert step["return"] == pytest.approx(step["forecast"] / close - 1)
        assert step["log_return"] == pytest.approx(np.log(step["forecast"] / close))
    assert record["stored"] == {"table": "forecasts", "new": 2, "existing": 0}

    # the same forecast straight from the bundle and the newest bars
    loaded = bundles.load_bundle(bundle["model"])
    from kallos_models.data.datasets import load_features_from_db

    pre = loaded.preprocessor
    frame = load_features_from_db(
        "BTC", LAST, db_url, start_date=LAST - 40 * DAY,
        columns=list(dict.fromkeys([pre.target_col, *pre.feature_columns])),
    )  # fmt: skip
    direct = forecast_after(loaded.model, pre, frame, horizon=2)
    np.testing.assert_allclose(
        [s["forecast"] for s in record["steps"]], direct["forecast"], rtol=1e-6
    )

    again = _predict(db_url, bundle["model"], *args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["stored"] == {"table": "forecasts", "new": 0, "existing": 2}
    stored = _stored(db_url)
    assert len(stored) == 2
    assert set(stored["origin_time"]) == {LAST}
    assert stored["actual"].isna().all()  # their bars have not arrived
    # --no-store prints without writing
    dry = _predict(db_url, bundle["model"], "--no-store", "--as-of", _as_of(LAST))
    assert json.loads(dry.stdout)["stored"] is None
    assert len(_stored(db_url)) == 2


def test_a_bar_still_open_is_ignored(bundle, sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS, tmp_path / "btc.csv")
    # 12 hours into the last stored bar: it is still open, the origin is the bar before
    during = (LAST + pd.Timedelta(hours=12)).isoformat()
    record = json.loads(
        _predict(sqlite_url, bundle["model"], "--as-of", during, "--no-store").stdout
    )
    assert record["origin"]["time"] == (LAST - DAY).isoformat()
    assert record["steps"][0]["time"] == LAST.isoformat()


def test_forecast_after_is_the_rolling_forecast_from_that_origin(bundle):
    from kallos_models.data.features import compute_features
    from kallos_models.modelling import bundles
    from kallos_models.modelling.forecasting import forecast_after, rolling_forecasts

    loaded = bundles.load_bundle(bundle["model"])
    full = pd.concat([BARS, compute_features(BARS)], axis=1)
    frame = full[~full["warmup"]].drop(columns="warmup").asfreq("1D")
    frame["taker_buy_base_asset_volume"] = frame["volume"] / 2
    origin = frame.index[-10]
    after = forecast_after(loaded.model, loaded.preprocessor, frame.loc[:origin], horizon=2)
    rolling = rolling_forecasts(
        loaded.model, loaded.preprocessor, frame, start=origin + DAY, horizon=2
    )
    assert rolling["forecast"].loc[origin + 2 * DAY] == pytest.approx(
        after["forecast"].iloc[1], rel=1e-6
    )


def test_stale_data_is_refused_with_the_fix(bundle, db_url, tmp_path):
    _ingest(db_url, BARS, tmp_path / "btc.csv")
    late = (LAST + 10 * DAY).isoformat()
    line = assert_error(
        _predict(db_url, bundle["model"], "--as-of", late),
        "older than --max-age 2 days",
        "kallos-run ingest --asset-id BTC --timeframe 1d",
    )
    assert "raise --max-age" in line
    assert _stored(db_url).empty
    # a looser --max-age accepts it; a bad duration is a user error
    ok = _predict(db_url, bundle["model"], "--as-of", late, "--max-age", "2w", "--no-store")
    assert ok.exit_code == 0, ok.output
    assert_error(_predict(db_url, bundle["model"], "--max-age", "soon"), "--max-age", "36h")


def test_a_gap_in_the_lookback_window_is_refused_with_the_fix(bundle, db_url, tmp_path):
    holed = BARS.drop(BARS.index[-5])
    _ingest(db_url, holed, tmp_path / "btc.csv")
    assert_error(
        _predict(db_url, bundle["model"], "--as-of", _as_of(LAST)),
        f"the first at {BARS.index[-5]}",
        "kallos-run ingest --asset-id BTC",
        "--fill-gaps",
    )
    assert _stored(db_url).empty
    filled = _predict(db_url, bundle["model"], "--as-of", _as_of(LAST), "--fill-gaps")
    assert filled.exit_code == 0, filled.output
    assert json.loads(filled.stdout)["stored"]["new"] == 1


def test_other_timeframe_asset_or_columns_are_refused(bundle, sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS, tmp_path / "btc.csv")
    model = bundle["model"]
    assert_error(_predict(sqlite_url, model, "--timeframe", "4h"), "trained on 1d bars")
    assert_error(_predict(sqlite_url, model, "--asset-id", "ETH"), "trained on 'BTC'")
    assert_error(
        _predict(sqlite_url, model, "--horizon", "3"), "exceeds the model's output_chunk_length"
    )
    # candles stored only at 4h: nothing at the bundle's timeframe
    other = f"sqlite:///{(tmp_path / 'four.db').as_posix()}"
    four = make_ohlcv(200, freq="4h", start="2021-09-01")
    file = write_binance_csv(four, tmp_path / "btc4h.csv")
    run_cli_json("ingest", "--asset-id", "BTC", "--timeframe", "4h", "--file", str(file),
                 "--db-url", other)  # fmt: skip
    assert_error(_predict(other, model), "no 1d bars", "kallos-run ingest")
    # plain OHLCV candles lack the taker volume the bundle was trained with
    plain = f"sqlite:///{(tmp_path / 'plain.db').as_posix()}"
    _ingest(plain, BARS, tmp_path / "plain.csv", binance=False)
    assert_error(_predict(plain, model, "--as-of", _as_of(LAST)), "taker_buy_base_asset_volume")


def test_an_origin_inside_the_training_rows_is_refused(bundle, sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS, tmp_path / "btc.csv")
    model, loose = bundle["model"], ("--max-age", "100d", "--no-store")
    # backfilling from before the bundle's last training bar would forecast bars it fit on
    inside = _as_of(TRAIN_END - 5 * DAY)
    line = assert_error(
        _predict(sqlite_url, model, "--as-of", inside, *loose),
        "inside the bundle's training rows",
        f"--as-of {(TRAIN_END + DAY).isoformat()} or later",
    )
    assert str(TRAIN_END) in line
    # the last training bar as origin forecasts the first bar after training: allowed
    edge = run_cli_json("predict", "--model-path", model, "--db-url", sqlite_url,
                        "--as-of", _as_of(TRAIN_END), *loose)  # fmt: skip
    assert edge["steps"][0]["time"] == (TRAIN_END + DAY).isoformat()
    # before the first stored bar closed: the message names that bar, not the newest
    assert_error(
        _predict(sqlite_url, model, "--as-of", str(BARS.index[0].date()), *loose),
        f"the oldest stored bar opens at {BARS.index[0]}",
        "pass a later --as-of",
    )


def test_an_asset_id_setting_does_not_apply_to_predict_or_score(bundle, sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS, tmp_path / "btc.csv")
    env = {"KALLOS_ASSET_ID": "ETH"}  # set for other commands; the bundle says BTC
    predicted = run_cli_json("predict", "--model-path", bundle["model"], "--db-url", sqlite_url,
                             "--as-of", _as_of(LAST - DAY), env=env)  # fmt: skip
    assert predicted["asset_id"] == "BTC"
    assert run_cli_json("score", "--db-url", sqlite_url, env=env)["scored"] == 1
    assert run_cli_json("score", "--db-url", sqlite_url, "--asset-id", "ETH")["scored"] == 0


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def test_score_joins_arrived_bars_and_alarms_past_max_ratio(bundle, db_url, tmp_path):
    _ingest(db_url, BARS, tmp_path / "btc.csv")
    origins = BARS.index[-13:-1]  # twelve origins whose next bar is stored
    for origin in origins:
        result = _predict(db_url, bundle["model"], "--as-of", _as_of(origin))
        assert result.exit_code == 0, result.output
    # and one whose bar has not arrived
    assert _predict(db_url, bundle["model"], "--as-of", _as_of(LAST)).exit_code == 0

    out = tmp_path / "scores"
    record = run_cli_json("score", "--db-url", db_url, "--output-path", str(out),
                          "--last", "5d", "--window", "4")  # fmt: skip
    assert record["scored"] == 12 and record["pending"] == 1
    (group,) = record["groups"]
    assert group["asset_id"] == "BTC" and group["step"] == 1 and group["pending"] == 1
    assert group["model"]["name"] == "gru"
    assert group["all"]["n"] == 12 and group["recent"]["n"] == 5
    assert group["all"]["last_target"] == LAST.isoformat()

    # the figures, recomputed from the stored rows and the candles
    stored = _stored(db_url).dropna(subset=["actual"])
    np.testing.assert_allclose(stored["actual"], BARS["close"].loc[stored["target_time"]])
    err = stored["actual"] - stored["forecast"]
    naive = stored["actual"] - stored["origin_close"]
    assert group["all"]["rmse"] == pytest.approx(float(np.sqrt((err**2).mean())))
    assert group["all"]["naive"]["rmse"] == pytest.approx(float(np.sqrt((naive**2).mean())))
    ratio = group["recent"]["rmse_ratio"]
    tail = stored.tail(5)
    expected = np.sqrt(((tail["actual"] - tail["forecast"]) ** 2).mean()) / np.sqrt(
        ((tail["actual"] - tail["origin_close"]) ** 2).mean()
    )
    assert ratio == pytest.approx(float(expected))
    assert (out / "score_plot.png").read_bytes().startswith(b"\x89PNG")

    below = run_cli("score", "--db-url", db_url, "--last", "5d", "--max-ratio", str(ratio * 1.01))
    assert below.exit_code == 0, below.output
    assert json.loads(below.stdout)["alarms"] == []
    above = run_cli("score", "--db-url", db_url, "--last", "5d", "--max-ratio", str(ratio * 0.99))
    assert above.exit_code == 3, above.output
    assert json.loads(above.stdout)["alarms"][0]["recent_rmse_ratio"] == pytest.approx(ratio)
    assert "drift:" in above.stderr and "above --max-ratio" in above.stderr

    # filters: another asset has nothing; the model's digest prefix finds it
    assert run_cli_json("score", "--db-url", db_url, "--asset-id", "ETH")["scored"] == 0
    prefix = group["model"]["id"].removeprefix("sha256:")[:12]
    assert run_cli_json("score", "--db-url", db_url, "--model", prefix)["scored"] == 12
    assert run_cli_json("score", "--db-url", db_url, "--timeframe", "24h")["scored"] == 12
    assert run_cli_json("score", "--db-url", db_url, "--timeframe", "4h")["scored"] == 0

    # a model that stopped forecasting a month ago: stale, warned about, never an alarm
    old = [
        {
            "model_id": "sha256:" + "0" * 64, "asset_id": "BTC", "timeframe": "1d",
            "origin_time": origin.to_pydatetime(), "step": 1,
            "target_time": (origin + DAY).to_pydatetime(),
            "forecast": float(BARS["close"].loc[origin]) * 1.5,
            "origin_close": float(BARS["close"].loc[origin]), "model_name": "lstm",
            "registered_model": None, "model_version": None,
            "created_at": (origin + DAY).to_pydatetime(),
        }
        for origin in BARS.index[-40:-35]
    ]  # fmt: skip
    engine = db.create_db_engine(db_url)
    try:
        forecast_store.store_forecasts(engine, old)
    finally:
        engine.dispose()
    result = run_cli("score", "--db-url", db_url, "--last", "5d", "--max-ratio",
                     str(ratio * 1.01), quiet=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    groups = {g["model"]["name"]: g for g in json.loads(result.stdout)["groups"]}
    assert groups["lstm"]["stale"] and groups["lstm"]["recent"] is None
    assert groups["lstm"]["all"]["rmse_ratio"] > 1.0  # bad, but not recent
    assert not groups["gru"]["stale"]
    assert "stopped forecasting" in result.stderr


def test_score_on_a_database_without_forecasts(sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS.iloc[:50], tmp_path / "btc.csv")
    result = run_cli("score", "--db-url", sqlite_url, "--max-ratio", "1.0", quiet=False)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["scored"] == 0 and record["groups"] == [] and record["plot"] is None
    assert "no forecasts stored yet" in result.stderr


def test_score_settings_refuse_bad_values():
    from kallos_models.config import Settings
    from kallos_models.live_settings import score_settings

    with pytest.raises(ConfigError, match="--window"):
        score_settings(Settings(), window=1)
    with pytest.raises(ConfigError, match="--max-ratio"):
        score_settings(Settings(), max_ratio=0)
    with pytest.raises(ConfigError, match="--last"):
        score_settings(Settings(), last="-3d")
