"""Datasets: windows of candles with their indicators from the database, walk-forward splits.

Gap policy of :func:`load_features_from_db`: the frame is put on the asset's regular bar grid.
A run of at most ``max_gap_bars`` missing bars is filled: each filled bar repeats the previous
close as open/high/low/close, has zero volume (no trade is invented), carries the previous
bar's indicator values, and is marked ``filled = True``. A longer gap inside the requested range
is an error naming it; start after it, end before it, or raise ``max_gap_bars``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import URL, Engine

from kallos_models.config import (
    normalise_timeframe,
    parse_date,
    timeframe_to_freq,
    timeframe_to_timedelta,
)
from kallos_models.data import db
from kallos_models.data.features import compute_indicators, history_bars, resolve_indicators
from kallos_models.errors import ConfigError, DataError

if TYPE_CHECKING:
    pass

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
    indicators: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Load one asset's candles for ``[start_date, end_date]``, compute its indicators, and
    put the bars on a regular grid.

    The indicators of ``indicators`` (default :data:`kallos_models.data.features.
    DEFAULT_INDICATORS`) are computed from the stored candles, with
    :func:`kallos_models.data.features.history_bars` extra bars read before ``start_date`` so
    that their values at the first bar of the window do not depend on where it starts.

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
        Columns to return besides ``filled``: candle columns and indicator names; default
        None returns every candle column, every indicator and ``warmup``.
    max_gap_bars
        Longest run of missing bars that is filled; default 16 (see the module docstring).
    drop_warmup
        Drop leading rows whose indicators are still warming up (undefined); default True.
    indicators
        The indicator spec (column -> entry); default None: the default spec. Checked with
        :func:`kallos_models.data.features.resolve_indicators`.

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
        A column that is neither a candle column nor an indicator of the spec.
    ConfigError
        A bad indicator spec.
    """
    timeframe = normalise_timeframe(timeframe)
    start = parse_date(start_date, "start_date")
    end = parse_date(end_date, "end_date")
    if start is not None and end is not None and start > end:
        raise DataError(
            f"date range is empty: start {start.date()} is after end {end.date()}; "
            "swap them or widen the range"
        )
    spec = resolve_indicators(base=indicators) if indicators is not None else resolve_indicators()
    wanted = list(columns) if columns is not None else None
    if wanted is not None:
        known = [*db.RAW_COLUMNS, *spec]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise DataError(
                f"unknown columns {unknown}: neither candle columns nor indicators; candle "
                f"columns: {', '.join(db.RAW_COLUMNS)}; indicators: {', '.join(spec)} (add "
                "one to the indicators key of config.json)"
            )
    engine = _engine(db_kwargs)
    bar = timeframe_to_timedelta(timeframe)
    read_from = None if start is None else start - history_bars(spec) * bar
    candles = db.read_market_frame(
        engine, asset_id, timeframe, columns=list(db.RAW_COLUMNS), start=read_from, end=end
    )
    in_window = candles if start is None else candles[candles.index >= start]
    if in_window.empty:
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
    frame = pd.concat([candles, compute_indicators(candles, spec)], axis=1)
    if start is not None:
        frame = frame[frame.index >= start]
    frame = _regularise(frame, timeframe, max_gap_bars, list(spec))
    if drop_warmup:
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


def _regularise(
    frame: pd.DataFrame, timeframe: str, max_gap_bars: int, indicator_columns: Sequence[str]
) -> pd.DataFrame:
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
    features = [c for c in out.columns if c in indicator_columns]
    out[features] = out[features].ffill()
    if "warmup" in out.columns:
        out["warmup"] = out["warmup"].astype("boolean").ffill().astype(bool)
    out["filled"] = missing
    logger.info(
        "filled %d missing %s bars (max_gap_bars=%d)", int(missing.sum()), timeframe, max_gap_bars
    )
    return out


# --------------------------------------------------------------------------------------------
# Walk-forward cross-validation
# --------------------------------------------------------------------------------------------

#: Fold count :func:`calculate_dynamic_wf_kwargs` aims for, and the bounds it accepts.
TARGET_WF_SPLITS = 3
MIN_WF_SPLITS = 2
MAX_WF_SPLITS = 5
#: Training windows per lookback: a fold's training part holds at least
#: ``WF_TRAIN_LOOKBACKS * max_input_chunk_length + output_chunk_length`` bars.
WF_TRAIN_LOOKBACKS = 3
#: Default floor on the scored bars of one fold's validation part.
DEFAULT_MIN_VAL_BARS = 20


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def calculate_dynamic_wf_kwargs(
    n_rows: int,
    max_input_chunk_length: int,
    *,
    output_chunk_length: int = 1,
    n_splits: int | None = None,
    min_val_bars: int | None = None,
    gap: int = 0,
) -> dict[str, int]:
    """Choose the walk-forward fold count and sizes from the data length and the lookback.

    The rule, with ``L = max_input_chunk_length`` and ``O = output_chunk_length``:

    - every fold's training part holds at least ``min_train_size = 3 * L + O`` bars, so even
      the largest lookback the search space can sample sees ``2 * L`` or more training
      windows;
    - the validation parts, laid end to end, cover at most the last half of the rows (the
      *validation budget* is ``n_rows - max(min_train_size, ceil(n_rows / 2))``), so on a long
      history every fold trains on at least half of it, much like the final model will;
    - a ``gap`` of bars left out between each fold's training and validation parts comes out
      of the budget too: the first fold still trains on ``min_train_size`` bars;
    - ``val_size = budget // n_splits``; ``n_splits`` is 3 when each of 3 folds gets at least
      ``min_val_bars`` bars, else 2; with fewer rows than 2 folds need, a :class:`DataError`
      says how many rows are needed;
    - a validation part is scored on all its ``val_size`` bars: the lookback of its first
      forecasts comes from the end of the fold's training part, not from the validation part.

    Parameters
    ----------
    n_rows : int
        Rows of the tuning frame (after warm-up rows are dropped).
    max_input_chunk_length : int
        Largest lookback the search space can sample, e.g.
        :func:`kallos_models.modelling.zoo.max_input_chunk_length`.
    output_chunk_length : int, default 1
        Bars the model forecasts per window.
    n_splits : int or None, default None
        Fold count to use, 2 to 5; None chooses 3, or 2 when the data is too short for 3.
    min_val_bars : int or None, default None
        Fewest scored bars per fold; None uses ``max(20, output_chunk_length)``.
    gap : int, default 0
        Bars left out between each fold's training and validation parts (see
        :func:`get_walk_forward_splits`).

    Returns
    -------
    dict
        ``{"n_splits": int, "val_size": int, "min_train_size": int}``, ready for
        :func:`get_walk_forward_splits`.

    Raises
    ------
    DataError
        Too few rows: the message gives the number of rows needed and how it is made up.
    ConfigError
        A non-integer or out-of-range argument.
    """
    n_rows = _positive_int(n_rows, "n_rows", 0)
    lookback = _positive_int(max_input_chunk_length, "max_input_chunk_length")
    horizon = _positive_int(output_chunk_length, "output_chunk_length")
    if n_splits is not None:
        n_splits = _positive_int(n_splits, "n_splits", MIN_WF_SPLITS)
        if n_splits > MAX_WF_SPLITS:
            raise ConfigError(
                f"n_splits must be {MIN_WF_SPLITS} to {MAX_WF_SPLITS}, got {n_splits}; each "
                "fold trains one model per trial, so more folds cost more time"
            )
    min_val = max(
        DEFAULT_MIN_VAL_BARS
        if min_val_bars is None
        else _positive_int(min_val_bars, "min_val_bars"),
        horizon,
    )
    gap = _positive_int(gap, "gap", 0)
    min_train_size = WF_TRAIN_LOOKBACKS * lookback + horizon
    budget = n_rows - max(min_train_size + gap, -(-n_rows // 2))
    candidates = [n_splits] if n_splits is not None else [TARGET_WF_SPLITS, MIN_WF_SPLITS]
    for count in candidates:
        if budget // count >= min_val:
            return {
                "n_splits": count,
                "val_size": budget // count,
                "min_train_size": min_train_size,
            }
    fewest = candidates[-1]
    needed = max(min_train_size + gap + fewest * min_val, 2 * fewest * min_val)
    raise DataError(
        f"{n_rows} rows are too few for walk-forward tuning: at least {needed} are needed "
        f"({fewest} folds of {min_val} validation bars after a training part of "
        f"{min_train_size} bars = 3 x the largest lookback {lookback} + {horizon}"
        f"{f' and a gap of {gap} bar(s)' if gap else ''}, and the validation parts may cover "
        "at most the last half of the rows); widen the date range "
        "(an earlier start date or a later end date) or use a model or search space "
        "with a shorter lookback"
    )


def get_walk_forward_splits(
    frame: pd.DataFrame,
    n_splits: int,
    val_size: int,
    *,
    min_train_size: int,
    expanding: bool = True,
    gap: int = 0,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Yield ``(train, val)`` frames of walk-forward cross-validation, oldest fold first.

    The validation parts are consecutive, do not overlap, each hold ``val_size`` rows, and
    the last one ends at the frame's last row. A fold's training part ends ``gap`` rows before
    its validation part (on the row right before it with ``gap=0``): with ``expanding=True``
    (default) it starts at the first row, so it grows fold by fold; with ``expanding=False``
    it is a rolling window of ``min_train_size`` rows. Rows are never shuffled and no
    validation row is ever a training row of the same fold.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows in time order (e.g. from :func:`load_features_from_db`).
    n_splits : int
        Number of folds, at least 1.
    val_size : int
        Rows in each fold's validation part, at least 1.
    min_train_size : int
        Fewest rows in a fold's training part (the first fold has at least this many), at
        least 1; the training window length when ``expanding=False``.
    expanding : bool, default True
        Expanding training window (True) or rolling window of ``min_train_size`` rows.
    gap : int, default 0
        Rows left out between each fold's training and validation parts (0 or more).

    Yields
    ------
    tuple of (pandas.DataFrame, pandas.DataFrame)
        Slices of ``frame`` (``iloc``), training part then validation part.

    Raises
    ------
    DataError
        ``frame`` has fewer than ``min_train_size + gap + n_splits * val_size`` rows, or is not in
        increasing time order.
    ConfigError
        A size is not an integer >= 1.
    """
    n_splits = _positive_int(n_splits, "n_splits")
    val_size = _positive_int(val_size, "val_size")
    min_train_size = _positive_int(min_train_size, "min_train_size")
    gap = _positive_int(gap, "gap", 0)
    n_rows = len(frame)
    needed = min_train_size + gap + n_splits * val_size
    if n_rows < needed:
        raise DataError(
            f"{n_rows} rows are too few for {n_splits} walk-forward folds: they need at least "
            f"{needed} ({min_train_size} training rows + {f'a gap of {gap} + ' if gap else ''}"
            f"{n_splits} x {val_size} validation rows); widen the date range or use "
            "calculate_dynamic_wf_kwargs to size the folds"
        )
    if not frame.index.is_monotonic_increasing or not frame.index.is_unique:
        raise DataError(
            "frame must be in increasing time order without duplicate timestamps; sort it "
            "(load_features_from_db returns it that way)"
        )
    for fold in range(n_splits):
        val_start = n_rows - (n_splits - fold) * val_size
        train_end = val_start - gap
        train_start = 0 if expanding else train_end - min_train_size
        yield frame.iloc[train_start:train_end], frame.iloc[val_start : val_start + val_size]
