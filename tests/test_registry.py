"""registry: tune -> train -> evaluate -> promote -> rollback through the CLI, on SQLite MLflow."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kallos_models.cli import cli
from kallos_models.config import resolve_settings
from kallos_models.data import db, ingest
from kallos_models.errors import ConfigError
from kallos_models.mlops import registry
from kallos_models.stages import tune as tune_stage
from tests.helpers import assert_error, make_ohlcv, write_binance_csv

pytest.importorskip("mlflow")

N_BARS = 520
BARS = make_ohlcv(N_BARS)
TRAIN_END = str(BARS.index[399].date())
TEST_START, TEST_END = str(BARS.index[401].date()), str(BARS.index[-1].date())
NAME = "gru_BTC_1d"


def tiny_space(trial: Any, timeframe: str) -> dict[str, Any]:
    """A GRU of width 8 and a short lookback: a trial takes about a second."""
    return {
        "hidden_dim": 8,
        "n_rnn_layers": 1,
        "dropout": 0.0,
        "batch_size": 32,
        "input_chunk_length": trial.suggest_int("input_chunk_length", 8, 12),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
    }


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def ok(*args: str) -> Any:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Market data in SQLite, an MLflow SQLite store and artifact root under tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KALLOS_ACCELERATOR", "cpu")
    monkeypatch.setenv("KALLOS_TRACKING_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    # the CLI cannot take a search space: give tune the tiny one
    monkeypatch.setattr(
        tune_stage, "tune", functools.partial(tune_stage.tune, search_space=tiny_space)
    )
    engine = db.create_db_engine(sqlite_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(BARS, tmp_path / "btc.csv"))
    engine.dispose()
    return {"db": sqlite_url, "tracking": f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"}


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def train(world: dict[str, str], out: str, params: str, seed: str) -> dict[str, Any]:
    return ok(
        "train",
        "--asset-id", "BTC",
        "--end-date", TRAIN_END,
        "--params-file", params,
        "--output-path", out,
        "--db-url", world["db"],
        "--accelerator", "cpu",
        "--seed", seed,
        "--tracking-uri", world["tracking"],
    )  # fmt: skip


def evaluate(world: dict[str, str], model_path: str, out: str) -> Any:
    return run(
        "evaluate",
        "--asset-id", "BTC",
        "--model-path", model_path,
        "--test-start-date", TEST_START,
        "--test-end-date", TEST_END,
        "--output-path", out,
        "--db-url", world["db"],
        "--tracking-uri", world["tracking"],
    )  # fmt: skip


def registry_cmd(world: dict[str, str], *args: str) -> Any:
    return run(
        "registry", args[0], "--asset-id", "BTC", "--tracking-uri", world["tracking"], *args[1:]
    )


def test_tune_train_evaluate_promote_rollback_archive(world: dict[str, str], tmp_path: Path):
    uri = world["tracking"]
    # tune: one parent run, a child run per trial with params, fold scores, value, state
    summary = ok(
        "tune",
        "--asset-id", "BTC",
        "--end-date", TRAIN_END,
        "--n-trials", "2",
        "--max-epochs", "1",
        "--db-url", world["db"],
        "--output-path", "tuned",
        "--tracking-uri", uri,
    )  # fmt: skip
    client = _client(uri)
    experiment = client.get_experiment_by_name("kallos-models")
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kallos.kind") == "tune"]
    children = [r for r in runs if r.data.tags.get("kallos.kind") == "tune-trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["study_name"] == "gru_BTC_1d"
    assert parent.data.metrics["best_value"] == pytest.approx(summary["value"])
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert child.data.params["hidden_dim"] == "8"
        assert "input_chunk_length" in child.data.params and "learning_rate" in child.data.params
        history = client.get_metric_history(child.info.run_id, "fold_score")
        assert sorted(m.step for m in history) == list(range(summary["folds"]["n_splits"]))
        assert child.data.metrics["value"] == pytest.approx(
            sum(m.value for m in history) / len(history)
        )
    params_file = summary["params_path"]

    # train: a run with params and the bundle, version 1 registered with the manifest checksum
    first = train(world, "models1", params_file, "1")
    assert first["tracking"]["registered_model"] == NAME and first["tracking"]["version"] == 1
    version = client.get_model_version(NAME, "1")
    train_run = client.get_run(version.run_id)
    assert train_run.data.params["asset_id"] == "BTC" and train_run.data.params["hidden_dim"] == "8"
    assert train_run.data.tags["kallos.kind"] == "train" and train_run.info.status == "FINISHED"
    outputs = [o.model_id for o in train_run.outputs.model_outputs]
    assert [version.source] == [f"models:/{model_id}" for model_id in outputs]
    assert "READY" in str(client.get_logged_model(outputs[0]).status)
    from kallos_models.files import sha256_file

    manifest_path = Path(first["paths"]["manifest"])
    assert version.tags["manifest_sha256"] == sha256_file(manifest_path)
    logged = {a.path for a in client.list_artifacts(version.run_id)}
    assert "manifest.json" in logged

    # a version without an evaluation is not promoted
    assert_error(registry_cmd(world, "promote", "--version", "1"), "no hold-out evaluation")

    # evaluate: metrics and plot on version 1's run; headline numbers on the version
    result = evaluate(world, first["paths"]["model"], "eval1")
    assert result.exit_code == 0, result.output
    local_metrics = json.loads(result.stdout)
    # the Sharpe ratio is deflated by the study's two trials, named in the record
    deflated = local_metrics["backtest"]["deflated_sharpe"]
    assert (deflated["n_trials"], deflated["trials_source"]) == (2, "study gru_BTC_1d")
    version = client.get_model_version(NAME, "1")
    assert float(version.tags["holdout.search_trials"]) == 2
    assert float(version.tags["holdout.rmse"]) == pytest.approx(local_metrics["rmse"])
    assert float(version.tags["holdout.rmse_ratio"]) == pytest.approx(local_metrics["rmse_ratio"])
    train_run = client.get_run(version.run_id)
    assert train_run.data.metrics["holdout.rmse"] == pytest.approx(local_metrics["rmse"])
    assert train_run.data.metrics["holdout.naive.rmse"] == pytest.approx(
        local_metrics["naive"]["rmse"]
    )
    evaluation_files = {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    assert evaluation_files == {
        "evaluation/BTC_evaluation_metrics.json",
        "evaluation/BTC_evaluation_plot.png",
    }

    # a failing threshold is refused with the reason, and the alias is not set
    line = assert_error(
        registry_cmd(world, "promote", "--version", "1", "--max-skill-ratio", "0.0001"),
        "version 1 of gru_BTC_1d was not promoted to 'champion'",
        "rmse_ratio",
        "above --max-skill-ratio 0.0001",
        code=3,
    )
    assert f"{local_metrics['rmse_ratio']:.4g}" in line
    assert_error(
        registry_cmd(world, "promote", "--version", "1", "--min-sharpe", "1000"),
        "--min-sharpe",
        code=3,
    )
    assert_error(
        registry_cmd(world, "promote", "--version", "1", "--min-directional-accuracy", "1.01"),
        "directional_accuracy",
        "below --min-directional-accuracy 1.01",
        code=3,
    )
    assert client.get_registered_model(NAME).aliases == {}

    promoted = ok(
        "registry", "--tracking-uri", uri, "promote", "--asset-id", "BTC", "--version", "1",
        "--max-skill-ratio", "10", "--min-directional-accuracy", "0",
    )  # fmt: skip
    assert promoted["version"] == 1 and promoted["previous"] is None and promoted["changed"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    rows = json.loads(registry_cmd(world, "list", "--json").stdout)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["champion"])]
    assert rows[0]["rmse"] == pytest.approx(local_metrics["rmse"])
    assert rows[0]["naive_rmse"] == pytest.approx(local_metrics["naive"]["rmse"])
    assert rows[0]["directional_accuracy"] == pytest.approx(local_metrics["directional_accuracy"])
    assert rows[0]["run_id"] == version.run_id and rows[0]["retired"] is False
    table = registry_cmd(world, "list").stdout
    assert "champion" in table and version.run_id in table and "rmse_ratio" in table

    # the champion is loaded from the registry, checksums verified, and evaluated
    from_registry = evaluate(world, f"models:/{NAME}@champion", "eval_registry")
    assert from_registry.exit_code == 0, from_registry.output
    registry_metrics = json.loads(from_registry.stdout)
    assert registry_metrics["model_path"] == f"models:/{NAME}@champion"
    assert registry_metrics["rmse"] == pytest.approx(local_metrics["rmse"])

    # ... and as an MLflow pyfunc model: one-step rolling forecasts in prices
    import mlflow

    from kallos_models.data import datasets

    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = datasets.load_features_from_db("BTC", TEST_END, world["db"], timeframe="1d")
    forecasts = pyfunc.predict(frame.iloc[-40:])
    assert list(forecasts.columns) == ["actual", "forecast", "naive", "origin_close"]
    assert 0 < len(forecasts) < 40 and forecasts.index[-1] == frame.index[-1]

    # a second training becomes version 2; promoting it moves the alias
    second = train(world, "models2", params_file, "2")
    assert second["tracking"]["version"] == 2
    assert evaluate(world, second["paths"]["model"], "eval2").exit_code == 0
    promoted = ok(*["registry", "promote", "--asset-id", "BTC", "--version", "2"],
                  "--max-skill-ratio", "10", "--tracking-uri", uri)  # fmt: skip
    assert (promoted["version"], promoted["previous"]) == (2, 1)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"

    # rollback moves it back to version 1
    back = ok("registry", "rollback", "--asset-id", "BTC", "--tracking-uri", uri)
    assert (back["version"], back["previous"]) == (1, 2)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert_error(registry_cmd(world, "rollback"), "no earlier holder")

    # archive tags a version retired; a retired version is not promoted; the champion is kept
    archived = ok(
        "registry", "archive", "--asset-id", "BTC", "--version", "2", "--tracking-uri", uri
    )
    assert archived["retired"] is True
    assert client.get_model_version(NAME, "2").tags["retired"] == "true"
    assert_error(registry_cmd(world, "promote", "--version", "2"), "retired")
    assert_error(registry_cmd(world, "archive", "--version", "1"), "holds alias champion")
    rows = json.loads(registry_cmd(world, "list", "--json").stdout)
    assert [(r["version"], r["aliases"], r["retired"]) for r in rows] == [
        (1, ["champion"], False),
        (2, [], True),
    ]

    # unknown names, versions and aliases list what exists
    assert_error(
        run("registry", "list", "--asset-id", "ETH", "--tracking-uri", uri),
        "no registered model 'gru_ETH_1d'",
        "registered models: gru_BTC_1d",
    )
    assert_error(registry_cmd(world, "promote", "--version", "9"), "no version 9; versions: 1, 2")
    assert_error(
        evaluate(world, f"models:/{NAME}@nope", "eval_x"),
        "has no alias 'nope'; aliases: champion -> version 1",
    )
    assert_error(registry_cmd(world, "promote", "--version", "1", "--alias", "v2"), "reserves")


def test_registry_needs_a_tracking_uri_and_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run("registry", "list")
    assert result.exit_code == 2 and "--tracking-uri" in result.output
    with pytest.raises(ConfigError, match="--asset-id"):
        registry.registered_model_for(resolve_settings({}))
    with pytest.raises(ConfigError, match="not a registry URI"):
        registry.parse_models_uri("models:/gru_BTC_1d")
    assert registry.parse_models_uri("models:/gru_BTC_1d@champion") == (NAME, None, "champion")
    assert registry.parse_models_uri("models:/gru_BTC_1d/3") == (NAME, "3", None)


def test_empty_registry_says_how_to_fill_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{(tmp_path / 'empty.db').as_posix()}"
    assert json.loads(run("registry", "list", "--json", "--tracking-uri", uri).stdout) == []
    assert_error(
        run("registry", "list", "--asset-id", "BTC", "--tracking-uri", uri),
        "none is registered yet",
    )
