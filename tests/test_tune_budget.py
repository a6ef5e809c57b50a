"""CPU-aware tuning: the space and epoch budget chosen without a GPU, kept by the study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kallos_models.errors import ConfigError
from kallos_models.modelling import zoo
from kallos_models.modelling.zoo.space import SearchSpace, Tunable
from kallos_models.modelling.zoo.specs import CPU_CAPS
from kallos_models.stage_settings import tune_settings
from kallos_models.stages.tune.budget import CPU_MAX_EPOCHS, choose
from tests.helpers import assert_error, run_cli
from tests.test_tuner import END, load_bars, settings_for, tiny_space


def test_capped_space_keeps_values_up_to_each_cap() -> None:
    space = SearchSpace(
        {
            "hidden_dim": Tunable.integer(32, 256, log=True),
            "n_rnn_layers": Tunable.integer(1, 4),
            "layer_widths": Tunable.choice(256, 512),
            "dim_feedforward": Tunable.choice(32, 64, 128, 256),
            "dropout": Tunable.real(0.0, 0.7),
            "input_chunk_length": Tunable.lookback(),
        }
    )
    capped = space.capped({"hidden_dim": 64, "n_rnn_layers": 2, "layer_widths": 128,
                           "dim_feedforward": 64, "input_chunk_length": 10})  # fmt: skip
    assert capped.describe("1d") == {
        "hidden_dim": "int 32..64 log",
        "n_rnn_layers": "int 1..2",
        "layer_widths": "choice [256]",  # none under the cap: the smallest
        "dim_feedforward": "choice [32, 64]",
        "dropout": "float 0.0..0.7",
        "input_chunk_length": "int 30..70",  # the lookback is never capped
    }


@pytest.mark.parametrize("model", ["gru", "transformer", "nbeats", "tft", "tide", "tsmixer"])
def test_every_deep_models_cpu_space_is_inside_its_full_space(model: str) -> None:
    spec = zoo.get_spec(model)
    full, cpu = spec.search_space.params, spec.cpu_search_space.params
    assert full.keys() == cpu.keys() and cpu != full
    for name, tunable in cpu.items():
        low, high = tunable.bounds("1d")
        full_low, full_high = full[name].bounds("1d")
        assert full_low <= low <= high <= full_high
        if name in CPU_CAPS:
            assert high <= max(CPU_CAPS[name], full_low)
    assert zoo.get_spec("linear").cpu_search_space is zoo.get_spec("linear").search_space


def test_choose_the_space_and_epochs(sqlite_url: str) -> None:
    cpu_default = tune_settings(settings_for(sqlite_url, accelerator="cpu", max_epochs=100))
    budget = choose(cpu_default, "auto", None, {})
    assert budget.name == "cpu" and budget.settings.trainer.max_epochs == CPU_MAX_EPOCHS == 20
    assert budget.search_space is zoo.get_spec("gru").cpu_search_space or (
        budget.search_space.describe("1d") == zoo.get_spec("gru").cpu_search_space.describe("1d")
    )
    # a max_epochs someone set is kept; full is the seed's space and budget, on any machine
    assert choose(tune_settings(settings_for(sqlite_url, accelerator="cpu", max_epochs=7)),
                  "cpu", None, {}).settings.trainer.max_epochs == 7  # fmt: skip
    full = choose(cpu_default, "full", None, {})
    assert (full.name, full.search_space, full.settings) == ("full", None, cpu_default)
    # a study resumed keeps its space (one tuned before spaces were recorded: the full one)
    assert choose(cpu_default, "auto", None, {"space": "full"}).name == "full"
    assert choose(cpu_default, "auto", None, {"model_name": "gru"}).name == "full"
    assert choose(cpu_default, "auto", None, {"space": "cpu"}).name == "cpu"
    # the caller's own space is used as given; a regression model has no epochs to cap
    assert choose(cpu_default, "auto", tiny_space, {}).name == "custom"
    linear = tune_settings(settings_for(sqlite_url, accelerator="cpu", model_name="linear"))
    assert choose(linear, "auto", None, {}).name == "full"
    # a misspelt space, or a custom-space study resumed without its space, is refused
    with pytest.raises(ConfigError, match="space must be one of auto, cpu, full, got 'gpu'"):
        choose(cpu_default, "gpu", None, {})
    with pytest.raises(ConfigError, match="tuned with a custom search space"):
        choose(cpu_default, "auto", None, {"space": "custom"})


def test_default_tune_on_a_cpu_uses_the_cpu_space(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KALLOS_ACCELERATOR", "cpu")
    load_bars(sqlite_url, tmp_path)
    base = ["tune", "--asset-id", "BTC", "--end-date", END, "--db-url", sqlite_url]
    base += ["--output-path", str(tmp_path), "--max-epochs", "1"]
    result = run_cli(*base, "--n-trials", "2", quiet=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["space"], summary["max_epochs"]) == ("cpu", 1)
    assert "no GPU in use: tuning gru's CPU search space (hidden_dim int 32..64 log" in (
        result.stderr
    )
    params = json.loads(Path(summary["params_path"]).read_text())["params"]
    assert params["hidden_dim"] <= 64 and params["n_rnn_layers"] <= 2
    # the study keeps its space: resumed by default it stays cpu; --space full is refused
    again = json.loads(run_cli(*base, "--n-trials", "3").stdout)
    assert again["space"] == "cpu" and again["n_finished"] == 3
    assert_error(
        run_cli(*base, "--n-trials", "4", "--space", "full"),
        "space 'cpu' (now 'full')",
    )
