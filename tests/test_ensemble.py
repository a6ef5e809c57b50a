"""Ensembles: `train --model-name ensemble --members ...` trains one bundle of several zoo
models combined by Darts (learned weights or the mean); evaluate, predict, compare and the
registry use it like any bundle; its member files are checksummed; the fit sees training rows
only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kallos_models.errors import ConfigError, ModelError
from kallos_models.modelling import ensemble
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    write_binance_csv,
)

BARS = make_ohlcv(560, seed=5)
TRAIN_END = BARS.index[419]
TEST_START, TEST_END = BARS.index[421], BARS.index[-1]
GRU = {**tiny_params("gru"), "n_epochs": 1}
LIGHTGBM = {**tiny_params("lightgbm"), "n_estimators": 20}
LINEAR = tiny_params("linear")  # the same lookback as lightgbm's: the same bars loaded


def _ingest(url: str, tmp_path: Path, frame: pd.DataFrame = BARS) -> None:
    csv = write_binance_csv(frame, tmp_path / f"bars_{len(frame)}.csv")
    run_cli_json("ingest", "--asset-id", "BTC", "--timeframe", "1d", "--file", str(csv),
                 "--db-url", url)  # fmt: skip


def _params_file(tmp_path: Path, name: str, params: dict[str, Any]) -> str:
    path = tmp_path / f"{name}_params.json"
    path.write_text(json.dumps(params))
    return str(path)


def _train_args(url: str, tmp_path: Path, members: str, *flags: str, out: str = "models"):
    member_params = []
    for name, params in (("gru", GRU), ("lightgbm", LIGHTGBM), ("linear", LINEAR)):
        if name in members.split(","):
            member_params += ["--member-params", f"{name}={_params_file(tmp_path, name, params)}"]
    return (
        "train", "--model-name", "ensemble", "--members", members, *member_params,
        "--asset-id", "BTC", "--end-date", str(TRAIN_END.date()), "--db-url", url,
        "--output-path", str(tmp_path / out), "--seed", "0", "--accelerator", "cpu", *flags,
    )  # fmt: skip


def _window(*flags: str) -> tuple[str, ...]:
    return ("--test-start-date", str(TEST_START.date()), "--test-end-date", str(TEST_END.date()),
            *flags)  # fmt: skip


# -- the pieces --------------------------------------------------------------------------------


def test_members_are_checked_before_any_data_is_read() -> None:
    assert ensemble.parse_members(" gru, lightgbm ,linear") == ("gru", "lightgbm", "linear")
    for text, error, message in (
        ("gru", ConfigError, "at least two members"),
        ("gru,gru", ConfigError, "gru more than once"),
        ("gru,ensemble", ConfigError, "cannot be a member"),
        ("gru,prophet", ModelError, "unknown model 'prophet'"),
    ):
        with pytest.raises(error, match=message):
            ensemble.parse_members(text)
    with pytest.raises(ConfigError, match="needs --members"):
        ensemble.EnsembleSpec.from_flags(None, None, None)
    with pytest.raises(ConfigError, match="'lstm', which is not a member"):
        ensemble.EnsembleSpec.from_flags("gru,linear", None, None, ["lstm=x.json"])
    with pytest.raises(ConfigError, match="takes NAME=FILE"):
        ensemble.EnsembleSpec.from_flags("gru,linear", None, None, ["gru"])
    with pytest.raises(ConfigError, match="the mean has no weights"):
        ensemble.EnsembleSpec.from_flags("gru,linear", "mean", 100)
    with pytest.raises(ConfigError, match="whole number of bars >= 10"):
        ensemble.EnsembleSpec.from_flags("gru,linear", "regression", 3)
    # `kallos-run models` names it after the zoo (it is not an entry of the zoo's JSON)
    listing = run_cli("models")
    assert listing.exit_code == 0 and listing.stdout.splitlines()[-1].startswith("ensemble ")
    spec = ensemble.EnsembleSpec.from_flags("gru,linear", "mean", None, ["gru=g.json"])
    assert spec.darts_class == "darts.models.NaiveEnsembleModel"
    assert spec.member_params == {"gru": "g.json"}


def test_train_refuses_flags_that_do_not_fit(sqlite_url: str, tmp_path: Path) -> None:
    params = _params_file(tmp_path, "linear", {})
    base = ("--asset-id", "BTC", "--end-date", "2024-01-01", "--db-url", sqlite_url)
    for args, needles in (
        (("--model-name", "ensemble", *base), ("needs --members",)),
        (("--model-name", "ensemble", "--members", "gru,linear", "--params-file", params, *base),
         ("--member-params NAME=FILE, not --params-file",)),
        (("--model-name", "ensemble", "--members", "gru,linear", "--quantiles",
          "0.1,0.5,0.9", *base), ("does not learn quantiles", "--conformal")),
        (("--model-name", "linear", "--members", "gru,linear", "--params-file", params, *base),
         ("are for --model-name ensemble",)),
        (("--model-name", "linear", *base), ("train needs --params-file",)),
    ):  # fmt: skip
        assert_error(run_cli("train", *args), *needles)
    assert_error(
        run_cli("tune", "--model-name", "ensemble", *base, "--n-trials", "1"),
        "trained, not tuned",
    )
    assert not (tmp_path / "trained_models").exists()


# -- a regression ensemble, end to end -----------------------------------------------------


def test_an_ensemble_round_trips_train_evaluate_predict_compare(
    db_url: str, tmp_path: Path
) -> None:
    _ingest(db_url, tmp_path)
    trained = run_cli_json(*_train_args(db_url, tmp_path, "gru,lightgbm,linear"))
    assert trained["model_name"] == "ensemble"
    summary = trained["ensemble"]
    assert summary["method"] == "regression" and summary["members"] == ["gru", "lightgbm", "linear"]
    assert len(summary["weights"]) == 3 and all(np.isfinite(summary["weights"]))
    # the GRU member's Darts model file and checkpoint are part of the bundle, checksummed
    members = [Path(p) for p in trained["paths"]["members"]]
    assert [p.name for p in members] == [
        "ensemble_BTC.pt.BlockRNNModel_0.pt",
        "ensemble_BTC.pt.BlockRNNModel_0.pt.ckpt",
    ]
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text())
    assert manifest["model_kind"] == "ensemble"
    assert sorted(manifest["files"]) == ["member_0", "member_1", "model", "scaler"]
    record = manifest["ensemble"]
    assert [m["model_name"] for m in record["members"]] == ["gru", "lightgbm", "linear"]
    assert record["members"][0]["params"]["hidden_dim"] == GRU["hidden_dim"]
    assert record["members"][1]["params"]["n_estimators"] == 20
    assert manifest["input_chunk_length"] == max(m["input_chunk_length"] for m in record["members"])

    # a second train without --overwrite is refused, the bundle untouched
    assert_error(run_cli(*_train_args(db_url, tmp_path, "gru,lightgbm,linear")), "--overwrite")

    metrics = run_cli_json(
        "evaluate", "--model-name", "ensemble", "--asset-id", "BTC", "--model-path",
        trained["paths"]["model"], "--db-url", db_url, "--output-path",
        str(tmp_path / "eval"), *_window(),
    )  # fmt: skip
    assert metrics["model_name"] == "ensemble" and metrics["n"] == len(BARS) - 421
    assert np.isfinite(metrics["rmse_ratio"])

    forecast = run_cli_json(
        "predict", "--asset-id", "BTC", "--model-path", trained["paths"]["model"],
        "--db-url", db_url, "--as-of", str(BARS.index[-1] + pd.Timedelta(hours=25)),
    )  # fmt: skip
    assert forecast["model"]["name"] == "ensemble" and forecast["stored"] is not None
    assert np.isfinite(forecast["steps"][0]["forecast"])

    linear = run_cli_json(
        "train", "--model-name", "linear", "--asset-id", "BTC", "--end-date",
        str(TRAIN_END.date()), "--params-file", _params_file(tmp_path, "linear", {}),
        "--db-url", db_url, "--output-path", str(tmp_path / "models"),
    )  # fmt: skip
    board = run_cli_json(
        "compare", "--asset-id", "BTC", "--model-path", trained["paths"]["model"],
        "--model-path", linear["paths"]["model"], "--db-url", db_url,
        "--output-path", str(tmp_path / "compare"), *_window(),
    )  # fmt: skip
    rows = board["leaderboard"]
    assert sorted(r["model"] for r in rows) == ["ensemble", "linear"]
    ensemble_row = next(r for r in rows if r["model"] == "ensemble")
    assert ensemble_row["rmse_ratio"] == pytest.approx(metrics["rmse_ratio"])


def test_a_tampered_or_missing_member_file_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path)
    trained = run_cli_json(*_train_args(sqlite_url, tmp_path, "gru,linear"))
    checkpoint = Path(trained["paths"]["members"][1])
    evaluate = (
        "evaluate", "--model-name", "ensemble", "--asset-id", "BTC", "--model-path",
        trained["paths"]["model"], "--db-url", sqlite_url, "--output-path",
        str(tmp_path / "eval"), *_window(),
    )  # fmt: skip
    original = checkpoint.read_bytes()
    checkpoint.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    assert_error(run_cli(*evaluate), "checksum mismatch", checkpoint.name)
    checkpoint.unlink()
    assert_error(run_cli(*evaluate), "does not exist", checkpoint.name)
    assert not (tmp_path / "eval").exists()


def test_new_members_replace_the_old_member_files(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path)
    first = run_cli_json(*_train_args(sqlite_url, tmp_path, "gru,linear"))
    old = [Path(p) for p in first["paths"]["members"]]
    assert all(p.is_file() for p in old)
    second = run_cli_json(*_train_args(sqlite_url, tmp_path, "linear,lightgbm", "--overwrite"))
    assert "members" not in second["paths"]  # no deep member: no member files
    assert not any(p.exists() for p in old)
    forecast = run_cli_json(
        "predict", "--asset-id", "BTC", "--model-path", second["paths"]["model"], "--db-url",
        sqlite_url, "--as-of", str(TEST_START + pd.Timedelta(hours=1)), "--no-store",
    )  # fmt: skip
    assert forecast["model"]["name"] == "ensemble"


def test_the_fit_sees_training_rows_only(sqlite_url: str, tmp_path: Path) -> None:
    """The same ensemble trained before and after the hold-out bars are loaded is the same
    model: its weights and its forecasts of the hold-out agree exactly."""
    _ingest(sqlite_url, tmp_path, BARS.loc[:TRAIN_END])
    before = run_cli_json(*_train_args(sqlite_url, tmp_path, "lightgbm,linear", out="before"))
    _ingest(sqlite_url, tmp_path)
    after = run_cli_json(*_train_args(sqlite_url, tmp_path, "lightgbm,linear", out="after"))
    assert before["ensemble"]["weights"] == after["ensemble"]["weights"]
    assert before["train_end"] == after["train_end"] == TRAIN_END.isoformat()
    results = []
    for trained in (before, after):
        out = tmp_path / f"eval_{Path(trained['paths']['model']).parent.name}"
        run_cli_json(
            "evaluate", "--model-name", "ensemble", "--asset-id", "BTC", "--model-path",
            trained["paths"]["model"], "--db-url", sqlite_url, "--output-path", str(out),
            *_window(),
        )  # fmt: skip
        results.append(json.loads(next(out.glob("*_metrics.json")).read_text())["rmse"])
    assert results[0] == results[1]


# -- the mean, with conformal intervals --------------------------------------------------------


def test_a_mean_ensemble_is_the_mean_of_its_members(sqlite_url: str, tmp_path: Path) -> None:
    """NaiveEnsembleModel averages the members' forecasts of the (scaled) log return: the
    ensemble's price forecast is the geometric mean of those of its members trained alone,
    with the same parameters and seed."""
    from kallos_models.config import Settings
    from kallos_models.stages.evaluate import evaluate_model

    _ingest(sqlite_url, tmp_path)
    mean = run_cli_json(
        *_train_args(sqlite_url, tmp_path, "lightgbm,linear", "--ensemble-method", "mean")
    )
    assert mean["ensemble"]["method"] == "mean" and mean["ensemble"]["weights"] is None
    paths = {"ensemble": mean["paths"]["model"]}
    for name, params in (("lightgbm", LIGHTGBM), ("linear", LINEAR)):
        paths[name] = run_cli_json(
            "train", "--model-name", name, "--asset-id", "BTC", "--end-date",
            str(TRAIN_END.date()), "--params-file", _params_file(tmp_path, name, params),
            "--db-url", sqlite_url, "--output-path", str(tmp_path / "alone"), "--seed", "0",
        )["paths"]["model"]  # fmt: skip
    forecasts = {}
    for name, path in paths.items():
        settings = Settings(
            db_url=sqlite_url, asset_id="BTC", model_name=name,
            test_start_date=str(TEST_START.date()), test_end_date=str(TEST_END.date()),
            output_path=str(tmp_path / f"eval_{name}"),
        )  # fmt: skip
        forecasts[name] = evaluate_model(settings, model_path=path).forecasts["forecast"]
    # in log returns: the ensemble's is the members' mean, to within float32 rounding (Darts
    # forecasts an ensemble step by step, a lone regression model in one vectorised pass)
    logs = {name: np.log(f.to_numpy()) for name, f in forecasts.items()}
    error = np.max(np.abs(logs["ensemble"] - (logs["lightgbm"] + logs["linear"]) / 2))
    spread = np.max(np.abs(logs["lightgbm"] - logs["linear"]))
    assert error < 1e-4 and error < 1e-3 * spread, (error, spread)


def test_a_conformal_ensemble_reports_calibrated_intervals(sqlite_url: str, tmp_path: Path) -> None:
    _ingest(sqlite_url, tmp_path)
    trained = run_cli_json(
        *_train_args(sqlite_url, tmp_path, "lightgbm,linear", "--ensemble-method", "mean",
                     "--conformal", "--calibration-bars", "100")
    )  # fmt: skip
    assert trained["intervals"]["conformal_model"] == "ConformalNaiveModel"
    metrics = run_cli_json(
        "evaluate", "--model-name", "ensemble", "--asset-id", "BTC", "--model-path",
        trained["paths"]["model"], "--db-url", sqlite_url, "--output-path",
        str(tmp_path / "eval"), *_window(),
    )  # fmt: skip
    n = metrics["intervals"]["n"]
    for level in metrics["intervals"]["levels"]:
        # within 3 binomial standard deviations of nominal on i.i.d. returns
        assert abs(level["coverage"] - level["level"]) <= 3 * np.sqrt(
            level["level"] * (1 - level["level"]) / n
        ), level
    assert_error(
        run_cli(
            "evaluate",
            "--model-name",
            "ensemble",
            "--asset-id",
            "BTC",
            "--model-path",
            trained["paths"]["model"],
            "--db-url",
            sqlite_url,
            "--output-path",
            str(tmp_path / "retrain"),
            *_window("--retrain-every", "20"),
        ),  # fmt: skip
        "refits",
    )
