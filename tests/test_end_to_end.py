"""train then evaluate through the CLI, for every registered model, on real BTC daily bars.

Train to 2024-06-30, evaluate 2024-07-01 .. 2025-07-04, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kallos_models.data import db, ingest
from kallos_models.modelling.zoo import get_spec, model_names
from tests.helpers import assert_error, run_cli, run_cli_json, tiny_params

TRAIN_END = "2024-06-30"
TEST_START, TEST_END = "2024-07-02", "2025-07-04"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def btc_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'kallos.db'}"
        ingest.ingest_file(
            db.create_db_engine(url), "BTC", "1d", SHARED_DATA / "binance_klines/BTCUSDT_1d.csv"
        )
        yield url
        return
    # a module-scoped PostgreSQL database, dropped at the end
    import uuid

    import sqlalchemy as sa

    from tests.conftest import PG_ADMIN_URL, _require_pg

    _require_pg()
    name = f"kallos_e2e_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = db.create_db_engine(url)
    ingest.ingest_file(engine, "BTC", "1d", SHARED_DATA / "binance_klines/BTCUSDT_1d.csv")
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _train_args(
    tmp_path: Path, btc_db: str, model: str, params: dict | None = None, *extra: str
) -> list[str]:
    """`train` arguments for the model, its params file written under tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    params_file = tmp_path / f"{model}_params.json"
    params_file.write_text(json.dumps(params or tiny_params(model)))
    return [
        "train",
        "--model-name",
        model,
        "--asset-id",
        "BTC",
        "--end-date",
        TRAIN_END,
        "--params-file",
        str(params_file),
        "--output-path",
        str(tmp_path / "models"),
        "--db-url",
        btc_db,
        *extra,
    ]


@pytest.mark.parametrize("model", model_names())
def test_train_then_evaluate_every_model(tmp_path: Path, btc_db: str, model: str) -> None:
    paths = run_cli_json(*_train_args(tmp_path, btc_db, model))["paths"]
    deep = get_spec(model).deep  # a regression model's bundle has no checkpoint
    for role in ("model", "checkpoint", "scaler", "manifest"):
        assert Path(paths[role]).is_file() if paths[role] else role == "checkpoint" and not deep
    manifest = json.loads(Path(paths["manifest"]).read_text())
    assert manifest["train_end"] == "2024-06-30T00:00:00" and manifest["model_name"] == model

    out = tmp_path / "eval"
    metrics = run_cli_json(
        "evaluate",
        "--model-name",
        model,
        "--asset-id",
        "BTC",
        "--model-path",
        paths["model"],
        "--scaler-path",
        paths["scaler"],
        "--test-start-date",
        TEST_START,
        "--test-end-date",
        TEST_END,
        "--output-path",
        str(out),
        "--db-url",
        btc_db,
    )
    assert metrics["n"] == 368  # 2024-07-02 .. 2025-07-04, one forecast per day
    for key in ("rmse", "mae", "mape", "smape", "mase", "directional_accuracy", "rmse_ratio"):
        assert metrics[key] is not None and metrics[key] >= 0, key
    assert set(metrics["naive"]) >= {"rmse", "mae", "mape", "smape", "mase"}
    assert metrics["rmse_ratio"] == pytest.approx(metrics["rmse"] / metrics["naive"]["rmse"])
    assert set(metrics["diebold_mariano"]) >= {"statistic", "p_value"}
    assert json.loads((out / "BTC_evaluation_metrics.json").read_text())["rmse"] == metrics["rmse"]
    png = (out / "BTC_evaluation_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 600


def test_bad_inputs_for_train_and_evaluate(tmp_path: Path, btc_db: str) -> None:
    if "postgresql" in btc_db:
        pytest.skip("backend-independent checks run once, on SQLite")
    params = tmp_path / "p.json"
    params.write_text(json.dumps(tiny_params("gru")))
    base = ["--end-date", TRAIN_END, "--output-path", str(tmp_path / "m"), "--db-url", btc_db]
    # unknown asset: the message lists the assets present
    assert_error(
        run_cli("train", "--asset-id", "BTX", "--params-file", str(params), *base), "BTC (1d)"
    )
    # unknown model: the message lists the models
    assert_error(
        run_cli(
            "train", "--model-name", "gpt", "--asset-id", "BTC", "--params-file", str(params), *base
        ),
        "available: dlinear, gru",
    )
    # params file missing, not JSON, with a parameter the model does not take
    assert_error(
        run_cli("train", "--asset-id", "BTC", "--params-file", str(tmp_path / "none.json"), *base),
        "none.json",
    )
    (tmp_path / "bad.json").write_text("{hidden_dim: 8")
    assert_error(
        run_cli("train", "--asset-id", "BTC", "--params-file", str(tmp_path / "bad.json"), *base),
        "JSON",
    )
    (tmp_path / "typo.json").write_text(json.dumps({**tiny_params("gru"), "hiden_dim": 8}))
    assert_error(
        run_cli("train", "--asset-id", "BTC", "--params-file", str(tmp_path / "typo.json"), *base),
        "hiden_dim",
    )
    # too few rows for the lookback plus one forecast: says how many are needed
    few = run_cli(
        "train",
        "--asset-id",
        "BTC",
        "--params-file",
        str(params),
        "--start-date",
        "2018-02-15",
        "--end-date",
        "2018-02-25",
        "--output-path",
        str(tmp_path / "m"),
        "--db-url",
        btc_db,
    )
    assert_error(few, "need")
    assert not (tmp_path / "m" / "gru_BTC.pt").exists()

    paths = run_cli_json(*_train_args(tmp_path, btc_db, "gru"))["paths"]
    ev = [
        "evaluate",
        "--asset-id",
        "BTC",
        "--model-path",
        paths["model"],
        "--db-url",
        btc_db,
        "--output-path",
        str(tmp_path / "e"),
    ]
    # leakage: a window starting inside the training range
    assert_error(
        run_cli(*ev, "--test-start-date", "2024-06-01", "--test-end-date", TEST_END), "leakage"
    )
    # reversed window
    assert_error(
        run_cli(*ev, "--test-start-date", TEST_END, "--test-end-date", TEST_START), TEST_START
    )
    # model file missing
    assert_error(
        run_cli(
            "evaluate",
            "--asset-id",
            "BTC",
            "--model-path",
            str(tmp_path / "x.pt"),
            "--db-url",
            btc_db,
            "--test-start-date",
            TEST_START,
            "--test-end-date",
            TEST_END,
        ),
        "x.pt",
    )
    # existing bundle without --overwrite
    assert_error(run_cli(*_train_args(tmp_path, btc_db, "gru")), "--overwrite")
    # tampered bundle: refused before anything is unpickled
    scaler = Path(paths["scaler"])
    scaler.write_bytes(scaler.read_bytes() + b"\0")
    assert_error(
        run_cli(*ev, "--test-start-date", TEST_START, "--test-end-date", TEST_END), "checksum"
    )
    assert not (tmp_path / "e" / "BTC_evaluation_metrics.json").exists()


def test_same_seed_same_metrics(tmp_path: Path, btc_db: str) -> None:
    if "postgresql" in btc_db:
        pytest.skip("reproducibility is a CPU property; checked once")
    results = []
    for attempt in ("a", "b"):
        args = _train_args(
            tmp_path / attempt, btc_db, "gru", tiny_params("gru", n_epochs=2), "--seed", "7"
        )
        paths = run_cli_json(*args)["paths"]
        evaluated = run_cli_json(
            "evaluate",
            "--asset-id",
            "BTC",
            "--model-path",
            paths["model"],
            "--db-url",
            btc_db,
            "--test-start-date",
            TEST_START,
            "--test-end-date",
            TEST_END,
            "--output-path",
            str(tmp_path / attempt / "e"),
        )
        results.append(evaluated)
    assert results[0]["rmse"] == results[1]["rmse"]
    assert results[0]["directional_accuracy"] == results[1]["directional_accuracy"]
