"""Fetch new candles from an exchange's API through ccxt and ingest them like a file.

Flow: open the ccxt client (rate limiting on) -> load its markets and check the symbol and
timeframe -> start after the newest stored bar of (asset, timeframe), or at ``since`` ->
``fetch_ohlcv(symbol, timeframe, since, limit)`` page after page (on Binance spot its own
klines endpoint, through the same client, for the kline columns ``fetch_ohlcv`` drops: quote
volume, trades, taker volumes) until the exchange has no newer closed bar -> each page,
less the still-open bar, is one :class:`Chunk` of
:func:`kallos_models.data.ingest.ingest_chunks`: the same row checks, gap report and upsert,
in one transaction. Transient errors (``ccxt.NetworkError``: timeouts, HTTP 429, DDoS
protection, exchange not available) are retried with a bounded exponential backoff.

ccxt is an optional dependency (``pip install 'kallos-models[exchange]'``), imported inside
the functions that need it.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kallos_models.config import normalise_timeframe, timeframe_to_timedelta
from kallos_models.data import db
from kallos_models.data.candle_files import Chunk
from kallos_models.data.ingest import IngestSummary, Progress, ingest_chunks
from kallos_models.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Bars asked for per request (Binance spot answers at most 1000).
LIMIT = 1000
#: Retries of one request after a transient error, and the backoff before each (doubling).
RETRIES = 5
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: ccxt options per exchange id: only spot markets are loaded (one request, no futures API).
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
}
INSTALL_HINT = "pip install 'kallos-models[exchange]'"
URL_HINT = "--exchange-url (KALLOS_EXCHANGE_URL)"
T = TypeVar("T")


@dataclass(frozen=True)
class ExchangeResult:
    """What an exchange ingest did: the range asked for, the requests made, and the ingest
    (None when the exchange had no new closed bar)."""

    exchange: str
    symbol: str
    timeframe: str
    since: str
    requests: int
    market_requests: int
    retries: int
    bars_fetched: int
    open_bar_dropped: bool
    ingest: IngestSummary | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "since": self.since,
            "requests": self.requests,
            "market_requests": self.market_requests,
            "retries": self.retries,
            "bars_fetched": self.bars_fetched,
            "open_bar_dropped": self.open_bar_dropped,
            "up_to_date": self.ingest is None,
            "notes": self.notes,
            "ingest": None if self.ingest is None else self.ingest.as_dict(),
        }


def _ccxt() -> Any:
    try:
        import ccxt
    except ImportError:
        raise ConfigError(
            f"ingest --exchange needs the ccxt package, which is not installed; {INSTALL_HINT}"
        ) from None
    return ccxt


def check_exchange(exchange_id: str, *, api_url: str | None = None) -> Any:
    """The ccxt module, after checking that it is installed, knows ``exchange_id`` and that
    ``api_url`` is an http(s) URL (nothing is constructed or requested).

    Raises
    ------
    ConfigError
        ccxt is not installed, the exchange id is unknown, or ``api_url`` is not a URL.
    """
    ccxt = _ccxt()
    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id.lower(), ccxt.exchanges, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see ccxt.exchanges"
        raise ConfigError(
            f"--exchange {exchange_id!r} is not an exchange ccxt knows; {hint}; pass its ccxt "
            "id in lower case, e.g. --exchange binance"
        )
    if api_url:
        _rebase({}, api_url)
    return ccxt


def open_exchange(exchange_id: str, *, api_url: str | None = None) -> Any:
    """A ccxt client for ``exchange_id`` with rate limiting on, pointed at ``api_url``.

    ``api_url`` (e.g. ``http://127.0.0.1:8080`` or a proxy) replaces the scheme, host and
    port of every API endpoint the client knows; a path in it is put before each endpoint's
    own path. No API key is set: only public market data is read.

    Raises
    ------
    ConfigError
        ccxt is not installed, the exchange id is unknown, or ``api_url`` is not a URL.
    """
    ccxt = check_exchange(exchange_id, api_url=api_url)
    client = getattr(ccxt, exchange_id)(
        {"enableRateLimit": True, "options": EXCHANGE_OPTIONS.get(exchange_id, {})}
    )
    if api_url:
        client.urls["api"] = _rebase(client.urls.get("api"), api_url)
    return client


def _rebase(api: Any, base: str) -> Any:
    """Every endpoint URL of ``api`` (a string or nested dicts of them) moved onto ``base``."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{URL_HINT} {base!r} is not an http(s) URL; write it like http://127.0.0.1:8080"
        )
    if isinstance(api, dict):
        return {key: _rebase(value, base) for key, value in api.items()}
    if isinstance(api, str) and "://" in api:
        path = urlsplit(api).path
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"
    return api


def _call(
    ccxt: Any,
    exchange_id: str,
    what: str,
    func: Callable[[], T],
    counter: dict[str, int],
    retries: int,
    backoff_s: float,
) -> T:
    """``func()``, retried after transient errors with a doubling, capped backoff."""
    for attempt in range(retries + 1):
        counter["attempts"] += 1
        try:
            return func()
        except ccxt.NetworkError as exc:  # timeouts, 429, DDoS protection, not available
            if attempt == retries:
                raise DataError(
                    f"{exchange_id} did not answer {what} after {retries + 1} tries "
                    f"({type(exc).__name__}: {_short(exc)}); check the network, or {URL_HINT} "
                    "if you go through a proxy, then run again (nothing was written)"
                ) from None
            delay = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
            counter["retries"] += 1
            logger.warning(
                "%s %s: %s (%s); retrying in %.1f s",
                exchange_id,
                what,
                type(exc).__name__,
                _short(exc),
                delay,
            )
            time.sleep(delay)
        except ccxt.BaseError as exc:  # the exchange refused: bad symbol, bad request, ...
            raise DataError(
                f"{exchange_id} refused {what} ({type(exc).__name__}: {_short(exc)}); check "
                "--symbol and --timeframe, nothing was written"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: Exception, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def check_market(client: Any, symbol: str, timeframe: str) -> str:
    """The exchange's own spelling of ``timeframe`` for ``symbol``, after checking both.

    Raises
    ------
    ConfigError
        The exchange has no OHLCV API, no such market, or does not offer the timeframe.
    """
    name = client.id
    if not client.has.get("fetchOHLCV"):
        raise ConfigError(f"{name} has no candle (OHLCV) API in ccxt; choose another --exchange")
    if symbol not in client.markets:
        by_id = client.markets_by_id.get(symbol.replace("/", "").upper()) or []
        close = [m["symbol"] for m in by_id] or difflib.get_close_matches(
            symbol.upper(), client.symbols, n=5, cutoff=0.6
        )
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        raise ConfigError(
            f"{name} has no market {symbol!r} ({hint}); pass ccxt's unified symbol, "
            "e.g. --symbol BTC/USDT"
        )
    offered = {}
    for key in client.timeframes or {}:
        try:
            offered[normalise_timeframe(key)] = key
        except ConfigError:  # months (1M) have no fixed length
            continue
    if timeframe not in offered:
        listed = ", ".join(sorted(offered, key=lambda k: timeframe_to_timedelta(k)))
        raise ConfigError(
            f"{name} does not offer --timeframe {timeframe}; it offers {listed or 'none'}"
        )
    return offered[timeframe]


def newest_stored(engine: Engine, asset_id: str, timeframe: str) -> pd.Timestamp | None:
    """Open time of the newest stored bar of (asset, timeframe), or None."""
    t = db.market_table
    query = sa.select(sa.func.max(t.c.open_time)).where(
        t.c.asset_id == asset_id, t.c.timeframe == timeframe
    )
    with engine.connect() as conn:
        value = conn.execute(query).scalar_one_or_none()
    return None if value is None else pd.Timestamp(value)


def parse_since(value: str | pd.Timestamp) -> pd.Timestamp:
    """``--since`` as a naive UTC timestamp (a date, or a date and time; offsets converted)."""
    try:
        ts = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"--since {value!r} is not a date; write it like 2024-01-01 or 2024-01-01T04:00"
        ) from None
    if pd.isna(ts):
        raise ConfigError(f"--since {value!r} is not a date; write it like 2024-01-01")
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def ingest_exchange(
    engine: Engine,
    asset_id: str,
    exchange_id: str,
    symbol: str,
    timeframe: str,
    *,
    since: str | pd.Timestamp | None = None,
    api_url: str | None = None,
    limit: int = LIMIT,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    retries: int | None = None,
    backoff_s: float | None = None,
) -> ExchangeResult:
    """Fetch the closed bars the database lacks from an exchange and ingest them.

    Parameters
    ----------
    engine
        Database engine (see :func:`kallos_models.data.db.create_db_engine`).
    asset_id
        Asset identifier to store, e.g. ``BTC``.
    exchange_id
        ccxt exchange id, e.g. ``binance``.
    symbol
        ccxt unified symbol, e.g. ``BTC/USDT``.
    timeframe
        Bar size, e.g. ``4h`` (normalised: ``240m`` is ``4h``).
    since
        First open time to fetch. Default None: the bar after the newest stored one; with
        nothing stored, ``since`` is required.
    api_url
        Base URL replacing the exchange's API host (a local server, a proxy); default None.
    limit
        Bars asked for per request; default 1000.
    skip_invalid, progress
        As for :func:`kallos_models.data.ingest.ingest_file`; ``progress``'s fraction is the
        share of the time from ``since`` to now fetched.
    retries, backoff_s
        Retries of a request after a transient error (default None: :data:`RETRIES`, 5),
        and the first wait (default None: :data:`BACKOFF_S`, 1 s; doubling, at most 30 s).

    Returns
    -------
    ExchangeResult
        ``ingest`` is None when the exchange had no closed bar after ``since``.

    Raises
    ------
    ConfigError
        ccxt missing, unknown exchange, symbol or timeframe, bad ``since``, or nothing stored
        and no ``since``.
    DataError
        The exchange kept failing or refused a request, or its bars fail the row checks.
        Nothing is written then.
    """
    timeframe = normalise_timeframe(timeframe)
    db.check_key(asset_id, timeframe)
    ccxt = check_exchange(exchange_id, api_url=api_url)
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    if limit < 1:
        raise ConfigError(f"limit {limit} must be at least 1")
    step = timeframe_to_timedelta(timeframe)
    if since is not None:
        start = parse_since(since)
    else:
        newest = newest_stored(engine, asset_id, timeframe)
        if newest is None:
            raise ConfigError(
                f"nothing is stored for {asset_id} {timeframe} yet; pass --since DATE for the "
                "first fetch (e.g. --since 2024-01-01)"
            )
        start = newest + step
    client = open_exchange(exchange_id, api_url=api_url)
    markets = {"attempts": 0, "retries": 0}
    _call(ccxt, exchange_id, "load_markets", client.load_markets, markets, retries, backoff_s)
    ccxt_timeframe = check_market(client, symbol, timeframe)
    # now is taken before ingest_chunks takes its own, so every bar kept here passes its check
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    now_ms, step_ms = _ms(now), _ms(step)
    counter = {"attempts": 0, "retries": 0}
    state: dict[str, Any] = {"fetched": 0, "open_bar": False, "last": None}

    klines = _klines_request(client, symbol, ccxt_timeframe, limit)
    columns = [*_COLUMNS, *db.KLINE_COLUMNS] if klines is not None else _COLUMNS
    picks = [*range(6), *_KLINE_POSITIONS] if klines is not None else list(range(6))

    def page(cursor: int) -> list[list[Any]]:
        def fetch() -> list[list[Any]]:
            if klines is not None:
                return list(client.publicGetKlines({**klines, "startTime": cursor}))
            return client.fetch_ohlcv(symbol, ccxt_timeframe, since=cursor, limit=limit)

        what = f"fetch_ohlcv {symbol} {ccxt_timeframe} since {_iso_ms(cursor)}"
        return _call(ccxt, exchange_id, what, fetch, counter, retries, backoff_s)

    def pages() -> Iterator[pd.DataFrame]:
        """Closed bars, one page at a time, until the exchange has no newer closed bar."""
        cursor = _ms(start)
        while True:
            bars = [b for b in page(cursor) if b and b[0] is not None and int(b[0]) >= cursor]
            closed = [b for b in bars if int(b[0]) + step_ms <= now_ms]
            state["open_bar"] = state["open_bar"] or len(closed) < len(bars)
            if closed:
                frame = pd.DataFrame([[b[i] for i in picks] for b in closed], columns=columns)
                frame[columns[1:]] = frame[columns[1:]].apply(pd.to_numeric, errors="coerce")
                frame["open_time"] = frame["open_time"].astype("int64")
                state["fetched"] += len(frame)
                state["last"] = int(frame["open_time"].max())
                yield frame
            newest = max((int(b[0]) for b in bars), default=None)
            if newest is None or len(closed) < len(bars) or newest + 2 * step_ms > now_ms:
                return  # nothing newer, the open bar reached, or the next bar is the open one
            cursor = newest + step_ms

    frames = pages()
    first = next(frames, None)
    since_iso = start.isoformat()
    notes: list[str] = []
    if first is None:
        notes.append(f"no closed {timeframe} bar after {since_iso} yet; nothing to ingest")
        return _result(client, symbol, timeframe, since_iso, counter, markets, state, None, notes)
    first_ms = int(first["open_time"].min())
    if first_ms > _ms(start) and since is None:
        missing = (first_ms - _ms(start)) // step_ms
        notes.append(
            f"the exchange has no bar from {since_iso} to {_iso_ms(first_ms)} ({missing} "
            "missing bars after the newest stored one); they stay a gap"
        )

    def chunks() -> Iterator[Chunk]:
        rows = 0
        for frame in _chain(first, frames):
            fraction = min(1.0, (state["last"] - _ms(start)) / max(1, now_ms - _ms(start)))
            yield Chunk(frame, rows + 1, fraction)
            rows += len(frame)

    summary = ingest_chunks(
        engine,
        asset_id,
        timeframe,
        chunks(),
        source=f"{exchange_id} {symbol} {timeframe} since {since_iso}",
        fmt_name="ccxt",
        skip_invalid=skip_invalid,
        progress=progress,
    )
    last = state["last"]
    if not state["open_bar"] and last is not None and last + 2 * step_ms <= now_ms:
        behind = (now_ms - last) // step_ms - 1
        notes.append(
            f"the exchange's newest closed bar is {_iso_ms(last)}, {behind} bars before now; "
            "run again later for the rest"
        )
    return _result(client, symbol, timeframe, since_iso, counter, markets, state, summary, notes)


_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]
#: Where Binance's raw kline rows hold :data:`kallos_models.data.db.KLINE_COLUMNS`.
_KLINE_POSITIONS = (7, 8, 9, 10)


def _klines_request(client: Any, symbol: str, ccxt_timeframe: str, limit: int) -> dict | None:
    """Binance spot's own klines request, whose rows carry the kline columns (quote volume,
    trades, taker volumes) that ``fetch_ohlcv`` drops and models trained on the archive read;
    None for other exchanges and markets, which get ``fetch_ohlcv``'s OHLCV."""
    market = client.market(symbol)
    if client.id != "binance" or not market.get("spot") or not hasattr(client, "publicGetKlines"):
        return None
    return {"symbol": market["id"], "interval": ccxt_timeframe, "limit": min(limit, LIMIT)}


def _chain(first: pd.DataFrame, rest: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    yield first
    yield from rest


def _result(
    client: Any,
    symbol: str,
    timeframe: str,
    since_iso: str,
    counter: dict[str, int],
    markets: dict[str, int],
    state: dict[str, Any],
    summary: IngestSummary | None,
    notes: list[str],
) -> ExchangeResult:
    return ExchangeResult(
        exchange=client.id,
        symbol=symbol,
        timeframe=timeframe,
        since=since_iso,
        requests=counter["attempts"],
        market_requests=markets["attempts"],
        retries=counter["retries"] + markets["retries"],
        bars_fetched=state["fetched"],
        open_bar_dropped=bool(state["open_bar"]),
        ingest=summary,
        notes=notes,
    )


def _ms(value: pd.Timestamp | pd.Timedelta) -> int:
    return int(value.value // 1_000_000)


def _iso_ms(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms").isoformat()
