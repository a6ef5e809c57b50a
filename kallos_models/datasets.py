"""Datasets: market features from the database, walk-forward splits, Darts series.

Gap policy of :func:`load_features_from_db`: the frame is put on the asset's regular bar grid.
A run of at most ``max_gap_bars`` missing bars is filled: each filled bar repeats the previous
close as open/high/low/close, has zero volume (no trade is invented), carries the previous
bar's indicator values, and is marked ``filled = True``. A longer gap inside the requested range
is an error naming it; start after it, end before it, or raise ``max_gap_bars``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import URL, Engine

from kallos_models import db
from kallos_models.config import parse_date, timeframe_to_freq, timeframe_to_timedelta
from kallos_models.errors import DataError
from kallos_models.features import FEATURE_COLUMNS

logger = logging.getLogger(__name__)

VOLUME_COLUMNS = ("volume", *db.KLINE_COLUMNS)


def _engine(db_kwargs: str | URL | Mapping[str, Any] | Engine) -> Engine:
    return db_kwargs if isinstance(db_kwargs, Engine) else db.create_db_engine(db_kwargs)


def describe_assets(engine: Engine) -> str:
    """A short text of the assets present, for error messages."""
    assets = db.list_assets(engine)
    if not assets:
        return "the market table is empty; load data with `kallos-run ingest`"
    return "assets present: " + ", ".join(f"{a['asset_id']} ({a['timeframe']})" for a in assets)


def load_features_from_db(
    asset_id: str,
    end_date: str | pd.Timestamp | None,
    db_kwargs: str | URL | Mapping[str, Any] | Engine,
    *,
    start_date: str | pd.Timestamp | None = None,
    timeframe: str = "1d",
    columns: Iterable[str] | None = None,
    max_gap_bars: int = 16,
    drop_warmup: bool = True,
) -> pd.DataFrame:
    """Load one asset's bars and features for ``[start_date, end_date]`` on a regular grid.

    Parameters
    ----------
    asset_id
        Asset as ingested, e.g. ``BTC``.
    end_date
        Last open time included (a date includes that whole day's first bar only, as
        ``YYYY-MM-DD`` means midnight UTC); None: up to the last stored bar.
    db_kwargs
        Database: a URL, the seed's ``db_kwargs`` dict, or an engine.
    start_date
        First open time included; default None: from the first stored bar.
    timeframe
        Bar size, default ``1d``.
    columns
        Columns to return besides ``filled``; default None returns every stored column.
    max_gap_bars
        Longest run of missing bars that is filled; default 16 (see the module docstring).
    drop_warmup
        Drop leading rows whose indicators are still warming up (undefined); default True.

    Returns
    -------
    pandas.DataFrame
        Indexed by open time (UTC, naive) at the timeframe's frequency, float64 columns plus
        a boolean ``filled`` column.

    Raises
    ------
    DataError
        No rows for the asset (lists the assets present), an empty or reversed range, or a
        gap longer than ``max_gap_bars``.
    """
    start = parse_date(start_date, "start_date")
    end = parse_date(end_date, "end_date")
    if start is not None and end is not None and start > end:
        raise DataError(
            f"date range is empty: start {start.date()} is after end {end.date()}; "
            "swap them or widen the range"
        )
    engine = _engine(db_kwargs)
    wanted = list(columns) if columns is not None else None
    if wanted is not None:
        known = {c.name for c in db.market_table.c}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise DataError(
                f"unknown columns {unknown}; market columns: "
                f"{', '.join(c for c in known if c not in db.KEY_COLUMNS)}"
            )
    read_cols = None
    if wanted is not None:
        read_cols = list(dict.fromkeys([*db.PRICE_COLUMNS, "warmup", *wanted]))
    frame = db.read_market_frame(engine, asset_id, timeframe, columns=read_cols, start=start, end=end)
    if frame.empty:
        everything = db.read_market_frame(engine, asset_id, timeframe, columns=["close"])
        if everything.empty:
            raise DataError(
                f"asset {asset_id!r} has no {timeframe} rows in {db.MARKET_TABLE}; "
                f"{describe_assets(engine)}"
            )
        raise DataError(
            f"asset {asset_id!r} ({timeframe}) has no rows between "
            f"{start.date() if start is not None else 'the start'} and "
            f"{end.date() if end is not None else 'the end'}; its data covers "
            f"{everything.index.min()} .. {everything.index.max()}"
        )
    frame = frame.drop(columns=["asset_id", "timeframe"], errors="ignore")
    frame = _regularise(frame, timeframe, max_gap_bars)
    if drop_warmup and "warmup" in frame.columns:
        warm = frame["warmup"].astype(bool).to_numpy()
        first_ready = int(np.argmin(warm)) if not warm.all() else len(warm)
        if first_ready:
            logger.info("dropping %d warm-up rows at the start of %s", first_ready, asset_id)
        frame = frame.iloc[first_ready:]
        if frame.empty:
            raise DataError(
                f"asset {asset_id!r} has only warm-up rows in the range (indicators undefined); "
                "widen the range"
            )
    if wanted is not None:
        frame = frame[[*wanted, "filled"]]
    return frame


def _regularise(frame: pd.DataFrame, timeframe: str, max_gap_bars: int) -> pd.DataFrame:
    step = timeframe_to_timedelta(timeframe)
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=timeframe_to_freq(timeframe))
    grid.name = "open_time"
    if len(grid) == len(frame):
        out = frame.copy()
        out.index = grid
        out["filled"] = False
        return out
    missing = ~grid.isin(frame.index)
    present = frame.index
    diffs = pd.Series(present[1:] - present[:-1], index=present[1:])
    too_long = diffs[diffs > step * (max_gap_bars + 1)]
    if len(too_long):
        end_ts, span = next(iter(too_long.items()))
        raise DataError(
            f"gap of {int(span / step) - 1} missing {timeframe} bars between {end_ts - span} and "
            f"{end_ts} (longer than max_gap_bars={max_gap_bars}); set --start-date after it, "
            "an end date before it, or raise max_gap_bars"
        )
    out = frame.reindex(grid)
    last_close = out["close"].ffill()
    for c in ("open", "high", "low", "close"):
        out[c] = out[c].fillna(last_close)
    for c in VOLUME_COLUMNS:
        if c in out.columns and out[c].notna().any():  # all-NaN: the file never had it
            out.loc[missing, c] = 0.0
    features = [c for c in out.columns if c in FEATURE_COLUMNS]
    out[features] = out[features].ffill()
    if "warmup" in out.columns:
        out["warmup"] = out["warmup"].astype("boolean").ffill().astype(bool)
    out["filled"] = missing
    logger.info("filled %d missing %s bars (max_gap_bars=%d)", int(missing.sum()), timeframe, max_gap_bars)
    return out
