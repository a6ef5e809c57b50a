"""Purged folds, pruning inside folds and the tune's time budget: real tiny Optuna studies."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pytest
from optuna.trial import TrialState

from kallos_models import tuner
from kallos_models.data.datasets import get_walk_forward_splits
from kallos_models.stages.tune.pruning import SameStepMedianPruner, Steps
from tests.helpers import record_fit_ends, run_cli_json
from tests.test_tuner import good_then_bad_space, load_bars, settings_for, tiny_space

DAY = pd.Timedelta("1D")


@pytest.fixture
def sqlite_data(sqlite_url: str, tmp_path) -> str:
    load_bars(sqlite_url, tmp_path)
    return sqlite_url


def overlaps(train: pd.DataFrame, val: pd.DataFrame, horizon: int) -> list[pd.Timestamp]:
    """Validation rows inside a training row's target window (the ``horizon`` bars after it)."""
    targets = {t + k * DAY for t in train.index for k in range(1, horizon + 1)}
    return sorted(targets & set(val.index))


def test_purged_folds_keep_every_training_target_out_of_validation() -> None:
    frame = pd.DataFrame({"close": range(300)}, index=pd.date_range("2021-01-01", periods=300))
    for horizon in (1, 3, 7):
        for gap in (horizon, horizon + 2):
            splits = list(get_walk_forward_splits(frame, 3, 40, min_train_size=100, gap=gap))
            assert len(splits) == 3
            for train, val in splits:
                assert not overlaps(train, val, horizon)
                assert val.index[0] - train.index[-1] == (gap + 1) * DAY  # exactly gap bars out
        # without the gap the last training rows' targets are validation rows: the check bites
        train, val = next(get_walk_forward_splits(frame, 3, 40, min_train_size=100, gap=0))
        assert len(overlaps(train, val, horizon)) == horizon


def test_tune_folds_leave_the_horizon_out(sqlite_data: str, monkeypatch) -> None:
    """A real tune at horizon 3: each fold's preprocessing and model are fitted on rows that
    end 3 bars before its validation rows, so no training target window reaches them, and
    every validation forecast's origin (one bar before its bar) lies after the training rows."""
    seen = record_fit_ends(monkeypatch)
    result = tuner.tune(settings_for(sqlite_data, horizon=3, n_trials=1), search_space=tiny_space)
    assert result.summary["folds"]["gap"] == 3 and result.study.user_attrs["gap"] == 3
    (trial,) = result.study.trials
    val_starts = [pd.Timestamp(t) for t in trial.user_attrs["fold_val_starts"]]
    for fit_end, val_start in zip(seen[1:], val_starts, strict=True):
        assert fit_end == val_start - 4 * DAY
        assert fit_end + 3 * DAY < val_start  # the last training target window ends before
        assert val_start - DAY > fit_end  # the first forecast is made from an unseen bar


def test_a_hopeless_trial_is_pruned_inside_its_first_fold(sqlite_data: str, caplog) -> None:
    steps = Steps(epochs=4, n_splits=3)
    pruner = SameStepMedianPruner(steps, n_startup_trials=1, warmup_epochs=0)
    with caplog.at_level(logging.INFO, logger="kallos_models"):
        result = tuner.tune(
            settings_for(sqlite_data, max_epochs=4), search_space=good_then_bad_space, pruner=pruner
        )
    first, second = result.study.trials
    assert first.state == TrialState.COMPLETE
    fold_steps = [steps.fold(k) for k in range(3)]
    assert [first.intermediate_values[s] for s in fold_steps] == first.user_attrs["fold_scores"]
    for k in range(3):  # each epoch reports the fit's best validation loss so far
        losses = [v for s, v in sorted(first.intermediate_values.items()) if s // 5 == k][:-1]
        assert losses and losses == sorted(losses, reverse=True)
        assert steps.epoch(k, 3) in first.intermediate_values  # the block always ends filled
    assert second.state == TrialState.PRUNED and second.user_attrs["stopped"] == "pruned"
    assert max(second.intermediate_values) < steps.fold(0)  # inside fold 1, before its score
    assert second.user_attrs["fold_scores"] == []
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial 1 ")]
    assert "PRUNED: pruned at fold 1 epoch" in lines[0] and "2 of 2 finished, about" in lines[0]


@pytest.mark.parametrize("pruner", ["hyperband", "halving"])
def test_cli_tunes_with_multi_fidelity_pruners(sqlite_data: str, tmp_path, pruner: str) -> None:
    summary = run_cli_json(
        "tune", "--model-name", "nlinear", "--asset-id", "BTC", "--db-url", sqlite_data,
        "--end-date", settings_for(sqlite_data).tune_end_date, "--n-trials", "4",
        "--max-epochs", "3", "--pruner", pruner, "--output-path", str(tmp_path),
    )  # fmt: skip
    assert summary["pruner"] == pruner and summary["n_finished"] == 4
    assert summary["trial_counts"]["COMPLETE"] >= 1
    studies = tuner.list_studies(sqlite_data)
    assert studies[0]["n_finished"] == 4


def slow_epoch_space(trial: Any, timeframe: str) -> dict[str, Any]:
    """A GRU trained one row at a time: each epoch takes a while, no trial ends in seconds."""
    return {**tiny_space(trial, timeframe), "batch_size": 1}


def test_timeout_prunes_the_trial_in_flight(sqlite_data: str) -> None:
    settings = settings_for(sqlite_data, max_epochs=50, n_trials=3, timeout=2.0)
    result = tuner.tune(settings, search_space=slow_epoch_space)
    (trial,) = result.study.trials  # no trial starts after the deadline
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stopped"] == "timeout"
    assert result.summary["timed_out"] and result.params_path is None
    assert max(trial.intermediate_values) < Steps(epochs=50, n_splits=3).fold(0)
