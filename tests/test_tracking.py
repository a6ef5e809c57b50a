"""tracking: the switch, the missing extra, settings precedence, runs of unregistered bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kallos_models import pipeline
from kallos_models.cli import cli
from kallos_models.config import resolve_settings
from kallos_models.data import db, ingest
from kallos_models.errors import ConfigError
from kallos_models.mlops import tracking
from kallos_models.modelling.bundles import is_registry_uri
from kallos_models.stages import train as trainer
from tests.helpers import assert_error, make_ohlcv, tiny_params, write_binance_csv

BARS = make_ohlcv(420)
TRAIN_END = str(BARS.index[349].date())
TEST_START, TEST_END = str(BARS.index[351].date()), str(BARS.index[-1].date())
INSTALL = 'pip install -e ".[mlflow]"'


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import mlflow` fails, as without the extra."""
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)


@pytest.fixture
def market(tmp_path: Path, sqlite_url: str) -> str:
    engine = db.create_db_engine(sqlite_url)
    ingest.ingest_file(engine, "BTC", "1d", write_binance_csv(BARS, tmp_path / "btc.csv"))
    engine.dispose()
    return sqlite_url


# --------------------------------------------------------------------------------------------
# Settings and the switch
# --------------------------------------------------------------------------------------------


def test_tracking_uri_precedence(tmp_path: Path) -> None:
    assert resolve_settings({}, environ={}).tracking_uri is None  # off by default
    mlflow_env = {"MLFLOW_TRACKING_URI": "sqlite:///from_mlflow.db"}
    assert resolve_settings({}, environ=mlflow_env).tracking_uri == "sqlite:///from_mlflow.db"
    (tmp_path / "config.json").write_text(json.dumps({"tracking_uri": "sqlite:///config.db"}))
    assert resolve_settings({}, environ=mlflow_env).tracking_uri == "sqlite:///config.db"
    both = {**mlflow_env, "KALLOS_TRACKING_URI": "sqlite:///kallos.db"}
    assert resolve_settings({}, environ=both).tracking_uri == "sqlite:///kallos.db"
    flag = resolve_settings({"tracking_uri": "sqlite:///flag.db"}, environ=both)
    assert flag.tracking_uri == "sqlite:///flag.db"
    (tmp_path / "config.json").unlink()
    (tmp_path / ".env").write_text("MLFLOW_TRACKING_URI=sqlite:///dotenv.db\n")
    assert resolve_settings({}, environ={}).tracking_uri == "sqlite:///dotenv.db"
    with pytest.raises(ConfigError, match="tracking_experiment"):
        resolve_settings({"tracking_experiment": ""}, environ={})


def test_registered_model_names() -> None:
    assert tracking.registered_model_name("gru", "BTC", "1d") == "gru_BTC_1d"
    odd = tracking.registered_model_name("gru", "BTC/USDT", "4h")
    assert odd.startswith("gru_BTC_USDT-") and odd.endswith("_4h") and "/" not in odd
    assert is_registry_uri("models:/gru_BTC_1d@champion")
    assert not is_registry_uri(Path("trained_models/gru_BTC.pt"))


# --------------------------------------------------------------------------------------------
# Without the extra
# --------------------------------------------------------------------------------------------


def test_without_mlflow_tracking_off_works_and_on_says_what_to_install(no_mlflow) -> None:
    tracking.require_mlflow(resolve_settings({}, environ={}))  # off: nothing to import
    with pytest.raises(ConfigError) as err:
        tracking.require_mlflow(resolve_settings({"tracking_uri": "sqlite:///m.db"}))
    assert str(err.value) == tracking.MISSING_EXTRA and INSTALL in str(err.value)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--asset-id", "BTC", "--end-date", "2021-06-30", "--params-file", "p.json"],
        ["tune", "--asset-id", "BTC", "--end-date", "2021-06-30"],
        [
            "evaluate",
            "--asset-id", "BTC",
            "--model-path", "models:/gru_BTC_1d@champion",
            "--test-start-date", "2021-07-01",
            "--test-end-date", "2021-08-01",
        ],
        ["registry", "list"],
    ],
    ids=["train", "tune", "evaluate", "registry"],
)  # fmt: skip
def test_cli_flag_without_mlflow_is_one_error_line(no_mlflow, tmp_path: Path, args) -> None:
    (tmp_path / "p.json").write_text(json.dumps(tiny_params("gru")))
    result = run(*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_error(result, "--tracking-uri needs MLflow", INSTALL)
    assert not (tmp_path / "trained_models").exists()  # failed before any training


def test_help_of_every_command_does_not_import_mlflow() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kallos_models.cli import cli\n"
        "for args in (['--help'], ['registry', '--help'], ['registry', 'promote', '--help'],"
        " ['evaluate', '--help']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0\n"
        "print('mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# With MLflow
# --------------------------------------------------------------------------------------------


def test_train_without_tracking_registers_nothing(market: str, tmp_path: Path) -> None:
    settings = resolve_settings(
        {"db_url": market, "asset_id": "BTC", "train_end_date": TRAIN_END, "accelerator": "cpu"}
    )
    result = trainer.train_model(settings, tiny_params("gru"))
    assert result.tracking is None and "tracking" not in result.as_dict()
    assert not any(tmp_path.glob("mlflow*")) and not (tmp_path / "mlruns").exists()


def test_evaluating_an_unregistered_bundle_logs_its_own_run(
    market: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    settings = resolve_settings(
        {"db_url": market, "asset_id": "BTC", "train_end_date": TRAIN_END, "accelerator": "cpu"}
    )
    bundle = trainer.train_model(settings, tiny_params("gru"))  # trained without tracking
    with caplog.at_level("WARNING", logger="kallos_models"):
        result = pipeline.evaluate(
            settings.replace(
                test_start_date=TEST_START,
                test_end_date=TEST_END,
                tracking_uri=uri,
                tracking_artifact_location=str(tmp_path / "artifacts"),
            ),
            model_path=bundle.paths.model,
        )
    assert "not a registered model version" in caplog.text
    assert result.tracking is not None and result.tracking["version"] is None
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.tracking["run_id"])
    assert run.data.tags["kallos.kind"] == "evaluate" and run.info.status == "FINISHED"
    assert run.data.metrics["holdout.rmse"] == pytest.approx(result.metrics["rmse"])
    assert "holdout.horizon" not in run.data.metrics  # the window is a tag, not a metric
    assert run.data.tags["holdout.test_start"] == result.metrics["test_start"]
    assert (tmp_path / "artifacts").is_dir()


def test_tracking_errors_are_one_line_with_the_password_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    line = assert_error(
        run("registry", "list", "--tracking-uri", "http://u:s3cret@127.0.0.1:9"),
        "MLflow at http://u:***@127.0.0.1:9",
        "check --tracking-uri",
    )
    assert "s3cret" not in line
    line = assert_error(
        run("registry", "list", "--tracking-uri", "mysql://u:s3cret@127.0.0.1:9/mlflow"),
        "needs the Python module",
    )
    assert "s3cret" not in line
