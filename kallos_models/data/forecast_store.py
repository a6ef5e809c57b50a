"""The ``forecasts`` table: forecasts stored by ``predict``, read back for ``score``.

One row per (model, asset, timeframe, origin bar, step): the model is identified by its
bundle's manifest digest (``model_id``, the same whether the bundle was read from a folder or
downloaded from the registry), so predicting one origin twice stores it once; the first
forecast made for an origin is kept (``INSERT ... ON CONFLICT DO NOTHING``), which is the one
a live record must show. The table is created with the market table whenever the tables are
set up (:func:`kallos_models.data.db.set_up_tables`, under the schema lock: the first ingest
or store in a database); reading a database that has none yet returns no rows.

:func:`forecasts_with_actuals` joins the stored forecasts with the candles that have arrived
since: a forecast can be scored once the bar it aims at is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kallos_models.data import db

logger = logging.getLogger(__name__)

__all__ = ["FORECAST_COLUMNS", "StoreResult", "forecasts_with_actuals", "store_forecasts"]

#: The columns of :func:`forecasts_with_actuals`' frame, besides ``actual``.
FORECAST_COLUMNS: tuple[str, ...] = tuple(c.name for c in db.forecasts_table.c)


@dataclass(frozen=True)
class StoreResult:
    """What :func:`store_forecasts` wrote: ``new`` rows, and ``existing`` ones left as they were."""

    new: int
    existing: int

    def as_dict(self) -> dict[str, Any]:
        return {"table": db.FORECASTS_TABLE, "new": self.new, "existing": self.existing}


def _has_table(engine: Engine) -> bool:
    return sa.inspect(engine).has_table(db.FORECASTS_TABLE)


def store_forecasts(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> StoreResult:
    """Insert forecast rows, keeping any already stored for the same key.

    Parameters
    ----------
    engine
        The market database (:func:`kallos_models.data.db.create_db_engine`).
    rows
        Dicts with every column of :data:`kallos_models.data.db.forecasts_table`; one
        statement, one transaction.

    Returns
    -------
    StoreResult

    Raises
    ------
    DatabaseError
        The database refuses writes (read-only file, read-only role).
    """
    if not rows:
        return StoreResult(new=0, existing=0)
    if not _has_table(engine):
        with db.translate_write_errors(engine):
            db.set_up_tables(engine)
    table = db.forecasts_table
    values = [dict(r) for r in rows]
    statement: sa.Executable
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(table).values(values).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).values(values).on_conflict_do_nothing()
    with db.writing(engine) as conn:
        new = int(conn.execute(statement).rowcount)
    logger.info("stored %d new forecast rows (%d already stored)", new, len(rows) - new)
    return StoreResult(new=new, existing=len(rows) - new)


def forecasts_with_actuals(
    engine: Engine,
    *,
    asset_id: str | None = None,
    timeframe: str | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """Stored forecasts, each with the close of the bar it aims at as ``actual`` (NaN until
    that bar is stored).

    Parameters
    ----------
    engine
        The market database.
    asset_id, timeframe
        Only this asset / timeframe; default None: all.
    model
        Only forecasts of this model: its name (``gru``), registered model name, or a prefix
        of at least 8 characters of its ``model_id`` (with or without ``sha256:``); default
        None: all.

    Returns
    -------
    pandas.DataFrame
        The :data:`FORECAST_COLUMNS` plus ``actual``; times as naive UTC timestamps; ordered
        by target time, model and step.
    """
    f, m = db.forecasts_table, db.market_table
    empty = pd.DataFrame(columns=[*FORECAST_COLUMNS, "actual"])
    if not _has_table(engine):
        return empty
    conditions = []
    if asset_id is not None:
        conditions.append(f.c.asset_id == asset_id)
    if timeframe is not None:
        conditions.append(f.c.timeframe == timeframe)
    if model is not None:
        digest = model if model.startswith("sha256:") else f"sha256:{model}"
        by_id = f.c.model_id.startswith(digest) if len(model) >= 8 else sa.false()
        conditions.append(sa.or_(f.c.model_name == model, f.c.registered_model == model, by_id))
    joined = f.outerjoin(
        m,
        sa.and_(
            m.c.asset_id == f.c.asset_id,
            m.c.timeframe == f.c.timeframe,
            m.c.open_time == f.c.target_time,
        ),
    )
    query = (
        sa.select(*f.c, m.c.close.label("actual"))
        .select_from(joined)
        .where(*conditions)
        .order_by(f.c.target_time, f.c.model_id, f.c.step)
    )
    with engine.connect() as conn:
        result = conn.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if frame.empty:
        return empty
    for column in ("origin_time", "target_time", "created_at"):
        frame[column] = pd.to_datetime(frame[column])
    for column in ("forecast", "origin_close", "actual"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["step"] = frame["step"].astype(int)
    return frame
