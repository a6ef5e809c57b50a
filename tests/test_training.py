"""training: trainer kwargs, fit_forecaster with and without validation, seeding, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kallos_models.data.features import compute_features
from kallos_models.errors import ConfigError, DataError, ModelError
from kallos_models.modelling import bundles as artifacts
from kallos_models.modelling import fitting as training
from kallos_models.modelling.series import PreparedSeries, prepare_darts_timeseries
from tests.helpers import cpu_trainer_kwargs, make_ohlcv, tiny_params

# no n_epochs: each test's max_epochs decides how long it trains
TINY_GRU = tiny_params("gru", input_chunk_length=10, n_epochs=None)
CPU = cpu_trainer_kwargs()


def feature_frame(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """GBM bars + TA-Lib features with the warm-up dropped, like load_features_from_db."""
    bars = make_ohlcv(n, seed=seed)
    frame = bars.join(compute_features(bars))
    first_ready = int(np.argmin(frame["warmup"].to_numpy()))
    frame = frame.iloc[first_ready:].drop(columns=["warmup"])
    frame["filled"] = False
    frame.index = pd.DatetimeIndex(frame.index, freq="1D", name="open_time")
    return frame


def predict_one(model, prepared: PreparedSeries) -> np.ndarray:
    return model.predict(
        1, series=prepared.train_target, past_covariates=prepared.covariates, verbose=False
    ).values()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return feature_frame()


@pytest.fixture(scope="module")
def with_val(frame: pd.DataFrame) -> PreparedSeries:
    return prepare_darts_timeseries(frame.iloc[:-40], frame.iloc[-40:])


@pytest.fixture(scope="module")
def train_only(frame: pd.DataFrame) -> PreparedSeries:
    return prepare_darts_timeseries(frame)


# -- build_trainer_kwargs ------------------------------------------------------------------


def test_trainer_kwargs_defaults_are_quiet_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "cuda_available", lambda: False)
    kwargs = training.build_trainer_kwargs()
    assert kwargs["accelerator"] == "auto"
    assert kwargs["devices"] == "auto"
    assert kwargs["enable_progress_bar"] is False
    assert kwargs["enable_model_summary"] is False
    assert kwargs["logger"] is False
    assert kwargs["callbacks"] == []
    assert "precision" not in kwargs
    assert kwargs["deterministic"] is True  # auto on a machine without CUDA = CPU


def test_trainer_kwargs_gpu_progress_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "cuda_available", lambda: True)
    marker = object()
    kwargs = training.build_trainer_kwargs(
        devices="2", precision="16-mixed", show_progress=True, callbacks=[marker]
    )
    assert kwargs["devices"] == 2
    assert kwargs["precision"] == "16-mixed"
    assert kwargs["enable_progress_bar"] is True
    assert kwargs["enable_model_summary"] is True
    assert kwargs["callbacks"] == [marker]
    assert "deterministic" not in kwargs  # auto on a CUDA machine trains on the GPU
    assert training.build_trainer_kwargs(accelerator="cpu")["deterministic"] is True


def test_resolve_n_epochs() -> None:
    assert training.resolve_n_epochs({"n_epochs": 7}, 5) == 5
    assert training.resolve_n_epochs({"n_epochs": 3}, 5) == 3
    assert training.resolve_n_epochs({"n_epochs": 7}, None) == 7
    assert training.resolve_n_epochs({}, 4) == 4
    assert training.resolve_n_epochs({}, None, "gru") == 100


def test_importing_modules_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import kallos_models.modelling.fitting, kallos_models.modelling.bundles\n"
        "import kallos_models.stages.train, kallos_models.pipeline\n"
        "bad = [m for m in ('torch', 'darts', 'pytorch_lightning') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- fit_forecaster ------------------------------------------------------------------------


def test_early_stopping_reports_best_epoch(with_val: PreparedSeries) -> None:
    params = {**TINY_GRU, "learning_rate": 0.05}
    result = training.fit_forecaster(
        "gru", params, with_val, max_epochs=30, trainer_kwargs=CPU, early_stopping_patience=1
    )
    assert 1 <= result.best_epoch <= result.epochs_run
    assert result.epochs_run < 30  # stopped early
    # patience 1: training stops at the first epoch that does not improve on the best
    assert result.epochs_run == result.best_epoch + 1
    assert len(result.val_losses) == result.epochs_run
    assert result.val_loss == min(result.val_losses)
    assert result.val_losses[result.best_epoch - 1] == result.val_loss
    assert result.seconds > 0
    # training never saw a validation row
    assert result.model.training_series.end_time() == with_val.train_target.end_time()
    assert result.model.training_series.end_time() < with_val.val_target.start_time()


def test_fit_without_validation(train_only: PreparedSeries) -> None:
    result = training.fit_forecaster("gru", TINY_GRU, train_only, max_epochs=2, trainer_kwargs=CPU)
    assert result.best_epoch is None
    assert result.val_loss is None
    assert result.val_losses == ()
    assert result.epochs_run == 2
    assert predict_one(result.model, train_only).shape == (1, 1)


def test_params_n_epochs_capped_by_max_epochs(train_only: PreparedSeries) -> None:
    params = {**TINY_GRU, "n_epochs": 5}
    result = training.fit_forecaster("gru", params, train_only, max_epochs=1, trainer_kwargs=CPU)
    assert result.epochs_run == 1
    assert result.model.n_epochs == 1


def test_same_seed_same_predictions(train_only: PreparedSeries) -> None:
    def run(seed: int) -> np.ndarray:
        fit = training.fit_forecaster(
            "gru", TINY_GRU, train_only, max_epochs=2, seed=seed, trainer_kwargs=CPU
        )
        return predict_one(fit.model, train_only)

    first, second, other = run(7), run(7), run(8)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_extra_callbacks_run_and_model_still_saves(train_only: PreparedSeries, tmp_path) -> None:
    import pytorch_lightning as pl

    class Counter(pl.Callback):
        def __init__(self) -> None:
            self.epochs = 0

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs += 1

    counter = Counter()
    result = training.fit_forecaster(
        "gru", TINY_GRU, train_only, max_epochs=2, trainer_kwargs=CPU, extra_callbacks=[counter]
    )
    assert counter.epochs == 2
    # internal callbacks are gone from the model's creation params: it pickles
    callbacks = result.model.model_params["pl_trainer_kwargs"]["callbacks"]
    assert all(cb is counter or isinstance(cb, Counter) for cb in callbacks)
    # a callback class defined in a function still saves and loads (save_bundle drops it)
    paths = artifacts.save_bundle(tmp_path, "gru", "BTC", result.model, train_only.preprocessor, {})
    loaded = artifacts.load_bundle(paths.model)
    assert np.array_equal(
        predict_one(loaded.model, train_only), predict_one(result.model, train_only)
    )


def test_too_short_series_is_a_data_error(frame: pd.DataFrame) -> None:
    short = prepare_darts_timeseries(frame.iloc[:30])
    params = {**TINY_GRU, "input_chunk_length": 40}
    with pytest.raises(DataError, match=r"has 29 rows.*needs at least 41"):
        training.fit_forecaster("gru", params, short, max_epochs=1, trainer_kwargs=CPU)


def test_validation_shorter_than_output_chunk(frame: pd.DataFrame) -> None:
    prepared = prepare_darts_timeseries(frame.iloc[:-3], frame.iloc[-3:])
    params = {**TINY_GRU, "output_chunk_length": 5}
    with pytest.raises(DataError, match=r"validation series has 3 rows.*output_chunk_length = 5"):
        training.fit_forecaster("gru", params, prepared, max_epochs=1, trainer_kwargs=CPU)


def test_bad_patience_and_unknown_param(with_val: PreparedSeries) -> None:
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        training.fit_forecaster(
            "gru", TINY_GRU, with_val, max_epochs=1, trainer_kwargs=CPU, early_stopping_patience=0
        )
    with pytest.raises(ModelError, match="hidden_size"):
        training.fit_forecaster(
            "gru", {**TINY_GRU, "hidden_size": 3}, with_val, max_epochs=1, trainer_kwargs=CPU
        )
