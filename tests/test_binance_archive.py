"""Binance archive ingest against a fake archive served on 127.0.0.1, built from real rows."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from kallos_models.data import db
from kallos_models.data.binance_archive import archive_plan, ingest_binance_archive, month_range
from kallos_models.errors import ConfigError, DataError
from tests.helpers import make_ohlcv, run_cli, run_cli_json, write_binance_csv

MONTHS = ["2024-10", "2024-11", "2024-12", "2025-01", "2025-02", "2025-03"]


def _month_zip(rows: pd.DataFrame, name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name.replace(".zip", ".csv"), rows.to_csv(header=False, index=False))
    return buf.getvalue()


def _archive_from_real_rows(csv: Path, periods: list[str] = MONTHS) -> dict[str, bytes]:
    """Monthly (``YYYY-MM``) or daily (``YYYY-MM-DD``) zips + CHECKSUM files the way Binance
    publishes them: epoch ms, µs from 2025."""
    frame = pd.read_csv(csv)
    times = pd.to_datetime(frame["Open time"].str.replace(" UTC", "").str.strip())
    files: dict[str, bytes] = {}
    for period in periods:
        daily = len(period) == 10
        rows = frame[times.dt.strftime("%Y-%m-%d" if daily else "%Y-%m") == period].copy()
        t = times[rows.index]
        unit = 1_000_000 if period >= "2025" else 1_000
        ns = t.astype("int64")
        rows["Open time"] = (ns // (1_000_000_000 // unit)).astype("int64")
        rows["Close time"] = rows["Open time"] + 86_400 * unit - 1
        name = f"BTCUSDT-1d-{period}.zip"
        data = _month_zip(rows, name)
        base = f"/data/spot/{'daily' if daily else 'monthly'}/klines/BTCUSDT/1d/{name}"
        files[base] = data
        files[base + ".CHECKSUM"] = f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
    return files


class FakeArchive:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.interrupt_once: set[str] = set()
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                archive.requests.append((self.path, self.headers.get("Range")))
                data = archive.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in archive.interrupt_once:
                    archive.interrupt_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeArchive:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def archive_files(shared_data: Path) -> dict[str, bytes]:
    return _archive_from_real_rows(shared_data / "binance_klines/BTCUSDT_1d.csv")


def _path(month: str) -> str:
    return f"/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-{month}.zip"


def test_good_months_ingested_across_timestamp_unit_change(
    archive_files: dict[str, bytes], db_url: str, tmp_path: Path
) -> None:
    engine = db.create_db_engine(db_url)
    with FakeArchive(archive_files) as fake:
        result = ingest_binance_archive(
            engine,
            "BTC",
            "BTCUSDT",
            "1d",
            start="2024-10",
            end="2025-03",
            base_url=fake.url,
            cache_dir=tmp_path / "cache",
        )
    assert result.months_used == MONTHS and result.downloaded == MONTHS
    assert result.ingest is not None and result.ingest.inserted == 182
    stored = db.read_market_frame(engine, "BTC", "1d")
    assert stored.index[0] == pd.Timestamp("2024-10-01") and stored.index[-1] == pd.Timestamp(
        "2025-03-31"
    )
    assert pd.Timestamp("2025-01-01") in stored.index  # µs epochs parsed, not year 56000


def test_missing_month_reported_and_gap_left(
    archive_files: dict[str, bytes], db_url: str, tmp_path: Path
) -> None:
    files = {k: v for k, v in archive_files.items() if "2024-12" not in k}
    with FakeArchive(files) as fake:
        result = ingest_binance_archive(
            db.create_db_engine(db_url),
            "BTC",
            "BTCUSDT",
            "1d",
            start="2024-10",
            end="2025-03",
            base_url=fake.url,
            cache_dir=tmp_path / "cache",
        )
    assert result.months_missing == ["2024-12"]
    assert result.ingest.gaps["count"] == 1 and result.ingest.gaps["missing_bars"] == 31


def test_corrupted_zip_refused_then_retried(
    archive_files: dict[str, bytes], db_url: str, tmp_path: Path
) -> None:
    files = dict(archive_files)
    bad = bytearray(files[_path("2025-02")])
    bad[len(bad) // 2] ^= 0xFF
    files[_path("2025-02")] = bytes(bad)
    cache = tmp_path / "cache"
    with FakeArchive(files) as fake:
        env = {"KALLOS_BINANCE_ARCHIVE_URL": fake.url, "KALLOS_BINANCE_CACHE_DIR": str(cache)}
        args = [
            "ingest",
            "--asset-id",
            "BTC",
            "--binance",
            "BTCUSDT",
            "--start",
            "2024-10",
            "--end",
            "2025-03",
            "--db-url",
            db_url,
        ]
        result = run_cli(*args, quiet=False, env=env)
        assert result.exit_code == 1
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "2025-02" in errors[0] and "checksum" in errors[0]
        summary = json.loads(result.stdout)
        assert "2025-02" in summary["months_refused"] and len(summary["months_used"]) == 5
        assert not (cache / "BTCUSDT/1d/BTCUSDT-1d-2025-02.zip").exists()
        assert not list(cache.rglob("*.part"))
        # the archive is repaired: only the refused month is downloaded again
        fake.files[_path("2025-02")] = archive_files[_path("2025-02")]
        fake.requests.clear()
        out = run_cli_json(*args, quiet=False, env=env)
        assert out["downloaded"] == ["2025-02"] and len(out["from_cache"]) == 5
        assert out["ingest"]["inserted"] == 28
        zips = [p for p, _ in fake.requests if p.endswith(".zip")]
        assert zips == [_path("2025-02")]


def test_interrupted_download_resumes_with_range(
    archive_files: dict[str, bytes], sqlite_url: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with FakeArchive(archive_files) as fake:
        fake.interrupt_once.add(_path("2024-11"))
        # and a download cut short by an earlier run: half the bytes are already on disk
        part = cache / "BTCUSDT/1d/BTCUSDT-1d-2024-10.zip.part"
        part.parent.mkdir(parents=True)
        whole = archive_files[_path("2024-10")]
        part.write_bytes(whole[: len(whole) // 2])
        result = ingest_binance_archive(
            db.create_db_engine(sqlite_url),
            "BTC",
            "BTCUSDT",
            "1d",
            start="2024-10",
            end="2024-11",
            base_url=fake.url,
            cache_dir=cache,
        )
    assert result.months_used == ["2024-10", "2024-11"] and result.ingest.inserted == 61
    ranges = [(p, r) for p, r in fake.requests if p.endswith(".zip")]
    assert ranges[0] == (_path("2024-10"), f"bytes={len(whole) // 2}-")
    assert ranges[1] == (_path("2024-11"), None)
    assert ranges[2][0] == _path("2024-11") and ranges[2][1] is not None  # resumed, not restarted


def test_month_range_validation() -> None:
    assert month_range("2024-11", "2025-02") == ["2024-11", "2024-12", "2025-01", "2025-02"]
    with pytest.raises(ConfigError, match="YYYY-MM"):
        month_range("2024-13", None)
    with pytest.raises(ConfigError, match="after"):
        month_range("2025-02", "2024-11")


def test_cli_needs_exactly_one_source() -> None:
    result = run_cli("ingest", "--asset-id", "BTC", quiet=False)
    assert result.exit_code == 2 and "exactly one of --file" in result.stderr


# -- the current month from the daily files ------------------------------------------------

MARCH_DAYS = ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"]


def _day_path(day: str) -> str:
    return f"/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-{day}.zip"


def test_archive_plan_rule() -> None:
    months, days = archive_plan("2024-11", None, pd.Timestamp("2025-03-05 13:00"))
    assert months == ["2024-11", "2024-12", "2025-01", "2025-02"] and days == MARCH_DAYS
    assert archive_plan("2024-11", "2025-03", pd.Timestamp("2025-03-05"))[1] == MARCH_DAYS
    assert archive_plan("2024-11", "2025-01", pd.Timestamp("2025-03-05"))[1] == []
    assert archive_plan("2025-03", None, pd.Timestamp("2025-03-05")) == ([], MARCH_DAYS)
    assert archive_plan("2025-01", None, pd.Timestamp("2025-03-01")) == (["2025-01", "2025-02"], [])
    with pytest.raises(ConfigError, match="after the current month 2025-03"):
        archive_plan("2024-11", "2025-04", pd.Timestamp("2025-03-05"))


def test_current_month_from_daily_files_up_to_yesterday(
    shared_data: Path, db_url: str, tmp_path: Path
) -> None:
    csv = shared_data / "binance_klines/BTCUSDT_1d.csv"
    files = _archive_from_real_rows(csv, [*MONTHS[:5], *MARCH_DAYS[:3]])  # 03-04 not out yet
    engine = db.create_db_engine(db_url)
    with FakeArchive(files) as fake:
        kwargs = dict(start="2024-10", base_url=fake.url, cache_dir=tmp_path / "cache")
        today = pd.Timestamp("2025-03-05")
        result = ingest_binance_archive(engine, "BTC", "BTCUSDT", "1d", today=today, **kwargs)
        assert result.months_used == MONTHS[:5] and result.days_used == MARCH_DAYS[:3]
        assert result.days_missing == ["2025-03-04"] and not result.months_missing
        assert any("2025-03-04" in n and "not published yet" in n for n in result.notes)
        assert result.ingest.inserted == 151 + 3 and result.ingest.gaps["count"] == 0
        stored = db.read_market_frame(engine, "BTC", "1d")
        assert stored.index[-1] == pd.Timestamp("2025-03-03")
        # a day later the missing day is out: only it is downloaded, the rest is cached
        fake.files.update(_archive_from_real_rows(csv, ["2025-03-04"]))
        fake.requests.clear()
        today = pd.Timestamp("2025-03-05 09:00")
        again = ingest_binance_archive(engine, "BTC", "BTCUSDT", "1d", today=today, **kwargs)
    assert again.downloaded == ["2025-03-04"] and again.ingest.inserted == 1
    assert [p for p, _ in fake.requests if p.endswith(".zip")] == [_day_path("2025-03-04")]
    assert again.as_dict()["days_missing"] == [] and again.ingest.unchanged == 154


def test_nothing_published_yet_is_not_an_error(sqlite_url: str, tmp_path: Path) -> None:
    """A nightly `--start <this month>` on the 1st (nothing to fetch) or before yesterday's
    file is out (only unpublished days) ends with a note and nothing written; a month of
    missing days is still an error (a wrong symbol, or the archive moved)."""
    engine = db.create_db_engine(sqlite_url)
    with FakeArchive({}) as fake:
        kwargs = dict(start="2025-03", base_url=fake.url, cache_dir=tmp_path / "cache")
        first = ingest_binance_archive(
            engine, "BTC", "BTCUSDT", "1d", today=pd.Timestamp("2025-03-01 00:30"), **kwargs
        )
        assert first.ingest is None and first.days_used == [] and not fake.requests
        assert any("current month has no finished day" in n for n in first.notes)
        second = ingest_binance_archive(
            engine, "BTC", "BTCUSDT", "1d", today=pd.Timestamp("2025-03-03 00:30"), **kwargs
        )
        assert second.ingest is None and second.days_missing == MARCH_DAYS[:2]
        assert any("2025-03-01, 2025-03-02 are not published yet" in n for n in second.notes)
        with pytest.raises(DataError, match="no archive file of BTCUSDT 1d"):
            ingest_binance_archive(
                engine, "BTC", "BTCUSDT", "1d", today=pd.Timestamp("2025-03-05"), **kwargs
            )
    assert db.count_rows(engine, "BTC", "1d") == 0


def test_unpublished_last_month_falls_back_to_its_days(
    shared_data: Path, sqlite_url: str, tmp_path: Path
) -> None:
    february = [d.strftime("%Y-%m-%d") for d in pd.date_range("2025-02-01", "2025-02-28")]
    csv = shared_data / "binance_klines/BTCUSDT_1d.csv"
    files = _archive_from_real_rows(csv, ["2025-01", *february, "2025-03-01"])
    bad = bytearray(files[_day_path("2025-02-10")])
    bad[len(bad) // 2] ^= 0xFF
    files[_day_path("2025-02-10")] = bytes(bad)
    with FakeArchive(files) as fake:
        result = ingest_binance_archive(
            db.create_db_engine(sqlite_url),
            "BTC",
            "BTCUSDT",
            "1d",
            start="2025-01",
            base_url=fake.url,
            cache_dir=tmp_path / "cache",
            today=pd.Timestamp("2025-03-02"),
        )
    assert result.months_used == ["2025-01"] and result.months_missing == ["2025-02"]
    assert any("2025-02: the monthly file is not published yet" in n for n in result.notes)
    assert (
        list(result.days_refused) == ["2025-02-10"]
        and "CHECKSUM" in result.days_refused["2025-02-10"]
    )
    assert result.days_used == [d for d in february if d != "2025-02-10"] + ["2025-03-01"]
    assert result.ingest.inserted == 31 + 27 + 1 and result.ingest.gaps["missing_bars"] == 1


def test_cli_default_end_reaches_yesterday(sqlite_url: str, tmp_path: Path) -> None:
    """Today's real date: the last full month's file, then this month's days to yesterday."""
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    last_month = (today.to_period("M") - 1).strftime("%Y-%m")
    first = pd.Timestamp(f"{last_month}-01")
    bars = make_ohlcv(int((today - first) / pd.Timedelta(days=1)) + 1, start=str(first.date()))
    rows = pd.read_csv(
        write_binance_csv(bars, tmp_path / "k.csv", header=False, time_as="ms"), header=None
    )
    periods = [last_month] * int((bars.index < today.replace(day=1)).sum())
    periods += [d.strftime("%Y-%m-%d") for d in bars.index[len(periods) :]]
    files: dict[str, bytes] = {}
    for period, part in rows.groupby(pd.Series(periods)):
        kind = "daily" if len(period) == 10 else "monthly"
        name = f"BTCUSDT-1d-{period}.zip"
        data = _month_zip(part, name)
        path = f"/data/spot/{kind}/klines/BTCUSDT/1d/{name}"
        files[path] = data
        files[path + ".CHECKSUM"] = f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
    with FakeArchive(files) as fake:  # today's own file is served too: it must not be asked for
        env = {"KALLOS_BINANCE_ARCHIVE_URL": fake.url, "KALLOS_BINANCE_CACHE_DIR": str(tmp_path)}
        out = run_cli_json(
            "ingest", "--asset-id", "BTC", "--binance", "BTCUSDT", "--start", last_month,
            "--db-url", sqlite_url, env=env,
        )  # fmt: skip
    days = [d.strftime("%Y-%m-%d") for d in pd.date_range(today.replace(day=1), today)][:-1]
    assert out["months_used"] == [last_month] and out["days_used"] == days
    assert out["ingest"]["last"] == (today - pd.Timedelta(days=1)).isoformat()
    asked = [p for p, _ in fake.requests if "/daily/" in p and p.endswith(".zip")]
    assert len(asked) == len(days) and today.strftime("%Y-%m-%d") not in " ".join(asked)
