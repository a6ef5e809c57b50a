"""Where a study lives: the Optuna RDB storage, its PostgreSQL schema and the trial gate.

Engine options come from :func:`kallos_models.data.db.engine_options`, the same ones the market
database uses; error messages are scrubbed of the password by :func:`kallos_models.data.db.scrub`.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kallos_models.config import Settings
from kallos_models.data import db
from kallos_models.errors import ConfigError, DatabaseError
from kallos_models.stage_settings import TuneSettings, storage_source

#: A PostgreSQL schema name kallos-models accepts for Optuna's tables.
SCHEMA_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: How many times a trial whose worker died (stale heartbeat) is queued again.
MAX_STALE_RETRIES = 3


@dataclass(frozen=True)
class StorageSpec:
    """Where the study lives. ``url`` carries the password; show :attr:`masked` instead."""

    url: str
    schema: str | None
    heartbeat_interval: int | None = None
    grace_period: int | None = None

    @property
    def masked(self) -> str:
        return db.mask_url(self.url)

    @property
    def backend(self) -> str:
        return db.resolve_url(self.url).get_backend_name()

    def describe(self) -> str:
        return self.masked + (f" (schema {self.schema})" if self.schema else "")

    def engine_kwargs(self) -> dict[str, Any]:
        """``create_engine`` options: :func:`kallos_models.data.db.engine_options`."""
        return db.engine_options(db.resolve_url(self.url), schema=self.schema)


def storage_url_for(settings: Settings) -> str:
    """The Optuna storage URL of ``settings``, password included (never print it).

    Parameters
    ----------
    settings : Settings
        ``storage_url`` when set, else the data database (``db_url`` or ``db_kwargs``).

    Returns
    -------
    str
        A SQLAlchemy URL; ``postgresql://`` is given the psycopg2 driver.

    Raises
    ------
    ConfigError
        No database is configured, or the URL does not parse.
    """
    return storage_source(settings).url


def check_schema(schema: str | None, url: str) -> str | None:
    """``schema`` when it is a plain identifier on a PostgreSQL ``url``; None for none."""
    if schema is None or schema == "":
        return None
    if not SCHEMA_PATTERN.match(schema):
        raise ConfigError(
            f"optuna_schema {schema!r} is not a plain identifier; use letters, digits and "
            "underscores, starting with a letter or underscore (e.g. optuna)"
        )
    backend = db.resolve_url(url).get_backend_name()
    if backend != "postgresql":
        raise ConfigError(
            f"optuna_schema {schema!r} needs a PostgreSQL storage, but the storage is "
            f"{backend} ({db.mask_url(url)}); drop --optuna-schema or pass a PostgreSQL "
            "--storage-url / --db-url"
        )
    return schema


def connect_error(spec: StorageSpec, exc: BaseException) -> DatabaseError:
    """A :class:`DatabaseError` for a failure to reach the storage, password scrubbed."""
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    text = db.scrub(detail[0] if detail else type(exc).__name__, spec.url)
    return DatabaseError(
        f"cannot open the Optuna storage {spec.describe()}: {text}; check --storage-url "
        "(KALLOS_STORAGE_URL) or --db-url and that the server is running"
    )


def plain_engine(spec: StorageSpec) -> sa.Engine:
    """A SQLAlchemy engine on the storage (same search_path as Optuna's), checked to connect."""
    try:
        engine = db.make_engine(spec.url, schema=spec.schema, autocommit=True)
        with engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
    except Exception as exc:  # unreachable server, refused login, missing driver
        raise connect_error(spec, exc) from None
    return engine


def _ensure_schema(spec: StorageSpec) -> None:
    if not spec.schema:
        return
    without_path = StorageSpec(url=spec.url, schema=None)
    engine = plain_engine(without_path)
    try:
        with engine.connect() as conn:
            # schema matched SCHEMA_PATTERN; always quoting it keeps its case
            quoted = conn.dialect.identifier_preparer.quote_identifier(spec.schema)
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    except sa.exc.IntegrityError:
        pass  # created at the same moment by another worker
    except sa.exc.SQLAlchemyError as exc:
        raise connect_error(spec, exc) from None
    finally:
        engine.dispose()


def open_storage(spec: StorageSpec, *, create: bool = True) -> Any:
    """An Optuna RDBStorage for ``spec``: schema created, tables created, heartbeats on."""
    import optuna

    if create:
        _ensure_schema(spec)
    plain_engine(spec).dispose()  # reachable, with a masked message when not
    kwargs: dict[str, Any] = {"engine_kwargs": spec.engine_kwargs()}
    if spec.heartbeat_interval is not None:
        kwargs.update(
            heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_STALE_RETRIES
            ),
        )
    last: Exception | None = None
    for _attempt in range(3):  # CREATE TABLE races between machines starting together
        try:
            return optuna.storages.RDBStorage(spec.url, skip_table_creation=not create, **kwargs)
        except sa.exc.IntegrityError as exc:
            last = exc
            time.sleep(0.5)
        except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise connect_error(spec, exc) from None
    raise connect_error(spec, last or RuntimeError("table creation raced"))


def storage_spec_for(settings: TuneSettings) -> StorageSpec:
    """The checked :class:`StorageSpec` of ``settings`` (backend, workers, heartbeats)."""
    url = settings.storage.url
    schema = check_schema(settings.optuna_schema, url)
    backend = db.resolve_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"Optuna storage backend {backend!r} is not supported; use SQLite or PostgreSQL "
            f"(got {db.mask_url(url)})"
        )
    if settings.workers > 1 and backend == "sqlite":
        raise ConfigError(
            f"workers={settings.workers} needs a PostgreSQL storage: SQLite locks under "
            "concurrent writers (see Optuna's FAQ). Pass --storage-url "
            "postgresql://user:password@host:5432/db (or a PostgreSQL --db-url), or use "
            "--workers 1"
        )
    if settings.heartbeat_interval < 1 or settings.grace_period < 1:
        raise ConfigError(
            "heartbeat_interval and grace_period must be at least 1 second, got "
            f"{settings.heartbeat_interval} and {settings.grace_period}"
        )
    if settings.grace_period <= settings.heartbeat_interval:
        raise ConfigError(
            f"grace_period ({settings.grace_period} s) must be longer than heartbeat_interval "
            f"({settings.heartbeat_interval} s), or live trials would be taken for dead ones; "
            "use e.g. heartbeat_interval 60 and grace_period 120"
        )
    return StorageSpec(
        url=url,
        schema=schema,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
    )


class TrialGate:
    """Makes "count the trials, then start one" atomic across processes and machines.

    On PostgreSQL a session-level advisory lock keyed on the study is held from the count
    until the new trial is RUNNING in the storage (the objective releases it first thing), so
    two workers never both start the last missing trial. A worker that dies releases the lock
    with its connection. On SQLite (one worker only) it does nothing.
    """

    def __init__(self, spec: StorageSpec, study_name: str) -> None:
        self._engine = plain_engine(spec) if spec.backend == "postgresql" else None
        digest = hashlib.sha256(f"kallos-tune:{spec.schema}:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: Any = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this process holds the gate: no other worker can start a trial now."""
        return self._held

    def acquire(self) -> None:
        if self._engine is None or self._conn is not None:
            self._held = True
            return
        conn = self._engine.connect()
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._conn = conn
        self._held = True

    def release(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        finally:
            conn.close()

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()
