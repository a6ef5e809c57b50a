from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from kallos_models.data import datasets, db, ingest
from kallos_models.errors import DataError
from tests.helpers import make_ohlcv, write_binance_csv, write_ohlcv_csv

SHARED_FILES = [
    ("binance_klines/BTCUSDT_1d.csv", "BTC", "1d", 2742),
    ("binance_klines/BTCUSDT_4h.csv", "BTC", "4h", 17820),
    ("binance_klines/ETHUSDT_4h.csv", "ETH", "4h", 18641),
    ("binance_klines/SOLUSDT_4h.csv", "SOL", "4h", 12117),
    ("ohlcv/BTCUSDT_2h_binance.csv", "BTC-BINANCE", "2h", 35122),
    ("ohlcv/BTCUSD_2h_bitstamp.csv", "BTC-BITSTAMP", "2h", 55446),
]


def _count(engine: sa.Engine, asset: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(db.market_table)
    if asset is not None:
        query = query.where(db.market_table.c.asset_id == asset)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_all_shared_data_ingests_idempotently(db_url: str, shared_data: Path) -> None:
    engine = db.create_db_engine(db_url)
    for rel, asset, tf, rows in SHARED_FILES:
        first = ingest.ingest_file(engine, asset, tf, shared_data / rel)
        assert (first.rows_read, first.rows_valid, first.inserted, first.rejected) == (
            rows,
            rows,
            rows,
            0,
        )
        again = ingest.ingest_file(engine, asset, tf, shared_data / rel)
        assert (again.inserted, again.updated, again.unchanged, again.rows_written) == (
            0,
            0,
            rows,
            0,
        )
    listed = {(a["asset_id"], a["timeframe"]): a["rows"] for a in db.list_assets(engine)}
    assert listed == {(asset, tf): rows for _, asset, tf, rows in SHARED_FILES}
    # real defects are reported, not hidden
    eth = ingest.ingest_file(engine, "ETH", "4h", shared_data / "binance_klines/ETHUSDT_4h.csv")
    assert eth.gaps["count"] == 8 and eth.gaps["missing_bars"] == 16 and eth.zero_volume_bars == 1
    # the table holds candles only; indicators are computed when a window is loaded
    frame = db.read_market_frame(engine, "BTC", "1d")
    assert list(frame.columns) == ["asset_id", "timeframe", *db.RAW_COLUMNS]
    loaded = datasets.load_features_from_db("BTC", None, engine, drop_warmup=False)
    assert loaded["warmup"].iloc[:10].all() and not loaded["warmup"].iloc[100:].any()
    assert loaded["rsi"].iloc[:14].isna().all() and loaded["rsi"].iloc[14:].notna().all()
    assert loaded["macd_diff"].iloc[100:].notna().all()


def test_messy_file_refused_whole_then_skip_invalid_reports(db_url: str, shared_data: Path) -> None:
    engine = db.create_db_engine(db_url)
    path = shared_data / "messy/BTCUSDT_4h_raw.csv"
    with pytest.raises(DataError) as err:
        ingest.ingest_file(engine, "BTC", "4h", path)
    msg = str(err.value)
    assert "609 invalid rows" in msg and "line 1108" in msg and "--skip-invalid" in msg
    assert _count(engine) == 0
    summary = ingest.ingest_file(engine, "BTC", "4h", path, skip_invalid=True)
    assert summary.rejected == 609
    assert summary.duplicates == {"identical_dropped": 0, "conflicting_timestamps": 2}
    assert sum(v for k, v in summary.rejected_reasons.items() if "0 trades" in k) == 605
    assert summary.rows_valid == 18427 - 609 and _count(engine) == 18427 - 609
    assert summary.last == "2026-02-20T12:00:00"  # the other venue's tail is not stored
    # the clean file then fills the two bars whose duplicates were refused
    clean = ingest.ingest_file(engine, "BTC", "4h", shared_data / "binance_klines/BTCUSDT_4h.csv")
    assert clean.inserted == 2 and clean.updated == 0


@pytest.mark.parametrize("time_as", ["text", "ms", "us"])
@pytest.mark.parametrize("header", [True, False])
def test_binance_time_units_and_headerless(
    tmp_path: Path, sqlite_url: str, time_as: str, header: bool
) -> None:
    bars = make_ohlcv(60)
    path = write_binance_csv(bars, tmp_path / "k.csv", header=header, time_as=time_as)
    engine = db.create_db_engine(sqlite_url)
    summary = ingest.ingest_file(engine, "BTC", "1d", path)
    assert summary.format == "binance" and summary.inserted == 60
    stored = db.read_market_frame(engine, "BTC", "1d")
    assert list(stored.index) == list(bars.index)
    np.testing.assert_allclose(stored["close"].to_numpy(), bars["close"].to_numpy())
    assert (stored["number_of_trades"] >= 100).all()


def test_ohlcv_descending_and_parquet(tmp_path: Path, sqlite_url: str) -> None:
    bars = make_ohlcv(50, freq="4h")
    engine = db.create_db_engine(sqlite_url)
    s = ingest.ingest_file(
        engine, "A", "4h", write_ohlcv_csv(bars, tmp_path / "o.csv", descending=True)
    )
    assert s.format == "ohlcv" and s.first == "2021-01-01T00:00:00" and s.inserted == 50
    pq = tmp_path / "o.parquet"
    bars.reset_index().rename(columns={"open_time": "timestamp"}).to_parquet(pq)
    s = ingest.ingest_file(engine, "B", "4h", pq)
    assert s.inserted == 50
    assert db.read_market_frame(engine, "B", "4h")["taker_buy_base_asset_volume"].isna().all()


def test_newer_overlapping_file_extends_series(tmp_path: Path, db_url: str) -> None:
    bars = make_ohlcv(120)
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(bars.iloc[:80], tmp_path / "a.csv"))
    newer = bars.iloc[60:].copy()
    newer.iloc[0, newer.columns.get_loc("close")] *= 1.001  # a corrected bar in the overlap
    newer.iloc[0, newer.columns.get_loc("high")] = newer.iloc[0][["open", "close", "high"]].max()
    s = ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(newer, tmp_path / "b.csv"))
    assert (s.inserted, s.updated, s.unchanged) == (40, 1, 19)
    assert _count(engine, "BTC") == 120


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda f: f.assign(close=f["close"].where(f.index != f.index[5], -1.0)),
            "non-positive price",
        ),
        (
            lambda f: f.assign(
                **{
                    c: f[c].where(f.index != f.index[7], 0.0)
                    for c in ("open", "high", "low", "close")
                }
            ),
            "non-positive price",
        ),
        (lambda f: f.assign(high=f["high"].where(f.index != f.index[9], f["low"])), "high below"),
        (lambda f: f.assign(low=f["low"].where(f.index != f.index[11], f["high"])), "low above"),
    ],
)
def test_invalid_rows_refused_with_line_numbers(
    tmp_path: Path, db_url: str, mutate, reason: str
) -> None:
    bars = mutate(make_ohlcv(40))
    path = write_binance_csv(bars, tmp_path / "bad.csv")
    engine = db.create_db_engine(db_url)
    with pytest.raises(DataError, match=reason) as err:
        ingest.ingest_file(engine, "BTC", "1d", path)
    assert "line " in str(err.value) and "--skip-invalid" in str(err.value)
    assert _count(engine) == 0
    s = ingest.ingest_file(engine, "BTC", "1d", path, skip_invalid=True)
    assert s.rejected == 1 and s.inserted == 39 and reason in s.rejected_rows[0]["reason"]


def test_duplicates_identical_kept_once_conflicting_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    bars = make_ohlcv(30)
    path = write_binance_csv(bars, tmp_path / "d.csv")
    lines = path.read_text().splitlines()
    lines.insert(6, lines[5])  # identical copy of data row 5
    conflicting = lines[10].split(",")
    conflicting[4] = str(float(conflicting[4]) * 1.01)
    conflicting[2] = str(max(float(conflicting[2]), float(conflicting[4])))
    lines.insert(11, ",".join(conflicting))
    path.write_text("\n".join(lines) + "\n")
    engine = db.create_db_engine(sqlite_url)
    with pytest.raises(DataError, match="duplicated open time with different values"):
        ingest.ingest_file(engine, "BTC", "1d", path)
    s = ingest.ingest_file(engine, "BTC", "1d", path, skip_invalid=True)
    assert s.duplicates == {"identical_dropped": 1, "conflicting_timestamps": 1}
    assert s.rejected == 2 and s.inserted == 29 and s.gaps["count"] == 1


def test_gaps_reported_never_filled(tmp_path: Path, sqlite_url: str) -> None:
    bars = make_ohlcv(50, freq="4h").drop(index=make_ohlcv(50, freq="4h").index[20:23])
    engine = db.create_db_engine(sqlite_url)
    s = ingest.ingest_file(engine, "X", "4h", write_ohlcv_csv(bars, tmp_path / "g.csv"))
    assert s.gaps["count"] == 1 and s.gaps["missing_bars"] == 3
    assert s.gaps["listed"][0]["missing_bars"] == 3
    assert _count(engine) == 47


def test_wrong_timeframe_and_unknown_columns(tmp_path: Path, sqlite_url: str) -> None:
    engine = db.create_db_engine(sqlite_url)
    path = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    with pytest.raises(DataError, match="bars are 1d apart but --timeframe is 4h.*--timeframe 1d"):
        ingest.ingest_file(engine, "BTC", "4h", path)
    other = tmp_path / "other.csv"
    other.write_text("when,price,amount\n2021-01-01,1,2\n")
    with pytest.raises(DataError) as err:
        ingest.ingest_file(engine, "BTC", "1d", other)
    assert "'when', 'price', 'amount'" in str(err.value) and "accepted formats" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        ingest.ingest_file(engine, "BTC", "1d", tmp_path / "missing.csv")
    assert _count(engine) == 0


def test_asset_id_with_sql_is_data(tmp_path: Path, db_url: str) -> None:
    engine = db.create_db_engine(db_url)
    evil = "BTC'; DROP TABLE market_data; --"
    ingest.ingest_file(engine, evil, "1d", write_binance_csv(make_ohlcv(30), tmp_path / "k.csv"))
    assert [a["asset_id"] for a in db.list_assets(engine)] == [evil]
    assert _count(engine, evil) == 30


def test_wrong_timeframe_refused_even_with_skip_invalid(tmp_path: Path, sqlite_url: str) -> None:
    bars = make_ohlcv(60, freq="4h")
    engine = db.create_db_engine(sqlite_url)
    with pytest.raises(DataError, match="--timeframe is 1d"):
        ingest.ingest_file(
            engine, "BTC", "1d", write_ohlcv_csv(bars, tmp_path / "4h.csv"), skip_invalid=True
        )
    assert _count(engine) == 0


def test_equal_timeframes_are_stored_once(db_url: str, tmp_path: Path) -> None:
    """24h, 1440m and 0001d on daily bars are the 1d bars already stored, not three copies."""
    engine = db.create_db_engine(db_url)
    path = write_binance_csv(make_ohlcv(60), tmp_path / "d.csv")
    first = ingest.ingest_file(engine, "BTC", "1d", path)
    assert first.inserted == 60
    for spelling in ("24h", "1440m", "0001d"):
        again = ingest.ingest_file(engine, "BTC", spelling, path)
        assert again.timeframe == "1d" and again.inserted == 0 and again.rows_written == 0
    assert [(a["timeframe"], a["rows"]) for a in db.list_assets(engine)] == [("1d", 60)]
    frame = datasets.load_features_from_db("BTC", None, engine, timeframe="24h", drop_warmup=False)
    assert len(frame) == 60
    engine.dispose()


def test_an_absurd_timeframe_on_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    from tests.helpers import assert_error, run_cli

    path = write_binance_csv(make_ohlcv(10), tmp_path / "d.csv")
    result = run_cli(
        "ingest", "--asset-id", "BTC", "--timeframe", "99999999999999999d", "--file", str(path)
    )
    assert_error(result, "timeframe '99999999999999999d'", "52w")
