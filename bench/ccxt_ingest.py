"""Exchange ingest through ccxt against the local fake Binance API: rows per second for a long
history, against a bare ccxt fetch loop, and what a re-run costs.

Generates --years of 1h bars ending at the bar still open now, serves them from the fake
Binance server of the tests (tests/fake_binance.py, 127.0.0.1, Binance's 1000-bar pages),
then times, alternately, :func:`kallos_models.data.exchange.ingest_exchange` into a fresh
database (pages fetched, checked, staged, merged) and a bare ccxt loop fetching the same pages
(``fetch_ohlcv(since, limit=1000)`` until the last closed bar; no checks, no database). Both
use the same client settings (rate limiting on). Finally the ingest is run again on the last
database: it must cost one klines request and write nothing. One untimed bare loop first
imports ccxt's binance module, so neither side pays for it.

    .venv/bin/python bench/ccxt_ingest.py [--years 3] [--runs 3] [--backend sqlite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _common import ROOT, median, pg_database, record

sys.path.insert(0, str(ROOT))  # the fake server lives with the tests

from tests.fake_binance import FakeBinance  # noqa: E402
from tests.helpers import make_ohlcv  # noqa: E402

TARGET_RATIO = 1.5


def bars_to_now(years: float) -> pd.DataFrame:
    """1h bars over ``years``, the last one the bar still open now."""
    open_bar = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("1h")
    n = int(years * 365 * 24)
    return make_ohlcv(n, freq="1h", start=str(open_bar - (n - 1) * pd.Timedelta(hours=1)))


def run_ours(url: str, fake: FakeBinance, since: pd.Timestamp) -> tuple[float, int, int]:
    """(wall seconds, rows inserted, klines requests) of one exchange ingest."""
    from kallos_models.data import db, exchange

    engine = db.create_db_engine(url, for_writing=True)
    started = time.perf_counter()
    result = exchange.ingest_exchange(
        engine, "BTC", "binance", "BTC/USDT", "1h", since=since, api_url=fake.url
    )
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, result.ingest.inserted if result.ingest else 0, result.requests


def run_theirs(fake: FakeBinance, since: pd.Timestamp) -> float:
    """Wall seconds of a bare ccxt loop over the same pages (markets loaded, as ours does)."""
    from kallos_models.data import exchange

    started = time.perf_counter()
    client = exchange.open_exchange("binance", api_url=fake.url)
    client.load_markets()
    last_closed = int(pd.Timestamp.now(tz="UTC").tz_localize(None).floor("1h").value // 10**6)
    last_closed -= 3_600_000
    cursor = int(since.value // 10**6)
    rows = 0
    while True:
        page = client.fetch_ohlcv("BTC/USDT", "1h", since=cursor, limit=1000)
        rows += len(page)
        if not page or page[-1][0] >= last_closed:
            break
        cursor = page[-1][0] + 3_600_000
    return time.perf_counter() - started


def fresh(backend: str, work: Path, name: str) -> str:
    if backend == "sqlite":
        (work / f"{name}.db").unlink(missing_ok=True)
        return f"sqlite:///{work / name}.db"
    return pg_database(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--years", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kallos_bench_ccxt_"))
    bars = bars_to_now(args.years)
    since = bars.index[0]
    ours: list[float] = []
    theirs: list[float] = []
    url = ""
    with FakeBinance(bars) as fake:
        run_theirs(fake, since)  # warm-up, untimed: imports ccxt's binance module
        for i in range(args.runs):
            for job in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if job == "ours":
                    url = fresh(args.backend, work, f"kallos_bench_ccxt_{i}")
                    seconds, inserted, requests = run_ours(url, fake, since)
                    if inserted not in (len(bars) - 1, len(bars)):  # the hour may turn meanwhile
                        raise SystemExit(f"inserted {inserted} of {len(bars) - 1} closed bars")
                    ours.append(seconds)
                else:
                    theirs.append(run_theirs(fake, since))
        fake.klines.clear()
        from kallos_models.data import db, exchange

        engine = db.create_db_engine(url, for_writing=True)
        started = time.perf_counter()
        again = exchange.ingest_exchange(
            engine, "BTC", "binance", "BTC/USDT", "1h", api_url=fake.url
        )
        rerun_s = time.perf_counter() - started
        rerun_requests = len(fake.klines)
    ratio = median(ours) / median(theirs)
    rows = len(bars) - 1
    record(
        f"ccxt_ingest_{args.backend}",
        {
            "what": f"`ingest --exchange` (ccxt, fake Binance on 127.0.0.1) of {rows:,} 1h bars "
            f"({args.years:g} years, {requests} pages of 1000) into {args.backend}: "
            f"{rows / median(ours):,.0f} rows/s",
            "compared_with": "a bare ccxt fetch_ohlcv loop over the same pages (no checks, "
            "no database; 6 columns, where ours reads Binance's klines rows and stores 10)",
            "target": f"<= {TARGET_RATIO:g}x; re-run 1 klines request, 0 rows written",
            "measured": f"{ratio:.2f}x ({median(ours):.2f} s vs {median(theirs):.2f} s, median "
            f"of {args.runs}); re-run {rerun_requests} klines request, "
            f"{'up to date' if again.ingest is None else again.ingest.rows_written} "
            f"in {rerun_s:.2f} s",
            "verdict": "met"
            if ratio <= TARGET_RATIO and rerun_requests == 1 and again.ingest is None
            else "missed",
            "command": f"bench/ccxt_ingest.py --years {args.years:g} --runs {args.runs} "
            f"--backend {args.backend}",
        },
    )


if __name__ == "__main__":
    main()
