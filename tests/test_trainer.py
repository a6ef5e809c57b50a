"""trainer: params files, train_model end to end on a database, failure modes, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kallos_models.config import Settings, resolve_settings
from kallos_models.data import datasets, db, ingest
from kallos_models.errors import ArtifactError, ConfigError, DataError, ModelError
from kallos_models.modelling import bundles as artifacts
from kallos_models.modelling import fitting as training
from kallos_models.modelling.zoo import get_spec, validate_params
from kallos_models.stages import train as trainer
from tests.helpers import assert_error, make_ohlcv, run_cli, tiny_params, write_binance_csv

N_BARS = 150
END_DATE = "2021-05-01"  # 121 bars from 2021-01-01, about 72 after the indicator warm-up
PARAMS = tiny_params("gru", input_chunk_length=10)
MANIFEST_KEYS = {
    "model_name",
    "darts_class",
    "asset_id",
    "timeframe",
    "params",
    "input_chunk_length",
    "output_chunk_length",
    "feature_groups",
    "feature_columns",
    "target_col",
    "target_transform",
    "group_scalers",
    "train_start",
    "train_end",
    "train_rows",
    "seed",
    "accelerator",
    "training_seconds",
    "files",
    "kallos_version",
    "created_at",
    "versions",
}


def ingest_gbm(url: str, tmp_path: Path, n: int = N_BARS, asset_id: str = "BTC") -> None:
    """Generated GBM daily bars, ingested the way `kallos-run ingest` does it."""
    path = write_binance_csv(make_ohlcv(n), tmp_path / f"{asset_id}.csv")
    ingest.ingest_file(db.create_db_engine(url), asset_id, "1d", path)


def settings_for(url: str, out: Path, **changes: Any) -> Settings:
    values = {
        "db_url": url,
        "asset_id": "BTC",
        "model_name": "gru",
        "train_end_date": END_DATE,
        "output_path": str(out),
        **changes,
    }
    return resolve_settings(values)


def predict(bundle: artifacts.LoadedBundle) -> np.ndarray:
    """One-step forecast from the model's own training series (stored in the bundle)."""
    return bundle.model.predict(1, verbose=False).values()


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database with BTC bars, shared by the tests that only read it."""
    directory = tmp_path_factory.mktemp("trainer_db")
    url = f"sqlite:///{(directory / 'kallos.db').as_posix()}"
    ingest_gbm(url, directory)
    return url


# -- read_params_file ----------------------------------------------------------------------


def test_read_plain_params(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"hidden_dim": 16, "learning_rate": 0.01, "n_epochs": 12}))
    assert trainer.read_params_file(path) == ({"hidden_dim": 16, "learning_rate": 0.01}, 12)
    path.write_text(json.dumps({"hidden_dim": 16}))
    assert trainer.read_params_file(str(path)) == ({"hidden_dim": 16}, None)


def test_read_tuner_output(tmp_path: Path) -> None:
    path = tmp_path / "gru_BTC_best_params.json"
    path.write_text(
        json.dumps(
            {
                "params": {"hidden_dim": 32, "input_chunk_length": 40},
                "n_epochs": 17,
                "value": 0.123,
                "metric": "rmse",
                "study_name": "gru_BTC",
            }
        )
    )
    assert trainer.read_params_file(path) == ({"hidden_dim": 32, "input_chunk_length": 40}, 17)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"params": [1]}', '"params" must be a JSON object'),
        ('{"params": {}, "n_epochs": 0}', "n_epochs must be an integer >= 1"),
        ('{"n_epochs": 2.5}', "n_epochs must be an integer >= 1"),
    ],
)
def test_read_params_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "params.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        trainer.read_params_file(path)
    assert str(path) in str(info.value)


# -- train_model ---------------------------------------------------------------------------


def test_train_end_to_end(sqlite_url: str, tmp_path: Path) -> None:
    ingest_gbm(sqlite_url, tmp_path)
    out = tmp_path / "models"
    # learning_rate and output_chunk_length left out: the registry defaults fill them in
    given = tiny_params("gru", input_chunk_length=10, learning_rate=None, output_chunk_length=None)
    result = trainer.train_model(settings_for(sqlite_url, out), given)

    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "gru_BTC.pt",
        "gru_BTC.pt.ckpt",
        "gru_BTC_manifest.json",
        "gru_BTC_scaler.pkl",
    ]
    manifest = json.loads(result.paths.manifest.read_text())
    assert manifest == result.manifest
    assert MANIFEST_KEYS <= set(manifest)

    frame = datasets.load_features_from_db("BTC", END_DATE, sqlite_url)
    assert manifest["train_rows"] == len(frame)
    assert manifest["train_start"] == frame.index[0].isoformat()
    assert manifest["train_end"] == "2021-05-01T00:00:00"
    # the full hyperparameters: registry defaults with the given ones over them
    assert manifest["params"] == {**get_spec("gru").defaults, **given}
    assert manifest["params"]["learning_rate"] == 1e-3
    # ... which is itself a valid params file
    reuse = tmp_path / "reuse.json"
    reuse.write_text(json.dumps(manifest["params"]))
    again, n_epochs = trainer.read_params_file(reuse)
    assert n_epochs == 1
    validate_params("gru", {**again, "n_epochs": n_epochs})
    assert manifest["input_chunk_length"] == 10
    assert manifest["output_chunk_length"] == 1
    assert manifest["darts_class"] == "darts.models.BlockRNNModel"
    assert manifest["accelerator"] == "cpu"
    assert manifest["seed"] == 42
    assert manifest["target_transform"] == "log_return"
    # a plain OHLCV-derived Binance file has the taker column, so both volume columns are used
    assert manifest["feature_groups"]["volume_features"] == [
        "volume",
        "taker_buy_base_asset_volume",
    ]
    assert manifest["feature_columns"] == [
        c for cols in manifest["feature_groups"].values() for c in cols
    ]
    assert manifest["group_scalers"] == {
        "volume_features": "log1p_robust",
        "bounded_features": "minmax",
        "unbounded_features": "robust",
    }
    assert manifest["training_seconds"] > 0

    summary = result.as_dict()
    assert summary["model_name"] == "gru" and summary["asset_id"] == "BTC"
    assert summary["train_end"] == "2021-05-01T00:00:00"
    assert summary["paths"] == result.paths.as_dict()
    json.dumps(summary)

    bundle = artifacts.load_bundle(result.paths.model)
    assert predict(bundle).shape == (1, 1)
    assert bundle.preprocessor.train_end.isoformat() == manifest["train_end"]


def test_train_on_database_backends(db_url: str, tmp_path: Path) -> None:
    ingest_gbm(db_url, tmp_path)
    result = trainer.train_model(settings_for(db_url, tmp_path / "m"), PARAMS)
    assert result.manifest["train_end"] == "2021-05-01T00:00:00"
    assert artifacts.load_bundle(result.paths.model).manifest["asset_id"] == "BTC"


def test_params_file_and_default_output(shared_db: str, tmp_path: Path) -> None:
    path = tmp_path / "gru_BTC_best_params.json"
    params = {k: v for k, v in PARAMS.items() if k != "n_epochs"}
    path.write_text(json.dumps({"params": params, "n_epochs": 3, "value": 1.0}))
    settings = resolve_settings(
        {
            "db_url": shared_db,
            "asset_id": "BTC",
            "train_end_date": END_DATE,
            "max_epochs": 2,
        }
    )
    result = trainer.train_model(settings, path)
    # max_epochs caps the tuned n_epochs; output goes to ./trained_models
    assert result.manifest["params"]["n_epochs"] == 2
    assert result.manifest["epochs_run"] == 2
    assert result.paths.model.resolve() == (tmp_path / "trained_models" / "gru_BTC.pt").resolve()


def test_progress_bars_of_train_go_to_stderr(shared_db: str, tmp_path: Path) -> None:
    """With -v Lightning draws its progress bars, and stdout still holds only the JSON."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS))
    result = run_cli(
        "-v", "train", "--asset-id", "BTC", "--end-date", END_DATE, "--params-file",
        str(params), "--db-url", shared_db, "--output-path", str(tmp_path / "m"),
        "--accelerator", "cpu", quiet=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_name"] == "gru"
    assert "Epoch 0" in result.stderr


def test_existing_bundle_refused_before_training(
    shared_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    trainer.train_model(settings_for(shared_db, out), PARAMS)
    before = (out / "gru_BTC_manifest.json").read_bytes()

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("data was loaded or a model trained for a refused bundle")

    with monkeypatch.context() as patch:
        patch.setattr(datasets, "load_features_from_db", must_not_run)
        patch.setattr(training, "fit_forecaster", must_not_run)
        with pytest.raises(ArtifactError, match="already exists; pass --overwrite"):
            trainer.train_model(settings_for(shared_db, out), PARAMS)
    assert (out / "gru_BTC_manifest.json").read_bytes() == before

    result = trainer.train_model(settings_for(shared_db, out, seed=7), PARAMS, overwrite=True)
    assert result.manifest["seed"] == 7
    assert artifacts.load_bundle(result.paths.model).manifest["seed"] == 7


def test_unknown_parameter_before_any_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("data was read before the parameters were checked")

    monkeypatch.setattr(datasets, "load_features_from_db", must_not_run)
    missing_db = f"sqlite:///{(tmp_path / 'nowhere' / 'none.db').as_posix()}"
    with pytest.raises(ModelError, match="'hidden_size' is not accepted by model 'gru'"):
        trainer.train_model(settings_for(missing_db, tmp_path / "m"), {**PARAMS, "hidden_size": 8})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"eight"', "'eight'"), ("8.5", "8.5"), ("-8", "-8"), ("true", "True"), ("[8, 8]", "[8, 8]")],
)
def test_a_params_file_with_a_wrong_type_is_one_error_line_before_any_data(
    tmp_path: Path, value: str, shown: str
) -> None:
    """A value Darts would choke on (or silently coerce: true as 1) never reaches it."""
    path = tmp_path / "params.json"
    path.write_text('{"hidden_dim": ' + value + ', "input_chunk_length": 10, "n_epochs": 1}')
    missing_db = f"sqlite:///{(tmp_path / 'nowhere' / 'none.db').as_posix()}"
    result = run_cli(
        "train", "--asset-id", "BTC", "--end-date", END_DATE, "--db-url", missing_db,
        "--params-file", str(path), "--output-path", "models",
    )  # fmt: skip
    assert_error(result, "hidden_dim must be an integer >= 1", f"got {shown}")
    assert not (tmp_path / "models").exists() and not (tmp_path / "nowhere").exists()


def test_a_gpu_on_a_machine_without_one_is_one_error_line_before_any_data(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    missing_db = f"sqlite:///{(tmp_path / 'nowhere' / 'none.db').as_posix()}"
    result = run_cli(
        "train", "--asset-id", "BTC", "--end-date", END_DATE, "--db-url", missing_db,
        "--params-file", "params.json", "--output-path", "models", "--accelerator", "gpu",
    )  # fmt: skip
    assert_error(result, "--accelerator gpu, but torch sees no CUDA device", "--accelerator auto")
    assert not (tmp_path / "models").exists() and not (tmp_path / "nowhere").exists()


def test_too_few_rows(db_url: str, tmp_path: Path) -> None:
    ingest_gbm(db_url, tmp_path)
    frame = datasets.load_features_from_db("BTC", END_DATE, db_url)
    params = {**PARAMS, "input_chunk_length": 100}
    with pytest.raises(
        DataError,
        match=rf"has {len(frame)} usable rows up to {END_DATE}.*needs at least 102 "
        r"\(input_chunk_length 100 \+ output_chunk_length 1 \+ 1\)",
    ):
        trainer.train_model(settings_for(db_url, tmp_path / "m"), params)
    assert not (tmp_path / "m").exists()


def test_missing_end_date_and_asset(shared_db: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing --end-date"):
        trainer.train_model(settings_for(shared_db, tmp_path, train_end_date=""), PARAMS)
    settings = Settings(db_url=shared_db, train_end_date=END_DATE)
    with pytest.raises(ConfigError, match="missing --asset-id"):
        trainer.train_model(settings, PARAMS)


def test_unknown_asset_names_those_present(db_url: str, tmp_path: Path) -> None:
    ingest_gbm(db_url, tmp_path)
    with pytest.raises(DataError, match=r"'ETH' has no 1d rows.*BTC \(1d\)"):
        trainer.train_model(settings_for(db_url, tmp_path, asset_id="ETH"), PARAMS)


def test_same_seed_same_bundle_predictions(shared_db: str, tmp_path: Path) -> None:
    first = trainer.train_model(settings_for(shared_db, tmp_path / "a", seed=3), PARAMS)
    second = trainer.train_model(settings_for(shared_db, tmp_path / "b", seed=3), PARAMS)
    one = predict(artifacts.load_bundle(first.paths.model))
    two = predict(artifacts.load_bundle(second.paths.model))
    assert np.array_equal(one, two)
    other = trainer.train_model(settings_for(shared_db, tmp_path / "c", seed=4), PARAMS)
    assert not np.array_equal(one, predict(artifacts.load_bundle(other.paths.model)))


@pytest.mark.gpu
def test_gpu_training_loads_on_cpu(
    shared_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = trainer.train_model(
        settings_for(shared_db, tmp_path / "gpu", accelerator="gpu", devices="1"), PARAMS
    )
    assert result.manifest["accelerator"] == "cuda"
    on_gpu = predict(artifacts.load_bundle(result.paths.model))

    # as on a CPU-only machine: weights mapped to the CPU, trainer forced to the CPU
    monkeypatch.setattr(artifacts, "cuda_available", lambda: False)
    bundle = artifacts.load_bundle(result.paths.model)
    assert bundle.model.trainer_params["accelerator"] == "cpu"
    assert all(p.device.type == "cpu" for p in bundle.model.model.parameters())
    on_cpu = predict(bundle)
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["file", "below a file"])
def test_an_output_path_that_is_a_file_is_refused_before_any_data(
    tmp_path: Path, target: str
) -> None:
    (tmp_path / "taken").write_text("not a folder")
    out = "taken" if target == "file" else "taken/models"
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    missing_db = f"sqlite:///{(tmp_path / 'nowhere' / 'none.db').as_posix()}"
    result = run_cli(
        "train", "--asset-id", "BTC", "--end-date", END_DATE, "--db-url", missing_db,
        "--params-file", "params.json", "--output-path", out,
    )  # fmt: skip
    assert_error(result, f"--output-path {out}", "pass a folder")
    assert (tmp_path / "taken").read_text() == "not a folder"
    assert not (tmp_path / "nowhere").exists()
