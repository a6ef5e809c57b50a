"""Database access: one engine factory, the market table, password masking.

SQLAlchemy 2 Core only; every statement is a SQLAlchemy construct with bound parameters.
The same code runs on SQLite (the embedded default) and PostgreSQL.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from kallos_models.errors import DatabaseError, DataError
from kallos_models.urls import mask_url, resolve_url, scrub, sqlite_file, url_from_db_kwargs

__all__ = [
    "check_key",
    "check_writable",
    "count_rows",
    "create_db_engine",
    "engine_options",
    "list_assets",
    "make_engine",
    "mask_url",
    "read_market_frame",
    "resolve_url",
    "newest_open_time",
    "scrub",
    "set_up_tables",
    "translate_write_errors",
    "url_from_db_kwargs",
    "writing",
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
#: Longest asset id and timeframe the key columns hold (PostgreSQL enforces it; SQLite would
#: not, so :func:`check_key` does, on both).
ASSET_ID_MAX = 64
TIMEFRAME_MAX = 16
#: ``pg_advisory_xact_lock`` key serialising table creation and migration across processes.
SCHEMA_LOCK_KEY = 0x6B616C6C6F73  # "kallos"

metadata = sa.MetaData()

market_table = sa.Table(
    MARKET_TABLE,
    metadata,
    sa.Column("asset_id", sa.String(ASSET_ID_MAX), primary_key=True),
    sa.Column("timeframe", sa.String(TIMEFRAME_MAX), primary_key=True),
    # Naive timestamps, always UTC: identical on SQLite and PostgreSQL.
    sa.Column("open_time", sa.DateTime(timezone=False), primary_key=True),
    *[sa.Column(c, sa.Float, nullable=False) for c in PRICE_COLUMNS],
    *[sa.Column(c, sa.Float, nullable=True) for c in KLINE_COLUMNS],
)

FORECASTS_TABLE = "forecasts"
#: Stored forecasts (:mod:`kallos_models.data.forecast_store`), one row per model, asset,
#: origin bar and step; created with :data:`market_table` by :func:`set_up_tables`.
forecasts_table = sa.Table(
    FORECASTS_TABLE,
    metadata,
    sa.Column("model_id", sa.String(80), primary_key=True),  # the bundle's manifest digest
    sa.Column("asset_id", sa.String(ASSET_ID_MAX), primary_key=True),
    sa.Column("timeframe", sa.String(TIMEFRAME_MAX), primary_key=True),
    sa.Column("origin_time", sa.DateTime(timezone=False), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("target_time", sa.DateTime(timezone=False), nullable=False),
    sa.Column("forecast", sa.Float, nullable=False),
    sa.Column("origin_close", sa.Float, nullable=False),
    sa.Column("model_name", sa.String(64), nullable=False),
    sa.Column("registered_model", sa.String(255), nullable=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    sa.Index("ix_forecasts_target", "asset_id", "timeframe", "target_time"),
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


def create_db_engine(
    db: str | URL | Mapping[str, Any], *, create_tables: bool = True, for_writing: bool = False
) -> Engine:
    """Create an engine, check the connection, and create missing tables.

    Parameters
    ----------
    db
        A URL (``sqlite:///path.db``, ``postgresql://...``) or the seed's ``db_kwargs`` dict.
    create_tables : bool, default True
        Create the market table when missing (and migrate a first-round table), under a
        lock: PostgreSQL's ``pg_advisory_xact_lock(SCHEMA_LOCK_KEY)``, SQLite's
        ``BEGIN IMMEDIATE``, so processes starting together do not race.
    for_writing : bool, default False
        The caller will write: check now that the database takes writes
        (:func:`check_writable`), before any work starts.

    Raises
    ------
    DatabaseError
        The database cannot be reached, refused the login, cannot create the tables, or
        is read-only; the message shows the URL with its password masked.
    """
    url = resolve_url(db)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
        if create_tables and not _tables_ready(engine):
            set_up_tables(engine)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise _refusal(exc, url) or _setup_error(exc, url) from None
    if for_writing:
        check_writable(engine)
    return engine


def _setup_error(exc: sa.exc.DBAPIError, url: URL) -> DatabaseError:
    if isinstance(exc, sa.exc.OperationalError):
        path = sqlite_file(url)
        if path is not None and not path.exists() and path.parent.is_dir():
            return DatabaseError(
                f"cannot create the SQLite database {path}: {_detail(exc, url)}; make its "
                "folder writable or choose another path with --db-url (KALLOS_DB_URL)"
            )
        return DatabaseError(
            f"cannot connect to database {mask_url(url)}: {_detail(exc, url)}; check --db-url "
            "(or KALLOS_DB_URL / db_kwargs) and that the server is running"
        )
    return DatabaseError(  # connected, but e.g. no right to create the tables
        f"database {mask_url(url)} refused to set up kallos' tables: {_detail(exc, url)}; "
        "use a role that may create tables there"
    )


def _tables_ready(engine: Engine) -> bool:
    """The market table exists and needs no migration (read-only: no lock is taken)."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(MARKET_TABLE):
        return False
    return LEGACY_NOT_NULL_COLUMN not in {c["name"] for c in inspector.get_columns(MARKET_TABLE)}


def set_up_tables(engine: Engine) -> None:
    """``create_all`` (the market and forecasts tables) and the legacy migration in one
    transaction, serialised across processes.

    The lock is taken before the existence checks, so a second process waits for the first
    and then finds the table; PostgreSQL's DDL is transactional, SQLite holds its write lock.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        metadata.create_all(conn, checkfirst=True)
        dropped = _drop_legacy_flag(conn)
        conn.commit()
    if dropped:
        logger.warning(
            "%s held stored indicators (kallos-models 0.1): dropped its %s column; indicators "
            "are now computed when data is loaded and the old indicator columns are ignored",
            MARKET_TABLE,
            LEGACY_NOT_NULL_COLUMN,
        )


def _drop_legacy_flag(conn: Connection) -> bool:
    """Make a first-round market table writable: drop its NOT NULL ``warmup`` column.

    That schema stored indicator columns (kept, and ignored: nothing reads them) and a NOT
    NULL ``warmup`` flag that candle-only inserts cannot fill. Dropping it is the one-line
    migration ``ALTER TABLE market_data DROP COLUMN warmup``, run inside the schema lock of
    :func:`set_up_tables`; no candle is touched. Returns whether it ran.
    """
    columns = {c["name"] for c in sa.inspect(conn).get_columns(MARKET_TABLE)}
    if LEGACY_NOT_NULL_COLUMN not in columns:
        return False
    conn.execute(sa.text(f"ALTER TABLE {MARKET_TABLE} DROP COLUMN {LEGACY_NOT_NULL_COLUMN}"))
    return True


def _refusal(exc: sa.exc.DBAPIError, url: URL, *, writing: bool = False) -> DatabaseError | None:
    """A :class:`DatabaseError` for a database that refuses writes; None for other errors."""
    text = str(exc.orig or exc).lower()
    code = getattr(exc.orig, "pgcode", None)
    path = sqlite_file(url)
    where = f"SQLite database {path}" if path is not None else f"database {mask_url(url)}"
    if "readonly database" in text or code == "25006":  # SQLITE_READONLY, read-only txn
        if path is not None:
            also = "; or drop mode=ro from the URL" if url.query.get("mode") == "ro" else ""
            fix = (
                f"make {path} and its folder writable (SQLite writes a journal beside the "
                f"file), or choose another database with --db-url (KALLOS_DB_URL){also}"
            )
        else:
            fix = "use a writable server (not a standby) or choose another --db-url"
        return DatabaseError(f"{where} is read-only ({_detail(exc, url)}); {fix}")
    if not writing:
        return None
    if code == "42501":  # insufficient_privilege
        return DatabaseError(
            f"{where} refused the write: {_detail(exc, url)}; use a role that may INSERT and "
            f"UPDATE {MARKET_TABLE}, or choose another --db-url"
        )
    if "database or disk is full" in text or code == "53100":
        return DatabaseError(f"{where} is full ({_detail(exc, url)}); free disk space first")
    if "database is locked" in text:
        return DatabaseError(
            f"{where} stayed locked by another writer for 30 s ({_detail(exc, url)}); run "
            "again when it is done, or use PostgreSQL for concurrent writers"
        )
    return None


def check_writable(engine: Engine) -> None:
    """Check that the database takes writes, writing nothing; call it before any work starts.

    SQLite: rewrites ``PRAGMA user_version`` with its own value in ``BEGIN IMMEDIATE`` and
    rolls back (the file and its folder, for the journal, must be writable). PostgreSQL: the
    session is not read-only and the role may INSERT and UPDATE the market table.

    Raises
    ------
    DatabaseError
        One line naming the database and the fix.
    """
    url = engine.url
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
                conn.exec_driver_sql(f"PRAGMA user_version = {version}")
                conn.rollback()
            elif conn.dialect.name == "postgresql":
                setting = sa.text("SELECT current_setting('transaction_read_only')")
                if conn.execute(setting).scalar() == "on":
                    raise DatabaseError(
                        f"database {mask_url(url)} is read-only (transaction_read_only is on); "
                        "use a writable server (not a standby) or choose another --db-url"
                    )
                rights = sa.text(
                    "SELECT CASE WHEN to_regclass(:t) IS NULL THEN true ELSE "
                    "has_table_privilege(:t, 'INSERT') AND has_table_privilege(:t, 'UPDATE') END"
                )
                if not conn.execute(rights, {"t": MARKET_TABLE}).scalar():
                    raise DatabaseError(
                        f"database {mask_url(url)}: this role may not INSERT and UPDATE "
                        f"{MARKET_TABLE}; use a role that may, or choose another --db-url"
                    )
    except sa.exc.DBAPIError as exc:
        raise _refusal(exc, url, writing=True) or _setup_error(exc, url) from None


@contextmanager
def translate_write_errors(db: Engine | URL | str) -> Iterator[None]:
    """Turn a write the database refuses into one :class:`DatabaseError` line.

    Read-only (SQLite's "attempt to write a readonly database", a read-only PostgreSQL
    transaction), no INSERT/UPDATE right, disk full, or a SQLite lock held past the 30 s
    timeout, raised by anything inside the block, becomes the message
    :func:`create_db_engine` gives; any other error passes unchanged (a bug keeps its
    traceback). Wrap it around the transaction, so the rollback comes first.

    Parameters
    ----------
    db : Engine, URL or str
        The database written to, for the message (password masked).
    """
    url = db.url if isinstance(db, Engine) else resolve_url(db)
    try:
        yield
    except sa.exc.DBAPIError as exc:
        refusal = _refusal(exc, url, writing=True)
        if refusal is None:
            raise
        raise refusal from None


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """``with db.writing(engine) as conn:``: :func:`check_writable`, then one transaction.

    Like ``engine.begin()`` (commit on success, rollback on any error), with a database
    that refuses writes reported up front, and refusals during the block turned into a
    :class:`DatabaseError` by :func:`translate_write_errors` after the rollback.
    """
    check_writable(engine)
    with translate_write_errors(engine), engine.begin() as conn:
        yield conn


def check_key(asset_id: str, timeframe: str) -> None:
    """Check an asset id and timeframe against the key columns, the same on both backends.

    Parameters
    ----------
    asset_id : str
        1 to :data:`ASSET_ID_MAX` (64) characters, no control characters, no comma, no
        leading or trailing whitespace. No default.
    timeframe : str
        Likewise, at most :data:`TIMEFRAME_MAX` (16) characters. No default.

    Raises
    ------
    DataError
        One message: what was given (truncated), what is wrong, and the fix.
    """
    for name, value, limit, flag in (
        ("an asset id", asset_id, ASSET_ID_MAX, "--asset-id BTC"),
        ("a timeframe", timeframe, TIMEFRAME_MAX, "--timeframe 1d"),
    ):
        problem = _key_problem(value, limit)
        if problem:
            shown = repr(value[:24]) + ("..." if len(value) > 24 else "")
            raise DataError(
                f"{name.split(' ', 1)[1]} {shown} {problem}; {name} must be 1-{limit} "
                "characters without control characters, commas or leading/trailing whitespace; "
                f"pass e.g. {flag}"
            )


def _key_problem(value: str, limit: int) -> str | None:
    if not value.strip():
        return "is empty"
    if len(value) > limit:
        return f"is {len(value)} characters long"
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value):
        return "holds a control character"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if "," in value:
        return "holds a comma (commas separate the assets of a basket, one global model's)"
    return None


def count_rows(conn: Connection | Engine, asset_id: str, timeframe: str) -> int:
    """Rows stored for one asset and timeframe."""
    t = market_table
    query = (
        sa.select(sa.func.count())
        .select_from(t)
        .where(t.c.asset_id == asset_id, t.c.timeframe == timeframe)
    )
    with conn.connect() if isinstance(conn, Engine) else nullcontext(conn) as c:
        return int(c.execute(query).scalar_one())


def newest_open_time(
    conn: Connection | Engine, asset_id: str, timeframe: str, *, at_most: pd.Timestamp | None = None
) -> pd.Timestamp | None:
    """Open time of the newest stored bar (at or before ``at_most``); None when there is none."""
    t = market_table
    query = sa.select(sa.func.max(t.c.open_time)).where(
        t.c.asset_id == asset_id, t.c.timeframe == timeframe
    )
    if at_most is not None:
        query = query.where(t.c.open_time <= at_most.to_pydatetime())
    with conn.connect() if isinstance(conn, Engine) else nullcontext(conn) as c:
        value = c.execute(query).scalar_one()
    return None if value is None else pd.Timestamp(value)


def _detail(exc: sa.exc.DBAPIError, url: URL) -> str:
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return scrub(detail, url)


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
    with conn.connect() if isinstance(conn, Engine) else nullcontext(conn) as c:
        result = c.execute(query)
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
        return [
            {
                "asset_id": row.asset_id,
                "timeframe": row.timeframe,
                "rows": int(row.rows),
                "first": pd.Timestamp(row.first).isoformat(),
                "last": pd.Timestamp(row.last).isoformat(),
            }
            for row in conn.execute(query)
        ]
