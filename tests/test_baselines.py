"""The non-deep baselines of the zoo: `linear` (Darts LinearRegressionModel) and `lightgbm`
(Darts LightGBMModel), through the same tune, train, evaluate, predict and score commands as
the deep models, on SQLite and PostgreSQL.

Their lookback is the same ``input_chunk_length`` as a deep model's (the lags of the target
and of every covariate); they have no epochs, no trainer and no checkpoint file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.errors import ModelError
from kallos_models.modelling import bundles, zoo
from tests.helpers import assert_error, make_ohlcv, run_cli, run_cli_json, write_binance_csv

#: the lightgbm cases need the `lightgbm` extra (installed by `make install` and in CI)
LIGHTGBM = pytest.param(
    "lightgbm",
    marks=pytest.mark.skipif(
        __import__("importlib.util").util.find_spec("lightgbm") is None,
        reason="the lightgbm extra is not installed",
    ),
)

BARS = make_ohlcv(420, seed=3)
TRAIN_END = BARS.index[299]
TEST_START, TEST_END = BARS.index[301], BARS.index[359]
DAY = pd.Timedelta(days=1)
PARAMS: dict[str, dict[str, Any]] = {
    "linear": {"input_chunk_length": 8},
    "lightgbm": {"input_chunk_length": 8, "n_estimators": 30, "num_leaves": 7},
}


def _ingest(url: str, frame: pd.DataFrame, path: Path) -> None:
    file = write_binance_csv(frame, path)
    run_cli_json("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--file", str(file),
                 "--db-url", url)  # fmt: skip


def test_the_zoo_says_which_models_are_deep_and_which_need_an_extra() -> None:
    listed = {m["name"]: m for m in run_cli_json("models", "--json")}
    assert listed["gru"]["deep"] is True and listed["gru"]["extra"] is None
    assert listed["linear"]["deep"] is False and listed["linear"]["extra"] is None
    assert listed["lightgbm"]["deep"] is False and listed["lightgbm"]["extra"] == "lightgbm"
    assert listed["lightgbm"]["installed"] is True
    assert listed["linear"]["darts_class"] == "darts.models.LinearRegressionModel"
    assert "n_estimators" in listed["lightgbm"]["tunable"]
    assert "input_chunk_length" in listed["linear"]["tunable"]


def test_the_lookback_becomes_the_lags_and_epochs_do_not_apply(caplog) -> None:
    kwargs = zoo.validate_params("lightgbm", {"input_chunk_length": 12}, random_state=4)
    assert kwargs["lags"] == 12 and kwargs["lags_past_covariates"] == 12
    assert "input_chunk_length" not in kwargs and kwargs["random_state"] == 4
    assert kwargs["verbose"] == -1  # LightGBM would print to stdout otherwise
    assert zoo.chunk_lengths(kwargs) == (12, 1)
    model = zoo.create_model("linear", {"input_chunk_length": 5, "output_chunk_length": 2})
    assert type(model).__name__ == "LinearRegressionModel" and model.output_chunk_length == 2
    with pytest.raises(ModelError, match="'n_epochs' is not accepted by model 'linear'"):
        zoo.validate_params("linear", {"n_epochs": 3})
    with pytest.raises(ModelError, match="'lags' is not accepted"):
        zoo.validate_params("linear", {"lags": 3})  # the lookback is input_chunk_length
    with pytest.raises(ModelError, match="learning_rate must be a number > 0"):
        zoo.validate_params("lightgbm", {"learning_rate": 0})
    with pytest.raises(ModelError, match="num_leaves must be an integer >= 1"):
        zoo.validate_params("lightgbm", {"num_leaves": 2.5})
    # a params file's n_epochs (a tuner file of another model, say) is dropped with a log line
    from kallos_models.modelling.hyperparams import training_params

    with caplog.at_level(logging.INFO, logger="kallos_models.modelling.hyperparams"):
        used, _ = training_params("linear", {"n_epochs": 7}, max_epochs=2, seed=0)
    assert "n_epochs" not in used and "not trained in epochs" in caplog.text


def test_a_missing_extra_is_named(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real(name)
    )
    with pytest.raises(ModelError, match=r"pip install 'kallos-models\[lightgbm\]'"):
        zoo.validate_params("lightgbm", {})


@pytest.mark.parametrize("model_name", ["linear", LIGHTGBM])
def test_train_evaluate_predict_and_score(model_name: str, db_url: str, tmp_path: Path) -> None:
    _ingest(db_url, BARS.iloc[:360], tmp_path / "btc.csv")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS[model_name]))
    common = ("--model-name", model_name, "--asset-id", "BTC", "--db-url", db_url)
    trained = run_cli_json(
        "train", *common, "--end-date", str(TRAIN_END.date()), "--params-file", str(params),
        "--output-path", str(tmp_path / "models"),
    )  # fmt: skip
    assert trained["n_epochs"] is None and trained["accelerator"] == "cpu"
    assert trained["paths"]["checkpoint"] is None
    model_path = trained["paths"]["model"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        f"{model_name}_BTC.pt",
        f"{model_name}_BTC_manifest.json",
        f"{model_name}_BTC_scaler.pkl",
    ]
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text())
    assert manifest["model_kind"] == "regression" and "checkpoint" not in manifest["files"]
    assert manifest["input_chunk_length"] == 8 and manifest["epochs_run"] is None
    assert manifest["params"] == {**zoo.get_spec(model_name).defaults, **PARAMS[model_name]}
    assert manifest["train_end"] == TRAIN_END.isoformat()

    # evaluate on the 59 bars after the gap: metrics against naive, a plot
    record = run_cli_json(
        "evaluate", *common, "--model-path", model_path, "--test-start-date",
        str(TEST_START.date()), "--test-end-date", str(TEST_END.date()),
        "--output-path", str(tmp_path / "eval"),
    )  # fmt: skip
    assert record["n"] == 59 and record["rmse"] > 0 and record["rmse_ratio"] > 0
    assert (tmp_path / "eval" / "BTC_evaluation_plot.png").is_file()

    # the loaded bundle forecasts what the model does on the same window
    loaded = bundles.load_bundle(model_path)
    assert type(loaded.model).__name__ == zoo.get_spec(model_name).darts_class_name

    # predict from the newest bar, once per origin; then score it once its bar arrives
    as_of = (TEST_END + DAY + pd.Timedelta(hours=1)).isoformat()
    first = run_cli_json("predict", "--model-path", model_path, "--db-url", db_url,
                         "--as-of", as_of)  # fmt: skip
    assert first["origin"]["time"] == TEST_END.isoformat()
    assert first["stored"]["new"] == 1 and np.isfinite(first["steps"][0]["forecast"])
    again = run_cli_json("predict", "--model-path", model_path, "--db-url", db_url,
                         "--as-of", as_of)  # fmt: skip
    assert again["stored"] == {"table": "forecasts", "new": 0, "existing": 1}
    assert again["steps"] == first["steps"]
    _ingest(db_url, BARS.iloc[:362], tmp_path / "more.csv")
    scored = run_cli_json("score", "--db-url", db_url, "--output-path", str(tmp_path / "s"))
    assert scored["scored"] == 1 and scored["groups"][0]["model"]["name"] == model_name


@pytest.mark.parametrize("model_name", ["linear", LIGHTGBM])
def test_tune_then_train_from_its_params_file(model_name: str, db_url: str, tmp_path: Path):
    _ingest(db_url, BARS, tmp_path / "btc.csv")
    common = ("--model-name", model_name, "--asset-id", "BTC", "--db-url", db_url)
    summary = run_cli_json(
        # 251 rows: exactly what the folds need without a gap, so none here
        "tune", *common, "--end-date", str(TRAIN_END.date()), "--n-trials", "2", "--gap", "0",
        "--output-path", str(tmp_path / "tune"), "--seed", "3",
    )  # fmt: skip
    counts = summary["trial_counts"]
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 2, summary
    written = json.loads(Path(summary["params_path"]).read_text())
    assert written["model_name"] == model_name and written["n_epochs"] is None
    assert "input_chunk_length" in written["params"]
    trained = run_cli_json(
        "train", *common, "--end-date", str(TRAIN_END.date()), "--params-file",
        summary["params_path"], "--output-path", str(tmp_path / "models"),
    )  # fmt: skip
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text())
    for key, value in written["params"].items():
        assert manifest["params"][key] == value


def test_same_seed_same_lightgbm_and_a_retraining_backtest(sqlite_url: str, tmp_path: Path):
    _ingest(sqlite_url, BARS.iloc[:360], tmp_path / "btc.csv")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS["lightgbm"]))
    common = ("--model-name", "lightgbm", "--asset-id", "BTC", "--db-url", sqlite_url)
    paths = []
    for run in ("a", "b"):
        trained = run_cli_json(
            "train", *common, "--end-date", str(TRAIN_END.date()), "--params-file", str(params),
            "--output-path", str(tmp_path / run), "--seed", "5",
        )  # fmt: skip
        paths.append(trained["paths"]["model"])
    window = ("--test-start-date", str(TEST_START.date()), "--test-end-date", str(TEST_END.date()))
    evaluated = [
        run_cli_json(
            "evaluate",
            *common,
            "--model-path",
            p,
            *window,
            "--output-path",
            str(tmp_path / f"eval{i}"),
        )  # fmt: skip
        for i, p in enumerate(paths)
    ]
    assert evaluated[0]["rmse"] == evaluated[1]["rmse"]
    # refit every 20 bars: three fits, each on the rows up to the gap before its block
    backtest = run_cli_json(
        "evaluate", *common, "--model-path", paths[0], *window,
        "--retrain-every", "20", "--output-path", str(tmp_path / "rt"),
    )  # fmt: skip
    assert backtest["n_refits"] == 3 and backtest["n"] == 59
    assert [r["train_end"] for r in backtest["refits"]] == [
        (TEST_START + k * 20 * DAY - 2 * DAY).isoformat() for k in range(3)
    ]
    assert [r["n_forecasts"] for r in backtest["refits"]] == [20, 20, 19]


def test_a_regression_bundle_without_its_model_file_is_refused(sqlite_url, tmp_path):
    _ingest(sqlite_url, BARS.iloc[:320], tmp_path / "btc.csv")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS["linear"]))
    trained = run_cli_json(
        "train", "--model-name", "linear", "--asset-id", "BTC", "--db-url", sqlite_url,
        "--end-date", str(TRAIN_END.date()), "--params-file", str(params),
        "--output-path", str(tmp_path / "m"),
    )  # fmt: skip
    model = Path(trained["paths"]["model"])
    model.write_bytes(model.read_bytes() + b"x")
    assert_error(
        run_cli("evaluate", "--model-path", str(model), "--asset-id", "BTC", "--db-url",
                sqlite_url, "--test-start-date", str(TEST_START.date()), "--test-end-date",
                str(TEST_END.date())),
        "checksum",
    )  # fmt: skip


def test_a_registered_regression_model_is_promoted_and_predicts(sqlite_url, tmp_path):
    pytest.importorskip("mlflow")
    _ingest(sqlite_url, BARS.iloc[:360], tmp_path / "btc.csv")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS["linear"]))
    tracking = ("--tracking-uri", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    common = ("--model-name", "linear", "--asset-id", "BTC", "--db-url", sqlite_url)
    trained = run_cli_json(
        "train", *common, "--end-date", str(TRAIN_END.date()), "--params-file", str(params),
        "--output-path", str(tmp_path / "m"), *tracking,
    )  # fmt: skip
    assert trained["tracking"]["registered_model"] == "linear_BTC_1d"
    run_cli_json(
        "evaluate", *common, "--model-path", "models:/linear_BTC_1d/1", "--test-start-date",
        str(TEST_START.date()), "--test-end-date", str(TEST_END.date()),
        "--output-path", str(tmp_path / "eval"), *tracking,
    )  # fmt: skip
    promoted = run_cli_json(
        "registry", *tracking, "promote", "--model-name", "linear", "--asset-id", "BTC",
        "--version", "1", "--max-skill-ratio", "10",
    )  # fmt: skip
    assert promoted["version"] == 1 and promoted["changed"]
    as_of = (TEST_END + DAY + pd.Timedelta(hours=1)).isoformat()
    predicted = run_cli_json("predict", "--model-path", "models:/linear_BTC_1d@champion",
                             "--db-url", sqlite_url, "--as-of", as_of, *tracking)  # fmt: skip
    assert predicted["model"]["version"] == 1 and predicted["stored"]["new"] == 1
    local = run_cli_json("predict", "--model-path", trained["paths"]["model"], "--db-url",
                         sqlite_url, "--as-of", as_of, "--no-store")  # fmt: skip
    assert local["steps"] == predicted["steps"]  # the registered bundle is the local one
