"""artifacts: bundle round trip, overwrite rules, checksums before unpickling, atomic save."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kallos_models import files
from kallos_models.errors import ArtifactError
from kallos_models.modelling import bundle_files
from kallos_models.modelling import bundles as artifacts
from kallos_models.modelling import fitting as training
from kallos_models.modelling.bundles import BundlePaths
from kallos_models.modelling.series import PreparedSeries, prepare_darts_timeseries
from tests.helpers import cpu_trainer_kwargs
from tests.test_training import TINY_GRU, feature_frame, predict_one

CPU = cpu_trainer_kwargs()
MANIFEST = {"model_name": "gru", "asset_id": "BTC", "params": {"hidden_dim": 8}}


@pytest.fixture(scope="module")
def prepared() -> PreparedSeries:
    return prepare_darts_timeseries(feature_frame(120))


@pytest.fixture(scope="module")
def models(prepared: PreparedSeries) -> dict[int, Any]:
    """Two tiny fitted models that predict differently (seeds 1 and 2)."""
    return {
        seed: training.fit_forecaster(
            "gru", TINY_GRU, prepared, max_epochs=1, seed=seed, trainer_kwargs=CPU
        ).model
        for seed in (1, 2)
    }


def save(directory: Path, model: Any, prepared: PreparedSeries, **kwargs: Any) -> BundlePaths:
    return artifacts.save_bundle(
        directory, "gru", "BTC", model, prepared.preprocessor, MANIFEST, **kwargs
    )


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


def fail_if_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling from here on fails loudly, to prove the checksums are checked first."""
    import torch

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unpickled before the checksums were verified")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)


# -- names ---------------------------------------------------------------------------------


def test_bundle_paths_layout(tmp_path: Path) -> None:
    paths = artifacts.bundle_paths(tmp_path, "gru", "BTC")
    assert paths.model == tmp_path / "gru_BTC.pt"
    assert paths.checkpoint == tmp_path / "gru_BTC.pt.ckpt"
    assert paths.scaler == tmp_path / "gru_BTC_scaler.pkl"
    assert paths.manifest == tmp_path / "gru_BTC_manifest.json"
    assert paths.as_dict() == {
        "model": str(tmp_path / "gru_BTC.pt"),
        "checkpoint": str(tmp_path / "gru_BTC.pt.ckpt"),
        "scaler": str(tmp_path / "gru_BTC_scaler.pkl"),
        "manifest": str(tmp_path / "gru_BTC_manifest.json"),
    }


@pytest.mark.parametrize(
    "asset_id",
    ["BTC/USDT", "../../etc/passwd", "..", ".", ".hidden", "a b", "ETH:PERP", "x\\y", "币"],
)
def test_odd_asset_ids_make_safe_names(tmp_path: Path, asset_id: str) -> None:
    paths = artifacts.bundle_paths(tmp_path, "gru", asset_id)
    for path in paths.files():
        assert path.parent == tmp_path
        assert not path.name.startswith(".")
        assert "/" not in path.name and "\\" not in path.name
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in path.name)
    # the replaced form carries a hash of the id: it never collides with a plain id
    stem = files.safe_file_stem(asset_id)
    assert stem.endswith(hashlib.sha256(asset_id.encode()).hexdigest()[:8])
    assert stem != files.safe_file_stem(stem.rsplit("-", 1)[0])


def test_safe_ids_are_kept_and_empty_is_refused() -> None:
    assert files.safe_file_stem("BTC") == "BTC"
    assert files.safe_file_stem("BTC-USD_1.0") == "BTC-USD_1.0"
    assert files.safe_file_stem("BTC/USDT") != files.safe_file_stem("BTC_USDT")
    with pytest.raises(ArtifactError, match="empty"):
        files.safe_file_stem("")


def test_odd_asset_id_round_trip(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    paths = artifacts.save_bundle(
        tmp_path, "gru", "BTC/USDT", models[1], prepared.preprocessor, MANIFEST
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.files())
    loaded = artifacts.load_bundle(paths.model)
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"kallos" * 1000)
    assert artifacts.sha256_file(path) == hashlib.sha256(b"kallos" * 1000).hexdigest()


# -- round trip ----------------------------------------------------------------------------


def test_round_trip_gives_identical_predictions(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    paths = save(tmp_path / "out", models[1], prepared)
    assert all(p.is_file() for p in paths.files())
    assert no_temp_files(paths.model.parent)

    loaded = artifacts.load_bundle(paths.model)
    assert loaded.paths == paths
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))
    assert loaded.preprocessor.describe() == prepared.preprocessor.describe()

    manifest = json.loads(paths.manifest.read_text())
    assert manifest == loaded.manifest
    assert manifest["model_name"] == "gru" and manifest["params"] == {"hidden_dim": 8}
    assert manifest["files"]["model"] == {
        "name": "gru_BTC.pt",
        "sha256": artifacts.sha256_file(paths.model),
    }
    assert manifest["files"]["checkpoint"]["name"] == "gru_BTC.pt.ckpt"
    assert manifest["files"]["scaler"]["sha256"] == artifacts.sha256_file(paths.scaler)
    assert set(manifest["versions"]) == {
        "python",
        "darts",
        "torch",
        "pytorch-lightning",
        "pandas",
        "numpy",
        "scikit-learn",
        "optuna",
    }
    assert manifest["versions"]["darts"].startswith("0.48")
    assert manifest["kallos_version"]
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["bundle_format"] == artifacts.BUNDLE_FORMAT


def test_explicit_scaler_and_manifest_paths(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    paths = save(tmp_path, models[1], prepared)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    scaler = moved / "my_scaler.pkl"
    manifest = moved / "my_manifest.json"
    paths.scaler.rename(scaler)
    paths.manifest.rename(manifest)
    with pytest.raises(ArtifactError, match="manifest .* does not exist"):
        artifacts.load_bundle(paths.model)
    loaded = artifacts.load_bundle(paths.model, scaler, manifest_path=manifest)
    assert loaded.paths.scaler == scaler and loaded.paths.manifest == manifest


def test_manifest_converts_timestamps_and_numpy(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    import pandas as pd

    extra = {"when": pd.Timestamp("2024-06-30"), "rows": np.int64(5), "path": tmp_path}
    paths = artifacts.save_bundle(tmp_path, "gru", "BTC", models[1], prepared.preprocessor, extra)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["when"] == "2024-06-30T00:00:00"
    assert manifest["rows"] == 5
    assert manifest["path"] == str(tmp_path)


# -- overwrite -----------------------------------------------------------------------------


def test_refuses_to_overwrite(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    paths = save(tmp_path, models[1], prepared)
    before = {p: p.read_bytes() for p in paths.files()}
    with pytest.raises(ArtifactError, match=r"gru_BTC\.pt already exists; pass --overwrite"):
        save(tmp_path, models[2], prepared)
    assert {p: p.read_bytes() for p in paths.files()} == before

    # one leftover file is enough to refuse
    for path in paths.files()[:3]:
        path.unlink()
    with pytest.raises(ArtifactError, match="manifest.json already exists"):
        save(tmp_path, models[2], prepared)


def test_overwrite_replaces(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    save(tmp_path, models[1], prepared)
    paths = save(tmp_path, models[2], prepared, overwrite=True)
    assert no_temp_files(tmp_path)
    loaded = artifacts.load_bundle(paths.model)
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[2], prepared))
    assert not np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))


# -- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["model", "checkpoint", "scaler"])
def test_tampered_file_is_refused_before_unpickling(
    tmp_path: Path,
    models: dict[int, Any],
    prepared: PreparedSeries,
    monkeypatch: pytest.MonkeyPatch,
    role: str,
) -> None:
    paths = save(tmp_path, models[1], prepared)
    target: Path = getattr(paths, role)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    fail_if_unpickled(monkeypatch)
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {target}") as info:
        artifacts.load_bundle(paths.model)
    assert "modified after training; retrain or restore it" in str(info.value)


def test_manifest_edit_is_refused(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries, monkeypatch
) -> None:
    paths = save(tmp_path, models[1], prepared)
    manifest = json.loads(paths.manifest.read_text())
    manifest["files"]["scaler"]["sha256"] = "0" * 64
    paths.manifest.write_text(json.dumps(manifest))
    fail_if_unpickled(monkeypatch)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        artifacts.load_bundle(paths.model)
    del manifest["files"]
    paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no checksums"):
        artifacts.load_bundle(paths.model)
    paths.manifest.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifacts.load_bundle(paths.model)


@pytest.mark.parametrize("role", ["model", "checkpoint", "scaler", "manifest"])
def test_missing_file_is_named(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries, role: str
) -> None:
    paths = save(tmp_path, models[1], prepared)
    missing: Path = getattr(paths, role)
    missing.unlink()
    with pytest.raises(ArtifactError, match=f"{missing}.* does not exist"):
        artifacts.load_bundle(paths.model)


def test_scaler_must_be_a_preprocessor(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    paths = save(tmp_path, models[1], prepared)
    paths.scaler.write_bytes(pickle.dumps({"not": "a preprocessor"}))
    manifest = json.loads(paths.manifest.read_text())
    manifest["files"]["scaler"]["sha256"] = artifacts.sha256_file(paths.scaler)
    # a writer who recomputes the checksums and the manifest's digest
    manifest[bundle_files.MANIFEST_DIGEST_KEY] = bundle_files.manifest_digest(manifest)
    paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a FeaturePreprocessor"):
        artifacts.load_bundle(paths.model)


# -- atomic save ---------------------------------------------------------------------------


def crash_on_replace(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    real = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError("disk full (simulated)")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_on_fresh_save_leaves_nothing_loadable(
    tmp_path: Path,
    models: dict[int, Any],
    prepared: PreparedSeries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash_on_replace(monkeypatch, 2)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, models[1], prepared)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    paths = artifacts.bundle_paths(tmp_path, "gru", "BTC")
    assert not paths.manifest.exists()
    with pytest.raises(ArtifactError, match="manifest .* does not exist"):
        artifacts.load_bundle(paths.model)


@pytest.mark.parametrize("call", [2, 5, 8])
def test_crash_while_overwriting_puts_the_previous_bundle_back(
    tmp_path: Path,
    models: dict[int, Any],
    prepared: PreparedSeries,
    monkeypatch: pytest.MonkeyPatch,
    call: int,
) -> None:
    """Publishing is 8 renames: the old manifest, model, checkpoint, scaler aside, then the
    new model, checkpoint, scaler, manifest in. A failure at any of them restores the old."""
    paths = save(tmp_path, models[1], prepared)
    crash_on_replace(monkeypatch, call)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, models[2], prepared, overwrite=True)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    loaded = artifacts.load_bundle(paths.model)
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))


def test_crash_before_any_rename_keeps_previous_bundle(
    tmp_path: Path,
    models: dict[int, Any],
    prepared: PreparedSeries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = save(tmp_path, models[1], prepared)
    crash_on_replace(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, models[2], prepared, overwrite=True)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    loaded = artifacts.load_bundle(paths.model)
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))


def test_failing_model_save_removes_temp_files(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    model = copy.copy(models[1])

    def broken_save(path: str, clean: bool = False) -> None:
        Path(path).write_bytes(b"partial")
        Path(path + ".ckpt").write_bytes(b"partial")
        raise RuntimeError("interrupted")

    model.save = broken_save
    with pytest.raises(RuntimeError, match="interrupted"):
        save(tmp_path, model, prepared)
    assert list(tmp_path.iterdir()) == []


def test_refuses_unfitted_model_and_preprocessor(
    tmp_path: Path, models: dict[int, Any], prepared: PreparedSeries
) -> None:
    from kallos_models.modelling.preprocessing import FeaturePreprocessor
    from kallos_models.modelling.zoo import create_model

    untrained = create_model("gru", TINY_GRU, trainer_kwargs=CPU)
    with pytest.raises(ArtifactError, match="no trained weights"):
        save(tmp_path, untrained, prepared)
    assert list(tmp_path.iterdir()) == []
    unfitted = FeaturePreprocessor({"volume_features": ["volume"]})
    with pytest.raises(ArtifactError, match="not a fitted FeaturePreprocessor"):
        artifacts.save_bundle(tmp_path, "gru", "BTC", models[1], unfitted, MANIFEST)


# -- device ----------------------------------------------------------------------------------


def test_gpu_trainer_settings_fall_back_to_cpu(
    tmp_path: Path,
    models: dict[int, Any],
    prepared: PreparedSeries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model saved with GPU trainer settings loads and predicts on a CUDA-less machine."""
    model = models[1]
    original = dict(model.trainer_params)
    model.trainer_params.update(accelerator="gpu", devices=[0], precision="16-mixed")
    try:
        paths = save(tmp_path, model, prepared)
    finally:
        model.trainer_params.clear()
        model.trainer_params.update(original)
    loaded_kwargs: dict[str, Any] = {}
    from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel

    real_load = TorchForecastingModel.load

    def spy(path: str, *args: Any, **kwargs: Any) -> Any:
        loaded_kwargs.update(kwargs)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(TorchForecastingModel, "load", staticmethod(spy))
    monkeypatch.setattr(artifacts, "cuda_available", lambda: False)
    loaded = artifacts.load_bundle(paths.model)
    assert loaded_kwargs == {"map_location": "cpu"}
    assert loaded.model.trainer_params["accelerator"] == "cpu"
    assert "devices" not in loaded.model.trainer_params
    assert loaded.model.trainer_params["precision"] == "32-true"
    assert np.array_equal(predict_one(loaded.model, prepared), predict_one(models[1], prepared))
