"""Exchange ingest through the real ccxt client, against a fake Binance API on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kallos_models.data import db, exchange, ingest
from kallos_models.errors import ConfigError, DataError
from tests.fake_binance import FakeBinance
from tests.helpers import assert_error, make_ohlcv, run_cli, run_cli_json

pytest.importorskip("ccxt")

STEP = pd.Timedelta(hours=4)


def _open_bar() -> pd.Timestamp:
    """Open time of the 4h bar still open now."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("4h")


def _bars(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` 4h bars, the last one the bar still open now (an exchange serves it too)."""
    return make_ohlcv(n, freq="4h", start=str(_open_bar() - (n - 1) * STEP), seed=seed)


def _fetch(engine, fake: FakeBinance, **kwargs):
    kwargs.setdefault("backoff_s", 0.0)
    return exchange.ingest_exchange(
        engine, "BTC", "binance", "BTC/USDT", "4h", api_url=fake.url, **kwargs
    )


def _cli(fake: FakeBinance, db_url: str, *extra: str, quiet: bool = True):
    args = ["ingest", "--asset-id", "BTC", "--timeframe", "4h", "--exchange", "binance"]
    return run_cli(
        *args, "--symbol", "BTC/USDT", *extra, "--db-url", db_url, quiet=quiet,
        env={"KALLOS_EXCHANGE_URL": fake.url},
    )  # fmt: skip


def test_paginated_fetch_then_rerun_costs_one_request(db_url: str) -> None:
    bars = _bars(230)
    engine = db.create_db_engine(db_url, for_writing=True)
    with FakeBinance(bars) as fake:
        result = _fetch(engine, fake, since=str(bars.index[0]), limit=50)
        assert result.requests == 5 and len(fake.klines) == 5  # 230 bars, 50 a page
        assert [int(q["limit"]) for q in fake.klines] == [50] * 5
        assert result.ingest is not None and result.ingest.inserted == 229
        assert result.open_bar_dropped and result.bars_fetched == 229
        stored = db.read_market_frame(engine, "BTC", "4h")
        assert len(stored) == 229 and stored.index[-1] == _open_bar() - STEP
        assert _open_bar() not in stored.index  # the still-open bar is never stored
        pd.testing.assert_series_equal(
            stored["close"], bars["close"].iloc[:-1], check_names=False, check_freq=False
        )
        # Binance's own klines rows: the kline columns fetch_ohlcv would drop are stored too
        expected = bars.iloc[:-1]
        np.testing.assert_allclose(stored["taker_buy_base_asset_volume"], expected["volume"] / 2)
        np.testing.assert_allclose(
            stored["quote_asset_volume"], expected["volume"] * expected["close"]
        )
        assert (stored["number_of_trades"] == 100).all()
        fake.klines.clear()
        again = _fetch(engine, fake, limit=50)
    assert again.requests == 1 and len(fake.klines) == 1
    assert int(fake.klines[0]["startTime"]) == int(_open_bar().value // 1_000_000)
    assert again.ingest is None and again.as_dict()["up_to_date"] is True
    assert db.count_rows(engine, "BTC", "4h") == 229


def test_only_bars_after_the_newest_stored_are_fetched(sqlite_url: str) -> None:
    bars = _bars(300)
    engine = db.create_db_engine(sqlite_url, for_writing=True)
    with FakeBinance(bars.iloc[:-60]) as fake:  # the exchange as it was 60 bars ago
        first = _fetch(engine, fake, since=str(bars.index[0]))
        assert first.ingest.inserted == 240 and not first.open_bar_dropped
        fake.set_bars(bars)
        fake.klines.clear()
        later = _fetch(engine, fake, limit=1000)
    start = int(fake.klines[0]["startTime"])
    assert pd.Timestamp(start, unit="ms") == bars.index[240]  # the bar after the newest stored
    assert later.ingest.inserted == 59 and later.ingest.rows_read == 59
    assert later.ingest.unchanged == 0 and later.requests == 1
    assert db.count_rows(engine, "BTC", "4h") == 299


def test_rate_limit_answer_is_retried(db_url: str) -> None:
    bars = _bars(120)
    engine = db.create_db_engine(db_url, for_writing=True)
    with FakeBinance(bars) as fake:
        fake.fail_next = [429]
        result = _fetch(engine, fake, since=str(bars.index[0]), limit=100)
    assert result.retries == 1 and result.requests == 3 and len(fake.klines) == 3
    assert fake.klines[0] == fake.klines[1]  # the same page asked again
    assert result.ingest.inserted == 119 and db.count_rows(engine, "BTC", "4h") == 119


def test_gap_in_the_exchange_answer_reported_like_file_ingest(db_url: str) -> None:
    bars = _bars(200)
    holed = bars.drop(bars.index[90:97])  # the exchange was down for 7 bars
    engine = db.create_db_engine(db_url, for_writing=True)
    with FakeBinance(holed) as fake:
        result = _fetch(engine, fake, since=str(bars.index[0]), limit=64)
    assert result.requests == 3  # 192 closed bars in 3 pages; the third ends at the last one
    gaps = result.ingest.gaps
    assert gaps["count"] == 1 and gaps["missing_bars"] == 7
    assert gaps["listed"][0]["after"] == bars.index[89].isoformat()
    as_file = holed.iloc[:-1].reset_index()
    from_file = ingest.ingest_frame(engine, "BTC-file", "4h", as_file, source="f", fmt_name="x")
    assert gaps == from_file.gaps and result.ingest.warnings == from_file.warnings
    assert db.count_rows(engine, "BTC", "4h") == 192


def test_real_rows_gaps_match_file_ingest(shared_data: Path, sqlite_url: str) -> None:
    """Real Binance 4h BTC (8 gaps, 16 missing bars), moved in time to end at the open bar."""
    raw = pd.read_csv(shared_data / "binance_klines/BTCUSDT_4h.csv")
    times = pd.to_datetime(raw["Open time"].str.replace(" UTC", "").str.strip())
    frame = raw.iloc[:, 1:6].set_axis(["open", "high", "low", "close", "volume"], axis=1)
    frame.index = times + (_open_bar() - times.iloc[-1])
    engine = db.create_db_engine(sqlite_url, for_writing=True)
    with FakeBinance(frame) as fake:
        result = _fetch(engine, fake, since=str(frame.index[0]))
    assert result.requests == 18 and result.ingest.inserted == len(frame) - 1
    assert result.ingest.gaps["count"] == 8 and result.ingest.gaps["missing_bars"] == 16


def test_cli_fetch_and_rerun(db_url: str) -> None:
    bars = _bars(150)
    with FakeBinance(bars, max_limit=40) as fake:  # the exchange answers 40 bars at most
        out = run_cli_json(
            "ingest", "--asset-id", "BTC", "--timeframe", "4h", "--exchange", "binance",
            "--symbol", "BTC/USDT", "--since", bars.index[0].strftime("%Y-%m-%d %H:%M"),
            "--db-url", db_url, env={"KALLOS_EXCHANGE_URL": fake.url},
        )  # fmt: skip
        assert out["requests"] == 4 and out["market_requests"] == 1
        assert out["ingest"]["inserted"] == 149 and out["ingest"]["format"] == "ccxt"
        result = _cli(fake, db_url)
        assert result.exit_code == 0, result.output
    assert len(fake.klines) == 5
    import json

    again = json.loads(result.stdout)
    assert again["requests"] == 1 and again["up_to_date"] and again["ingest"] is None
    stored = db.read_market_frame(db.create_db_engine(db_url), "BTC", "4h")
    assert len(stored) == 149 and stored.index[0] == bars.index[0]


def test_cli_user_mistakes(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bars = _bars(50)
    with FakeBinance(bars) as fake:
        assert_error(_cli(fake, sqlite_url), "nothing is stored for BTC 4h", "--since")
        base = ["ingest", "--asset-id", "BTC", "--symbol", "BTC/USDT", "--since", "2026-01-01"]
        env = {"KALLOS_EXCHANGE_URL": fake.url}
        result = run_cli(*base, "--exchange", "binanse", "--db-url", sqlite_url, env=env)
        assert_error(result, "'binanse' is not an exchange", "binance")
        result = _cli(fake, sqlite_url, "--since", "2026-01-01", "--timeframe", "3h")
        assert_error(result, "binance does not offer --timeframe 3h", "4h")
        result = run_cli(
            "ingest", "--asset-id", "BTC", "--exchange", "binance", "--symbol", "BTC/USDX",
            "--since", "2026-01-01", "--db-url", sqlite_url, env=env,
        )  # fmt: skip
        assert_error(result, "no market 'BTC/USDX'", "BTC/USDT")
        assert_error(_cli(fake, sqlite_url, "--since", "soon"), "--since 'soon' is not a date")
        monkeypatch.setattr(exchange, "BACKOFF_S", 0.0)
        fake.fail_next = [503] * 6
        result = _cli(fake, sqlite_url, "--since", str(bars.index[0]))
        assert_error(result, "binance did not answer", "6 tries", "--exchange-url")
        assert len(fake.klines) == 6
    assert db.count_rows(db.create_db_engine(sqlite_url), "BTC", "4h") == 0
    result = run_cli("ingest", "--asset-id", "BTC", "--symbol", "BTC/USDT", "--file", "x.csv")
    assert result.exit_code == 2 and "--symbol and --since go with --exchange" in result.stderr
    result = run_cli("ingest", "--asset-id", "BTC", "--exchange", "binance")
    assert result.exit_code == 2 and "--exchange needs --symbol" in result.stderr


def test_without_ccxt_one_error_line(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ccxt", None)  # import ccxt now raises ImportError
    result = run_cli(
        "ingest", "--asset-id", "BTC", "--exchange", "binance", "--symbol", "BTC/USDT",
        "--since", "2026-01-01", "--db-url", sqlite_url,
    )  # fmt: skip
    assert_error(result, "pip install 'kallos-models[exchange]'")


def test_exchange_url_rebases_every_endpoint() -> None:
    client = exchange.open_exchange("binance", api_url="http://127.0.0.1:9/proxy")
    assert client.urls["api"]["public"] == "http://127.0.0.1:9/proxy/api/v3"
    assert all(u.startswith("http://127.0.0.1:9/proxy/") for u in client.urls["api"].values())
    with pytest.raises(ConfigError, match="not an http"):
        exchange.open_exchange("binance", api_url="127.0.0.1:9")


def test_library_errors(sqlite_url: str) -> None:
    engine = db.create_db_engine(sqlite_url, for_writing=True)
    with FakeBinance(_bars(30)) as fake:
        with pytest.raises(DataError, match="did not answer"):
            fake.fail_next = [429, 429]
            _fetch(engine, fake, since="2026-01-01", retries=1)
        with pytest.raises(ConfigError, match="limit 0"):
            _fetch(engine, fake, since="2026-01-01", limit=0)
