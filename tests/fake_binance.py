"""A fake Binance spot REST API on 127.0.0.1: what ccxt's binance needs for load_markets
(``/api/v3/exchangeInfo``) and ``/api/v3/klines``, served from a frame of candles."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

SYMBOL_INFO = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "orderTypes": ["LIMIT", "MARKET"],
    "icebergAllowed": True,
    "ocoAllowed": True,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "permissions": ["SPOT"],
    "permissionSets": [["SPOT"]],
    "filters": [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": "0.01",
            "maxPrice": "1000000",
            "tickSize": "0.01",
        },
        {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    ],
}


def exchange_info(symbols: list[tuple[str, str]]) -> dict:
    entries = [
        {**SYMBOL_INFO, "symbol": base + quote, "baseAsset": base, "quoteAsset": quote}
        for base, quote in symbols
    ]
    return {"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": entries}


class FakeBinance:
    """Serves ``bars`` (an OHLCV frame indexed by open time) as BTCUSDT klines.

    ``fail_next`` holds HTTP statuses to answer the next klines requests with (then normal);
    ``klines`` records each klines request's query; ``now`` (if set) adds an open bar.
    """

    def __init__(
        self,
        bars: pd.DataFrame,
        *,
        max_limit: int = 1000,
        symbols: list[tuple[str, str]] | None = None,
    ) -> None:
        self.bars = bars
        self.max_limit = max_limit
        self.symbols = symbols or [("BTC", "USDT"), ("ETH", "USDT"), ("BTC", "USDC")]
        self.fail_next: list[int] = []
        self.klines: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.hook: Callable[[dict[str, str]], None] | None = None
        self._set_times()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                fake.paths.append(parts.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/api/v3/exchangeInfo":
                    self._json(200, exchange_info(fake.symbols))
                elif parts.path == "/api/v3/klines":
                    fake.klines.append(query)
                    if fake.hook is not None:
                        fake.hook(query)
                    if fake.fail_next:
                        code = fake.fail_next.pop(0)
                        self._json(code, {"code": -1003, "msg": "Too many requests"})
                        return
                    self._json(200, fake.answer(query))
                else:
                    self._json(404, {"code": -1, "msg": "not found"})

            def _json(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _set_times(self) -> None:
        self.times_ms = (self.bars.index.asi8 // 1_000_000).astype("int64")
        self.step_ms = int((self.bars.index[1] - self.bars.index[0]).value // 1_000_000)

    def set_bars(self, bars: pd.DataFrame) -> None:
        self.bars = bars
        self._set_times()

    def answer(self, query: dict[str, str]) -> list[list]:
        limit = min(int(query.get("limit", 500)), self.max_limit)
        start = int(query.get("startTime", 0))
        first = int(np.searchsorted(self.times_ms, start, side="left"))
        rows = self.bars.iloc[first : first + limit]
        times = self.times_ms[first : first + limit]
        out = []
        for t, (o, h, lo, c, v) in zip(
            times.tolist(),
            rows[["open", "high", "low", "close", "volume"]].itertuples(index=False),
            strict=True,
        ):
            out.append(
                [
                    t,
                    repr(o),
                    repr(h),
                    repr(lo),
                    repr(c),
                    repr(v),
                    t + self.step_ms - 1,
                    repr(v * c),
                    100,
                    repr(v / 2),
                    repr(v * c / 2),
                    "0",
                ]
            )
        return out

    def __enter__(self) -> FakeBinance:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
