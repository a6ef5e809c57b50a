"""Tests for kallos_models.modelling.zoo: the registry, validation, search spaces, lookback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from kallos_models.errors import ConfigError, ModelError
from kallos_models.modelling import zoo as architectures
from kallos_models.modelling.zoo import (
    MODEL_REGISTRY,
    bars_per_day,
    create_model,
    get_spec,
    list_models,
    lookback_range,
    max_input_chunk_length,
    model_names,
    validate_params,
)
from tests.helpers import TINY_PARAMS, tiny_params

DEEP_MODELS = [
    "dlinear",
    "gru",
    "lstm",
    "nbeats",
    "nhits",
    "tcn",
    "tft",
    "tide",
    "transformer",
    "tsmixer",
    "nlinear",
]
#: regression models over lags (tests/test_baselines.py covers them through the CLI)
REGRESSION_MODELS = ["lightgbm", "linear"]
EXPECTED_MODELS = DEEP_MODELS + REGRESSION_MODELS

# Cheap settings shared by every training test (Darts' own test habit).
TRAINER_KWARGS = {"accelerator": "cpu"}


@pytest.fixture(scope="module")
def series():
    from darts import TimeSeries

    rng = np.random.default_rng(0)
    times = pd.date_range("2023-01-01", periods=150, freq="D")
    target_values = np.cumsum(rng.normal(size=150)).astype(np.float32)
    covariate_values = rng.normal(size=(150, 3)).astype(np.float32)
    target = TimeSeries.from_times_and_values(times, target_values, columns=["close"])
    covariates = TimeSeries.from_times_and_values(
        times, covariate_values, columns=["rsi", "volume", "macd"]
    )
    return target, covariates


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_expected_models():
    assert model_names() == sorted(EXPECTED_MODELS)
    assert set(TINY_PARAMS) == set(MODEL_REGISTRY)


def test_darts_classes_and_fixed_kwargs():
    assert get_spec("gru").darts_class == "darts.models.BlockRNNModel"
    assert get_spec("lstm").darts_class == "darts.models.BlockRNNModel"
    assert dict(get_spec("gru").fixed_kwargs) == {"model": "GRU"}
    assert dict(get_spec("lstm").fixed_kwargs) == {"model": "LSTM"}
    assert get_spec("tft").fixed_kwargs["add_relative_index"] is True
    assert get_spec("tcn").darts_class == "darts.models.TCNModel"


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
def test_defaults_are_valid_and_shared_defaults_hold(model_name):
    spec = get_spec(model_name)
    assert spec.defaults["input_chunk_length"] == 30
    assert spec.defaults["output_chunk_length"] == 1
    kwargs = validate_params(model_name, {})
    assert architectures.chunk_lengths(kwargs) == (30, 1)
    assert spec.deep == (model_name in DEEP_MODELS)


def test_unknown_model_lists_available_names():
    with pytest.raises(ModelError) as excinfo:
        get_spec("gruu")
    message = str(excinfo.value)
    assert message.startswith("unknown model 'gruu'; available: ")
    assert message.endswith(", ".join(sorted(EXPECTED_MODELS)))
    with pytest.raises(ModelError, match="unknown model 'gruu'"):
        create_model("gruu", {})


def test_module_import_is_cheap():
    code = (
        "import sys, kallos_models.modelling.zoo\n"
        "heavy = [m for m in ('torch', 'darts', 'lightning', 'pytorch_lightning', 'optuna')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# Building and training every model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
def test_every_model_fits_and_predicts_with_past_covariates(model_name, series, tmp_path):
    target, covariates = series
    model = create_model(
        model_name, tiny_params(model_name), trainer_kwargs=TRAINER_KWARGS, random_state=0
    )
    assert model.__class__.__name__ == get_spec(model_name).darts_class.rsplit(".", 1)[-1]
    fit_kwargs = {"verbose": False} if model_name in DEEP_MODELS else {}
    model.fit(target, past_covariates=covariates, **fit_kwargs)
    forecast = model.predict(n=1, series=target, past_covariates=covariates, verbose=False)
    assert len(forecast) == 1
    assert forecast.start_time() == target.end_time() + target.freq
    assert np.isfinite(forecast.values()).all()


def test_fixed_common_and_trainer_kwargs_are_applied():
    callback = object()
    model = create_model(
        "gru",
        {**tiny_params("gru"), "model": "LSTM", "save_checkpoints": True},
        trainer_kwargs={"accelerator": "cpu", "callbacks": [callback], "precision": "32-true"},
        random_state=7,
    )
    params = model.model_params
    assert params["model"] == "GRU"
    assert params["save_checkpoints"] is False
    assert params["force_reset"] is True
    assert params["log_tensorboard"] is False
    assert params["random_state"] == 7
    trainer = dict(params["pl_trainer_kwargs"])
    assert len(trainer.pop("callbacks")) == 1  # Darts keeps a deep copy in model_params
    assert trainer == {
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "precision": "32-true",
    }
    assert any(cb is callback for cb in model.trainer_params["callbacks"])
    assert model.trainer_params["accelerator"] == "cpu"


def test_default_trainer_kwargs_use_auto_accelerator():
    kwargs = validate_params("gru", {})
    assert kwargs["pl_trainer_kwargs"] == {
        "accelerator": "auto",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }


def test_fixed_value_replacing_user_value_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="kallos_models.modelling.zoo"):
        validate_params("gru", {"model": "LSTM"})
    assert "model='LSTM' is replaced by the fixed value 'GRU'" in caplog.text


def test_learning_rate_maps_to_optimizer_kwargs():
    model = create_model("gru", {**tiny_params("gru"), "learning_rate": 0.0042})
    assert model.model_params["optimizer_kwargs"] == {"lr": 0.0042}
    assert "learning_rate" not in model.model_params
    kwargs = validate_params(
        "gru", {"learning_rate": 0.01, "optimizer_kwargs": {"weight_decay": 0.1}}
    )
    assert kwargs["optimizer_kwargs"] == {"weight_decay": 0.1, "lr": 0.01}


def test_default_learning_rate_does_not_override_given_optimizer_lr():
    assert validate_params("gru", {})["optimizer_kwargs"] == {"lr": 1e-3}
    kwargs = validate_params("gru", {"optimizer_kwargs": {"lr": 0.05}})
    assert kwargs["optimizer_kwargs"] == {"lr": 0.05}


def test_validated_kwargs_validate_again_unchanged():
    first = validate_params("tcn", {**tiny_params("tcn"), "learning_rate": 0.002})
    second = validate_params("tcn", first)
    assert second == first


def test_n_epochs_argument_overrides_params():
    model = create_model("nlinear", {**tiny_params("nlinear"), "n_epochs": 5}, n_epochs=2)
    assert model.n_epochs == 2
    model = create_model("nlinear", {**tiny_params("nlinear"), "n_epochs": 5})
    assert model.n_epochs == 5
    assert create_model("nlinear", {}).n_epochs == get_spec("nlinear").defaults["n_epochs"]


# --------------------------------------------------------------------------------------------
# Validation failures
# --------------------------------------------------------------------------------------------


def test_unknown_parameter_is_named_with_valid_ones():
    with pytest.raises(ModelError) as excinfo:
        create_model("gru", {"hiden_dim": 32})
    message = str(excinfo.value)
    assert message.startswith(
        "parameter 'hiden_dim' is not accepted by model 'gru' (darts BlockRNNModel); "
        "valid parameters: "
    )
    valid = message.split("valid parameters: ", 1)[1].split(", ")
    for name in ("hidden_dim", "n_rnn_layers", "dropout", "batch_size", "learning_rate"):
        assert name in valid
    assert "train_sample_shape" not in valid
    assert "kwargs" not in valid


def test_several_unknown_parameters_are_all_named():
    with pytest.raises(ModelError, match=r"parameters 'd_model', 'nhead' are not accepted"):
        validate_params("nlinear", {"nhead": 2, "d_model": 16})


def test_dropout_rejected_by_model_without_dropout():
    with pytest.raises(ModelError, match=r"parameter 'dropout' is not accepted by model 'dlinear'"):
        validate_params("dlinear", {"dropout": 0.1})


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"input_chunk_length": 0}, r"input_chunk_length must be an integer >= 1, got 0"),
        ({"output_chunk_length": 0}, r"output_chunk_length must be an integer >= 1, got 0"),
        ({"input_chunk_length": 12.5}, r"input_chunk_length must be an integer >= 1"),
        ({"output_chunk_length": True}, r"output_chunk_length must be an integer >= 1"),
        ({"batch_size": -1}, r"batch_size must be an integer >= 1"),
        ({"learning_rate": 0.0}, r"learning_rate must be a number > 0"),
        ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
    ],
)
def test_bad_values_raise_model_error(params, pattern):
    with pytest.raises(ModelError, match=pattern):
        validate_params("gru", params)


def test_n_epochs_argument_is_checked():
    with pytest.raises(ModelError, match=r"n_epochs must be an integer >= 1, got 0"):
        create_model("gru", {}, n_epochs=0)


def test_tcn_kernel_must_be_smaller_than_lookback():
    with pytest.raises(
        ModelError, match=r"kernel_size < input_chunk_length; got kernel_size=12, input_chunk"
    ):
        create_model("tcn", {"kernel_size": 12, "input_chunk_length": 12})


def test_tcn_output_must_be_shorter_than_input():
    with pytest.raises(ModelError, match=r"output_chunk_length < input_chunk_length"):
        validate_params("tcn", {"input_chunk_length": 8, "output_chunk_length": 8})


def test_transformer_heads_must_divide_d_model():
    with pytest.raises(ModelError, match=r"d_model % nhead == 0; got nhead=3, d_model=16"):
        validate_params("transformer", {"d_model": 16, "nhead": 3})


def test_darts_constructor_value_error_becomes_model_error():
    with pytest.raises(ModelError, match=r"model 'nbeats' \(darts NBEATSModel\) rejected"):
        create_model("nbeats", {"num_stacks": 3, "layer_widths": [16, 16]})


# --------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize("timeframe", ["1d", "4h", "1w"])
def test_sampled_params_are_accepted(model_name, timeframe):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    spec = get_spec(model_name)
    low, high = lookback_range(timeframe)
    for _ in range(4):
        trial = study.ask()
        sampled = spec.search_space(trial, timeframe)
        assert set(sampled) == set(trial.params)
        assert low <= sampled["input_chunk_length"] <= high
        assert ("learning_rate" in sampled) == (model_name != "linear")
        model = create_model(model_name, sampled, trainer_kwargs=TRAINER_KWARGS)
        if model_name in DEEP_MODELS:
            assert model.model_params["input_chunk_length"] == sampled["input_chunk_length"]
        else:
            assert model.model_params["lags"] == sampled["input_chunk_length"]
        study.tell(trial, 0.0)


def _fixed_trial_params(model_name: str, pick: str) -> dict:
    """Lowest (pick='low') or highest ('high') value of every tunable on daily bars."""
    space = get_spec(model_name).search_space
    index = 0 if pick == "low" else 1
    return {name: tunable.bounds("1d")[index] for name, tunable in space.params.items()}


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize("pick", ["low", "high"])
def test_range_corners_are_accepted(model_name, pick):
    params = _fixed_trial_params(model_name, pick)
    sampled = get_spec(model_name).search_space(optuna.trial.FixedTrial(params), "1d")
    assert sampled == params
    create_model(model_name, sampled)


@pytest.mark.parametrize("model_name", ["gru", "lstm"])
def test_rnn_spaces_match_the_seed(model_name):
    described = get_spec(model_name).search_space.describe("1d")
    assert described == {
        "hidden_dim": "int 32..256 log",
        "n_rnn_layers": "int 1..4",
        "dropout": "float 0.0..0.7",
        "batch_size": "choice [32, 64, 128]",
        "input_chunk_length": "int 30..70",
        "learning_rate": "float 1e-05..0.01 log",
    }
    # The description is the range actually sampled: check the distributions Optuna saw.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    get_spec(model_name).search_space(trial, "1d")
    assert trial.distributions == {
        "hidden_dim": optuna.distributions.IntDistribution(32, 256, log=True),
        "n_rnn_layers": optuna.distributions.IntDistribution(1, 4),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.7),
        "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
        "input_chunk_length": optuna.distributions.IntDistribution(30, 70),
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    }


def test_search_space_lookback_follows_timeframe():
    described = get_spec("tcn").search_space.describe("4h")
    assert described["input_chunk_length"] == "int 180..420"


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize("timeframe", ["1d", "4h", "2h", "1w"])
def test_max_input_chunk_length_is_upper_lookback_bound(model_name, timeframe):
    assert max_input_chunk_length(model_name, timeframe) == lookback_range(timeframe)[1]


def test_max_input_chunk_length_values():
    assert max_input_chunk_length("gru", "1d") == 70
    assert max_input_chunk_length("gru", "4h") == 420
    with pytest.raises(ModelError):
        max_input_chunk_length("nope", "1d")


def test_list_models_is_json_and_describes_ranges():
    models = list_models("1d")
    assert json.loads(json.dumps(models)) == models
    assert [entry["name"] for entry in models] == sorted(EXPECTED_MODELS)
    by_name = {entry["name"]: entry for entry in models}
    assert by_name["gru"]["darts_class"] == "darts.models.BlockRNNModel"
    assert by_name["gru"]["tunable"]["n_rnn_layers"] == "int 1..4"
    assert by_name["gru"]["defaults"]["input_chunk_length"] == 30
    assert by_name["tft"]["fixed_kwargs"] == {"add_relative_index": True}
    assert by_name["tcn"]["constraints"] == [
        "kernel_size < input_chunk_length",
        "output_chunk_length < input_chunk_length",
    ]
    assert set(by_name["nlinear"]["tunable"]) == {
        "batch_size",
        "input_chunk_length",
        "learning_rate",
    }
    assert list_models("4h")[0]["tunable"]["input_chunk_length"] == "int 180..420"
    with pytest.raises(ConfigError):
        list_models("daily")


_COMMON_DEFAULT_NAMES = {
    "input_chunk_length",
    "output_chunk_length",
    "batch_size",
    "learning_rate",
    "n_epochs",
}
_COMMON_TUNABLE_NAMES = {"batch_size", "input_chunk_length", "learning_rate"}
_REGRESSION_COMMON = ("input_chunk_length", "output_chunk_length")


def _doc_row(entry: dict) -> str:
    # a regression model shares only the lookback and the chunk with the deep ones
    common_defaults = _COMMON_DEFAULT_NAMES if entry["deep"] else set(_REGRESSION_COMMON)
    common_tunable = _COMMON_TUNABLE_NAMES if entry["deep"] else {"input_chunk_length"}
    fixed = ", ".join(f"`{k}={v!r}`" for k, v in entry["fixed_kwargs"].items()) or "-"
    defaults = (
        ", ".join(f"`{k}={v!r}`" for k, v in entry["defaults"].items() if k not in common_defaults)
        or "-"
    )
    tunable = (
        "; ".join(f"`{k}` {v}" for k, v in entry["tunable"].items() if k not in common_tunable)
        or "-"
    )
    constraints = "; ".join(f"`{c}`" for c in entry["constraints"]) or "-"
    darts_name = entry["darts_class"].rsplit(".", 1)[-1]
    return (
        f"| `{entry['name']}` | `{darts_name}` | {fixed} | {defaults} | {tunable} | {constraints} |"
    )


def test_documentation_registry_table_matches_code():
    page = Path(__file__).resolve().parents[1] / "documentation" / "architectures.md"
    if not page.exists():
        pytest.skip("documentation/architectures.md not present")
    lines = page.read_text(encoding="utf-8").splitlines()
    for entry in list_models("1d"):
        assert _doc_row(entry) in lines, f"registry row for {entry['name']} is out of date"
    common_defaults = {
        k: v for k, v in get_spec("gru").defaults.items() if k in _COMMON_DEFAULT_NAMES
    }
    for spec in MODEL_REGISTRY.values():
        names = _COMMON_DEFAULT_NAMES if spec.deep else set(_REGRESSION_COMMON)
        assert {k: spec.defaults[k] for k in names} == {k: common_defaults[k] for k in names}
    assert common_defaults == {
        "input_chunk_length": 30,
        "output_chunk_length": 1,
        "batch_size": 32,
        "learning_rate": 0.001,
        "n_epochs": 100,
    }


# --------------------------------------------------------------------------------------------
# Timeframes and lookback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [("1d", 1.0), ("4h", 6.0), ("2h", 12.0), ("1h", 24.0), ("15m", 96.0), ("1w", 1 / 7)],
)
def test_bars_per_day(timeframe, expected):
    assert bars_per_day(timeframe) == pytest.approx(expected)


@pytest.mark.parametrize("timeframe", ["1x", "daily", "0h", "", "4H", "h", "1.5h"])
def test_bad_timeframe_names_accepted_forms(timeframe):
    with pytest.raises(ConfigError) as excinfo:
        bars_per_day(timeframe)
    message = str(excinfo.value)
    assert f"timeframe {timeframe!r} is not a bar size" in message
    assert "15m, 1h, 4h, 1d or 1w" in message


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [
        ("1d", (30, 70)),
        ("4h", (180, 420)),
        ("2h", (360, 512)),
        ("1h", (512, 512)),
        ("1w", (8, 10)),
    ],
)
def test_lookback_range(timeframe, expected):
    assert lookback_range(timeframe) == expected


def test_lookback_bounds_are_module_constants():
    assert architectures.LOOKBACK_DAYS == (30, 70)
    assert architectures.LOOKBACK_MIN_BARS == 8
    assert architectures.LOOKBACK_MAX_BARS == 512
