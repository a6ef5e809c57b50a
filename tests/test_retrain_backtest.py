"""The retraining backtest: `evaluate --retrain-every N` refits the bundle's recipe through the
window, each refit (preprocessing included) on the rows before its refit point only."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.errors import ConfigError
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    train_sqlite_bundle,
    write_ohlcv_csv,
)

TRAIN_END = "2021-09-15"
TEST_START = "2021-09-17"
TEST_END = "2021-11-10"
WINDOW = pd.date_range(TEST_START, TEST_END, freq="1D")  # 56 bars
TINY_GRU = tiny_params("gru", input_chunk_length=12, output_chunk_length=2, batch_size=32)
RAW = make_ohlcv(330)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict[str, Any]:
    """A 1-epoch GRU bundle (width 8) trained to the day before the window, on SQLite."""
    root = tmp_path_factory.mktemp("retrain")
    settings, trained = train_sqlite_bundle(
        root,
        write_ohlcv_csv(RAW, root / "btc.csv"),
        TINY_GRU,
        train_end_date=TRAIN_END,
        test_start_date=TEST_START,
        test_end_date=TEST_END,
    )
    return {"settings": settings, "paths": trained.paths, "manifest": trained.manifest}


def _stage(bundle: dict[str, Any], out: Path, **options: Any):
    from kallos_models.stage_settings import evaluate_settings

    return evaluate_settings(bundle["settings"].replace(output_path=str(out)), **options)


@pytest.fixture
def spy_prepare(monkeypatch) -> list[dict[str, Any]]:
    """Record the training rows and the fitted preprocessing of every refit."""
    from kallos_models.modelling import series

    calls: list[dict[str, Any]] = []
    real = series.prepare_darts_timeseries

    def spy(train_df, *args, **kwargs):
        prepared = real(train_df, *args, **kwargs)
        calls.append({"rows": train_df.copy(), "preprocessor": prepared.preprocessor})
        return prepared

    monkeypatch.setattr(series, "prepare_darts_timeseries", spy)
    return calls


def _mean_log_return(first: pd.Timestamp, last: pd.Timestamp) -> float:
    """Mean log return of the generated closes from the bar after ``first`` to ``last``."""
    close = RAW["close"].loc[first:last].to_numpy()
    return float(np.mean(np.diff(np.log(close))))


def test_refits_every_n_bars_on_rows_before_each_refit_only(bundle, tmp_path, spy_prepare):
    from kallos_models.stages.evaluate import retrain_backtest

    out = tmp_path / "eval"
    result = retrain_backtest(
        _stage(bundle, out, retrain_every=20), model_path=bundle["paths"].model
    )
    record = result.metrics
    assert record["retrain_every"] == 20 and record["n_refits"] == 3
    assert record["params_source"] == "bundle"
    starts = [WINDOW[0], WINDOW[20], WINDOW[40]]
    assert [r["first_forecast"] for r in record["refits"]] == [t.isoformat() for t in starts]
    assert [r["train_end"] for r in record["refits"]] == [
        (t - pd.Timedelta(days=2)).isoformat()
        for t in starts  # the gap of 1 bar left out
    ]
    assert [r["n_forecasts"] for r in record["refits"]] == [20, 20, 15]
    assert all(r["fit_seconds"] > 0 for r in record["refits"])
    assert list(result.forecasts.index) == list(WINDOW)  # every bar once, in order
    assert record["n"] == len(WINDOW) and isinstance(record["rmse"], float)
    assert record["backtest"]["strategy"] is not None  # horizon 1: traded
    assert json.loads(result.metrics_path.read_text()) == json.loads(json.dumps(record))
    assert result.metrics_path == out / "BTC_evaluation_metrics.json"
    assert result.plot_path.read_bytes().startswith(b"\x89PNG")

    # each refit's preprocessing was fit on the rows up to its train_end, and on nothing later
    assert len(spy_prepare) == 3
    first_bar = pd.Timestamp(bundle["manifest"]["train_start"])
    for call, refit in zip(spy_prepare, record["refits"], strict=True):
        train_end = pd.Timestamp(refit["train_end"])
        rows, pre = call["rows"], call["preprocessor"]
        assert rows.index[0] == first_bar and rows.index[-1] == train_end
        assert pre.train_end == train_end < pd.Timestamp(refit["first_forecast"])
        assert pre.target_scaler.mean_[0] == pytest.approx(_mean_log_return(first_bar, train_end))
    # the first refit trains on exactly the bundle's rows (train ended the day before)
    assert len(spy_prepare[0]["rows"]) == bundle["manifest"]["train_rows"]


def test_horizon_2_refits_train_up_to_the_first_origin(bundle, tmp_path):
    from kallos_models.stages.evaluate import retrain_backtest

    result = retrain_backtest(
        _stage(bundle, tmp_path / "eval", retrain_every=30),
        model_path=bundle["paths"].model,
        horizon=2,
    )
    refits = result.metrics["refits"]
    assert [r["first_forecast"] for r in refits] == [WINDOW[0].isoformat(), WINDOW[30].isoformat()]
    # a forecast for T is made at T - 2; the refit ends the gap (2 bars) before the block
    assert [r["train_end"] for r in refits] == [
        (WINDOW[0] - pd.Timedelta(days=3)).isoformat(),
        (WINDOW[30] - pd.Timedelta(days=3)).isoformat(),
    ]
    assert list(result.forecasts.index) == list(WINDOW) and result.metrics["horizon"] == 2


@pytest.mark.parametrize("every", [len(WINDOW), 1000])
def test_one_refit_over_the_window_is_the_bundle_itself(bundle, tmp_path, every):
    """Refit once on the bundle's own rows with its recipe: the forecasts of the bundle."""
    from kallos_models.stages.evaluate import evaluate_model, retrain_backtest

    plain = evaluate_model(
        bundle["settings"].replace(output_path=str(tmp_path / "plain")),
        model_path=bundle["paths"].model,
    )
    once = retrain_backtest(
        _stage(bundle, tmp_path / "once", retrain_every=every), model_path=bundle["paths"].model
    )
    assert once.metrics["n_refits"] == 1
    assert once.metrics["refits"][0]["train_end"] == pd.Timestamp(TRAIN_END).isoformat()
    assert once.forecasts.index.equals(plain.forecasts.index)
    np.testing.assert_allclose(
        once.forecasts["forecast"], plain.forecasts["forecast"], rtol=1e-6, atol=0
    )


def test_cli_retrain_every_with_a_params_file(bundle, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps({"params": {"input_chunk_length": 10, "hidden_dim": 8}, "n_epochs": 7})
    )
    s = bundle["settings"]
    out = tmp_path / "cli"
    printed = run_cli_json(
        "evaluate",
        "--model-name", "gru",
        "--asset-id", "BTC",
        "--model-path", str(bundle["paths"].model),
        "--test-start-date", TEST_START,
        "--test-end-date", TEST_END,
        "--db-url", s.db_url,
        "--output-path", str(out),
        "--retrain-every", "30",
        "--params-file", str(params),
    )  # fmt: skip
    assert printed["n_refits"] == 2 and printed["retrain_every"] == 30
    assert [r["n_forecasts"] for r in printed["refits"]] == [30, 25]
    assert printed["params_source"] == str(params)
    assert printed["input_chunk_length"] == 10  # the file's, not the bundle's 12
    assert printed["refit_params"]["input_chunk_length"] == 10
    assert printed["refit_params"]["n_epochs"] == 1  # the bundle's epochs, not the file's 7
    # as for train: the file over the zoo's defaults (dropout 0.2), not over the bundle's (0.0)
    assert printed["refit_params"]["hidden_dim"] == 8
    assert printed["refit_params"]["dropout"] == 0.2
    written = json.loads((out / "BTC_evaluation_metrics.json").read_text())
    assert written["n_refits"] == 2 and (out / "BTC_evaluation_plot.png").is_file()


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "2.5", ""])
def test_cli_refuses_a_bad_retrain_every(bundle, tmp_path, bad):
    result = run_cli(
        "evaluate",
        "--asset-id", "BTC",
        "--model-path", str(bundle["paths"].model),
        "--test-start-date", TEST_START,
        "--test-end-date", TEST_END,
        "--db-url", bundle["settings"].db_url,
        "--output-path", str(tmp_path / "out"),
        "--retrain-every", bad,
    )  # fmt: skip
    assert_error(
        result, "--retrain-every must be a whole number of bars >= 1", "--retrain-every 30"
    )
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_params_file_without_retrain_every(bundle, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"hidden_dim": 16}))
    result = run_cli(
        "evaluate",
        "--asset-id", "BTC",
        "--model-path", str(bundle["paths"].model),
        "--test-start-date", TEST_START,
        "--test-end-date", TEST_END,
        "--db-url", bundle["settings"].db_url,
        "--output-path", str(tmp_path / "out"),
        "--params-file", str(params),
    )  # fmt: skip
    assert_error(result, "--params-file", "--retrain-every")
    assert not (tmp_path / "out").exists()


def test_a_bad_params_file_fails_before_any_fit(bundle, tmp_path, spy_prepare):
    from kallos_models.stages.evaluate import retrain_backtest

    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="does not exist"):
        retrain_backtest(
            _stage(bundle, tmp_path / "out", retrain_every=10, params_file=missing),
            model_path=bundle["paths"].model,
        )
    assert spy_prepare == [] and not (tmp_path / "out").exists()


def test_ctrl_c_in_a_refit_is_a_keyboard_interrupt_and_writes_nothing(
    bundle, tmp_path, monkeypatch
):
    from kallos_models.modelling import fitting
    from kallos_models.stages.evaluate import retrain_backtest

    real = fitting.fit_forecaster
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fitting, "fit_forecaster", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrain_backtest(
            _stage(bundle, tmp_path / "out", retrain_every=40), model_path=bundle["paths"].model
        )
    assert len(calls) == 2 and not (tmp_path / "out").exists()


def test_stages_keep_their_modes_apart(bundle, tmp_path):
    from kallos_models.stages.evaluate import evaluate_model, retrain_backtest

    with pytest.raises(ConfigError, match="retrain_backtest"):
        evaluate_model(
            _stage(bundle, tmp_path / "out", retrain_every=5), model_path=bundle["paths"].model
        )
    with pytest.raises(ConfigError, match="needs retrain_every"):
        retrain_backtest(_stage(bundle, tmp_path / "out"), model_path=bundle["paths"].model)
    with pytest.raises(ConfigError, match="registry URI"):
        retrain_backtest(
            _stage(bundle, tmp_path / "out", retrain_every=5), model_path="models:/gru_BTC_1d@x"
        )


def test_pipeline_passes_retrain_options_through_a_registry_uri(bundle, tmp_path, monkeypatch):
    """A models:/ URI resolves to the downloaded bundle, then refits like a local one."""
    from kallos_models import pipeline
    from kallos_models.mlops import registry

    seen = []

    @contextlib.contextmanager
    def downloaded(settings, uri):
        seen.append(uri)
        yield bundle["paths"].model, "gru_BTC_1d", 3

    monkeypatch.setattr(registry, "downloaded_bundle", downloaded)
    uri = "models:/gru_BTC_1d@champion"
    result = pipeline.evaluate(
        bundle["settings"].replace(output_path=str(tmp_path / "reg")),
        model_path=uri,
        retrain_every=1000,
    )
    assert seen == [uri]
    assert result.metrics["model_path"] == uri and result.metrics["n_refits"] == 1
    assert result.tracking is None
