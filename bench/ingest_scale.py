"""Ingest of generated 1-minute bars: rows per second and peak memory, against the database's
own bulk loader.

For each backend (SQLite, PostgreSQL): writes a Binance kline CSV of N one-minute bars
(generated in chunks: a random walk with consistent OHLC), then times, alternately,
``kallos-run ingest`` of it into a fresh database and the database's own loader of the same
CSV into a bare 12-column table (``sqlite3 .import --csv``; ``psql \\copy ... CSV``). Peak
resident memory of the ingest process is its ``ru_maxrss`` (os.wait4). Also a second, smaller
file (--small rows) for the memory figure, to show it is flat rather than growing with the file.

    .venv/bin/python bench/ingest_scale.py [--rows 2000000] [--small 200000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import KALLOS_RUN, median, pg_database, record

TARGET_RATIO = 3.0
TARGET_MB = 500.0
BARE_COLUMNS = (
    "open_time, open, high, low, close, volume, close_time, quote_asset_volume, "
    "number_of_trades, taker_buy_base, taker_buy_quote, ignore_"
)


def write_minute_csv(path: Path, rows: int, *, chunk: int = 250_000, seed: int = 0) -> Path:
    """A Binance kline CSV (header row, epoch-millisecond times) of ``rows`` 1-minute bars."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2019-01-01").value // 1_000_000
    price = 10_000.0
    with path.open("w") as out:
        out.write(
            "Open time,Open,High,Low,Close,Volume,Close time,Quote asset volume,"
            "Number of trades,Taker buy base asset volume,Taker buy quote asset volume,Ignore\n"
        )
        for first in range(0, rows, chunk):
            n = min(chunk, rows - first)
            close = price * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
            open_ = np.concatenate([[price], close[:-1]])
            price = float(close[-1])
            spread = np.abs(rng.normal(0, 0.0004, n)) * close
            volume = rng.lognormal(2, 0.7, n)
            t = start + (first + np.arange(n)) * 60_000
            frame = pd.DataFrame(
                {
                    "t": t,
                    "o": open_.round(2),
                    "h": (np.maximum(open_, close) + spread).round(2),
                    "l": (np.minimum(open_, close) - spread).round(2),
                    "c": close.round(2),
                    "v": volume.round(5),
                    "ct": t + 59_999,
                    "q": (volume * close).round(4),
                    "n": rng.integers(1, 500, n),
                    "tb": (volume / 2).round(5),
                    "tq": (volume * close / 2).round(4),
                    "i": 0,
                }
            )
            frame.to_csv(out, header=False, index=False)
    return path


def run_ours(url: str, csv: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``kallos-run -q ingest`` of ``csv`` into ``url``."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            KALLOS_RUN,
            "-q",
            "ingest",
            "--db-url",
            url,
            "--asset-id",
            "BTC",
            "--timeframe",
            "1m",
            "--file",
            str(csv),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def run_theirs(backend: str, target: str, csv: Path, *, keyed: bool = False) -> float:
    """Wall seconds of the database's own loader of ``csv`` into a fresh bare table.

    ``keyed``: a typed table (BIGINT open time as its primary key, DOUBLE PRECISION values),
    closer to what the market table costs to fill (it keeps a primary key index).
    """
    names = [c.strip() for c in BARE_COLUMNS.split(",")]
    if keyed:
        typed = ", ".join(
            f"{c} {'BIGINT' if c == 'open_time' else 'DOUBLE PRECISION'}" for c in names
        )
        create = f"CREATE TABLE bare ({typed}, PRIMARY KEY (open_time))"
    else:
        create = f"CREATE TABLE bare ({', '.join(f'{c} TEXT' for c in names)})"
    if backend == "sqlite":
        Path(target).unlink(missing_ok=True)
        cmd = [
            "sqlite3",
            target,
            create if keyed else create.replace("TEXT", ""),
            ".import --csv --skip 1 " + str(csv) + " bare",
        ]
    else:
        cmd = [
            "psql",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            target,
            "-c",
            "DROP TABLE IF EXISTS bare",
            "-c",
            create,
            "-c",
            f"\\copy bare FROM '{csv}' WITH (FORMAT csv, HEADER true)",
        ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def fresh(backend: str, work: Path, name: str) -> str:
    if backend == "sqlite":
        (work / f"{name}.db").unlink(missing_ok=True)
        return f"sqlite:///{work / name}.db"
    return pg_database(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--small", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kallos_bench_ingest_"))
    big = write_minute_csv(work / "big.csv", args.rows)
    small = write_minute_csv(work / "small.csv", args.small, seed=1)
    size_mb = big.stat().st_size / 1e6
    for backend in args.backends.split(","):
        url = ""
        ours: list[float] = []
        theirs: list[float] = []
        keyed: list[float] = []
        peaks: list[float] = []
        for i in range(args.runs):
            for job in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if job == "ours":
                    url = fresh(backend, work, "kallos_bench_ours")
                    seconds, peak = run_ours(url, big)
                    ours.append(seconds)
                    peaks.append(peak)
                else:
                    target = (
                        str(work / "bare.db")
                        if backend == "sqlite"
                        else fresh(backend, work, "kallos_bench_bare").rsplit("/", 1)[1]
                    )
                    theirs.append(run_theirs(backend, target, big))
                    keyed.append(run_theirs(backend, target, big, keyed=True))
        _, small_peak = run_ours(fresh(backend, work, "kallos_bench_small"), small)
        rerun_s, rerun_peak = run_ours(url, big)  # the last run's database: nothing to write
        ratio = median(ours) / median(theirs)
        loader = "sqlite3 .import --csv" if backend == "sqlite" else "psql \\copy (CSV)"
        record(
            f"ingest_{backend}",
            {
                "what": f"`kallos-run ingest` of {args.rows:,} 1-minute bars ({size_mb:.0f} MB "
                f"CSV) into {backend}: {args.rows / median(ours):,.0f} rows/s",
                "compared_with": f"{loader} of the same CSV into a bare text table",
                "target": f"<= {TARGET_RATIO:g}x; peak RSS <= {TARGET_MB:g} MB",
                "measured": f"{ratio:.2f}x ({median(ours):.1f} s vs {median(theirs):.1f} s, "
                f"median of {args.runs}); {median(ours) / median(keyed):.2f}x against the "
                f"loader into a typed table with a primary key ({median(keyed):.1f} s); "
                f"peak RSS {max(peaks):.0f} MB ({args.rows:,} rows), "
                f"{small_peak:.0f} MB ({args.small:,} rows); re-ingest writing nothing "
                f"{rerun_s:.1f} s, {rerun_peak:.0f} MB",
                "verdict": "met"
                if ratio <= TARGET_RATIO and max(peaks, default=0) <= TARGET_MB
                else "missed",
                "command": f"bench/ingest_scale.py --rows {args.rows} --small {args.small} "
                f"--backends {backend}",
            },
        )


if __name__ == "__main__":
    main()
