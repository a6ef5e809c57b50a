"""Load exchange candles from files into the market table: streamed, validated, idempotent.

Flow: open the file and recognise its format (:mod:`kallos_models.data.candle_files`) ->
for each chunk of at most 100,000 rows: parse open times, check every row, stage the valid
ones in a temporary table (:mod:`kallos_models.data.staging`: ``COPY`` on PostgreSQL,
batched ``executemany`` on SQLite) -> check the bar size over the whole file -> drop
duplicates across the whole file -> compare with the stored rows and upsert the new or
changed ones in one statement. Everything is one transaction: an ingest is all or nothing,
and memory holds one chunk whatever the file's size. The market table holds candles only:
indicators are computed when a window is loaded (:mod:`kallos_models.data.features`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from kallos_models.config import normalise_timeframe, timeframe_to_timedelta
from kallos_models.data import db
from kallos_models.data.candle_files import (
    ACCEPTED_FORMATS,
    BINANCE_COLUMNS,
    CHUNK_ROWS,
    OHLCV_COLUMNS,
    OHLCV_TIME_NAMES,
    Chunk,
    FileFormat,
    open_candles,
    parse_open_times,
)
from kallos_models.data.staging import Staging
from kallos_models.errors import ConfigError, DataError

__all__ = [
    "ACCEPTED_FORMATS",
    "BINANCE_COLUMNS",
    "OHLCV_COLUMNS",
    "OHLCV_TIME_NAMES",
    "Chunk",
    "FileFormat",
    "IngestSummary",
    "check_rows",
    "ingest_chunks",
    "ingest_file",
    "ingest_frame",
    "parse_open_times",
]

logger = logging.getLogger(__name__)

#: How many rejected rows / gaps a summary lists one by one (all are counted).
LISTED = 20
#: A second bar spacing this common (share of all spacings, and at least MIXED_MIN times)
#: means the file mixes bar sizes rather than having gaps.
MIXED_SHARE = 0.05
MIXED_MIN = 10
#: Spacings seen before the bar size is judged early (so a wrong --timeframe fails fast).
EARLY_SPACINGS = 1000
#: Distinct spacings tracked one by one (the rest are counted together): bounded memory.
MAX_SPACINGS = 10_000
#: Progress: (rows read so far, fraction of the input read, 0..1).
Progress = Callable[[int, float], None]

#: The row rules, in the order they are applied; a rejected row gets the first that applies.
REASONS = (
    "unparseable open time",
    "open time in the future",
    "bar not closed yet (its open time plus the timeframe is after now)",
    "unparseable price or volume",
    "non-positive price (zero rows are placeholders for missing bars)",
    "negative volume",
    "high below max(open, close)",
    "low above min(open, close)",
    "volume traded with 0 trades: not this exchange's bar (another venue or synthetic)",
    "open time not on a {timeframe} bar boundary",
)
CONFLICT_REASON = "duplicated open time with different values"


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


@dataclass(frozen=True)
class CheckedRows:
    """One chunk after :func:`check_rows`: the valid rows and the rejected ones."""

    lines: np.ndarray
    times: pd.Series
    values: pd.DataFrame
    #: every parseable open time of the chunk, valid or not (for the bar-size check)
    parsed_times: pd.Series
    #: (line, open time, reason) of each rejected row, in line order
    rejected: list[tuple[int, pd.Timestamp | None, str]]


def check_rows(
    raw: pd.DataFrame,
    timeframe: str,
    *,
    first_line: int = 2,
    now: pd.Timestamp | None = None,
) -> CheckedRows:
    """Check every row of one chunk against :data:`REASONS` (duplicates are checked later,
    over the whole file, by the staging table).

    Rules: open time parseable, not in the future and its bar closed (the still-open bar is
    never stored); prices numeric and > 0 (all-zero placeholder rows are rejected); volume >=
    0; high >= max(open, close); low <= min(open, close); in kline files, volume traded with 0
    trades marks a bar that is not the exchange's own (e.g. another venue's tail); open time
    aligned to the bar size (timeframes up to 1d). The kline extras are not checked: a value
    that does not parse is stored as NULL.
    """
    timeframe = normalise_timeframe(timeframe)
    step = timeframe_to_timedelta(timeframe)
    now = now if now is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    n = len(raw)
    lines = np.arange(n, dtype="int64") + first_line
    times = parse_open_times(raw["open_time"]).reset_index(drop=True)
    values = pd.DataFrame(
        {
            c: pd.to_numeric(raw[c], errors="coerce").astype("float64").to_numpy()
            if c in raw.columns
            else np.full(n, np.nan)
            for c in db.RAW_COLUMNS
        }
    )
    prices = values[["open", "high", "low", "close"]].to_numpy()
    volume = values["volume"].to_numpy()
    with np.errstate(invalid="ignore"):
        masks = [
            times.isna().to_numpy(),
            (times > now).to_numpy(),
            (times + step > now).to_numpy(),
            np.isnan(prices).any(axis=1) | np.isnan(volume),
            (prices <= 0).any(axis=1),
            volume < 0,
            values["high"].to_numpy() < np.fmax(values["open"], values["close"]).to_numpy(),
            values["low"].to_numpy() > np.fmin(values["open"], values["close"]).to_numpy(),
            (values["number_of_trades"].to_numpy() == 0) & (volume > 0)
            if "number_of_trades" in raw.columns
            else np.zeros(n, dtype=bool),
            _misaligned(times, step),
        ]
    code = np.zeros(n, dtype="int8")
    for k, mask in enumerate(masks, start=1):
        code = np.where((code == 0) & mask, k, code)
    bad = np.flatnonzero(code)
    reasons = [r.format(timeframe=timeframe) for r in REASONS]
    rejected = [
        (int(lines[i]), None if pd.isna(times.iloc[i]) else times.iloc[i], reasons[code[i] - 1])
        for i in bad
    ]
    ok = code == 0
    return CheckedRows(
        lines=lines[ok],
        times=times[ok].reset_index(drop=True),
        values=values[ok].reset_index(drop=True),
        parsed_times=times.dropna(),
        rejected=rejected,
    )


def _misaligned(times: pd.Series, step: pd.Timedelta) -> np.ndarray:
    if step > pd.Timedelta(days=1):
        return np.zeros(len(times), dtype=bool)
    offset = (times - times.dt.normalize()) % step
    return (times.notna() & (offset != pd.Timedelta(0))).to_numpy()


class _Spacing:
    """Counts of the spacings between consecutive distinct open times (bounded memory):
    of all spacings, and of those in runs of three or more equal ones (a section of bars of
    one size, as opposed to an isolated gap)."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.runs: Counter[int] = Counter()
        self.other = 0
        self.last: int | None = None

    def add(self, times: pd.Series) -> None:
        if times.empty:
            return
        unique = np.unique(times.to_numpy(dtype="datetime64[ns]").astype("int64"))
        diffs = np.diff(unique)
        if self.last is not None and unique[0] > self.last:
            diffs = np.concatenate([[unique[0] - self.last], diffs])
        self.last = int(unique[-1]) if self.last is None else max(self.last, int(unique[-1]))
        if not len(diffs):
            return
        starts = np.flatnonzero(np.concatenate([[True], diffs[1:] != diffs[:-1]]))
        lengths = np.diff(np.append(starts, len(diffs)))
        for v, n in zip(diffs[starts].tolist(), lengths.tolist(), strict=True):
            if v in self.counts or len(self.counts) < MAX_SPACINGS:
                self.counts[v] += n
                if n >= 3:
                    self.runs[v] += n
            else:
                self.other += n

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.other

    def check(self, source: str, timeframe: str) -> None:
        """Refuse a file whose usual spacing is not the timeframe, or that mixes bar sizes."""
        if self.total < 2:
            return
        floor = max(MIXED_MIN, MIXED_SHARE * self.total)
        sections = [(v, n) for v, n in self.runs.most_common(2) if n >= floor]
        if len(sections) == 2:
            (a, a_n), (b, b_n) = sections
            raise DataError(
                f"{source} mixes bar sizes: {a_n} bars {_spelled(a)} apart and {b_n} bars "
                f"{_spelled(b)} apart; a file must hold one timeframe: split it into one file "
                "per bar size and ingest each with its own --timeframe"
            )
        typical = self.counts.most_common(1)[0][0]
        if typical != int(timeframe_to_timedelta(timeframe).value):
            raise DataError(
                f"{source}: bars are {_spelled(typical)} apart but --timeframe is {timeframe}; "
                f"pass the timeframe the file holds (--timeframe {_spelled(typical)})"
            )


def _spelled(ns: int) -> str:
    """A spacing as a timeframe (``4h``, ``1d``) when it is one, else as a duration."""
    delta = pd.Timedelta(ns, unit="ns")
    if delta > pd.Timedelta(0) and delta % pd.Timedelta(minutes=1) == pd.Timedelta(0):
        try:
            return normalise_timeframe(f"{int(delta / pd.Timedelta(minutes=1))}m")
        except ConfigError:  # longer than any bar size
            pass
    return str(delta)


def ingest_file(
    engine: Engine,
    asset_id: str,
    timeframe: str,
    path: str | Path,
    *,
    fmt: FileFormat = "auto",
    skip_invalid: bool = False,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> IngestSummary:
    """Validate a candle file and upsert its candles into the market table, streamed.

    Parameters
    ----------
    engine
        Database engine (see :func:`kallos_models.data.db.create_db_engine`).
    asset_id
        Asset identifier stored with each row, e.g. ``BTC``; stored as data, never as SQL.
    timeframe
        Bar size the file holds, e.g. ``1d`` or ``4h`` (``24h`` is stored as ``1d``).
    path
        CSV (plain or compressed) or Parquet file.
    fmt
        ``auto`` (default), ``binance`` or ``ohlcv``.
    skip_invalid
        Ingest the valid rows and report the rest; default False refuses a file with any
        invalid row and writes nothing.
    progress
        Called as ``progress(rows_read, fraction_of_file_read)`` after each chunk.
    chunk_rows
        Rows read at a time (memory is bounded by this, not by the file's size).

    Returns
    -------
    IngestSummary

    Raises
    ------
    DataError
        Unreadable file, unknown format, invalid rows (unless ``skip_invalid``), wrong or
        mixed bar size, or no valid row. Nothing is written then.
    """
    candles = open_candles(path, fmt, chunk_rows=chunk_rows)
    return ingest_chunks(
        engine,
        asset_id,
        timeframe,
        candles.chunks(),
        source=str(path),
        fmt_name=candles.format,
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
    progress: Progress | None = None,
) -> IngestSummary:
    """Validate raw candle rows already in memory (``open_time`` plus candle columns) and
    upsert them: :func:`ingest_chunks` with one chunk."""
    chunk = Chunk(raw.reset_index(drop=True), first_line, 1.0)
    return ingest_chunks(
        engine,
        asset_id,
        timeframe,
        [chunk],
        source=source,
        fmt_name=fmt_name,
        skip_invalid=skip_invalid,
        progress=progress,
    )


def ingest_chunks(
    engine: Engine,
    asset_id: str,
    timeframe: str,
    chunks: Iterable[Chunk],
    *,
    source: str,
    fmt_name: str,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> IngestSummary:
    """The one ingest path: check and stage each chunk, then merge, in one transaction.

    Behind :func:`ingest_file`, :func:`ingest_frame` and the Binance archive download;
    parameters and errors as for :func:`ingest_file`, with ``source`` naming the input in
    messages.
    """
    timeframe = normalise_timeframe(timeframe)  # 24h and 1440m are stored as 1d
    db.check_key(asset_id, timeframe)
    step = timeframe_to_timedelta(timeframe)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    reasons: Counter[str] = Counter()
    listed: list[tuple[int, pd.Timestamp | None, str]] = []
    spacing = _Spacing()
    rows_read = 0
    with db.writing(engine) as conn:
        staging = Staging(conn, int(step.value // 1000), LISTED)
        for chunk in chunks:
            checked = check_rows(chunk.frame, timeframe, first_line=chunk.first_line, now=now)
            rows_read += len(chunk.frame)
            spacing.add(checked.parsed_times)
            if spacing.total >= EARLY_SPACINGS:
                spacing.check(source, timeframe)  # a wrong --timeframe fails at once
            reasons.update(r for _, _, r in checked.rejected)
            listed = (listed + checked.rejected[: LISTED - len(listed)])[:LISTED]
            staging.load(checked.lines, checked.times, checked.values)
            if progress is not None:
                progress(rows_read, chunk.fraction)
        if rows_read == 0:
            raise DataError(f"{source} has no rows (a header only?); check the file")
        spacing.check(source, timeframe)
        dups = staging.deduplicate()
        if dups.conflicting_rows:
            reasons[CONFLICT_REASON] += dups.conflicting_rows
            listed += [(line, _ts(t), CONFLICT_REASON) for line, t in dups.listed]
            listed = sorted(listed, key=lambda r: r[0])[:LISTED]
        rejected = sum(reasons.values())
        if rejected and not skip_invalid:
            shown = "; ".join(f"line {line}: {reason}" for line, _, reason in listed[:5])
            more = f" (and {rejected - 5} more)" if rejected > 5 else ""
            raise DataError(
                f"{source} has {rejected} invalid rows, nothing was ingested: {shown}{more}; "
                "fix the file or pass --skip-invalid to ingest only the valid rows"
            )
        if staging.rows == 0:
            raise DataError(f"{source} has no valid rows ({rows_read} read, all rejected)")
        step_us = int(step.value // 1000)
        gap_count, missing, largest = staging.gaps()
        merged = staging.merge(asset_id, timeframe)
        rows_in_db = db.count_rows(conn, asset_id, timeframe)
        staging.drop()

    gaps = {
        "count": gap_count,
        "missing_bars": missing,
        "listed": [
            {"after": _iso(_ts(t - d)), "before": _iso(_ts(t)), "missing_bars": d // step_us - 1}
            for t, d in largest
        ],
    }
    warnings = []
    if gap_count:
        warnings.append(
            f"{gap_count} gaps ({missing} missing bars) in the file; they are stored as gaps, "
            "not filled"
        )
    if merged.zero_volume:
        warnings.append(
            f"{merged.zero_volume} bars with zero volume (exchange filler during outages)"
        )
    if rejected:
        warnings.append(f"{rejected} invalid rows skipped (--skip-invalid)")
    written = merged.inserted + merged.updated
    return IngestSummary(
        file=source,
        format=fmt_name,
        asset_id=asset_id,
        timeframe=timeframe,
        rows_read=rows_read,
        rows_valid=merged.rows,
        inserted=merged.inserted,
        updated=merged.updated,
        unchanged=merged.rows - written,
        rejected=rejected,
        rejected_reasons=dict(reasons),
        rejected_rows=[
            {"line": line, "open_time": _iso(ts), "reason": reason} for line, ts, reason in listed
        ],
        duplicates={
            "identical_dropped": dups.identical_dropped,
            "conflicting_timestamps": dups.conflicting_timestamps,
        },
        gaps=gaps,
        zero_volume_bars=merged.zero_volume,
        first=_iso(_ts(merged.first_us)),
        last=_iso(_ts(merged.last_us)),
        rows_in_db=rows_in_db,
        rows_written=written,
        warnings=warnings,
    )


def _ts(us: int | None) -> pd.Timestamp | None:
    return None if us is None else pd.Timestamp(us, unit="us")


def _iso(ts: Any) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).isoformat()
