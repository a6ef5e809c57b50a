"""`kallos-run compare`: several bundles ranked on one hold-out window.

Real tiny models (a 1-epoch GRU, linear, lightgbm) trained through the CLI on generated bars,
compared on SQLite and PostgreSQL; the leaderboard rows checked against each model's own
evaluation record; the pure row builder on hand-made records (intervals included); the
refusals, each one `Error:` line, exit 1 and no file left behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.compare import ScoredModel, format_table, interval_columns, leaderboard_rows
from kallos_models.errors import DataError
from kallos_models.modelling.metrics import compute_metrics, diebold_mariano
from kallos_models.modelling.selection import holm_adjust
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    write_binance_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BARS = make_ohlcv(360, seed=3)
TRAIN_END = BARS.index[299]
TEST_START, TEST_END = BARS.index[301], BARS.index[359]
WINDOW = ("--test-start-date", str(TEST_START.date()), "--test-end-date", str(TEST_END.date()))
#: different lookbacks on purpose: the window (and so the bars scored) is the same for all
PARAMS: dict[str, dict[str, Any]] = {
    "gru": tiny_params("gru"),  # input_chunk_length 12, 1 epoch, width 8
    "linear": {"input_chunk_length": 8},
    "lightgbm": {"input_chunk_length": 6, "n_estimators": 10, "num_leaves": 4},
}
LIGHTGBM_INSTALLED = __import__("importlib.util").util.find_spec("lightgbm") is not None


def _ingest(url: str, tmp_path: Path, *assets: str) -> None:
    file = write_binance_csv(BARS, tmp_path / "bars.csv")
    for asset in assets:
        run_cli_json("ingest", "--asset-id", asset, "--timeframe", "1d", "--file", str(file),
                      "--db-url", url)  # fmt: skip


def _train(url: str, tmp_path: Path, model: str, *, asset: str = "BTC", folder: str = "models",
           params: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Train ``model`` on ``asset`` up to TRAIN_END; returns the bundle's .pt path."""
    file = tmp_path / f"{model}_{asset}_{folder}_params.json"
    file.write_text(json.dumps(PARAMS[model] if params is None else params))
    trained = run_cli_json(
        "train", "--model-name", model, "--asset-id", asset, "--db-url", url,
        "--end-date", str(TRAIN_END.date()), "--params-file", str(file),
        "--output-path", str(tmp_path / folder), "--seed", "0",
    )  # fmt: skip
    return trained["paths"]["model"]


def _compare(url: str, out: Path, *paths: str, quiet: bool = True, extra: tuple[str, ...] = ()):
    flags = [arg for path in paths for arg in ("--model-path", path)]
    return run_cli("compare", *flags, *WINDOW, "--db-url", url, "--output-path", str(out),
                   *extra, quiet=quiet)  # fmt: skip


# --------------------------------------------------------------------------------------------
# End to end, through the CLI, on both databases
# --------------------------------------------------------------------------------------------


def test_compare_ranks_real_bundles_on_one_window(db_url: str, tmp_path: Path) -> None:
    _ingest(db_url, tmp_path, "BTC")
    names = ["gru", "linear", *(["lightgbm"] if LIGHTGBM_INSTALLED else [])]
    paths = {name: _train(db_url, tmp_path, name) for name in names}
    out = tmp_path / "board"
    # a path given twice is scored once; the table goes to stderr, stdout stays JSON
    result = _compare(db_url, out, *paths.values(), paths["gru"], quiet=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = summary["leaderboard"]

    assert sorted(row["model"] for row in rows) == sorted(names)
    ratios = [row["rmse_ratio"] for row in rows]
    assert ratios == sorted(ratios) and all(r > 0 for r in ratios)
    assert [row["rank"] for row in rows] == list(range(1, len(names) + 1))
    assert rows[0]["dm_p_value_vs_leader"] is None
    for row in rows[1:]:
        assert 0.0 <= row["dm_p_value_vs_leader"] <= 1.0
    assert {row["source"] for row in rows} == set(paths.values())
    assert summary["asset_id"] == "BTC" and summary["timeframe"] == "1d"
    assert summary["n"] == 59 and summary["horizon"] == 1
    assert summary["first_forecast"] == TEST_START.isoformat()
    assert summary["last_forecast"] == TEST_END.isoformat()

    # every row is its model's own evaluation, on the same bars, in its own folder
    for row in rows:
        record = json.loads(Path(row["metrics_path"]).read_text())
        assert Path(row["metrics_path"]).parent == out / row["model"]
        assert (out / row["model"] / "BTC_evaluation_plot.png").is_file()
        assert record["model_name"] == row["model"] and record["model_path"] == row["source"]
        assert (record["first_forecast"], record["last_forecast"], record["n"]) == (
            summary["first_forecast"], summary["last_forecast"], summary["n"],
        )  # fmt: skip
        assert record["test_start"] == summary["test_start"]
        assert record["naive"]["rmse"] == pytest.approx(summary["naive_rmse"])
        assert row["rmse"] == record["rmse"] and row["rmse_ratio"] == record["rmse_ratio"]
        assert row["dm_p_value_vs_naive"] == record["diebold_mariano"]["p_value"]
        assert 0.0 <= row["dm_p_value_vs_naive"] <= 1.0
        assert row["directional_accuracy"] == record["directional_accuracy"]
        strategy = record["backtest"]["strategy"]
        assert row["sharpe"] == strategy["annualised_sharpe"]
        assert row["deflated_sharpe"] == record["backtest"]["deflated_sharpe"]["probability"]
        assert row["search_trials"] == 1  # trained from plain parameters: no search recorded
        assert row["max_drawdown"] == strategy["max_drawdown"] <= 0.0
        assert "coverage_80" not in row  # no model has intervals

    # the files: the JSON is what was printed, the plot a PNG, nothing else left over
    assert summary["json_path"] == str(out / "BTC_leaderboard.json")
    assert json.loads(Path(summary["json_path"]).read_text()) == summary
    assert Path(summary["plot_path"]).read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["BTC_leaderboard.json", "BTC_leaderboard.png", *names]
    )
    table = result.stderr
    assert "p(leader)" in table and all(name in table for name in names)
    assert "adj" in table and "DSR" in table
    # the tests against naive, Holm-adjusted for the models compared
    naive = holm_adjust([row["dm_p_value_vs_naive"] for row in rows])
    assert [row["dm_p_value_vs_naive_holm"] for row in rows] == naive


def test_two_bundles_of_one_model_get_their_own_rows_and_folders(
    sqlite_url: str, tmp_path: Path
) -> None:
    _ingest(sqlite_url, tmp_path, "BTC")
    first = _train(sqlite_url, tmp_path, "linear")
    second = _train(
        sqlite_url, tmp_path, "linear", folder="other", params={"input_chunk_length": 3}
    )
    out = tmp_path / "board"
    result = _compare(sqlite_url, out, first, second)
    assert "p(leader)" not in result.stderr  # -q: errors only, no table
    summary = json.loads(result.stdout)
    by_source = {row["source"]: row for row in summary["leaderboard"]}
    assert by_source[first]["model"] == "linear" and by_source[second]["model"] == "linear-2"
    assert (out / "linear" / "BTC_evaluation_metrics.json").is_file()
    assert (out / "linear-2" / "BTC_evaluation_metrics.json").is_file()
    assert by_source[first]["rmse"] != by_source[second]["rmse"]


# --------------------------------------------------------------------------------------------
# Refusals: one `Error:` line, exit 1, nothing written
# --------------------------------------------------------------------------------------------


def test_compare_refuses_one_bundle(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path, "BTC")
    path = _train(sqlite_url, tmp_path, "linear")
    out = tmp_path / "board"
    assert_error(_compare(sqlite_url, out, path), "at least two different bundles", "got 1")
    # the same bundle twice, spelled two ways, is still one bundle
    spelled = str(Path(path).parent / ".." / Path(path).parent.name / Path(path).name)
    assert_error(_compare(sqlite_url, out, path, spelled), "at least two", "got 1")
    assert not out.exists()


def test_compare_refuses_bundles_of_different_assets(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path, "BTC", "ETH")
    btc = _train(sqlite_url, tmp_path, "linear")
    eth = _train(sqlite_url, tmp_path, "linear", asset="ETH")
    out = tmp_path / "board"
    line = assert_error(_compare(sqlite_url, out, btc, eth), "one asset and timeframe")
    assert f"{eth} holds a linear model of ETH 1d" in line and "BTC 1d" in line
    line = assert_error(_compare(sqlite_url, out, btc, eth, extra=("--asset-id", "ETH")))
    assert f"{btc} holds a linear model of BTC 1d" in line and "--asset-id is ETH" in line
    assert not out.exists()


def test_compare_refuses_a_window_overlapping_training(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path, "BTC")
    early = _train(sqlite_url, tmp_path, "linear")
    late = tmp_path / "late_params.json"
    late.write_text(json.dumps(PARAMS["linear"]))
    later_end = BARS.index[320]
    trained = run_cli_json(
        "train", "--model-name", "linear", "--asset-id", "BTC", "--db-url", sqlite_url,
        "--end-date", str(later_end.date()), "--params-file", str(late),
        "--output-path", str(tmp_path / "late"),
    )  # fmt: skip
    out = tmp_path / "board"
    line = assert_error(_compare(sqlite_url, out, early, trained["paths"]["model"]), "leakage")
    assert trained["paths"]["model"] in line and str(later_end.date()) in line
    assert not out.exists()


def test_a_failure_while_evaluating_leaves_no_file(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path, "BTC")
    paths = [
        _train(sqlite_url, tmp_path, "linear"),
        _train(sqlite_url, tmp_path, "linear", folder="other", params={"input_chunk_length": 3}),
    ]
    out = tmp_path / "board"
    # horizon 2 is beyond the models' output_chunk_length 1: the first evaluation refuses it
    line = assert_error(_compare(sqlite_url, out, *paths, extra=("--horizon", "2")))
    assert line.startswith(f"Error: {paths[0]}: ") and "output_chunk_length" in line
    assert list(out.rglob("*")) == []  # the staging folder is gone, nothing was published


# --------------------------------------------------------------------------------------------
# The rows, from hand-made records
# --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
INDEX = pd.date_range("2024-07-01", periods=50, freq="1D")
ACTUAL = 100 + np.cumsum(RNG.normal(0, 1, 51))


def _scored(name: str, noise: float, **record: Any) -> ScoredModel:
    actual, naive = ACTUAL[1:], ACTUAL[:-1]
    forecast = naive + 0.3 * (actual - naive) + RNG.normal(0, noise, 50)
    metrics = compute_metrics(actual, forecast, naive)
    frame = pd.DataFrame({"actual": actual, "forecast": forecast, "naive": naive}, index=INDEX)
    return ScoredModel(name, f"{name}.pt", {**metrics, **record}, frame)


INTERVALS = {
    "method": "conformal",
    "quantiles": [0.05, 0.1, 0.5, 0.9, 0.95],
    "levels": [
        {"level": 0.8, "coverage": 0.78, "mean_width": 3.1, "mean_relative_width": 0.03,
         "winkler": 4.2, "naive": {"coverage": 0.8, "winkler": 4.5}, "winkler_ratio": 0.93},
        {"level": 0.9, "coverage": 0.88, "winkler": 5.0, "winkler_ratio": None},
        {"level": "wide", "coverage": 0.5},  # not a level: skipped
        "not an object",
    ],
    "pinball": {"0.5": 0.4},
}  # fmt: skip


def test_leaderboard_rows_rank_test_and_read_intervals() -> None:
    backtest = {"strategy": {"annualised_sharpe": 1.25, "max_drawdown": -0.12}}
    point = _scored("point", 0.05, backtest=backtest, intervals=None)
    quantile = _scored("quantile", 0.6, intervals=INTERVALS)
    worse = _scored("worse", 2.0, backtest={"strategy": None, "buy_and_hold": None})
    rows = leaderboard_rows([worse, quantile, point])
    assert [row["model"] for row in rows] == ["point", "quantile", "worse"]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert rows[0]["dm_p_value_vs_leader"] is None
    expected = diebold_mariano(
        quantile.forecasts["actual"] - quantile.forecasts["forecast"],
        point.forecasts["actual"] - point.forecasts["forecast"],
    )["p_value"]
    assert rows[1]["dm_p_value_vs_leader"] == pytest.approx(expected)
    assert 0.0 <= rows[2]["dm_p_value_vs_leader"] <= 1.0
    assert rows[2]["dm_p_value_vs_leader"] < rows[1]["dm_p_value_vs_leader"]
    # Holm: the smaller of the two leader tests doubled, the larger never below it
    low, high = rows[2]["dm_p_value_vs_leader"], rows[1]["dm_p_value_vs_leader"]
    assert rows[2]["dm_p_value_vs_leader_holm"] == pytest.approx(min(1.0, 2 * low))
    assert rows[1]["dm_p_value_vs_leader_holm"] == pytest.approx(max(min(1.0, 2 * low), high))
    assert rows[0]["dm_p_value_vs_leader_holm"] is None
    # intervals where present; the same keys (null) for a model without
    assert rows[1]["interval_method"] == "conformal"
    assert rows[1]["coverage_80"] == 0.78 and rows[1]["interval_score_ratio_80"] == 0.93
    assert rows[1]["coverage_90"] == 0.88 and rows[1]["interval_score_ratio_90"] is None
    assert rows[0]["coverage_80"] is None and rows[2]["interval_method"] is None
    assert not any(key.startswith("coverage_wide") for key in rows[1])
    # the backtest where it ran, null where not
    assert (rows[0]["sharpe"], rows[0]["max_drawdown"]) == (1.25, -0.12)
    assert rows[1]["sharpe"] is None and rows[2]["max_drawdown"] is None

    table = format_table({"asset_id": "BTC", "timeframe": "1d", "n": 50, "leaderboard": rows})
    lines = table.splitlines()
    assert lines[1].split()[:2] == ["#", "model"] and "cov80" in lines[1] and "IS90" in lines[1]
    assert lines[2].split()[1] == "point" and " - " in lines[2]  # the leader vs itself
    assert "78.0%" in lines[3] and "0.930" in lines[3]


def test_interval_columns_read_defensively() -> None:
    assert interval_columns({}) == {} and interval_columns({"intervals": None}) == {}
    assert interval_columns({"intervals": {"levels": "x"}}) == {"interval_method": None}
    columns = interval_columns({"intervals": {"method": "quantile", "levels": [
        {"level": 0.975, "coverage": float("nan"), "winkler_ratio": True}]}})  # fmt: skip
    assert columns == {
        "interval_method": "quantile",
        "coverage_97.5": None,
        "interval_score_ratio_97.5": None,
    }


def test_models_on_different_bars_are_not_compared() -> None:
    one = _scored("one", 0.1)
    shifted = ScoredModel("two", "two.pt", one.metrics, one.forecasts.iloc[1:])
    with pytest.raises(DataError, match=r"two \(two.pt\) was scored on 49 bars .* same bars"):
        leaderboard_rows([one, shifted])
