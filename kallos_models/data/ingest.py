"""Load exchange candles from files into the market table, validated, idempotently.

Flow: read the file (CSV, optionally zipped, or Parquet) -> recognise its format -> parse open
times -> validate every row -> compare with the rows already stored over the file's range ->
upsert the rows that are new or changed, all in one transaction. The market table holds
candles only: indicators are computed when a window is loaded (:mod:`kallos_models.data.features`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from kallos_models.config import normalise_timeframe, timeframe_to_timedelta
from kallos_models.data import db
from kallos_models.errors import DataError

logger = logging.getLogger(__name__)

FileFormat = Literal["auto", "binance", "ohlcv"]

#: Binance's 12 kline columns, in file order, and our column for each (None: not stored).
BINANCE_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("open time", "open_time"),
    ("open", "open"),
    ("high", "high"),
    ("low", "low"),
    ("close", "close"),
    ("volume", "volume"),
    ("close time", None),
    ("quote asset volume", "quote_asset_volume"),
    ("number of trades", "number_of_trades"),
    ("taker buy base asset volume", "taker_buy_base_asset_volume"),
    ("taker buy quote asset volume", "taker_buy_quote_asset_volume"),
    ("ignore", None),
)
OHLCV_TIME_NAMES = ("timestamp", "open_time", "open time", "time", "date", "datetime")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
ACCEPTED_FORMATS = (
    "binance (the 12 kline columns: Open time, Open, High, Low, Close, Volume, Close time, "
    "Quote asset volume, Number of trades, Taker buy base asset volume, Taker buy quote asset "
    "volume, Ignore; with or without a header row) or ohlcv (timestamp, open, high, low, close, "
    "volume)"
)
#: How many rejected rows / gaps a summary lists one by one (all are counted).
LISTED = 20


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest did; ``as_dict()`` is the JSON the CLI prints."""

    file: str
    format: str
    asset_id: str
    timeframe: str
    rows_read: int
    rows_valid: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    rejected_reasons: dict[str, int]
    rejected_rows: list[dict[str, Any]]
    duplicates: dict[str, int]
    gaps: dict[str, Any]
    zero_volume_bars: int
    first: str | None
    last: str | None
    rows_in_db: int
    rows_written: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(name: object) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def _read_table(path: Path, header: bool) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, header=0 if header else None, dtype=str, skipinitialspace=True)


def _looks_headerless(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return False
    first = pd.read_csv(path, header=None, nrows=1, dtype=str)
    cell = str(first.iloc[0, 0]).strip() if first.shape[1] else ""
    if _norm(cell) in (BINANCE_COLUMNS[0][0], *OHLCV_TIME_NAMES):
        return False
    # A first cell that is a time (epoch number or date text) means the first row is data.
    return bool(parse_open_times(pd.Series([cell])).notna().iloc[0])


def read_candles(path: str | Path, fmt: FileFormat = "auto") -> tuple[pd.DataFrame, str]:
    """Read a candle file into a frame with ``open_time`` (raw) and the stored columns.

    Parameters
    ----------
    path
        CSV (plain or compressed, e.g. Binance's ``.zip``) or Parquet file.
    fmt
        ``binance``, ``ohlcv`` or ``auto`` (default: recognised from the columns).

    Returns
    -------
    (frame, format)
        Raw values as read (strings for CSV), columns ``open_time`` plus those of
        :data:`kallos_models.data.db.RAW_COLUMNS` the format has; and the format's name.

    Raises
    ------
    DataError
        Missing or unreadable file, or columns that match no known format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the --file path")
    try:
        headerless = _looks_headerless(path)
        raw = _read_table(path, header=not headerless)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {path} as CSV or Parquet: {str(exc).strip()}") from None
    except Exception as exc:  # pyarrow's errors for a bad Parquet file
        if type(exc).__module__.startswith("pyarrow"):
            raise DataError(f"cannot read {path} as Parquet: {exc}") from None
        raise
    if raw.empty:
        raise DataError(f"file {path} has no rows")

    names = [_norm(c) for c in raw.columns]
    binance_names = [n for n, _ in BINANCE_COLUMNS]
    is_binance = (headerless and raw.shape[1] == len(BINANCE_COLUMNS)) or names == binance_names
    time_col = next((n for n in OHLCV_TIME_NAMES if n in names), None)
    is_ohlcv = not headerless and time_col is not None and all(c in names for c in OHLCV_COLUMNS)

    if fmt == "binance" or (fmt == "auto" and is_binance):
        if not is_binance:
            raise DataError(
                f"{path} is not a Binance kline file: columns seen {list(map(str, raw.columns))}; "
                f"accepted formats: {ACCEPTED_FORMATS}"
            )
        raw.columns = binance_names
        frame = pd.DataFrame({ours: raw[theirs] for theirs, ours in BINANCE_COLUMNS if ours})
        return frame, "binance"
    if fmt == "ohlcv" or (fmt == "auto" and is_ohlcv):
        if not is_ohlcv:
            raise DataError(
                f"{path} is not an OHLCV file: columns seen {list(map(str, raw.columns))}; "
                f"accepted formats: {ACCEPTED_FORMATS}"
            )
        raw.columns = names
        frame = pd.DataFrame({"open_time": raw[time_col], **{c: raw[c] for c in OHLCV_COLUMNS}})
        for c in db.KLINE_COLUMNS:  # an OHLCV file that also carries kline extras keeps them
            if _norm(c) in names:
                frame[c] = raw[_norm(c)]
        return frame, "ohlcv"
    seen = list(map(str, raw.columns)) if not headerless else f"{raw.shape[1]} unnamed columns"
    raise DataError(
        f"{path}: columns {seen} match no known format; accepted formats: {ACCEPTED_FORMATS}"
    )


def parse_open_times(values: pd.Series) -> pd.Series:
    """Parse open times to naive UTC timestamps; unparseable values become NaT.

    Accepts text (``2018-01-01 00:00:00.000000 UTC``, with or without `` UTC`` and trailing
    spaces, ISO with an offset) and epoch numbers, whose unit is told per value by magnitude:
    seconds, milliseconds (Binance until 2024) or microseconds (Binance from 2025).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
        return ts.dt.tz_localize(None)
    text = values.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    is_num = numeric.notna()
    if is_num.any():
        num = numeric[is_num].astype("float64")
        us = np.where(num >= 1e14, num, np.where(num >= 1e11, num * 1e3, num * 1e6))
        out[is_num] = pd.to_datetime(np.round(us).astype("int64"), unit="us", errors="coerce")
    if (~is_num).any():
        cleaned = text[~is_num].str.replace(r"\s*UTC$", "", regex=True)
        parsed = pd.to_datetime(cleaned, utc=True, errors="coerce", format="mixed")
        out[~is_num] = parsed.dt.tz_localize(None)
    return out


def validate_candles(
    raw: pd.DataFrame, timeframe: str, *, first_line: int = 2
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, int]]:
    """Check every row; return (valid rows indexed by open time, rejected rows, duplicate counts).

    Rules: open time parseable and aligned to the bar size; prices numeric and > 0 (all-zero
    placeholder rows are rejected); volume >= 0; high >= max(open, close); low <=
    min(open, close); in kline files, volume traded with 0 trades marks a bar that is not the
    exchange's own (e.g. another venue's tail) and is rejected. A timestamp that occurs twice
    with identical values keeps one copy; with different values every copy is rejected, since
    nothing in the file says which one is true.

    ``first_line`` is the file line number of the first data row (2 with a header row).
    """
    frame = raw.copy()
    frame["_line"] = np.arange(len(frame)) + first_line
    frame["open_time"] = parse_open_times(raw["open_time"])
    numeric_cols = [c for c in db.RAW_COLUMNS if c in frame.columns]
    for c in numeric_cols:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")

    reasons: dict[int, str] = {}

    def reject(mask: pd.Series, reason: str) -> None:
        for line in frame.loc[mask, "_line"]:
            reasons.setdefault(int(line), reason)

    prices = frame[["open", "high", "low", "close"]]
    reject(frame["open_time"].isna(), "unparseable open time")
    reject(prices.isna().any(axis=1) | frame["volume"].isna(), "unparseable price or volume")
    reject(
        (prices <= 0).any(axis=1),
        "non-positive price (zero rows are placeholders for missing bars)",
    )
    reject(frame["volume"] < 0, "negative volume")
    reject(frame["high"] < prices[["open", "close"]].max(axis=1), "high below max(open, close)")
    reject(frame["low"] > prices[["open", "close"]].min(axis=1), "low above min(open, close)")
    if "number_of_trades" in frame.columns:
        reject(
            (frame["number_of_trades"] == 0) & (frame["volume"] > 0),
            "volume traded with 0 trades: not this exchange's bar (another venue or synthetic)",
        )
    step = timeframe_to_timedelta(timeframe)
    if step <= pd.Timedelta(days=1):
        times = frame["open_time"]
        offset = (times - times.dt.normalize()) % step
        reject(
            times.notna() & (offset != pd.Timedelta(0)),
            f"open time not on a {timeframe} bar boundary",
        )

    # Duplicates among the remaining rows.
    ok = ~frame["_line"].isin(list(reasons))
    dup_mask = frame["open_time"].duplicated(keep=False) & ok
    identical = 0
    conflicting = 0
    if dup_mask.any():
        value_cols = ["open_time", *numeric_cols]
        dups = frame[dup_mask]
        for _, group in dups.groupby("open_time"):
            distinct = group[value_cols].drop_duplicates()
            if len(distinct) == 1:
                identical += len(group) - 1
                for line in group["_line"].iloc[1:]:
                    reasons.setdefault(int(line), "_identical_duplicate")
            else:
                conflicting += 1
                for line in group["_line"]:
                    reasons.setdefault(int(line), "duplicated open time with different values")

    rejected = [
        {
            "line": line,
            "open_time": _iso(frame.loc[frame["_line"] == line, "open_time"].iloc[0]),
            "reason": reason,
        }
        for line, reason in sorted(reasons.items())
        if reason != "_identical_duplicate"
    ]
    valid = frame[~frame["_line"].isin(list(reasons))].drop(columns="_line")
    valid = valid.set_index("open_time").sort_index()
    return valid, rejected, {"identical_dropped": identical, "conflicting_timestamps": conflicting}


def _iso(ts: Any) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).isoformat()


def find_gaps(index: pd.DatetimeIndex, timeframe: str) -> dict[str, Any]:
    """Gaps between consecutive open times larger than one bar (reported, never filled)."""
    step = timeframe_to_timedelta(timeframe)
    if len(index) < 2:
        return {"count": 0, "missing_bars": 0, "listed": []}
    diffs = pd.Series(index[1:] - index[:-1], index=index[1:])
    big = diffs[diffs > step]
    listed = [
        {"after": _iso(end - d), "before": _iso(end), "missing_bars": int(d / step) - 1}
        for end, d in big.sort_values(ascending=False).head(LISTED).items()
    ]
    return {
        "count": int(len(big)),
        "missing_bars": int(sum(int(d / step) - 1 for d in big)),
        "listed": listed,
    }


def _check_bar_size(times: pd.Series, timeframe: str, path: str) -> None:
    """Refuse a file whose typical spacing is not the timeframe (checked on every parseable row,
    so a wrong --timeframe cannot slip through --skip-invalid)."""
    unique = pd.DatetimeIndex(times.dropna().unique()).sort_values()
    if len(unique) < 3:
        return
    step = timeframe_to_timedelta(timeframe)
    typical = pd.Series(unique[1:] - unique[:-1]).median()
    if typical != step:
        raise DataError(
            f"{path}: bars are {typical} apart but --timeframe is {timeframe}; "
            "pass the timeframe the file holds"
        )


def _rows_differ(new: pd.DataFrame, old: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Row-wise: do ``new`` and ``old`` (same index) differ in any of ``cols`` (NaN == NaN)?"""
    a = new[cols].to_numpy(dtype="float64")
    b = old[cols].to_numpy(dtype="float64")
    same = np.isclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True)
    return pd.Series(~same.all(axis=1), index=new.index)


def ingest_file(
    engine: Engine,
    asset_id: str,
    timeframe: str,
    path: str | Path,
    *,
    fmt: FileFormat = "auto",
    skip_invalid: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Validate a candle file and upsert its candles into the market table.

    Parameters
    ----------
    engine
        Database engine (see :func:`kallos_models.data.db.create_db_engine`).
    asset_id
        Asset identifier stored with each row, e.g. ``BTC``; stored as data, never as SQL.
    timeframe
        Bar size the file holds, e.g. ``1d`` or ``4h``.
    path
        CSV or Parquet file.
    fmt
        ``auto`` (default), ``binance`` or ``ohlcv``.
    skip_invalid
        Ingest the valid rows and report the rest; default False refuses a file with any
        invalid row and writes nothing.
    progress
        Called as ``progress(rows_written_so_far, rows_to_write)`` while writing.

    Returns
    -------
    IngestSummary

    Raises
    ------
    DataError
        Unreadable file, unknown format, invalid rows (unless ``skip_invalid``), wrong
        timeframe, or no valid row. Nothing is written then.
    """
    path = Path(path)
    raw, fmt_name = read_candles(path, fmt)
    first_line = 1 if _looks_headerless(path) else 2
    return ingest_frame(
        engine,
        asset_id,
        timeframe,
        raw,
        source=str(path),
        fmt_name=fmt_name,
        first_line=first_line,
        skip_invalid=skip_invalid,
        progress=progress,
    )


def ingest_frame(
    engine: Engine,
    asset_id: str,
    timeframe: str,
    raw: pd.DataFrame,
    *,
    source: str,
    fmt_name: str,
    first_line: int = 2,
    skip_invalid: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Validate raw candle rows (as :func:`read_candles` returns them) and upsert them.

    The shared path behind :func:`ingest_file` and the Binance archive download; parameters
    and errors as for :func:`ingest_file`, with ``source`` naming the input in messages and
    ``first_line`` the line number of the first row.
    """
    path = source
    if not str(asset_id).strip():
        raise DataError("asset id is empty; pass --asset-id, e.g. --asset-id BTC")
    timeframe = normalise_timeframe(timeframe)  # 24h and 1440m are stored as 1d
    _check_bar_size(parse_open_times(raw["open_time"]), timeframe, path)
    valid, rejected, duplicates = validate_candles(raw, timeframe, first_line=first_line)
    reason_counts = dict(Counter(r["reason"] for r in rejected))
    if rejected and not skip_invalid:
        shown = "; ".join(f"line {r['line']}: {r['reason']}" for r in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        raise DataError(
            f"{path} has {len(rejected)} invalid rows, nothing was ingested: {shown}{more}; "
            "fix the file or pass --skip-invalid to ingest only the valid rows"
        )
    if valid.empty:
        raise DataError(f"{path} has no valid rows ({len(raw)} read, all rejected)")
    for c in db.KLINE_COLUMNS:
        if c not in valid.columns:
            valid[c] = np.nan
    raw_cols = list(db.RAW_COLUMNS)
    valid = valid[raw_cols]

    with engine.begin() as conn:
        # only the stored rows the file overlaps: the rest of the history is not read
        stored = db.read_market_frame(
            conn,
            asset_id,
            timeframe,
            columns=raw_cols,
            start=valid.index.min(),
            end=valid.index.max(),
        )
        known = valid.index.intersection(stored.index)
        changed_raw = _rows_differ(valid.loc[known], stored.loc[known], raw_cols)
        inserted = int(len(valid) - len(known))
        updated = int(changed_raw.sum())
        # write only new rows and rows whose candle values change
        write = pd.Series(True, index=valid.index)
        write.loc[known] = changed_raw.to_numpy()
        rows = _records(valid[write.to_numpy()], asset_id, timeframe)
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, len(rows))

        db.upsert_rows(conn, rows, progress=tick)
        rows_in_db = db.count_rows(conn, asset_id, timeframe)

    gaps = find_gaps(pd.DatetimeIndex(valid.index), timeframe)
    warnings = []
    if gaps["count"]:
        warnings.append(
            f"{gaps['count']} gaps ({gaps['missing_bars']} missing bars) in the file; they are "
            "stored as gaps, not filled"
        )
    zero_volume = int((valid["volume"] == 0).sum())
    if zero_volume:
        warnings.append(f"{zero_volume} bars with zero volume (exchange filler during outages)")
    if rejected:
        warnings.append(f"{len(rejected)} invalid rows skipped (--skip-invalid)")
    return IngestSummary(
        file=source,
        format=fmt_name,
        asset_id=asset_id,
        timeframe=timeframe,
        rows_read=int(len(raw)),
        rows_valid=int(len(valid)),
        inserted=inserted,
        updated=updated,
        unchanged=int(len(known) - updated),
        rejected=len(rejected),
        rejected_reasons=reason_counts,
        rejected_rows=rejected[:LISTED],
        duplicates=duplicates,
        gaps=gaps,
        zero_volume_bars=zero_volume,
        first=_iso(valid.index.min()),
        last=_iso(valid.index.max()),
        rows_in_db=rows_in_db,
        rows_written=len(rows),
        warnings=warnings,
    )


def _records(frame: pd.DataFrame, asset_id: str, timeframe: str) -> list[dict[str, Any]]:
    """Rows as dicts for the upsert; NaN becomes NULL."""
    values = frame.astype("float64")
    values = values.astype(object).where(values.notna(), None)
    cols = list(values.columns)
    out = []
    for ts, row in zip(values.index, values.itertuples(index=False, name=None), strict=True):
        rec = dict(zip(cols, row, strict=True))
        rec["asset_id"] = asset_id
        rec["timeframe"] = timeframe
        rec["open_time"] = ts.to_pydatetime()
        out.append(rec)
    return out
