"""Warm starts: another study's best configurations tried first, on real tiny Optuna studies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kallos_models import tuner
from kallos_models.errors import ConfigError
from kallos_models.modelling.hyperparams import search_record
from kallos_models.modelling.zoo.space import SearchSpace, Tunable
from kallos_models.stages.tune.warm import MARK
from tests.helpers import assert_error, run_cli
from tests.test_tuner import END, load_bars, settings_for

FIXED = {
    "hidden_dim": Tunable.choice(8),
    "n_rnn_layers": Tunable.choice(1),
    "dropout": Tunable.choice(0.0),
    "batch_size": Tunable.choice(32),
    "learning_rate": Tunable.real(1e-3, 1e-2, log=True),
}
#: The source study's space: lookbacks 14..16 bars.
SOURCE_SPACE = SearchSpace({**FIXED, "input_chunk_length": Tunable.integer(14, 16)})
#: The warm-started study's: lookbacks 8..12, so the source's are clipped to 12.
TARGET_SPACE = SearchSpace({**FIXED, "input_chunk_length": Tunable.integer(8, 12)})


@pytest.fixture
def data(sqlite_url: str, tmp_path: Path) -> str:
    load_bars(sqlite_url, tmp_path)
    return sqlite_url


def test_search_space_fit_clips_numbers_and_drops_unknown_choices() -> None:
    space = SearchSpace(
        {
            "hidden_dim": Tunable.choice(16, 32),
            "dropout": Tunable.real(0.0, 0.5),
            "n_rnn_layers": Tunable.integer(1, 2),
            "input_chunk_length": Tunable.lookback(),
        }
    )
    fitted, notes = space.fit(
        {"hidden_dim": 64, "dropout": 0.7, "n_rnn_layers": 2, "input_chunk_length": 45, "x": 1},
        "4h",
    )
    # a daily lookback of 45 bars is below the 4h range (180..420 bars): the nearest bound
    assert fitted == {"dropout": 0.5, "n_rnn_layers": 2, "input_chunk_length": 180}
    assert sorted(notes) == [
        "dropout 0.7 -> 0.5",
        "hidden_dim 64 not among [16, 32]: left out",
        "input_chunk_length 45 -> 180",
        "x not searched here: left out",
    ]
    assert space.fit({"hidden_dim": 32, "dropout": 0.1}, "1d") == (
        {"hidden_dim": 32, "dropout": 0.1},
        [],
    )


def test_warm_start_queues_the_best_configurations_first(data: str, tmp_path: Path) -> None:
    source = tuner.tune(
        settings_for(data, n_trials=4, study_name="source", max_epochs=1),
        search_space=SOURCE_SPACE,
    )
    ranked = sorted((t for t in source.study.trials if t.value is not None), key=lambda t: t.value)
    # no pruning: every trial completes, so warm and cold trials are all compared
    settings = settings_for(
        data, n_trials=5, study_name="target", max_epochs=1, output_path=str(tmp_path),
        pruner="none",
    )  # fmt: skip
    result = tuner.tune(settings, search_space=TARGET_SPACE, warm_start_from="source")
    trials = result.study.trials
    assert len(trials) == 5
    # the source's best three first, in order, their lookbacks clipped into 8..12
    for trial, best in zip(trials[:3], ranked[:3], strict=True):
        assert trial.user_attrs[MARK] == "source"
        assert trial.params["learning_rate"] == best.params["learning_rate"]
        assert trial.params["input_chunk_length"] == 12
    assert not any(MARK in t.user_attrs for t in trials[3:])  # then the sampler's own

    warm = result.summary["warm_start"]
    values = [t.value for t in trials]
    assert warm["study_name"] == "source" and warm["n_trials"] == 4
    assert warm["best_value"] == pytest.approx(ranked[0].value)
    assert (warm["warm_trials"], warm["cold_trials"]) == (3, 2)
    assert warm["best_warm"] == pytest.approx(min(values[:3]))
    assert warm["best_cold"] == pytest.approx(min(values[3:]))
    assert warm["best_is_warm"] == (min(values[:3]) <= min(values[3:]))

    # the params file carries the source, and the search it stands for counts both studies
    params_file = json.loads(Path(result.params_path).read_text())
    assert params_file["warm_start"] == {
        "study_name": "source",
        "n_trials": 4,
        "best_value": pytest.approx(ranked[0].value),
    }
    search = search_record(result.params_path)
    assert search["n_trials"] == 5 + 4 and search["studies"][0]["warm_start_trials"] == 4

    # re-run, and resumed with more trials: nothing is queued twice
    again = tuner.tune(settings, search_space=TARGET_SPACE, warm_start_from="source")
    assert len(again.study.trials) == 5 and again.summary["n_new_trials"] == 0
    more = tuner.tune(
        settings_for(
            data, n_trials=6, study_name="target", max_epochs=1, output_path=str(tmp_path)
        ),
        search_space=TARGET_SPACE,
        warm_start_from="source",
    )
    assert len(more.study.trials) == 6
    assert sum(MARK in t.user_attrs for t in more.study.trials) == 3


def test_bad_warm_start_sources_are_refused_before_any_trial(data: str, tmp_path: Path) -> None:
    tuner.tune(
        settings_for(data, n_trials=1, study_name="source", max_epochs=1), search_space=SOURCE_SPACE
    )
    base = ["tune", "--asset-id", "BTC", "--end-date", "2021-12-31", "--db-url", data]
    base += ["--n-trials", "1", "--output-path", str(tmp_path)]
    assert_error(
        run_cli(*base, "--warm-start-from", "nope"),
        "--warm-start-from: no study 'nope'",
        "source",
    )
    assert_error(
        run_cli(*base, "--study-name", "source", "--warm-start-from", "source"),
        "is the study being tuned",
    )
    assert_error(
        run_cli(*base, "--model-name", "tcn", "--warm-start-from", "source"),
        "study 'source' tuned 'gru', not 'tcn'",
    )
    with pytest.raises(ConfigError, match="no study 'nope'"):
        tuner.run_tuning(
            asset_id="BTC",
            end_date=END,
            db_kwargs=data,
            optuna_schema=None,
            model_name="gru",
            study_name="other",
            target_col=None,
            feature_groups=None,
            n_trials=1,
            warm_start_from="nope",
        )
    # the refused commands created no study and ran nothing
    assert {s["name"]: s["n_trials"] for s in tuner.list_studies(data)} == {"source": 1}
