"""Indicators as data: the spec, its errors, the look-ahead audit, one config line end to end,
databases of the first round, and runs at two timeframes side by side."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import talib

from kallos_models.data import datasets, db, ingest
from kallos_models.data.features import (
    DEFAULT_INDICATORS,
    FEATURE_COLUMNS,
    compute_indicators,
    history_bars,
    resolve_indicators,
    warmup_bars,
)
from kallos_models.errors import ConfigError
from kallos_models.stages import tune as tune_stage
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    write_binance_csv,
)

# -- the spec ----------------------------------------------------------------------------------


def test_default_spec_reproduces_the_first_round_columns() -> None:
    spec = resolve_indicators()
    assert tuple(spec) == FEATURE_COLUMNS
    for seed_column in ("rsi", "mfi", "macd_diff"):
        assert seed_column in spec
    assert warmup_bars(spec) == 49  # SMA 50
    assert history_bars(spec) == 245


def test_a_talib_function_with_parameters_and_an_output() -> None:
    bars = make_ohlcv(120)
    spec = resolve_indicators(
        {
            "cci_20": {"function": "CCI", "timeperiod": 20},
            "bb_upper": {"function": "BBANDS", "output": "upperband", "timeperiod": 20},
            "rsi": {"function": "RSI", "timeperiod": 7},  # replaces the default entry
        }
    )
    assert list(spec)[-2:] == ["cci_20", "bb_upper"] and spec["rsi"]["timeperiod"] == 7
    out = compute_indicators(bars, spec)
    h, low, c = (bars[k].to_numpy() for k in ("high", "low", "close"))
    np.testing.assert_allclose(out["cci_20"], talib.CCI(h, low, c, 20), equal_nan=True)
    np.testing.assert_allclose(out["bb_upper"], talib.BBANDS(c, 20)[0], equal_nan=True)
    np.testing.assert_allclose(out["rsi"], talib.RSI(c, 7), equal_nan=True)


@pytest.mark.parametrize(
    ("entry", "needles"),
    [
        ({"function": "CCX"}, ["'x'", "neither a TA-Lib function", "CCI"]),
        ({"function": "CCI", "period": 20}, ["no parameter period", "timeperiod"]),
        ({"function": "BBANDS"}, ["several outputs", "upperband, middleband, lowerband"]),
        ({"function": "BBANDS", "output": "upper"}, ["several outputs", "upperband"]),
        ({"function": "RSI", "output": "real2"}, ["one output (real)"]),
        ({"function": "RSI", "transform": "log"}, ["transform 'log'", "per_close"]),
        ({"function": "RSI", "timeperiod": "fourteen"}, ["'x'", "RSI"]),
        ({"function": "calendar", "part": "year_sin"}, ["calendar part", "hour_sin"]),
        ({"function": "realized_vol", "window": "20"}, ["realized_vol parameter window", "number"]),
        ({"function": "realized_vol", "window": 1.5}, ["whole number >= 2"]),
        ({"function": "bb_width", "nbdev": 0}, ["nbdev must be above 0"]),
        ({"function": "RSI", "timeperiod": 1}, ["'x'", "RSI", "Bad Parameter"]),
        ({"timeperiod": 20}, ['must be an object with a "function"']),
    ],
)
def test_bad_entries_name_the_column_and_the_valid_choices(entry: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_indicators({"x": entry})
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_reserved_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="candle column"):
        resolve_indicators({"close": {"function": "SMA"}})


# -- the look-ahead audit ----------------------------------------------------------------------


def _audit_bars(shared: Path | None) -> pd.DataFrame:
    if shared is not None:
        frame = pd.read_csv(shared / "binance_klines/BTCUSDT_1d.csv")
        frame.columns = [c.strip().lower() for c in frame.columns]
        frame.index = pd.DatetimeIndex(
            pd.to_datetime(frame["open time"].str.replace(" UTC", "").str.strip()),
            name="open_time",
        )
        return frame[["open", "high", "low", "close", "volume"]].astype("float64").iloc[:900]
    return make_ohlcv(900)


@pytest.mark.parametrize("source", ["generated", "real"])
def test_no_default_indicator_looks_ahead(source: str, request: pytest.FixtureRequest) -> None:
    """Every default indicator computed on the bars up to t equals its full-data value at
    every bar <= t: nothing after t is used."""
    shared = request.getfixturevalue("shared_data") if source == "real" else None
    bars = _audit_bars(shared)
    full = compute_indicators(bars)
    checked = 0
    for cut in (30, 60, 61, 120, 333, 600, len(bars) - 2):
        part = compute_indicators(bars.iloc[: cut + 1])
        for column in DEFAULT_INDICATORS:
            np.testing.assert_allclose(
                part[column].to_numpy(),
                full[column].iloc[: cut + 1].to_numpy(),
                rtol=1e-9,
                atol=1e-12,
                equal_nan=True,
                err_msg=f"{column} at cut {cut} uses bars after the cut",
            )
            checked += 1
        assert (part["warmup"].to_numpy() == full["warmup"].iloc[: cut + 1].to_numpy()).all()
    assert checked == 7 * len(DEFAULT_INDICATORS)


# -- loading -----------------------------------------------------------------------------------


def test_window_values_do_not_depend_on_where_it_starts(db_url: str, tmp_path: Path) -> None:
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(make_ohlcv(900), tmp_path / "b.csv"))
    whole = datasets.load_features_from_db("BTC", None, engine)
    late = datasets.load_features_from_db("BTC", None, engine, start_date="2022-06-01")
    assert late.index[0] == pd.Timestamp("2022-06-01")
    common = whole.loc[late.index, list(DEFAULT_INDICATORS)]
    # the extra history read before the window lets EMA-type indicators converge
    np.testing.assert_allclose(late[list(DEFAULT_INDICATORS)], common, rtol=1e-6, atol=1e-6)


def test_a_first_round_database_keeps_working(db_url: str, tmp_path: Path) -> None:
    """A market table with the old stored indicators and NOT NULL warmup flag."""
    engine = sa.create_engine(db.resolve_url(db_url))
    columns = ", ".join(f"{c} FLOAT" for c in (*db.RAW_COLUMNS, "rsi", "macd_diff"))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE market_data (asset_id VARCHAR(64) NOT NULL, timeframe VARCHAR(16) "
                f"NOT NULL, open_time TIMESTAMP NOT NULL, {columns}, warmup BOOLEAN NOT NULL, "
                "PRIMARY KEY (asset_id, timeframe, open_time))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO market_data (asset_id, timeframe, open_time, open, high, low, close, "
                "volume, rsi, warmup) VALUES ('OLD', '1d', '2020-01-01', 1, 2, 0.5, 1.5, 10, 55, "
                "false)"
            )
        )
    engine.dispose()
    engine = db.create_db_engine(db_url)
    summary = ingest.ingest_file(
        engine, "BTC", "1d", write_binance_csv(make_ohlcv(300), tmp_path / "b.csv")
    )
    assert summary.inserted == 300
    frame = datasets.load_features_from_db("BTC", None, engine)
    assert frame["rsi"].notna().all() and len(frame) > 200
    old = db.read_market_frame(engine, "OLD", "1d")
    assert list(old.columns) == ["asset_id", "timeframe", *db.RAW_COLUMNS]  # old columns ignored
    assert old["close"].iloc[0] == 1.5
    engine.dispose()


# -- one config line, end to end ---------------------------------------------------------------

TINY = tiny_params("gru", input_chunk_length=8)


def test_a_new_talib_indicator_is_one_config_line(db_url: str, tmp_path: Path) -> None:
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(make_ohlcv(420), tmp_path / "b.csv"))
    engine.dispose()  # ingested once; the new indicator needs no re-ingest
    (tmp_path / "params.json").write_text(json.dumps(TINY))
    config = {
        "indicators": {"cci_20": {"function": "CCI", "timeperiod": 20}},
        "feature_groups": {"bounded_features": ["rsi"], "unbounded_features": ["cci_20"]},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    trained = run_cli_json(
        "train", "--asset-id", "BTC", "--end-date", "2022-01-31", "--db-url", db_url,
        "--params-file", "params.json", "--output-path", "models",
    )  # fmt: skip
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text())
    assert manifest["indicators"] == {
        "rsi": {"function": "RSI", "timeperiod": 14},
        "cci_20": {"function": "CCI", "timeperiod": 20},
    }
    assert "cci_20" in manifest["feature_columns"]
    # evaluation recomputes the bundle's own columns: the config may change meanwhile
    (tmp_path / "config.json").write_text(json.dumps({}))
    evaluated = run_cli_json(
        "evaluate", "--asset-id", "BTC", "--model-path", "models/gru_BTC.pt",
        "--test-start-date", "2022-02-02", "--test-end-date", "2022-02-20",
        "--db-url", db_url, "--output-path", "eval",
    )  # fmt: skip
    assert evaluated["rmse"] > 0


def test_a_bad_indicator_in_config_is_one_error_line(sqlite_url: str, tmp_path: Path) -> None:
    engine = db.create_db_engine(sqlite_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(make_ohlcv(200), tmp_path / "b.csv"))
    engine.dispose()
    (tmp_path / "params.json").write_text(json.dumps(TINY))
    (tmp_path / "config.json").write_text(
        json.dumps({"indicators": {"cci": {"function": "CCI", "window": 20}}})
    )
    result = run_cli(
        "train", "--asset-id", "BTC", "--end-date", "2021-06-30", "--db-url", sqlite_url,
        "--params-file", "params.json", "--output-path", "models",
    )  # fmt: skip
    assert_error(result, "indicator 'cci'", "no parameter window", "timeperiod")
    assert not (tmp_path / "models").exists()


# -- timeframes never collide ------------------------------------------------------------------


def _tiny_space(trial: Any, timeframe: str) -> dict[str, Any]:
    return {**TINY, "input_chunk_length": trial.suggest_int("input_chunk_length", 8, 12)}


def test_1d_and_4h_runs_in_one_folder_keep_both_and_both_evaluate(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tune -> train -> evaluate of gru on BTC at 1d and at 4h into the same folders."""
    # the CLI takes no search space: give the tune stage a tiny one
    monkeypatch.setattr(
        tune_stage, "tune", functools.partial(tune_stage.tune, search_space=_tiny_space)
    )
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(make_ohlcv(420), tmp_path / "d.csv"))
    four_hourly = make_ohlcv(3000, freq="4h", start="2022-01-01", seed=1)
    ingest.ingest_file(engine, "BTC", "4h", write_binance_csv(four_hourly, tmp_path / "h.csv"))
    engine.dispose()
    windows = {  # end of tuning and training, hold-out window
        "1d": ("2022-01-31", "2022-02-02", "2022-02-20"),
        "4h": ("2023-04-30", "2023-05-01", "2023-05-10"),
    }
    studies = []
    for timeframe, (end, _, _) in windows.items():
        tuned = run_cli_json(
            "tune", "--asset-id", "BTC", "--timeframe", timeframe, "--end-date", end,
            "--db-url", db_url, "--n-trials", "1", "--max-epochs", "1", "--output-path", "out",
        )  # fmt: skip
        studies.append(tuned["study_name"])
        run_cli_json(
            "train", "--asset-id", "BTC", "--timeframe", timeframe, "--end-date", end,
            "--db-url", db_url, "--params-file", tuned["params_path"], "--output-path", "out",
        )  # fmt: skip
    assert studies == ["gru_BTC_1d", "gru_BTC_4h"]
    for timeframe, (_, test_start, test_end) in windows.items():
        stem = "gru_BTC" if timeframe == "1d" else "gru_BTC_4h"
        evaluated = run_cli_json(
            "evaluate", "--asset-id", "BTC", "--model-path", f"out/{stem}.pt",
            "--test-start-date", test_start, "--test-end-date", test_end,
            "--db-url", db_url, "--output-path", "out",
        )  # fmt: skip
        assert evaluated["timeframe"] == timeframe
    names = {p.name for p in (tmp_path / "out").iterdir()}
    for tf in ("", "_4h"):
        expected = {
            f"gru_BTC{tf}{suffix}"
            for suffix in (".pt", ".pt.ckpt", "_scaler.pkl", "_manifest.json", "_best_params.json")
        } | {f"BTC{tf}_evaluation_metrics.json", f"BTC{tf}_evaluation_plot.png"}
        assert expected <= names, sorted(expected - names)
    params = {
        tf: json.loads((tmp_path / f"out/gru_BTC{tf}_best_params.json").read_text())
        for tf in ("", "_4h")
    }
    assert params[""]["timeframe"] == "1d" and params["_4h"]["timeframe"] == "4h"
    manifests = {
        tf: json.loads((tmp_path / f"out/gru_BTC{tf}_manifest.json").read_text())
        for tf in ("", "_4h")
    }
    assert manifests[""]["timeframe"] == "1d" and manifests["_4h"]["timeframe"] == "4h"


def test_a_bundle_from_before_indicators_were_data_still_evaluates(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A first-round manifest has no "indicators": evaluate uses the default spec's columns,
    which are what the first round stored, and scores exactly as with the recorded spec."""
    engine = db.create_db_engine(sqlite_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(make_ohlcv(420), tmp_path / "b.csv"))
    engine.dispose()
    (tmp_path / "params.json").write_text(json.dumps(TINY))
    trained = run_cli_json(
        "train", "--asset-id", "BTC", "--end-date", "2022-01-31", "--db-url", sqlite_url,
        "--params-file", "params.json", "--output-path", "models",
    )  # fmt: skip
    args = (
        "evaluate", "--asset-id", "BTC", "--model-path", "models/gru_BTC.pt",
        "--test-start-date", "2022-02-02", "--test-end-date", "2022-02-20",
        "--db-url", sqlite_url, "--output-path", "eval",
    )  # fmt: skip
    with_spec = run_cli_json(*args)
    manifest_path = Path(trained["paths"]["manifest"])
    manifest = json.loads(manifest_path.read_text())
    assert set(manifest.pop("indicators")) == {"rsi", "mfi", "macd_diff"}
    # a first-round manifest is format 1: no digest (an edit of a sealed one is refused)
    del manifest["manifest_digest"]
    manifest["bundle_format"] = 1
    manifest_path.write_text(json.dumps(manifest))
    without = run_cli_json(*args)
    assert without["rmse"] == with_spec["rmse"] and without["n_filled"] == with_spec["n_filled"]
