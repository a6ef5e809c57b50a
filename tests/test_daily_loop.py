"""The scheduled loops end to end from the command line, on a series that grows in steps.

Weekly: train -> evaluate -> gated promote through the MLflow registry. Nightly: update the
candles (from a local fake of the exchange's API) -> predict from the champion -> score. The
test walks the calendar with ``--as-of`` and checks every count a scheduler would see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.fake_binance import FakeBinance
from tests.helpers import assert_error, make_ohlcv, run_cli, tiny_params, write_binance_csv

pytest.importorskip("mlflow")
pytest.importorskip("ccxt")

BARS = make_ohlcv(290, seed=5)
DAY = pd.Timedelta(days=1)
NAME = "gru_BTC_1d"
CHAMPION = f"models:/{NAME}@champion"


def _as_of(bar: pd.Timestamp) -> str:
    """Two hours after the bar that opened at ``bar`` closed: the nightly job's run time."""
    return (bar + DAY + pd.Timedelta(hours=2)).isoformat()


def _ok(*args: str, env: dict[str, str] | None = None) -> Any:
    result = run_cli(*args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def world(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("KALLOS_ACCELERATOR", "cpu")
    monkeypatch.setenv("KALLOS_TRACKING_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    params = tmp_path / "params.json"
    params.write_text(json.dumps(tiny_params("gru", batch_size=32)))
    return {
        "db": db_url,
        "tracking": f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}",
        "params": str(params),
    }


def weekly(world: dict[str, Any], train_end: pd.Timestamp, test_end: pd.Timestamp, out: str):
    """train -> evaluate on the bars since -> promote unless its RMSE is over 3x naive."""
    tracking = ("--tracking-uri", world["tracking"])
    trained = _ok(
        "train", "--asset-id", "BTC", "--end-date", str(train_end.date()),
        "--params-file", world["params"], "--output-path", out, "--db-url", world["db"],
        "--seed", "0", *tracking,
    )  # fmt: skip
    version = trained["tracking"]["version"]
    _ok(
        "evaluate", "--asset-id", "BTC", "--model-path", trained["paths"]["model"],
        "--test-start-date", str((train_end + 2 * DAY).date()),  # the gap: one bar
        "--test-end-date", str(test_end.date()), "--output-path", f"{out}_eval",
        "--db-url", world["db"], *tracking,
    )  # fmt: skip
    registry = ("registry", "promote", "--asset-id", "BTC", "--version", str(version), *tracking)
    # a gate it cannot pass is refused, exit 3 (not 1: nothing failed), and leaves the alias
    assert_error(run_cli(*registry, "--max-skill-ratio", "0.001"), "rmse_ratio", code=3)
    promoted = _ok(*registry, "--max-skill-ratio", "3")
    assert promoted["version"] == version
    return version


def test_weekly_and_nightly_loops(world: dict[str, Any], tmp_path: Path) -> None:
    db_url = world["db"]
    history = write_binance_csv(BARS.iloc[:240], tmp_path / "btc.csv")
    first = _ok("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--file", str(history),
                "--db-url", db_url)  # fmt: skip
    assert first["inserted"] == 240

    # week 1: train on 200 bars, judge on the 40 after, promote version 1
    assert weekly(world, BARS.index[199], BARS.index[239], "models1") == 1

    with FakeBinance(BARS.iloc[:240]) as fake:
        env = {"KALLOS_EXCHANGE_URL": fake.url}
        update = ("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--exchange", "binance",
                  "--symbol", "BTC/USDT", "--db-url", db_url)  # fmt: skip
        predict = ("predict", "--model-path", CHAMPION, "--db-url", db_url,
                   "--tracking-uri", world["tracking"])  # fmt: skip
        score = ("score", "--db-url", db_url, "--output-path", "scores")

        # night 1: nothing new on the exchange; predict bar 240 from bar 239
        assert _ok(*update, env=env)["up_to_date"] is True
        night1 = _ok(*predict, "--as-of", _as_of(BARS.index[239]))
        assert night1["origin"]["time"] == BARS.index[239].isoformat()
        assert night1["model"]["registered_model"] == NAME and night1["model"]["version"] == 1
        assert night1["stored"]["new"] == 1
        # the scheduler retries the job: nothing is stored twice
        assert _ok(*predict, "--as-of", _as_of(BARS.index[239]))["stored"]["new"] == 0
        nothing = _ok(*score)
        assert nothing["scored"] == 0 and nothing["pending"] == 1

        # nights 2-6: five bars arrive, one forecast a night
        for k in range(240, 245):
            fake.set_bars(BARS.iloc[: k + 1])
            fetched = _ok(*update, env=env)
            # one page with the new bar, one empty page that says there is no newer one
            assert fetched["ingest"]["inserted"] == 1 and fetched["requests"] == 2
            night = _ok(*predict, "--as-of", _as_of(BARS.index[k]))
            assert night["origin"]["time"] == BARS.index[k].isoformat()
            assert night["stored"]["new"] == 1
        scored = _ok(*score, "--max-ratio", "1000")
        assert scored["scored"] == 5 and scored["pending"] == 1
        (group,) = scored["groups"]
        assert group["model"]["version"] == 1 and group["all"]["n"] == 5

        # a night the exchange has nothing new: the stale data is refused, nothing stored
        late = run_cli(*predict, "--as-of", _as_of(BARS.index[247]))
        assert_error(late, "older than --max-age", "kallos-run ingest")

        # week 2: retrain on 240 bars, judge it on the five since, promote version 2
        assert weekly(world, BARS.index[239], BARS.index[244], "models2") == 2
        night = _ok(*predict, "--as-of", _as_of(BARS.index[244]))
        # the same origin, a new model: stored beside version 1's forecast
        assert night["model"]["version"] == 2 and night["stored"]["new"] == 1
        fake.set_bars(BARS.iloc[:246])
        assert _ok(*update, env=env)["ingest"]["inserted"] == 1
    final = _ok(*score)
    assert final["scored"] == 7 and final["pending"] == 0
    by_version = {g["model"]["version"]: g["all"]["n"] for g in final["groups"]}
    assert by_version == {1: 6, 2: 1}
    assert Path("scores/score_plot.png").is_file()
