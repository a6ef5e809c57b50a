"""Hostile values where they enter: URLs that cannot leak, a binary .env, read-only
databases, asset ids the key columns cannot hold, and concurrent first use of PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from kallos_models.data import db, ingest
from kallos_models.errors import DataError
from kallos_models.urls import UNPARSEABLE, mask_url, scrub
from tests.helpers import assert_error, make_ohlcv, run_cli, write_binance_csv

# -- URLs: whatever cannot be read unambiguously is masked whole -------------------------------

#: (URL, the pieces of its password that must never be shown)
LEAKY_URLS = [
    ("postgresql://kallos:s3cr@tPa55@127.0.0.1:5432/market", ["s3cr", "tPa55"]),
    ("postgresql://kallos:qx/zz@ww9@127.0.0.1:5432/market", ["qx", "zz", "ww9"]),
    ("postgresql://kallos:Kq1?Zx9@Wv3@127.0.0.1/market", ["Kq1", "Zx9", "Wv3"]),
    ("postgresql://kallos:Pq4#Rs5@127.0.0.1/market", ["Pq4", "Rs5"]),
    ("postgresql://kallos:hun[ter2@127.0.0.1/market", ["hun[ter2", "ter2"]),
    ("postgresql://kallos:Zz9%zz@127.0.0.1/market", ["Zz9", "%zz"]),
    ("post gres://kallos:Qq77@host/market", ["Qq77"]),
    ("postgresql:/kallos:Qq77@host/market", ["Qq77"]),
]


@pytest.mark.parametrize(("url", "pieces"), LEAKY_URLS)
def test_a_url_that_cannot_be_read_shows_no_piece_of_its_password(
    url: str, pieces: list[str]
) -> None:
    result = run_cli("assets", "--db-url", url)
    line = assert_error(result)
    for piece in pieces:
        assert piece not in result.output, line
        assert piece not in mask_url(url)


def test_mask_url_masks_unparseable_text_whole() -> None:
    assert mask_url("not a url:secret@") == UNPARSEABLE
    assert mask_url("::::@@@") == UNPARSEABLE
    assert mask_url("sqlite:///kallos.db") == "sqlite:///kallos.db"
    assert mask_url("postgresql://u:pw@h:1/db?sslpassword=k3y") == (
        "postgresql://u:***@h:1/db?sslpassword=***"
    )


def test_scrub_hides_the_fragments_a_driver_prints_as_a_host() -> None:
    url = "postgresql://kallos:s3cr@tPa55@127.0.0.1/market"
    message = 'could not translate host name "tPa55@127.0.0.1" to address: s3cr'
    cleaned = scrub(message, url)
    assert "s3cr" not in cleaned and "tPa55" not in cleaned


# -- .env ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [bytes(range(128, 256)) * 3, b"\x00\x00KALLOS_DB_URL=sqlite:///x.db\n"]
)
def test_a_binary_env_file_is_one_error_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / ".env").write_bytes(content)
    assert_error(run_cli("assets"), ".env is not a text file", "KEY=VALUE")


def test_an_env_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfKALLOS_DB_URL=sqlite:///bom.db\n")
    assert run_cli("assets").exit_code == 0
    assert (tmp_path / "bom.db").is_file()


# -- read-only databases ------------------------------------------------------------------------


def _ingested_sqlite(tmp_path: Path) -> tuple[Path, Path]:
    path = write_binance_csv(make_ohlcv(60), tmp_path / "k.csv")
    database = tmp_path / "ro" / "k.db"
    database.parent.mkdir()
    ingest.ingest_file(db.create_db_engine(f"sqlite:///{database}"), "BTC", "1d", path)
    return path, database


def test_a_read_only_sqlite_uri_is_one_error_line(tmp_path: Path) -> None:
    csv, database = _ingested_sqlite(tmp_path)
    before = database.read_bytes()
    url = f"sqlite:///file:{database}?mode=ro&uri=true"
    args = ("ingest", "--asset-id", "ETH", "--timeframe", "1d", "--file", str(csv))
    assert_error(run_cli(*args, "--db-url", url), "is read-only", "drop mode=ro")
    assert database.read_bytes() == before


def test_a_read_only_sqlite_file_is_one_error_line(tmp_path: Path) -> None:
    """A real permission refusal: the file and its folder read-only (for root, ingest runs
    without the capability to override file permissions)."""
    csv, database = _ingested_sqlite(tmp_path)
    before = database.read_bytes()
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv: file permissions cannot be enforced")
        prefix = [setpriv, "--bounding-set=-dac_override,-fowner"]
    database.chmod(0o444)
    database.parent.chmod(0o555)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "kallos_models", "ingest", "--asset-id", "ETH"]
            + ["--timeframe", "1d", "--file", str(csv), "--db-url", f"sqlite:///{database}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        database.parent.chmod(0o755)
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "is read-only" in errors[0] and "writable" in errors[0]
    assert "Traceback" not in done.stderr
    assert database.read_bytes() == before


# -- key values the columns cannot hold --------------------------------------------------------


@pytest.mark.parametrize(
    ("asset", "problem"),
    [("A" * 65, "is 65 characters long"), ("BT\x07C", "control character"), (" BTC", "whitesp")],
)
def test_an_asset_id_the_key_column_cannot_hold_is_refused_on_both_backends(
    tmp_path: Path, db_url: str, asset: str, problem: str
) -> None:
    csv = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    args = ("ingest", "--asset-id", asset, "--timeframe", "1d", "--file", str(csv))
    assert_error(run_cli(*args, "--db-url", db_url), problem, "--asset-id")
    engine = db.create_db_engine(db_url)
    with pytest.raises(DataError, match=problem):
        ingest.ingest_file(engine, asset, "1d", csv)
    assert db.list_assets(engine) == []
    longest = ingest.ingest_file(engine, "A" * 64, "1d", csv)  # the limit itself is fine
    assert longest.rows_in_db == 30


# -- concurrent first use ----------------------------------------------------------------------


def test_concurrent_first_use_of_an_empty_postgresql_database(pg_url: str) -> None:
    """Eight connections set up the tables at the same instant: none fails, one table."""
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            db.create_db_engine(pg_url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = sa.create_engine(pg_url)
    assert sa.inspect(engine).has_table(db.MARKET_TABLE)
    engine.dispose()


def test_two_first_ingests_into_an_empty_postgresql_database_both_land(
    tmp_path: Path, pg_url: str
) -> None:
    """Real processes started together, each ingesting its own asset: both exit 0."""
    csv = write_binance_csv(make_ohlcv(40), tmp_path / "k.csv")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kallos_models", "-q", "ingest", "--asset-id", asset]
            + ["--timeframe", "1d", "--file", str(csv), "--db-url", pg_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for asset in ("BTC", "ETH", "SOL")
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert {a["asset_id"] for a in db.list_assets(db.create_db_engine(pg_url))} == {
        "BTC",
        "ETH",
        "SOL",
    }


def test_two_ingests_of_the_same_new_asset_at_once_both_land(tmp_path: Path, db_url: str) -> None:
    """Both see no stored bars while staging; the merge lock makes the second compare with
    what the first committed: one inserts every bar, the other finds them unchanged."""
    rows = 150_000  # merges long enough (about 1 s) that the two overlap
    csv = write_binance_csv(make_ohlcv(rows, freq="1min", start="2020-01-01"), tmp_path / "k.csv")
    db.create_db_engine(db_url).dispose()  # the tables exist: only the merge can race
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kallos_models", "-q", "ingest", "--asset-id", "BTC"]
            + ["--timeframe", "1m", "--file", str(csv), "--db-url", db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summaries = sorted((json.loads(out) for out, _ in outs), key=lambda s: -s["inserted"])
    assert [(s["inserted"], s["unchanged"]) for s in summaries] == [(rows, 0), (0, rows)]
    assert db.count_rows(db.create_db_engine(db_url), "BTC", "1m") == rows
