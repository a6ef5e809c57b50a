"""`kallos-run tune` and `kallos-run studies` through the CLI, then `train` from its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kallos_models.cli import cli
from kallos_models.data import db, ingest
from tests.helpers import assert_error, make_ohlcv, write_binance_csv


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


@pytest.fixture
def data_url(tmp_path: Path, sqlite_url: str) -> str:
    path = write_binance_csv(make_ohlcv(420, seed=3), tmp_path / "k.csv")
    ingest.ingest_file(db.create_db_engine(sqlite_url), "BTC", "1d", path)
    return sqlite_url


def test_tune_then_train_from_its_params_file(tmp_path: Path, data_url: str) -> None:
    common = ["--asset-id", "BTC", "--db-url", data_url]
    tune_args = [
        "tune", "--model-name", "nlinear", *common, "--end-date", "2022-01-31",
        "--n-trials", "2", "--max-epochs", "1", "--output-path", str(tmp_path / "tune"),
        "--seed", "3",
    ]  # fmt: skip
    tuned = run(*tune_args)
    assert tuned.exit_code == 0, tuned.output
    summary = json.loads(tuned.stdout)
    params_path = Path(summary["params_path"])
    assert (
        params_path.is_file()
        and summary["trial_counts"].get("COMPLETE", 0) + summary["trial_counts"].get("PRUNED", 0)
        == 2
    )
    written = json.loads(params_path.read_text())
    assert written["model_name"] == "nlinear" and written["n_epochs"] >= 1
    trained = run(
        "train",
        "--model-name",
        "nlinear",
        *common,
        "--end-date",
        "2022-01-31",
        "--params-file",
        str(params_path),
        "--output-path",
        str(tmp_path / "models"),
    )
    assert trained.exit_code == 0, trained.output
    manifest = json.loads(Path(json.loads(trained.stdout)["paths"]["manifest"]).read_text())
    for key, value in written["params"].items():
        assert manifest["params"][key] == value
    studies = json.loads(run("studies", "--db-url", data_url, "--json").stdout)
    assert [s["name"] for s in studies] == ["nlinear_BTC_1d"]
    again = run(*tune_args)  # the same command again: the study already has its 2 trials
    assert json.loads(again.stdout)["n_new_trials"] == 0


def test_tune_bad_inputs(tmp_path: Path, data_url: str) -> None:
    base = ["tune", "--asset-id", "BTC", "--db-url", data_url, "--max-epochs", "1"]
    assert_error(run(*base, "--end-date", "2022-13-45"), "YYYY-MM-DD")
    assert_error(
        run(*base, "--end-date", "2022-01-31", "--n-trials", "0"), "n_trials must be at least 1"
    )
    assert_error(run(*base, "--end-date", "2010-01-01"), "no rows")
    assert_error(run(*base, "--end-date", "2022-01-31", "--model-name", "gpt"), "available:")
    assert_error(run(*base, "--end-date", "2022-01-31", "--workers", "2"), "PostgreSQL")
    assert_error(run(*base, "--end-date", "2021-03-01"), "needed")
    secret = "postgresql://kallos:hunter2@127.0.0.1:1/x"
    result = run(*base, "--end-date", "2022-01-31", "--storage-url", secret)
    assert_error(result, "127.0.0.1:1")
    assert "hunter2" not in result.output
    missing = run("tune", "--asset-id", "BTC", "--db-url", data_url)
    assert missing.exit_code == 2 and "--end-date" in missing.stderr
