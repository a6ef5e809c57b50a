"""Selection bias: the Deflated Sharpe Ratio, Holm's adjustment, and the promotion gate on them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.data import db, ingest
from kallos_models.mlops.gates import Thresholds, failures
from kallos_models.modelling.metrics import headline
from kallos_models.modelling.selection import deflated_sharpe, expected_max_sharpe, holm_adjust
from tests.helpers import assert_error, run_cli, run_cli_json, write_binance_csv

# --------------------------------------------------------------------------------------------
# The statistics
# --------------------------------------------------------------------------------------------


def test_expected_max_sharpe_tracks_the_maximum_of_gaussian_draws() -> None:
    assert expected_max_sharpe(1, 0.5) == 0.0
    rng = np.random.default_rng(0)
    for n in (10, 100):
        simulated = rng.normal(size=(20_000, n)).max(axis=1).mean()
        assert expected_max_sharpe(n, 1.0) == pytest.approx(simulated, rel=0.03)
        assert expected_max_sharpe(n, 4.0) == pytest.approx(2 * expected_max_sharpe(n, 1.0))
    assert expected_max_sharpe(1000, 1.0) > expected_max_sharpe(100, 1.0)
    with pytest.raises(ValueError):
        expected_max_sharpe(0, 1.0)


def test_the_best_of_many_unskilled_strategies_is_deflated_to_a_coin_flip() -> None:
    """Pick the best Sharpe ratio of 50 pure-noise strategies, 300 times: undeflated (1 trial)
    it looks significant; deflated by the 50 trials it is no better than chance."""
    rng = np.random.default_rng(1)
    n_trials, bars = 50, 250
    plain, deflated = [], []
    for _ in range(300):
        returns = rng.normal(0.0, 0.01, size=(n_trials, bars))
        best = returns[np.argmax(returns.mean(axis=1) / returns.std(axis=1, ddof=1))]
        plain.append(deflated_sharpe(best, n_trials=1, bars_per_year=365, trials_source="t"))
        deflated.append(
            deflated_sharpe(best, n_trials=n_trials, bars_per_year=365, trials_source="t")
        )
    assert np.mean([p["probability"] for p in plain]) > 0.95
    mean_deflated = np.mean([d["probability"] for d in deflated])
    assert 0.3 < mean_deflated < 0.7
    # a false discovery at 0.95: common undeflated, rare deflated
    assert np.mean([p["probability"] > 0.95 for p in plain]) > 0.7
    assert np.mean([d["probability"] > 0.95 for d in deflated]) < 0.15


def test_deflated_sharpe_record() -> None:
    rng = np.random.default_rng(2)
    returns = rng.normal(0.002, 0.01, 400)
    one = deflated_sharpe(returns, n_trials=1, bars_per_year=365, trials_source="none")
    many = deflated_sharpe(returns, n_trials=200, bars_per_year=365, trials_source="study s")
    sharpe = returns.mean() / returns.std(ddof=1) * math.sqrt(365)
    assert one["sharpe"] == pytest.approx(sharpe) and many["sharpe"] == pytest.approx(sharpe)
    assert one["expected_max_sharpe"] == 0.0 < many["expected_max_sharpe"]
    assert many["probability"] < one["probability"] <= 1.0
    assert (many["n_trials"], many["trials_source"], many["n_bars"]) == (200, "study s", 400)
    assert many["kurtosis"] == pytest.approx(3.0, abs=0.6)
    json.dumps(many, allow_nan=False)
    # no variation, or too few bars: no probability, and a note why
    for flat in (np.zeros(50), np.array([0.01, 0.02])):
        record = deflated_sharpe(flat, n_trials=5, bars_per_year=365, trials_source="t")
        assert record["probability"] is None and "undefined" in record["note"]


def test_holm_adjust_matches_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = [0.01, 0.04, 0.03, 0.2, 0.005]
    expected = multitest.multipletests(p, method="holm")[1]
    assert holm_adjust(p) == pytest.approx(list(expected))
    assert holm_adjust([0.02, None, 0.5]) == [0.04, None, 0.5]
    assert holm_adjust([]) == []


def test_gate_names_the_plain_sharpe_and_the_trials() -> None:
    metrics: dict[str, float | None] = {"sharpe": 2.1, "deflated_sharpe": 0.41, "search_trials": 80}
    gate = Thresholds(min_sharpe=1.0, min_deflated_sharpe=0.95)
    (line,) = failures(metrics, gate)
    assert "deflated_sharpe 0.41 is below --min-deflated-sharpe 0.95" in line
    assert "Sharpe ratio 2.1" in line and "80 trial(s)" in line
    assert failures({**metrics, "deflated_sharpe": 0.97}, gate) == []
    (missing,) = failures({"sharpe": None, "deflated_sharpe": None}, gate)[1:]
    assert "deflated_sharpe is not available" in missing and "--horizon 1" in missing


def test_a_global_model_is_gated_on_its_weakest_asset() -> None:
    def asset(probability: float, sharpe: float) -> dict[str, Any]:
        return {
            "backtest": {
                "strategy": {"annualised_sharpe": sharpe},
                "deflated_sharpe": {"probability": probability, "n_trials": 30},
            }
        }

    record = {
        "pooled": {"rmse_ratio": 1.0},
        "per_asset": {"A": asset(0.9, 2.0), "B": asset(0.4, 1.0)},
    }
    numbers = headline(record)
    assert numbers["deflated_sharpe"] == 0.4 and numbers["search_trials"] == 30
    assert numbers["sharpe"] == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# Through the CLI: a search of 500 trials deflates a Sharpe ratio that passes on its own
# --------------------------------------------------------------------------------------------

N_BARS = 520


def _momentum_bars() -> pd.DataFrame:
    """Daily bars whose log returns follow an AR(1) with coefficient 0.3: a linear model of
    the last few returns trades them at a high hold-out Sharpe ratio."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 0.02, N_BARS)
    log_ret = np.zeros(N_BARS)
    for i in range(1, N_BARS):
        log_ret[i] = 0.3 * log_ret[i - 1] + noise[i]
    index = pd.date_range("2021-01-01", periods=N_BARS, freq="1D", name="open_time")
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.005, N_BARS)) * close
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.lognormal(8, 0.5, N_BARS),
        },
        index=index,
    )


def test_promotion_passing_plain_sharpe_but_not_deflated_is_refused(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KALLOS_TRACKING_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    tracking = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    bars = _momentum_bars()
    engine = db.create_db_engine(sqlite_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(bars, tmp_path / "btc.csv"))
    engine.dispose()
    params = {"input_chunk_length": 5}
    # the same parameters, once as a tuner's file after 400 complete and 100 pruned trials
    # (3 failed ones tried nothing), once as a plain object (no search recorded)
    tuned = tmp_path / "tuned.json"
    tuned.write_text(
        json.dumps(
            {
                "params": params,
                "n_epochs": None,
                "value": 0.98,
                "metric": "rmse_rel_naive",
                "study_name": "linear_BTC_1d",
                "trial_counts": {"COMPLETE": 400, "PRUNED": 100, "FAIL": 3},
            }
        )
    )
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(params))
    common = ["--model-name", "linear", "--asset-id", "BTC", "--db-url", sqlite_url]
    common += ["--tracking-uri", tracking]
    records = {}
    for version, (name, file) in enumerate([("tuned", tuned), ("plain", plain)], start=1):
        trained = run_cli_json(
            "train", *common, "--end-date", str(bars.index[399].date()),
            "--params-file", str(file), "--output-path", str(tmp_path / name),
        )  # fmt: skip
        assert trained["tracking"]["version"] == version
        manifest = json.loads(Path(trained["paths"]["manifest"]).read_text())
        records[name] = run_cli_json(
            "evaluate", *common, "--model-path", trained["paths"]["model"],
            "--test-start-date", str(bars.index[401].date()),
            "--test-end-date", str(bars.index[-1].date()),
            "--output-path", str(tmp_path / f"{name}_eval"),
        )  # fmt: skip
        if name == "tuned":
            assert manifest["search"]["n_trials"] == 500
            assert manifest["search"]["studies"][0]["study_name"] == "linear_BTC_1d"
        else:
            assert manifest["search"] is None

    tuned_dsr = records["tuned"]["backtest"]["deflated_sharpe"]
    plain_dsr = records["plain"]["backtest"]["deflated_sharpe"]
    sharpe = records["tuned"]["backtest"]["strategy"]["annualised_sharpe"]
    # the same model, the same hold-out: the same Sharpe ratio, deflated only by the search
    assert tuned_dsr["sharpe"] == pytest.approx(sharpe) == plain_dsr["sharpe"]
    assert sharpe > 2.0
    assert (tuned_dsr["n_trials"], plain_dsr["n_trials"]) == (500, 1)
    assert "linear_BTC_1d" in tuned_dsr["trials_source"]
    assert tuned_dsr["probability"] < 0.95 <= plain_dsr["probability"]

    gates = ["--min-sharpe", "2.0", "--min-deflated-sharpe", "0.95"]
    registry = ["registry", "promote", "--model-name", "linear", "--asset-id", "BTC"]
    registry += ["--tracking-uri", tracking]
    line = assert_error(
        run_cli(*registry, "--version", "1", *gates),
        "version 1 of linear_BTC_1d was not promoted",
        f"deflated_sharpe {tuned_dsr['probability']:.4g} is below --min-deflated-sharpe 0.95",
        f"Sharpe ratio {sharpe:.4g}",
        "500 trial(s)",
        code=3,
    )
    assert "--min-sharpe" not in line  # the plain threshold passed
    # without the deflated gate version 1 passes; the untuned version 2 passes both
    assert run_cli_json(*registry, "--version", "1", "--min-sharpe", "2.0", "--alias", "x")
    promoted = run_cli_json(*registry, "--version", "2", *gates)
    assert promoted["version"] == 2 and promoted["metrics"]["search_trials"] == 1
    rows = run_cli_json("registry", "list", "--model-name", "linear", "--asset-id", "BTC",
                        "--tracking-uri", tracking, "--json")  # fmt: skip
    by_version = {row["version"]: row for row in rows}
    assert by_version[1]["deflated_sharpe"] == pytest.approx(tuned_dsr["probability"])
    assert by_version[1]["search_trials"] == 500
