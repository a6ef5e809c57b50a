"""Database access: one engine factory, the market table, password masking.

SQLAlchemy 2 Core only; every statement is a SQLAlchemy construct with bound parameters.
The same code runs on SQLite (the embedded default) and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from kallos_models.errors import DatabaseError
from kallos_models.urls import mask_url, resolve_url, scrub, url_from_db_kwargs

__all__ = [
    "count_rows",
    "create_db_engine",
    "engine_options",
    "list_assets",
    "make_engine",
    "mask_url",
    "read_market_frame",
    "resolve_url",
    "scrub",
    "upsert_rows",
    "url_from_db_kwargs",
]

logger = logging.getLogger(__name__)

MARKET_TABLE = "market_data"
KEY_COLUMNS = ("asset_id", "timeframe", "open_time")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
KLINE_COLUMNS = (
    "quote_asset_volume",
    "number_of_trades",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)
#: The candle columns: all the market table holds besides the key. Indicators are computed
#: when a window is loaded (:mod:`kallos_models.data.features`), never stored.
RAW_COLUMNS = PRICE_COLUMNS + KLINE_COLUMNS
#: The NOT NULL flag of the first round's schema, which stored indicators in the table; it
#: is dropped on first contact (:func:`create_db_engine`) so candles can be written again.
LEGACY_NOT_NULL_COLUMN = "warmup"

metadata = sa.MetaData()

market_table = sa.Table(
    MARKET_TABLE,
    metadata,
    sa.Column("asset_id", sa.String(64), primary_key=True),
    sa.Column("timeframe", sa.String(16), primary_key=True),
    # Naive timestamps, always UTC: identical on SQLite and PostgreSQL.
    sa.Column("open_time", sa.DateTime(timezone=False), primary_key=True),
    *[sa.Column(c, sa.Float, nullable=False) for c in PRICE_COLUMNS],
    *[sa.Column(c, sa.Float, nullable=True) for c in KLINE_COLUMNS],
)


def engine_options(url: URL, *, schema: str | None = None) -> dict[str, Any]:
    """``sqlalchemy.create_engine`` keyword arguments for ``url``: the one place they are set.

    Used for the market database and for Optuna's storage alike.

    Parameters
    ----------
    url : URL
        A resolved URL (:func:`resolve_url`). No default.
    schema : str or None, default None
        A PostgreSQL schema put first on the connection's ``search_path`` (Optuna's tables
        in their own schema); must already be a checked identifier.

    Returns
    -------
    dict
        SQLite: a 30 s lock timeout. PostgreSQL: pre-ping, a 10 s connect timeout, batched
        executemany on psycopg2, and the ``search_path`` for ``schema``.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 30}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        connect_args: dict[str, Any] = {"connect_timeout": 10}
        if schema:
            quoted = '"' + schema.replace('"', '""') + '"'
            connect_args["options"] = f"-csearch_path={quoted}"
        kwargs["connect_args"] = connect_args
        if url.get_driver_name() == "psycopg2":
            # Batched executemany: the upsert sends pages of rows, not one round trip per row.
            kwargs["executemany_mode"] = "values_plus_batch"
            kwargs["executemany_batch_page_size"] = 500
    return kwargs


def make_engine(
    db: str | URL | Mapping[str, Any], *, schema: str | None = None, autocommit: bool = False
) -> Engine:
    """The one engine factory: a SQLAlchemy engine with :func:`engine_options`, unconnected.

    :func:`create_db_engine` (the market database) and the tune stage's Optuna storage both
    make their engines here, then check the connection with their own messages.

    Parameters
    ----------
    db
        A URL or the seed's ``db_kwargs`` dict. No default.
    schema : str or None, default None
        PostgreSQL schema first on the ``search_path`` (see :func:`engine_options`).
    autocommit : bool, default False
        PostgreSQL ``AUTOCOMMIT`` isolation (for ``CREATE SCHEMA`` outside a transaction).

    Raises
    ------
    DatabaseError
        SQLAlchemy cannot use the URL (e.g. its driver is not installed); password masked.
    """
    url = resolve_url(db)
    options = engine_options(url, schema=schema)
    if autocommit and url.get_backend_name() == "postgresql":
        options["isolation_level"] = "AUTOCOMMIT"
    try:
        return sa.create_engine(url, **options)
    except Exception as exc:  # e.g. driver not installed for this dialect
        raise DatabaseError(
            f"cannot use database {mask_url(url)}: {scrub(str(exc), url)}"
        ) from None


def create_db_engine(db: str | URL | Mapping[str, Any], *, create_tables: bool = True) -> Engine:
    """Create an engine, check the connection, and create missing tables.

    Parameters
    ----------
    db
        A URL (``sqlite:///path.db``, ``postgresql://...``) or the seed's ``db_kwargs`` dict.
    create_tables
        Create the market table when missing; default True.

    Raises
    ------
    DatabaseError
        The database cannot be reached or refused the login; the message shows the
        URL with its password masked.
    """
    url = resolve_url(db)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
        if create_tables:
            metadata.create_all(engine, checkfirst=True)
            _drop_legacy_flag(engine)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to database {mask_url(url)}: {_detail(exc, url)}; check --db-url "
            "(or KALLOS_DB_URL / db_kwargs) and that the server is running"
        ) from None
    except sa.exc.DBAPIError as exc:  # connected, but e.g. no right to create the tables
        raise DatabaseError(
            f"database {mask_url(url)} refused to set up kallos' tables: {_detail(exc, url)}; "
            "use a role that may create tables there"
        ) from None
    return engine


def _drop_legacy_flag(engine: Engine) -> None:
    """Make a first-round market table writable: drop its NOT NULL ``warmup`` column.

    That schema stored indicator columns (kept, and ignored: nothing reads them) and a NOT
    NULL ``warmup`` flag that candle-only inserts cannot fill. Dropping it is the one-line
    migration ``ALTER TABLE market_data DROP COLUMN warmup``, run here once; no candle is
    touched.
    """
    columns = {c["name"] for c in sa.inspect(engine).get_columns(MARKET_TABLE)}
    if LEGACY_NOT_NULL_COLUMN not in columns:
        return
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"ALTER TABLE {MARKET_TABLE} DROP COLUMN {LEGACY_NOT_NULL_COLUMN}")
            )
    except sa.exc.DBAPIError:
        columns = {c["name"] for c in sa.inspect(engine).get_columns(MARKET_TABLE)}
        if LEGACY_NOT_NULL_COLUMN in columns:
            raise  # not a race with another process doing the same: a real refusal
        return
    logger.warning(
        "%s held stored indicators (kallos-models 0.1): dropped its %s column; indicators are "
        "now computed when data is loaded and the old indicator columns are ignored",
        MARKET_TABLE,
        LEGACY_NOT_NULL_COLUMN,
    )


def count_rows(conn: Connection | Engine, asset_id: str, timeframe: str) -> int:
    """Rows stored for one asset and timeframe."""
    t = market_table
    query = (
        sa.select(sa.func.count())
        .select_from(t)
        .where(t.c.asset_id == asset_id, t.c.timeframe == timeframe)
    )
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return int(c.execute(query).scalar_one())
    return int(conn.execute(query).scalar_one())


def _detail(exc: sa.exc.DBAPIError, url: URL) -> str:
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return scrub(detail, url)


def upsert_rows(
    conn: Connection,
    rows: list[dict[str, Any]],
    *,
    chunk_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Insert rows into the market table, replacing rows with the same key.

    Uses the dialect's ``INSERT ... ON CONFLICT DO UPDATE`` in chunks, inside the caller's
    transaction.
    """
    if not rows:
        return
    dialect = conn.dialect.name
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported backends
        raise DatabaseError(
            f"database dialect {dialect!r} is not supported; use SQLite or PostgreSQL"
        )
    stmt = insert(market_table)
    update_cols = {
        c.name: stmt.excluded[c.name] for c in market_table.c if c.name not in KEY_COLUMNS
    }
    stmt = stmt.on_conflict_do_update(index_elements=list(KEY_COLUMNS), set_=update_cols)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        conn.execute(stmt, chunk)
        if progress is not None:
            progress(len(chunk))


def read_market_frame(
    conn: Connection | Engine,
    asset_id: str,
    timeframe: str,
    *,
    columns: Iterable[str] | None = None,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Read rows of one asset and timeframe, ordered by open time, indexed by ``open_time``."""
    cols = [market_table.c[c] for c in (columns or [c.name for c in market_table.c])]
    if market_table.c.open_time not in cols:
        cols = [market_table.c.open_time, *cols]
    query = (
        sa.select(*cols)
        .where(market_table.c.asset_id == asset_id, market_table.c.timeframe == timeframe)
        .order_by(market_table.c.open_time)
    )
    if start is not None:
        query = query.where(market_table.c.open_time >= start.to_pydatetime())
    if end is not None:
        query = query.where(market_table.c.open_time <= end.to_pydatetime())
    if isinstance(conn, Engine):
        with conn.connect() as c:
            result = c.execute(query)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    else:
        result = conn.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    frame["open_time"] = pd.to_datetime(frame["open_time"])
    frame = frame.set_index("open_time")
    for c in frame.columns:
        if c not in ("asset_id", "timeframe"):
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame


def list_assets(engine: Engine) -> list[dict[str, Any]]:
    """Return one dict per (asset_id, timeframe): ``asset_id, timeframe, rows, first, last``.

    ``first`` and ``last`` are ISO-8601 strings of the first and last open time (UTC).
    """
    t = market_table
    query = (
        sa.select(
            t.c.asset_id,
            t.c.timeframe,
            sa.func.count().label("rows"),
            sa.func.min(t.c.open_time).label("first"),
            sa.func.max(t.c.open_time).label("last"),
        )
        .group_by(t.c.asset_id, t.c.timeframe)
        .order_by(t.c.asset_id, t.c.timeframe)
    )
    with engine.connect() as conn:
        out = []
        for row in conn.execute(query):
            out.append(
                {
                    "asset_id": row.asset_id,
                    "timeframe": row.timeframe,
                    "rows": int(row.rows),
                    "first": pd.Timestamp(row.first).isoformat(),
                    "last": pd.Timestamp(row.last).isoformat(),
                }
            )
    return out
