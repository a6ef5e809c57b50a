"""Streamed ingest: chunk boundaries, broken and hostile input files, kills at any moment."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kallos_models.data import db, ingest
from kallos_models.errors import DataError
from tests.helpers import assert_error, make_ohlcv, run_cli, write_binance_csv, write_ohlcv_csv


def _stored(url: str, asset: str = "BTC", tf: str = "1d") -> pd.DataFrame:
    return db.read_market_frame(db.create_db_engine(url), asset, tf)


def test_chunked_ingest_equals_one_chunk(tmp_path: Path, db_url: str) -> None:
    bars = make_ohlcv(500)
    path = write_binance_csv(bars, tmp_path / "k.csv")
    engine = db.create_db_engine(db_url)
    small = ingest.ingest_file(engine, "A", "1d", path, chunk_rows=37)
    ingest.ingest_file(engine, "B", "1d", path)
    assert (small.rows_read, small.inserted, small.rows_in_db) == (500, 500, 500)
    left, right = _stored(db_url, "A"), _stored(db_url, "B")
    pd.testing.assert_frame_equal(left.drop(columns="asset_id"), right.drop(columns="asset_id"))
    np.testing.assert_allclose(left["close"].to_numpy(), bars["close"].to_numpy(), rtol=1e-12)
    again = ingest.ingest_file(engine, "A", "1d", path, chunk_rows=37)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 500)


def test_duplicates_and_line_numbers_across_chunks(tmp_path: Path, db_url: str) -> None:
    bars = make_ohlcv(100)
    frame = pd.concat(
        [bars, bars.iloc[[10]], bars.iloc[[20]].assign(close=bars.close.iloc[20] * 1.01)]
    )
    path = write_ohlcv_csv(frame, tmp_path / "dups.csv")
    engine = db.create_db_engine(db_url)
    with pytest.raises(DataError, match=r"2 invalid rows.*line 22: duplicated.*line 103"):
        ingest.ingest_file(engine, "BTC", "1d", path, chunk_rows=30)
    assert db.count_rows(engine, "BTC", "1d") == 0
    summary = ingest.ingest_file(engine, "BTC", "1d", path, chunk_rows=30, skip_invalid=True)
    assert summary.duplicates == {"identical_dropped": 1, "conflicting_timestamps": 1}
    assert [r["line"] for r in summary.rejected_rows] == [22, 103]
    assert summary.rows_valid == summary.rows_in_db == 99


def test_wrong_timeframe_fails_before_the_whole_file_is_read(
    tmp_path: Path, sqlite_url: str
) -> None:
    path = write_binance_csv(make_ohlcv(3000, freq="1h"), tmp_path / "1h.csv")
    seen: list[int] = []
    with pytest.raises(DataError, match=r"bars are 1h apart but --timeframe is 4h.*--timeframe 1h"):
        ingest.ingest_file(
            db.create_db_engine(sqlite_url),
            "BTC",
            "4h",
            path,
            chunk_rows=500,
            progress=lambda rows, _: seen.append(rows),
        )
    assert max(seen) < 3000


def test_mixed_bar_sizes_get_advice_that_can_be_followed(tmp_path: Path, sqlite_url: str) -> None:
    hourly = make_ohlcv(600, freq="4h", start="2021-01-01")
    daily = make_ohlcv(200, freq="1D", start="2021-05-01", seed=1)
    path = write_binance_csv(pd.concat([hourly, daily]), tmp_path / "mixed.csv")
    engine = db.create_db_engine(sqlite_url)
    for tf in ("4h", "1d"):
        with pytest.raises(DataError, match=r"mixes bar sizes: \d+ bars 4h apart and \d+ bars 1d"):
            ingest.ingest_file(engine, "BTC", tf, path, skip_invalid=True)
    assert db.list_assets(engine) == []
    # isolated gaps (an exchange outage, a weekend) are gaps, not a second bar size
    weekdays = make_ohlcv(300)
    weekdays = weekdays[weekdays.index.dayofweek < 5]
    summary = ingest.ingest_file(engine, "W", "1d", write_ohlcv_csv(weekdays, tmp_path / "w.csv"))
    assert summary.gaps["count"] > 40 and summary.inserted == len(weekdays)


def test_bars_in_the_future_and_the_open_bar_are_rejected(tmp_path: Path, db_url: str) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("1D")
    bars = make_ohlcv(10, start=str((now - pd.Timedelta(days=9)).date()))  # the last opens today
    future = make_ohlcv(1, start="2099-01-01", seed=3)
    path = write_binance_csv(pd.concat([bars, future]), tmp_path / "k.csv")
    engine = db.create_db_engine(db_url)
    with pytest.raises(DataError, match="2 invalid rows") as err:
        ingest.ingest_file(engine, "BTC", "1d", path)
    assert "open time in the future" in str(err.value) and "bar not closed yet" in str(err.value)
    summary = ingest.ingest_file(engine, "BTC", "1d", path, skip_invalid=True)
    assert summary.rows_in_db == 9 and summary.last == (now - pd.Timedelta(days=1)).isoformat()


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz", "zip"])
def test_compressed_files_are_read(tmp_path: Path, sqlite_url: str, codec: str) -> None:
    plain = write_binance_csv(make_ohlcv(120), tmp_path / "k.csv").read_bytes()
    path = tmp_path / f"k.csv.{codec}"
    if codec == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("k.csv", plain)
    else:
        path.write_bytes(
            {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec](plain)
        )
    summary = ingest.ingest_file(db.create_db_engine(sqlite_url), "BTC", "1d", path, chunk_rows=50)
    assert summary.inserted == 120


def _broken(tmp_path: Path, kind: str) -> Path:
    plain = write_binance_csv(make_ohlcv(120), tmp_path / "k.csv").read_bytes()
    if kind == "empty":
        (path := tmp_path / "empty.csv").write_bytes(b"")
    elif kind == "blank":
        (path := tmp_path / "blank.csv").write_bytes(b"\n\n")
    elif kind == "header only":
        (path := tmp_path / "header.csv").write_bytes(plain.splitlines(keepends=True)[0])
    elif kind == "corrupt zip":
        (path := tmp_path / "k.zip").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    elif kind == "truncated zip":
        with zipfile.ZipFile(tmp_path / "full.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("k.csv", plain)
        (path := tmp_path / "k.zip").write_bytes((tmp_path / "full.zip").read_bytes()[:300])
    elif kind == "two files in zip":
        with zipfile.ZipFile(path := tmp_path / "two.zip", "w") as archive:
            archive.writestr("a.csv", plain)
            archive.writestr("b.csv", plain)
    elif kind == "corrupt xz":
        (path := tmp_path / "k.csv.xz").write_bytes(lzma.compress(plain)[:40] + b"\x00garbage" * 50)
    elif kind == "corrupt gz":
        (path := tmp_path / "k.csv.gz").write_bytes(gzip.compress(plain)[:-60])
    elif kind == "zst":
        (path := tmp_path / "k.csv.zst").write_bytes(b"\x28\xb5\x2f\xfd" + plain)
    elif kind == "binary":
        (path := tmp_path / "k.csv").write_bytes(os.urandom(4000))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BROKEN = {
    "empty": "is empty (0 bytes)",
    "blank": "holds no data",
    "header only": "has no rows",
    "corrupt zip": "is corrupt or truncated",
    "truncated zip": "is corrupt or truncated",
    "two files in zip": "holds 2 files (a.csv, b.csv); a .zip must hold exactly one CSV",
    "corrupt xz": "is corrupt or truncated",
    "corrupt gz": "is corrupt or truncated",
    "zst": "zstandard package is not installed",
    "binary": "",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_files_are_one_error_line(tmp_path: Path, kind: str) -> None:
    if kind == "zst":
        import importlib.util

        if importlib.util.find_spec("zstandard") is not None:
            pytest.skip("zstandard is installed here: the missing-codec path cannot be reached")
    path = _broken(tmp_path, kind)
    db_path = tmp_path / "k.db"
    result = run_cli(
        "ingest",
        "--db-url",
        f"sqlite:///{db_path}",
        "--asset-id",
        "BTC",
        "--timeframe",
        "1d",
        "--file",
        str(path),
    )
    line = assert_error(result, BROKEN[kind])
    assert str(path) in line
    if db_path.exists():
        assert db.list_assets(db.create_db_engine(f"sqlite:///{db_path}")) == []


def _minute_file(path: Path, n: int) -> Path:
    bars = make_ohlcv(n, freq="1min", start="2024-01-01")
    return write_binance_csv(bars, path)


@pytest.mark.parametrize("moment", ["reading", "merging"])
def test_kill_9_at_any_moment_leaves_the_old_state(
    tmp_path: Path, db_url: str, moment: str
) -> None:
    """A real ``kill -9`` while the file is read, or once it is read (staged, merging):
    the table holds exactly what it held, and the re-run just works."""
    path = _minute_file(tmp_path / "m.csv", 300_000)
    engine = db.create_db_engine(db_url)
    first = ingest.ingest_file(
        engine,
        "BTC",
        "1m",
        write_binance_csv(make_ohlcv(1000, freq="1min", start="2023-12-01"), tmp_path / "old.csv"),
    )
    before = db.read_market_frame(engine, "BTC", "1m")
    wanted = "ingest [" if moment == "reading" else "100%"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kallos_models",
            "ingest",
            "--db-url",
            db_url,
            "--asset-id",
            "BTC",
            "--timeframe",
            "1m",
            "--file",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while wanted not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert wanted in seen, seen
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = db.read_market_frame(db.create_db_engine(db_url), "BTC", "1m")
    pd.testing.assert_frame_equal(before, after)
    result = run_cli(
        "ingest", "--db-url", db_url, "--asset-id", "BTC", "--timeframe", "1m", "--file", str(path)
    )
    assert result.exit_code == 0, result.output
    assert db.count_rows(db.create_db_engine(db_url), "BTC", "1m") == first.rows_in_db + 300_000


# -- the in-order fast path and the SQL path agree -------------------------------------------


def test_a_file_in_order_and_the_same_file_shuffled_store_and_report_the_same(
    tmp_path: Path, db_url: str
) -> None:
    """Streamed (in order) and SQL (shuffled) duplicates, gaps and counts are one answer."""
    bars = make_ohlcv(400).drop(make_ohlcv(400).index[[50, 51, 52, 200, 300, 301]])
    in_order = write_ohlcv_csv(bars, tmp_path / "in_order.csv")
    shuffled = write_ohlcv_csv(bars.sample(frac=1.0, random_state=3), tmp_path / "shuffled.csv")
    engine = db.create_db_engine(db_url)
    a = ingest.ingest_file(engine, "A", "1d", in_order, chunk_rows=64)
    b = ingest.ingest_file(engine, "B", "1d", shuffled, chunk_rows=64)
    assert a.gaps == b.gaps and a.gaps["count"] == 3 and a.gaps["missing_bars"] == 6
    assert a.gaps["listed"][0]["missing_bars"] == 3
    assert (a.first, a.last, a.inserted, a.zero_volume_bars) == (
        b.first,
        b.last,
        b.inserted,
        b.zero_volume_bars,
    )
    left, right = _stored(db_url, "A"), _stored(db_url, "B")
    pd.testing.assert_frame_equal(left.drop(columns="asset_id"), right.drop(columns="asset_id"))


def test_an_overlapping_file_inserts_the_new_bars_and_updates_the_changed_one(
    tmp_path: Path, db_url: str
) -> None:
    bars = make_ohlcv(150)
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(bars.iloc[:100], tmp_path / "a"))
    later = bars.iloc[50:].copy()
    later.iloc[10, later.columns.get_loc("volume")] *= 2  # one stored bar revised
    summary = ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(later, tmp_path / "b"))
    assert (summary.inserted, summary.updated, summary.unchanged) == (50, 1, 49)
    assert summary.rows_in_db == 150
    stored = _stored(db_url)
    assert stored["volume"].iloc[60] == pytest.approx(later["volume"].iloc[10], rel=1e-12)


def test_a_column_null_in_some_rows_only_is_stored_as_null_there(
    tmp_path: Path, db_url: str
) -> None:
    """PostgreSQL copies such a chunk as CSV (binary COPY has no per-row NULL here)."""
    path = write_binance_csv(make_ohlcv(20), tmp_path / "k.csv")
    lines = path.read_text().splitlines()
    fields = lines[5].split(",")
    fields[7] = ""  # quote asset volume missing on one bar
    lines[5] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    summary = ingest.ingest_file(db.create_db_engine(db_url), "BTC", "1d", path)
    assert summary.rows_in_db == 20
    quote = _stored(db_url)["quote_asset_volume"]
    assert quote.isna().sum() == 1 and np.isnan(quote.iloc[4])  # line 6: the 5th bar
