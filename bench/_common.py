"""Shared helpers for the benchmarks: side-by-side timing and the performance.md table."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PERFORMANCE_MD = ROOT / "documentation" / "performance.md"
PYTHON = sys.executable
KALLOS_RUN = str(Path(sys.executable).with_name("kallos-run"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB, Python {platform.python_version()}"


def time_command(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> float:
    """Wall seconds of one run of ``cmd`` (output discarded; a failure raises)."""
    started = time.perf_counter()
    subprocess.run(
        cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return time.perf_counter() - started


def side_by_side(
    ours: Callable[[], float], theirs: Callable[[], float], runs: int
) -> tuple[list[float], list[float]]:
    """Alternate the two jobs ``runs`` times each (so drift hits both alike)."""
    a, b = [], []
    for i in range(runs):
        if i % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    return a, b


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def record(key: str, row: dict[str, str]) -> None:
    """Write one benchmark's row into documentation/performance.md (and print it as JSON).

    ``row`` keys: what, compared_with, target, measured, verdict, command.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    row = {**row, "date": stamp, "machine": machine()}
    print(json.dumps({"bench": key, **row}))
    text = PERFORMANCE_MD.read_text() if PERFORMANCE_MD.exists() else ""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    body = (
        f"{start}\n| {row['what']} | {row['compared_with']} | {row['target']} | {row['measured']} "
        f"| {row['verdict']} | {row['date']}, {row['machine']} | `{row['command']}` |\n{end}"
    )
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        marker = "<!-- bench:rows -->"
        if marker not in text:
            raise SystemExit(f"{PERFORMANCE_MD} lacks the {marker} marker")
        text = text.replace(marker, f"{body}\n{marker}")
    PERFORMANCE_MD.write_text(text)


def record_ratio(
    key: str,
    *,
    what: str,
    compared_with: str,
    target: float,
    ours: Sequence[float],
    theirs: Sequence[float],
    command: str,
    note: str = "",
) -> float:
    """Record median(ours) / median(theirs) of wall seconds against a ``<= target`` goal."""
    ratio = median(ours) / median(theirs)
    record(
        key,
        {
            "what": what,
            "compared_with": compared_with,
            "target": f"<= {target:g}x",
            "measured": f"{ratio:.3f}x ({median(ours):.2f} s vs {median(theirs):.2f} s, "
            f"median of {len(ours)})" + (f"; {note}" if note else ""),
            "verdict": "met" if ratio <= target else "missed",
            "command": command,
        },
    )
    return ratio


def bench_space(trial, timeframe: str) -> dict:
    """The GRU search space of the registry, narrowed to widths a 2-core machine trains fast.

    Module-level so that tuner worker processes can import it.
    """
    return {
        "hidden_dim": trial.suggest_int("hidden_dim", 16, 64, log=True),
        "n_rnn_layers": trial.suggest_int("n_rnn_layers", 1, 2),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "input_chunk_length": trial.suggest_int("input_chunk_length", 30, 70),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True),
    }


def ingest_shared(url: str, asset: str, timeframe: str, relative: str) -> None:
    from kallos_models.data import db, ingest

    ingest.ingest_file(db.create_db_engine(url), asset, timeframe, SHARED_DATA / relative)


def pg_database(name: str) -> str:
    """Create (or recreate) a PostgreSQL database on the local server; return its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
