"""The ingest's staging table: validated rows bulk-loaded, then merged into the market table.

Rows are loaded chunk by chunk into a temporary table on the ingest's own connection
(PostgreSQL: ``COPY ... FROM STDIN`` in binary, or CSV for a chunk with scattered NULLs;
SQLite: batched ``executemany``), so memory holds one chunk whatever the file's size.

A file in strictly increasing time order (exchange exports are) is checked as it streams: it
has no duplicates, and its gaps, first and last bar and zero-volume count are summed chunk by
chunk. Any other order is settled in SQL over the staged rows: duplicates across chunks and
gaps. Then the comparison with stored rows, and one ``INSERT ... SELECT`` that writes only new
and changed candles (a plain insert when no stored bar of the asset falls in the file's span,
else ``ON CONFLICT DO UPDATE``). The table is temporary (dropped at commit on PostgreSQL, and
with the connection on SQLite), so a killed ingest leaves nothing behind; the only write to
the market table is that one statement, inside the caller's transaction.
"""

from __future__ import annotations

import heapq
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kallos_models.data import db

STAGING_TABLE = "kallos_ingest_staging"
#: The staged columns, in order: file line, open time as epoch microseconds (for arithmetic
#: that is the same on both backends), then the candles. PostgreSQL also stages the open time
#: as the market table stores it; SQLite derives its text from ``t_us`` (:func:`_open_time`).
STAGED_COLUMNS = ("line", "t_us", *db.RAW_COLUMNS)
#: Relative tolerance under which a stored value counts as unchanged (float text round trips).
RTOL = 1e-12
#: PostgreSQL's binary COPY: signature, flags, header extension length; and the trailer.
_PG_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_PG_COPY_TRAILER = b"\xff\xff"
#: PostgreSQL's timestamp epoch (2000-01-01) in Unix microseconds.
_PG_EPOCH_US = 946_684_800_000_000


@dataclass(frozen=True)
class Duplicates:
    """Open times staged more than once: identical copies (one kept) and conflicting ones."""

    identical_dropped: int
    conflicting_timestamps: int
    conflicting_rows: int
    #: (line, open time in epoch µs) of the first conflicting rows, by line
    listed: list[tuple[int, int]]


@dataclass(frozen=True)
class Merge:
    """What merging the staged rows into the market table did."""

    rows: int
    inserted: int
    updated: int
    first_us: int | None
    last_us: int | None
    zero_volume: int


@dataclass
class _InOrder:
    """What a file in strictly increasing time order tells as it streams (no SQL needed)."""

    step_us: int
    listed: int
    increasing: bool = True
    first_us: int | None = None
    last_us: int | None = None
    zero_volume: int = 0
    gap_count: int = 0
    missing: int = 0
    #: the ``listed`` largest gaps as (gap µs, -open time µs): a min-heap
    largest: list[tuple[int, int]] = field(default_factory=list)

    def add(self, t_us: np.ndarray, volume: np.ndarray) -> None:
        if not self.increasing or not len(t_us):
            return
        previous = t_us[:1] if self.last_us is None else np.array([self.last_us])
        spacing = np.diff(t_us, prepend=previous)
        if (spacing[1:] <= 0).any() or (self.last_us is not None and spacing[0] <= 0):
            self.increasing = False
            return
        self.first_us = int(t_us[0]) if self.first_us is None else self.first_us
        self.last_us = int(t_us[-1])
        self.zero_volume += int((volume == 0).sum())
        at = np.flatnonzero(spacing > self.step_us)
        self.gap_count += len(at)
        self.missing += int((spacing[at] // self.step_us - 1).sum())
        for i in at[np.argsort(-spacing[at], kind="stable")][: self.listed]:
            heapq.heappush(self.largest, (int(spacing[i]), -int(t_us[i])))
            if len(self.largest) > self.listed:
                heapq.heappop(self.largest)


class Staging:
    """A temporary staging table on one connection (create, load chunks, merge).

    Parameters
    ----------
    conn : Connection
        The ingest's connection, inside its transaction.
    step_us : int
        The bar size in microseconds (for gaps).
    listed : int
        How many duplicates and gaps to list.
    """

    def __init__(self, conn: Connection, step_us: int, listed: int) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.rows = 0
        self.listed = listed
        self._order = _InOrder(step_us, listed)
        self._create()

    def _create(self) -> None:
        floats = ", ".join(f"{c} DOUBLE PRECISION" for c in db.RAW_COLUMNS)
        if self.dialect == "postgresql":
            self._sql(f"DROP TABLE IF EXISTS pg_temp.{STAGING_TABLE}")
            self._sql(
                f"CREATE TEMPORARY TABLE {STAGING_TABLE} (line BIGINT, t_us BIGINT, "
                f"open_time TIMESTAMP WITHOUT TIME ZONE, {floats}) ON COMMIT DROP"
            )
        else:
            self._sql(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")
            self._sql(
                f"CREATE TEMPORARY TABLE {STAGING_TABLE} (line INTEGER, t_us INTEGER, "
                f"{floats.replace('DOUBLE PRECISION', 'REAL')})"
            )

    def _sql(self, statement: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(sa.text(statement), params or {})

    def load(self, lines: np.ndarray, times: pd.Series, values: pd.DataFrame) -> None:
        """Stage one chunk: file lines, naive UTC open times, the candle columns (NaN: NULL)."""
        if not len(lines):
            return
        t_us = times.to_numpy(dtype="datetime64[us]").astype("int64")
        floats = {c: values[c].to_numpy(dtype="float64") for c in db.RAW_COLUMNS}
        self._order.add(t_us, floats["volume"])
        if self.dialect == "postgresql":
            self._copy(lines.astype("int64"), t_us, floats)
        else:
            columns = [lines.astype("int64"), t_us, *floats.values()]
            rows = list(zip(*(c.tolist() for c in columns), strict=True))
            marks = ", ".join("?" * len(STAGED_COLUMNS))
            self.conn.exec_driver_sql(f"INSERT INTO {STAGING_TABLE} VALUES ({marks})", rows)
        self.rows += len(lines)

    def _copy(self, lines: np.ndarray, t_us: np.ndarray, floats: dict[str, np.ndarray]) -> None:
        """``COPY`` one chunk: binary (packed by NumPy) unless a column is only partly NULL."""
        empty = [c for c, v in floats.items() if np.isnan(v).all()]  # left NULL by COPY
        given = {c: v for c, v in floats.items() if c not in empty}
        names = ["line", "t_us", "open_time", *given]
        if any(np.isnan(v).any() for v in given.values()):
            times = t_us.astype("datetime64[us]")
            frame = pd.DataFrame({"line": lines, "t_us": t_us, "open_time": times, **given})
            text = frame.to_csv(header=False, index=False, na_rep="")
            buffer: io.StringIO | io.BytesIO = io.StringIO(text)
            options = "FORMAT csv"
        else:
            ints = [lines, t_us, t_us - _PG_EPOCH_US]
            fields = [("n", ">i2")]
            for i, kind in enumerate([">i8"] * 3 + [">f8"] * len(given)):
                fields += [(f"l{i}", ">i4"), (f"v{i}", kind)]
            packed = np.empty(len(lines), dtype=np.dtype(fields))
            packed["n"] = len(names)
            for i, column in enumerate([*ints, *given.values()]):
                packed[f"l{i}"] = 8
                packed[f"v{i}"] = column
            buffer = io.BytesIO(_PG_COPY_HEADER + packed.tobytes() + _PG_COPY_TRAILER)
            options = "FORMAT binary"
        statement = f"COPY {STAGING_TABLE} ({', '.join(names)}) FROM STDIN WITH ({options})"
        dbapi = self.conn.connection.dbapi_connection
        assert dbapi is not None
        cursor: Any = dbapi.cursor()
        try:
            if hasattr(cursor, "copy_expert"):  # psycopg2
                cursor.copy_expert(statement, buffer)
            else:  # psycopg 3
                with cursor.copy(statement) as copy:
                    copy.write(buffer.getvalue())
        finally:
            cursor.close()

    @property
    def in_order(self) -> bool:
        """Every staged open time is later than the one before (file order)."""
        return self._order.increasing

    def _index(self) -> None:
        """Index the staged open times (after loading: one sort instead of one per row)."""
        self._sql(f"CREATE INDEX {STAGING_TABLE}_t ON {STAGING_TABLE} (t_us, line)")
        if self.dialect == "postgresql":
            self._sql(f"ANALYZE {STAGING_TABLE}")  # temporary tables are never auto-analysed

    def deduplicate(self) -> Duplicates:
        """Keep one copy of identical duplicates; drop every copy of conflicting ones."""
        if self.in_order:
            return Duplicates(0, 0, 0, [])
        self._index()
        listed = self.listed
        differ = " OR ".join(
            f"MIN({c}) <> MAX({c}) OR COUNT({c}) NOT IN (0, COUNT(*))" for c in db.RAW_COLUMNS
        )
        dups = f"{STAGING_TABLE}_dups"
        self._sql(f"DROP TABLE IF EXISTS {dups}")
        self._sql(
            f"CREATE TEMPORARY TABLE {dups} AS SELECT t_us, COUNT(*) AS n, "
            f"CASE WHEN {differ} THEN 1 ELSE 0 END AS conflict "
            f"FROM {STAGING_TABLE} GROUP BY t_us HAVING COUNT(*) > 1"
        )
        totals = self._sql(
            f"SELECT COALESCE(SUM(CASE WHEN conflict = 0 THEN n - 1 ELSE 0 END), 0), "
            f"COALESCE(SUM(conflict), 0), COALESCE(SUM(CASE WHEN conflict = 1 THEN n END), 0) "
            f"FROM {dups}"
        ).one()
        identical, conflicting, conflicting_rows = (int(v) for v in totals)
        rows: list[tuple[int, int]] = []
        if conflicting:
            rows = [
                (int(line), int(t))
                for line, t in self._sql(
                    f"SELECT line, t_us FROM {STAGING_TABLE} WHERE t_us IN "
                    f"(SELECT t_us FROM {dups} WHERE conflict = 1) ORDER BY line LIMIT :k",
                    {"k": listed},
                )
            ]
            self._sql(
                f"DELETE FROM {STAGING_TABLE} WHERE t_us IN "
                f"(SELECT t_us FROM {dups} WHERE conflict = 1)"
            )
        if identical:
            self._sql(
                f"DELETE FROM {STAGING_TABLE} WHERE t_us IN (SELECT t_us FROM {dups}) AND "
                f"EXISTS (SELECT 1 FROM {STAGING_TABLE} AS first WHERE first.t_us = "
                f"{STAGING_TABLE}.t_us AND first.line < {STAGING_TABLE}.line)"
            )
        self._sql(f"DROP TABLE {dups}")
        self.rows -= identical + conflicting_rows
        return Duplicates(identical, conflicting, conflicting_rows, rows)

    def gaps(self) -> tuple[int, int, list[tuple[int, int]]]:
        """(gaps, missing bars, the ``listed`` largest as (open time µs, gap µs)) after dedup."""
        order, step_us, listed = self._order, self._order.step_us, self.listed
        if order.increasing:
            largest = sorted(order.largest, reverse=True)
            return order.gap_count, order.missing, [(-t, d) for d, t in largest]
        spaced = (
            f"WITH spaced AS (SELECT t_us, t_us - LAG(t_us) OVER (ORDER BY t_us) AS d "
            f"FROM {STAGING_TABLE}) "
        )
        count, missing = self._sql(
            spaced + "SELECT COUNT(*), COALESCE(SUM(d / :step - 1), 0) FROM spaced WHERE d > :step",
            {"step": step_us},
        ).one()
        largest = self._sql(
            spaced + "SELECT t_us, d FROM spaced WHERE d > :step ORDER BY d DESC, t_us LIMIT :k",
            {"step": step_us, "k": listed},
        ).all()
        return int(count), int(missing), [(int(t), int(d)) for t, d in largest]

    def merge(self, asset_id: str, timeframe: str) -> Merge:
        """Count new and changed rows against the market table, then write exactly those."""
        key = {"asset_id": asset_id, "timeframe": timeframe}
        order = self._order
        if order.increasing:
            rows, first, last, zero = self.rows, order.first_us, order.last_us, order.zero_volume
        else:
            rows, first, last, zero = self._sql(
                f"SELECT COUNT(*), MIN(t_us), MAX(t_us), "
                f"COALESCE(SUM(CASE WHEN volume = 0 THEN 1 ELSE 0 END), 0) FROM {STAGING_TABLE}"
            ).one()
        m, t = db.MARKET_TABLE, db.market_table
        self._lock_key(asset_id, timeframe)
        stored = 0
        if rows and first is not None and last is not None:
            span = sa.select(sa.func.count()).where(
                t.c.asset_id == asset_id,
                t.c.timeframe == timeframe,
                t.c.open_time.between(_datetime(first), _datetime(last)),
            )
            stored = int(self.conn.execute(span).scalar_one())
        cols = ", ".join(db.RAW_COLUMNS)
        insert = (
            f"INSERT INTO {m} (asset_id, timeframe, open_time, {cols}) "
            f"SELECT :asset_id, :timeframe, {self._open_time('s')}, {cols} "
            f"FROM {STAGING_TABLE} AS s"
        )
        if not stored:  # nothing stored in the file's span: every row is new
            inserted, updated = int(rows), 0
            if rows:
                self._sql(insert, key)
        else:
            if self.dialect == "postgresql":
                self._sql(f"ANALYZE {STAGING_TABLE}")  # temporary tables are never auto-analysed
            counts = self._sql(
                f"SELECT COALESCE(SUM(CASE WHEN m.open_time IS NULL THEN 1 ELSE 0 END), 0), "
                f"COALESCE(SUM(CASE WHEN m.open_time IS NOT NULL AND ({_differ('m', 's')}) "
                f"THEN 1 ELSE 0 END), 0) "
                f"FROM {STAGING_TABLE} AS s LEFT JOIN {m} AS m ON m.asset_id = :asset_id AND "
                f"m.timeframe = :timeframe AND m.open_time = {self._open_time('s')}",
                key,
            ).one()
            inserted, updated = int(counts[0]), int(counts[1])
            if inserted or updated:
                assign = ", ".join(f"{c} = excluded.{c}" for c in db.RAW_COLUMNS)
                self._sql(
                    f"{insert} WHERE true ON CONFLICT (asset_id, timeframe, open_time) DO "
                    f"UPDATE SET {assign} WHERE {_differ(m, 'excluded')}",
                    key,
                )
        return Merge(
            rows=int(rows),
            inserted=inserted,
            updated=updated,
            first_us=None if first is None else int(first),
            last_us=None if last is None else int(last),
            zero_volume=int(zero),
        )

    def _lock_key(self, asset_id: str, timeframe: str) -> None:
        """Wait for any other ingest of this asset and timeframe to commit, then hold it off.

        Taken at the merge, not before: concurrent ingests read and stage their files in
        parallel, and each then compares with what the one before it committed.
        PostgreSQL: a transaction-level advisory lock on the key; SQLite: the database's
        write lock (a write that touches nothing), taken before the first read of the market
        table in this transaction, so it waits for the other writer instead of deadlocking.
        """
        if self.dialect == "postgresql":
            self._sql(
                "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))",
                {"key": f"kallos-ingest/{asset_id}/{timeframe}"},
            )
        else:
            self._sql(f"DELETE FROM {db.MARKET_TABLE} WHERE 0 = 1")

    def _open_time(self, alias: str) -> str:
        """SQL: the staged open time as the market table stores it.

        SQLite stores SQLAlchemy's text ``YYYY-MM-DD HH:MM:SS.ffffff``, built here from the
        epoch microseconds (floored, so times before 1970 are right too).
        """
        if self.dialect == "postgresql":
            return f"{alias}.open_time"
        micros = f"(({alias}.t_us % 1000000) + 1000000) % 1000000"
        seconds = f"({alias}.t_us - {micros}) / 1000000"
        return f"strftime('%Y-%m-%d %H:%M:%S', {seconds}, 'unixepoch') || printf('.%06d', {micros})"

    def drop(self) -> None:
        """Drop the staging table now (SQLite keeps temporary tables until disconnect)."""
        if self.dialect != "postgresql":
            self._sql(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")


def _datetime(us: int) -> Any:
    return pd.Timestamp(int(us), unit="us").to_pydatetime()


def _differ(old: str, new: str) -> str:
    """SQL: does any candle value of ``new`` differ from ``old`` (NULL-aware, within RTOL)?"""
    parts = [
        f"({old}.{c} IS NULL AND {new}.{c} IS NOT NULL) OR "
        f"({old}.{c} IS NOT NULL AND {new}.{c} IS NULL) OR "
        f"ABS({old}.{c} - {new}.{c}) > {RTOL} * ABS({new}.{c})"
        for c in db.RAW_COLUMNS
    ]
    return " OR ".join(parts)
