from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kallos_models.data import datasets, db, ingest
from kallos_models.errors import DataError
from tests.helpers import make_ohlcv, write_ohlcv_csv


@pytest.fixture
def gappy_db(tmp_path: Path, db_url: str) -> str:
    """120 4h bars with a 3-bar gap at 60..62 and a 20-bar gap at 90..109."""
    bars = make_ohlcv(140, freq="4h")
    keep = np.ones(len(bars), dtype=bool)
    keep[60:63] = False
    keep[90:110] = False
    engine = db.create_db_engine(db_url)
    ingest.ingest_file(engine, "BTC", "4h", write_ohlcv_csv(bars[keep], tmp_path / "b.csv"))
    return db_url


def test_regular_grid_with_short_gap_filled_and_marked(gappy_db: str) -> None:
    bars = make_ohlcv(140, freq="4h")
    frame = datasets.load_features_from_db("BTC", bars.index[85], gappy_db, timeframe="4h")
    assert frame.index.freqstr == "4h"
    assert frame.index.is_monotonic_increasing and frame.index[-1] == bars.index[85]
    filled = frame[frame["filled"]]
    assert list(filled.index) == list(bars.index[60:63])
    prev_close = frame.loc[bars.index[59], "close"]
    assert (filled[["open", "high", "low", "close"]] == prev_close).all().all()
    assert (filled["volume"] == 0).all()
    # warm-up rows are dropped: every indicator defined from the first row on
    assert frame["rsi"].notna().all() and frame["macd_diff"].notna().all()
    assert not frame["warmup"].any()


def test_long_gap_is_an_error_naming_it(gappy_db: str) -> None:
    bars = make_ohlcv(140, freq="4h")
    with pytest.raises(DataError) as err:
        datasets.load_features_from_db("BTC", None, gappy_db, timeframe="4h")
    msg = str(err.value)
    assert "gap of 20 missing 4h bars" in msg and str(bars.index[89]) in msg
    assert "max_gap_bars" in msg
    # allowed when the user raises the limit, or starts after it
    full = datasets.load_features_from_db("BTC", None, gappy_db, timeframe="4h", max_gap_bars=20)
    assert len(full) == 140 - 49 and full["filled"].sum() == 3 + 20  # grid minus SMA-50 warm-up
    after = datasets.load_features_from_db(
        "BTC", None, gappy_db, timeframe="4h", start_date=bars.index[110]
    )
    # indicators run over the stored bars, so rows after the gap are not warm-up rows
    assert after.index[0] == bars.index[110] and len(after) == 30


def test_columns_selection_and_unknown_column(gappy_db: str) -> None:
    frame = datasets.load_features_from_db(
        "BTC", "2021-01-10", gappy_db, timeframe="4h", columns=["close", "rsi"]
    )
    assert list(frame.columns) == ["close", "rsi", "filled"]
    with pytest.raises(DataError, match="unknown columns"):
        datasets.load_features_from_db("BTC", None, gappy_db, timeframe="4h", columns=["rsi2"])


def test_asset_errors_list_what_is_present(gappy_db: str) -> None:
    with pytest.raises(DataError, match=r"asset 'BTX' has no 4h rows.*BTC \(4h\)"):
        datasets.load_features_from_db("BTX", None, gappy_db, timeframe="4h")
    with pytest.raises(DataError, match=r"no 1d rows.*BTC \(4h\)"):
        datasets.load_features_from_db("BTC", None, gappy_db, timeframe="1d")
    with pytest.raises(DataError, match="no rows between.*covers"):
        datasets.load_features_from_db("BTC", "2019-01-01", gappy_db, timeframe="4h")
    with pytest.raises(DataError, match="date range is empty"):
        datasets.load_features_from_db(
            "BTC", "2021-01-02", gappy_db, timeframe="4h", start_date="2021-01-05"
        )


def test_empty_database_says_how_to_load(sqlite_url: str) -> None:
    with pytest.raises(DataError, match="kallos-run ingest"):
        datasets.load_features_from_db("BTC", None, sqlite_url)
