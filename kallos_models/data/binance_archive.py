"""Download Binance's public spot kline archives, verified, cached and resumable.

Layout (``base`` is the ``binance_archive_url`` setting, default https://data.binance.vision)::

    <base>/data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip
    <base>/data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip.CHECKSUM
    <base>/data/spot/daily/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM-DD>.zip
    (and its .CHECKSUM)

Monthly files cover the months up to the last full one; the current month comes from its
daily files, the 1st to yesterday (:func:`archive_plan`), so the archive alone reaches
yesterday. Binance publishes each file with a delay: a missing last monthly file is replaced by
that month's daily files, and missing days at the end are reported, not refused.

Each zip is downloaded to ``<name>.part`` (continued with an HTTP Range request after an
interruption), its SHA-256 checked against the ``.CHECKSUM`` file, and only then renamed into
the cache. A cached zip is checked again before use. Open times in the archive are epoch
milliseconds until 2024 and microseconds from 2025;
:func:`kallos_models.data.ingest.parse_open_times`
tells them apart per value.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from kallos_models.data.candle_files import Chunk, open_candles
from kallos_models.data.ingest import IngestSummary, Progress, ingest_chunks
from kallos_models.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
CHUNK = 1 << 16
TIMEOUT_S = 60
RETRIES = 3


@dataclass(frozen=True)
class ArchiveResult:
    """What an archive ingest did: the months and days used, missing and refused, and the
    ingest. ``downloaded`` and ``from_cache`` name both (``2025-02``, ``2025-03-04``)."""

    symbol: str
    interval: str
    months_used: list[str]
    months_missing: list[str]
    months_refused: dict[str, str]
    downloaded: list[str]
    from_cache: list[str]
    ingest: IngestSummary | None
    notes: list[str] = field(default_factory=list)
    days_used: list[str] = field(default_factory=list)
    days_missing: list[str] = field(default_factory=list)
    days_refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "months_used": self.months_used,
            "months_missing": self.months_missing,
            "months_refused": self.months_refused,
            "days_used": self.days_used,
            "days_missing": self.days_missing,
            "days_refused": self.days_refused,
            "downloaded": self.downloaded,
            "from_cache": self.from_cache,
            "notes": self.notes,
            "ingest": None if self.ingest is None else self.ingest.as_dict(),
        }


def month_range(start: str, end: str | None) -> list[str]:
    """Months ``YYYY-MM`` from start to end inclusive; end defaults to the last full month."""
    for name, value in (("--start", start), ("--end", end)):
        if value is not None and not _MONTH_RE.match(value):
            raise ConfigError(f"{name} {value!r} is not a month; write it as YYYY-MM, e.g. 2018-01")
    last = end or (pd.Timestamp.now(tz="UTC").tz_localize(None).to_period("M") - 1).strftime(
        "%Y-%m"
    )
    periods = pd.period_range(start, last, freq="M")
    if len(periods) == 0:
        raise ConfigError(f"--start {start} is after --end {last}; swap them")
    return [p.strftime("%Y-%m") for p in periods]


def archive_plan(
    start: str, end: str | None, today: pd.Timestamp | None = None
) -> tuple[list[str], list[str]]:
    """The monthly files and the daily files to fetch: ``(months, days)``.

    Months from ``start`` to ``end``, each before the current month as its monthly file; the
    current month, when ``end`` is omitted or names it, as its daily files from the 1st to
    yesterday (none on the 1st). ``end`` after the current month is refused. ``today``
    defaults to the current UTC date.
    """
    today = (today or pd.Timestamp.now(tz="UTC").tz_localize(None)).normalize()
    current = today.strftime("%Y-%m")
    if end is not None and _MONTH_RE.match(end) and end > current:
        raise ConfigError(
            f"--end {end} is after the current month {current}; the archive has nothing later "
            f"(leave --end out to reach yesterday)"
        )
    if start == current and _MONTH_RE.match(start):
        months: list[str] = []
    else:
        last_full = (today.to_period("M") - 1).strftime("%Y-%m")
        months = month_range(start, last_full if end is None or end == current else end)
    days: list[str] = []
    if end is None or end == current:
        days = [d.strftime("%Y-%m-%d") for d in pd.date_range(today.replace(day=1), today)][:-1]
    return months, days


def month_days(month: str) -> list[str]:
    """The days ``YYYY-MM-DD`` of ``month``."""
    first = pd.Timestamp(f"{month}-01")
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(first, first + pd.offsets.MonthEnd(0))]


def archive_url(base: str, symbol: str, interval: str, period: str) -> str:
    """The URL of a monthly (``period`` ``YYYY-MM``) or daily (``YYYY-MM-DD``) file."""
    kind = "daily" if _DAY_RE.match(period) else "monthly"
    name = f"{symbol}-{interval}-{period}.zip"
    return f"{base.rstrip('/')}/data/spot/{kind}/klines/{symbol}/{interval}/{name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _get(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(
        url, headers={"User-Agent": "kallos-models", **(headers or {})}
    )
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - URL is a setting


def _fetch_checksum(url: str) -> str | None:
    """The expected SHA-256 from ``<url>.CHECKSUM``; None when the month does not exist."""
    try:
        with _get(url + ".CHECKSUM") as resp:
            text = resp.read().decode("ascii", "replace").strip()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    digest = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise DataError(f"{url}.CHECKSUM does not hold a SHA-256 digest: {text[:80]!r}")
    return digest


def _download(url: str, part: Path) -> None:
    """Download ``url`` into ``part``, continuing a partial file with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _get(url, headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the partial file is already complete
            return
        raise
    with resp:
        append = have and resp.status == 206
        if have and not append:
            logger.info("server ignored the Range request; downloading %s again", url)
        expected = int(resp.headers.get("Content-Length") or -1)
        received = 0
        with part.open("ab" if append else "wb") as fh:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                fh.write(block)
                received += len(block)
        if 0 <= received < expected:
            raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def fetch_month(
    base: str, symbol: str, interval: str, month: str, cache_dir: Path
) -> tuple[Path | None, str]:
    """Make one month's (or, with ``month`` ``YYYY-MM-DD``, one day's) verified zip
    available in the cache.

    Returns ``(path, how)`` with how one of ``cache``, ``downloaded``, ``missing`` (no such
    archive: path None). Raises DataError when the download does not match its checksum.
    """
    url = archive_url(base, symbol, interval, month)
    target = cache_dir / f"{symbol}-{interval}-{month}.zip"
    checksum_file = target.with_name(target.name + ".CHECKSUM")
    if target.exists() and checksum_file.exists():
        if _sha256(target) == checksum_file.read_text().split()[0]:
            return target, "cache"
        logger.warning("cached %s does not match its checksum; downloading it again", target.name)
        target.unlink()
    expected = _fetch_checksum(url)
    if expected is None:
        return None, "missing"
    part = target.with_name(target.name + ".part")
    for attempt in range(1, RETRIES + 1):
        try:
            _download(url, part)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None, "missing"
            raise
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            # Interrupted: the bytes received so far stay in .part and the next try resumes.
            logger.warning("download of %s interrupted (%s); resuming (try %d)", url, exc, attempt)
            if attempt == RETRIES:
                raise DataError(
                    f"download of {url} was interrupted {RETRIES} times; run the command again "
                    "to resume from the bytes already received"
                ) from None
    actual = _sha256(part)
    if actual != expected:
        part.unlink()
        raise DataError(
            f"{target.name}: SHA-256 {actual[:16]}... does not match its CHECKSUM "
            f"{expected[:16]}...; "
            "the download is corrupt and was discarded; run the command again to retry"
        )
    checksum_file.write_text(f"{expected}  {target.name}\n")
    os.replace(part, target)
    return target, "downloaded"


def read_archive_zip(path: Path, first_line: int = 1) -> Iterator[Chunk]:
    """One monthly archive (12 kline columns, with or without a header row) in chunks."""
    candles = open_candles(path, "binance")
    for chunk in candles.chunks():
        yield Chunk(chunk.frame, chunk.first_line - candles.first_line + first_line, 1.0)


def ingest_binance_archive(
    engine: Engine,
    asset_id: str,
    symbol: str,
    interval: str,
    *,
    start: str = "2017-08",
    end: str | None = None,
    base_url: str = "https://data.binance.vision",
    cache_dir: str | Path | None = None,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    today: pd.Timestamp | None = None,
) -> ArchiveResult:
    """Download, verify and ingest Binance klines for ``symbol`` and ``interval``: monthly
    files, then the current month's daily files (see :func:`archive_plan`).

    Parameters
    ----------
    engine
        Database engine.
    asset_id
        Asset identifier to store, e.g. ``BTC``.
    symbol
        Binance symbol, e.g. ``BTCUSDT``.
    interval
        Binance interval, the same string as the timeframe (``1d``, ``4h``, ...).
    start, end
        Months ``YYYY-MM``; default from 2017-08 to the current month: monthly files to the
        last full month, then daily files to yesterday. An ``end`` before the current month
        takes monthly files only.
    base_url
        Archive root; default Binance's public archive.
    cache_dir
        Where verified zips are kept; default ``~/.cache/kallos-models/binance``.
    skip_invalid
        As for file ingest.
    progress
        As for file ingest.
    today
        The date the plan is made for; default None, the current UTC date.

    Returns
    -------
    ArchiveResult
        Months and days used, missing (no archive: before the listing, or not published yet)
        and refused (checksum mismatch). Valid files are ingested even when another is
        refused; the caller reports the refusal (the CLI exits 1).
    """
    if not _SYMBOL_RE.match(symbol):
        raise ConfigError(f"--binance {symbol!r} is not a Binance symbol; write it like BTCUSDT")
    today = (today or pd.Timestamp.now(tz="UTC").tz_localize(None)).normalize()
    months, days = archive_plan(start, end, today)
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "kallos-models" / "binance"
    cache = cache / symbol / interval
    cache.mkdir(parents=True, exist_ok=True)
    used: list[str] = []
    missing: list[str] = []
    refused: dict[str, str] = {}
    downloaded: list[str] = []
    cached: list[str] = []
    notes: list[str] = []
    counted = {"lines": 0}
    # the last full month falls back to its daily files while its monthly one is not out
    now = today.to_period("M")
    reaches = end is None or end == now.strftime("%Y-%m")
    last_full = (now - 1).strftime("%Y-%m")
    fallback = months[-1] if reaches and months and months[-1] == last_full else None
    plan = [*months, *days]
    first, last = (plan[0], plan[-1]) if plan else (start, start)
    # the daily files Binance may not have published yet: yesterday's and the day before's
    unpublished = {(today - pd.Timedelta(days=n)).strftime("%Y-%m-%d") for n in (1, 2)}

    def file_chunks() -> Iterator[Chunk]:
        """Each usable file's rows, fetched when the ingest asks for them (one file at a
        time in memory); the files used, missing and refused are recorded on the way."""
        done = 0
        while plan:
            period = plan.pop(0)
            done += 1
            try:
                path, how = fetch_month(base_url, symbol, interval, period, cache)
            except DataError as exc:
                refused[period] = str(exc)
                logger.error("%s", exc)
                continue
            except (urllib.error.URLError, OSError) as exc:
                raise DataError(
                    f"cannot download {archive_url(base_url, symbol, interval, period)}: "
                    f"{exc}; check the network or the binance_archive_url setting, then run "
                    "again (finished files are cached)"
                ) from None
            if path is None:
                missing.append(period)
                if period == fallback:
                    plan[:0] = month_days(period)
                    notes.append(
                        f"{period}: the monthly file is not published yet; its daily files "
                        "were used"
                    )
                continue
            (downloaded if how == "downloaded" else cached).append(period)
            used.append(period)
            logger.info("%s %s %s: %s", symbol, interval, period, how)
            for chunk in read_archive_zip(path, counted["lines"] + 1):
                counted["lines"] += len(chunk.frame)
                yield Chunk(chunk.frame, chunk.first_line, done / (done + len(plan)))
        if not used and not refused and set(missing) <= unpublished:
            raise _NothingPublished
        if not used:
            raise DataError(
                f"no archive file of {symbol} {interval} from {first} to {last} could be used "
                f"(missing: {len(missing)}, refused: {len(refused)}); check the symbol and "
                "interval (Binance publishes a day's file about a day later)"
            )

    try:
        summary: IngestSummary | None = ingest_chunks(
            engine,
            asset_id,
            interval,
            file_chunks(),
            source=f"binance archive {symbol} {interval} {first}..{last}",
            fmt_name="binance",
            skip_invalid=skip_invalid,
            progress=progress,
        )
    except _NothingPublished:
        summary = None  # a scheduled run on the 1st, or before yesterday's file is out
        why = (
            f"the daily files {', '.join(missing)} are not published yet"
            if missing
            else "the current month has no finished day yet"
        )
        notes.append(f"nothing to ingest: {why}; run again later")
    day_missing = [p for p in missing if _DAY_RE.match(p)]
    trailing = _trailing(day_missing, [p for p in used if _DAY_RE.match(p)])
    if trailing and summary is not None:
        notes.append(
            f"daily files from {trailing[0]} to {trailing[-1]} are not published yet (Binance "
            "publishes each day with a delay); run again later for them"
        )
    return ArchiveResult(
        symbol,
        interval,
        [p for p in used if not _DAY_RE.match(p)],
        [p for p in missing if not _DAY_RE.match(p)],
        {p: r for p, r in refused.items() if not _DAY_RE.match(p)},
        downloaded,
        cached,
        summary,
        notes,
        days_used=[p for p in used if _DAY_RE.match(p)],
        days_missing=day_missing,
        days_refused={p: r for p, r in refused.items() if _DAY_RE.match(p)},
    )


class _NothingPublished(Exception):
    """Raised by the file iterator when the plan held only files not published yet."""


def _trailing(missing: list[str], used: list[str]) -> list[str]:
    """The missing days after the last day used (the ones not published yet)."""
    newest = max(used, default="")
    return sorted(d for d in missing if d > newest)
