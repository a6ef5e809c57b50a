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
from kallos_models.data.binance_archive import ingest_binance_archive, month_range
from kallos_models.errors import ConfigError
from tests.helpers import run_cli, run_cli_json

MONTHS = ["2024-10", "2024-11", "2024-12", "2025-01", "2025-02", "2025-03"]


def _month_zip(rows: pd.DataFrame, name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name.replace(".zip", ".csv"), rows.to_csv(header=False, index=False))
    return buf.getvalue()


def _archive_from_real_rows(csv: Path) -> dict[str, bytes]:
    """Monthly zips + CHECKSUM files the way Binance publishes them: epoch ms, µs from 2025."""
    frame = pd.read_csv(csv)
    times = pd.to_datetime(frame["Open time"].str.replace(" UTC", "").str.strip())
    files: dict[str, bytes] = {}
    for month in MONTHS:
        rows = frame[times.dt.strftime("%Y-%m") == month].copy()
        t = times[rows.index]
        unit = 1_000_000 if month >= "2025" else 1_000
        ns = t.astype("int64")
        rows["Open time"] = (ns // (1_000_000_000 // unit)).astype("int64")
        rows["Close time"] = rows["Open time"] + 86_400 * unit - 1
        name = f"BTCUSDT-1d-{month}.zip"
        data = _month_zip(rows, name)
        base = f"/data/spot/monthly/klines/BTCUSDT/1d/{name}"
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
