"""datasets.get_walk_forward_splits and calculate_dynamic_wf_kwargs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kallos_models.data.datasets import calculate_dynamic_wf_kwargs, get_walk_forward_splits
from kallos_models.errors import ConfigError, DataError


def frame_of(n: int) -> pd.DataFrame:
    idx = pd.date_range("2021-01-01", periods=n, freq="1D", name="open_time")
    return pd.DataFrame({"close": np.arange(n, dtype=float)}, index=idx)


def test_expanding_splits_are_contiguous_and_cover_the_tail() -> None:
    frame = frame_of(100)
    folds = list(get_walk_forward_splits(frame, 3, 10, min_train_size=40))
    assert len(folds) == 3
    day = pd.Timedelta("1D")
    for k, (train, val) in enumerate(folds):
        assert len(val) == 10
        assert train.index[0] == frame.index[0]  # expanding: always from the first row
        assert val.index[0] == train.index[-1] + day  # validation right after training
        assert val.index[0] > train.index[-1]  # never overlapping
        assert len(train) == 70 + 10 * k
        assert val.index.is_monotonic_increasing and (np.diff(val["close"]) == 1).all()
    # validation parts are consecutive and non-overlapping; the last ends at the last row
    for (_, val_a), (_, val_b) in zip(folds, folds[1:], strict=False):
        assert val_b.index[0] == val_a.index[-1] + day
    assert folds[-1][1].index[-1] == frame.index[-1]
    # training grows fold by fold
    assert [len(t) for t, _ in folds] == sorted(len(t) for t, _ in folds)


def test_rolling_window_keeps_min_train_size() -> None:
    frame = frame_of(100)
    folds = list(get_walk_forward_splits(frame, 3, 10, min_train_size=40, expanding=False))
    for train, val in folds:
        assert len(train) == 40
        assert val.index[0] == train.index[-1] + pd.Timedelta("1D")
    assert folds[0][0].index[0] == frame.index[30]
    assert folds[-1][1].index[-1] == frame.index[-1]


def test_exact_fit_and_too_short_frame() -> None:
    folds = list(get_walk_forward_splits(frame_of(70), 3, 10, min_train_size=40))
    assert len(folds[0][0]) == 40
    with pytest.raises(DataError) as err:
        list(get_walk_forward_splits(frame_of(69), 3, 10, min_train_size=40))
    msg = str(err.value)
    assert "69 rows" in msg and "at least 70" in msg and "40 training rows + 3 x 10" in msg


def test_split_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="n_splits"):
        list(get_walk_forward_splits(frame_of(100), 0, 10, min_train_size=40))
    with pytest.raises(ConfigError, match="val_size"):
        list(get_walk_forward_splits(frame_of(100), 2, 0, min_train_size=40))
    with pytest.raises(ConfigError, match="min_train_size"):
        list(get_walk_forward_splits(frame_of(100), 2, 10, min_train_size=0))
    unsorted = frame_of(100).iloc[::-1]
    with pytest.raises(DataError, match="increasing time order"):
        list(get_walk_forward_splits(unsorted, 2, 10, min_train_size=40))


@pytest.mark.parametrize(
    ("n_rows", "expected"),
    [
        # 3 x 70 + 1 = 211 training rows; the rest split over 3 folds
        (351, {"n_splits": 3, "val_size": 46, "min_train_size": 211}),
        # too short for 3 folds of 20: 2 folds
        (260, {"n_splits": 2, "val_size": 24, "min_train_size": 211}),
        (251, {"n_splits": 2, "val_size": 20, "min_train_size": 211}),
        # long history: validation covers at most the last half
        (2500, {"n_splits": 3, "val_size": 416, "min_train_size": 211}),
    ],
)
def test_dynamic_kwargs_on_several_lengths(n_rows: int, expected: dict[str, int]) -> None:
    kwargs = calculate_dynamic_wf_kwargs(n_rows, 70)
    assert kwargs == expected
    folds = list(get_walk_forward_splits(frame_of(n_rows), **kwargs))
    assert len(folds) == kwargs["n_splits"]
    assert all(len(train) >= kwargs["min_train_size"] for train, _ in folds)
    assert len(folds[0][0]) >= n_rows // 2  # every fold trains on at least half the rows


def test_dynamic_kwargs_follow_lookback_and_horizon() -> None:
    kwargs = calculate_dynamic_wf_kwargs(1000, 10, output_chunk_length=5)
    assert kwargs["min_train_size"] == 35 and kwargs["n_splits"] == 3
    assert kwargs["val_size"] == 500 // 3
    explicit = calculate_dynamic_wf_kwargs(1000, 10, n_splits=5, min_val_bars=50)
    assert explicit == {"n_splits": 5, "val_size": 100, "min_train_size": 31}
    with pytest.raises(ConfigError, match="n_splits must be 2 to 5"):
        calculate_dynamic_wf_kwargs(1000, 10, n_splits=6)
    with pytest.raises(ConfigError, match="max_input_chunk_length"):
        calculate_dynamic_wf_kwargs(1000, 0)


def test_dynamic_kwargs_too_short_names_the_numbers() -> None:
    with pytest.raises(DataError) as err:
        calculate_dynamic_wf_kwargs(250, 70)
    msg = str(err.value)
    assert "250 rows are too few" in msg and "at least 251" in msg
    assert "211" in msg and "largest lookback 70" in msg and "widen the date range" in msg
    # the needed number is exact: one more row is enough
    assert calculate_dynamic_wf_kwargs(251, 70)["n_splits"] == 2
    with pytest.raises(DataError, match="at least 80"):
        calculate_dynamic_wf_kwargs(60, 5)  # half-the-rows rule: 2 x 2 x 20
    assert calculate_dynamic_wf_kwargs(80, 5) == {
        "n_splits": 2,
        "val_size": 20,
        "min_train_size": 16,
    }
