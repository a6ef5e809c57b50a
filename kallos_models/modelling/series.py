"""Darts series from a frame of features: fit the preprocessing on the training rows, transform.

:func:`prepare_darts_timeseries` is the one place where frames become the float32 target and
past-covariate series a model is fit on; validation rows are transformed with the fit made on
the training rows alone (no leakage).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kallos_models.config import DEFAULT_FEATURE_GROUPS, Settings
from kallos_models.errors import DataError
from kallos_models.modelling.preprocessing import FeaturePreprocessor, resolve_feature_groups
from kallos_models.stage_settings import FeatureSettings

if TYPE_CHECKING:
    from darts import TimeSeries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSeries:
    """Darts series for one train (and optional validation) split, and the fitted preprocessing.

    Every series is float32. The target is scaled (see
    :class:`kallos_models.modelling.preprocessing.FeaturePreprocessor`); covariates are the scaled
    feature groups, used as past covariates. Validation series are transformed with the fit
    made on the training rows alone.
    """

    train_target: TimeSeries
    train_covariates: TimeSeries
    val_target: TimeSeries | None
    val_covariates: TimeSeries | None
    covariates: TimeSeries
    target: TimeSeries
    preprocessor: FeaturePreprocessor


def bar_offset(frame: pd.DataFrame, name: str) -> pd.DateOffset:
    """The frame's bar frequency, checked to be a regular grid."""
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError(
            f"{name} must be indexed by open time (a DatetimeIndex), got "
            f"{type(frame.index).__name__}; load it with load_features_from_db"
        )
    if frame.empty:
        raise DataError(f"{name} has no rows; widen its date range")
    freq = frame.index.freq
    if freq is None and len(frame.index) >= 3:
        freq = pd.infer_freq(frame.index)
    if freq is None:
        raise DataError(
            f"{name} has no regular bar frequency ({len(frame)} rows, index freq unset); "
            "load it with load_features_from_db, which puts bars on a regular grid"
        )
    return pd.tseries.frequencies.to_offset(freq)


def check_grid(frame: pd.DataFrame, offset: pd.DateOffset, name: str) -> None:
    """Raise DataError unless ``frame`` has one row per bar of ``offset``, no gaps."""
    expected = pd.date_range(frame.index[0], periods=len(frame), freq=offset)
    if not frame.index.equals(expected):
        where = int(np.argmax(frame.index.to_numpy() != expected.to_numpy()))
        raise DataError(
            f"{name} is not on a regular {offset.freqstr} grid: row {where} is at "
            f"{frame.index[where]}, expected {expected[where]}; load it with "
            "load_features_from_db, which fills short gaps"
        )


def to_series(frame: pd.DataFrame | pd.Series, offset: pd.DateOffset) -> TimeSeries:
    """A float32 Darts series of ``frame`` on the ``offset`` grid."""
    from darts import TimeSeries

    data = frame.to_frame() if isinstance(frame, pd.Series) else frame
    times = pd.DatetimeIndex(data.index, freq=offset)
    return TimeSeries.from_times_and_values(
        times,
        data.to_numpy(dtype=np.float32),
        columns=[str(c) for c in data.columns],
        freq=offset.freqstr,
    )


def target_series(
    preprocessor: FeaturePreprocessor, target: pd.Series, offset: pd.DateOffset
) -> TimeSeries:
    """The float32 target series, with the preprocessor's static covariates when it has any.

    A global model's per-asset preprocessors carry the asset's identity
    (:mod:`kallos_models.modelling.basket`); every target series of that asset, for training
    and for forecasting, carries it as Darts static covariates, so the model sees the same
    columns at both times.
    """
    series = to_series(target, offset)
    static = getattr(preprocessor, "static_covariates", None)
    if static:
        series = series.with_static_covariates(pd.DataFrame([dict(static)], dtype="float32"))
    return series


def prepare_darts_timeseries(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame | None = None,
    *,
    feature_groups: Mapping[str, Sequence[str]] | None = None,
    target_col: str = "close",
    target_transform: str = "log_return",
    group_scalers: Mapping[str, str] | None = None,
    optional_features: Sequence[str] = ("taker_buy_base_asset_volume",),
    static_covariates: Mapping[str, float] | None = None,
) -> PreparedSeries:
    """Fit the preprocessing on ``train_df`` and build float32 Darts series for train and val.

    Parameters
    ----------
    train_df
        Training rows as returned by :func:`load_features_from_db`: a regular DatetimeIndex,
        ``target_col`` and the feature columns (other columns, e.g. ``filled``, are ignored).
    val_df
        Validation rows starting at the bar right after ``train_df``'s last one; default None.
    feature_groups
        Group name -> columns; default None uses
        :data:`kallos_models.config.DEFAULT_FEATURE_GROUPS`.
    target_col
        Price column of the target; default ``"close"``.
    target_transform
        ``"log_return"`` (default) or ``"price"``.
    group_scalers
        Group name -> scaler name; default None (see
        :data:`kallos_models.modelling.preprocessing.DEFAULT_GROUP_SCALERS`). Entries for groups
        dropped
        because all their columns are optional and absent are ignored.
    optional_features
        Columns that may be absent or all-NaN and are then dropped; default
        ``("taker_buy_base_asset_volume",)``.
    static_covariates
        Name -> value, kept by the preprocessor and attached to every target series built
        with it (:func:`target_series`); default None: none. A global model's asset identity.

    Returns
    -------
    PreparedSeries
        For a log-return target the training target starts at ``train_df``'s second bar (the
        first has no previous close); the validation target's first value is the return from
        the last training close, which is past data, not leakage. ``covariates`` and ``target``
        are train and val concatenated, for rolling forecasts over the validation range.

    Raises
    ------
    DataError
        Frames not on a regular grid, ``val_df`` not starting at the bar after ``train_df``,
        a missing non-optional feature column, NaN/inf values, or too few rows.
    ConfigError
        Unknown scaler or target transform, or malformed ``feature_groups``.
    """
    offset = bar_offset(train_df, "train_df")
    check_grid(train_df, offset, "train_df")
    if val_df is not None:
        if not isinstance(val_df.index, pd.DatetimeIndex) or val_df.empty:
            raise DataError(
                "val_df must be a non-empty frame indexed by open time; pass val_df=None for "
                "no validation split"
            )
        expected_start = train_df.index[-1] + offset
        if val_df.index[0] != expected_start:
            raise DataError(
                f"val_df starts at {val_df.index[0]}, but the bar after train_df's last "
                f"({train_df.index[-1]}) is {expected_start}; split one contiguous frame so "
                "validation starts right after training"
            )
        check_grid(val_df, offset, "val_df")

    requested = dict(DEFAULT_FEATURE_GROUPS if feature_groups is None else feature_groups)
    groups = resolve_feature_groups(train_df, requested, optional_features)
    scalers = None
    if group_scalers is not None:
        scalers = {}
        for group, name in group_scalers.items():
            if group in requested and group not in groups:
                logger.info(
                    "group_scalers entry %r ignored: that group has no usable column", group
                )
                continue
            scalers[group] = name
    preprocessor = FeaturePreprocessor(
        groups,
        target_col=target_col,
        target_transform=target_transform,  # type: ignore[arg-type]  # checked inside
        group_scalers=scalers,
    ).fit(train_df)
    if static_covariates:
        preprocessor.static_covariates = {str(k): float(v) for k, v in static_covariates.items()}

    train_cov = preprocessor.transform_covariates(train_df)
    train_tgt = preprocessor.transform_target(train_df)
    val_cov: pd.DataFrame | None = None
    val_tgt: pd.Series | None = None
    if val_df is not None:
        val_cov = preprocessor.transform_covariates(val_df)
        last_train_close = float(train_df[target_col].iloc[-1])
        val_tgt = preprocessor.transform_target(val_df, previous_close=last_train_close)
    all_cov = train_cov if val_cov is None else pd.concat([train_cov, val_cov])
    all_tgt = train_tgt if val_tgt is None else pd.concat([train_tgt, val_tgt])
    return PreparedSeries(
        train_target=target_series(preprocessor, train_tgt, offset),
        train_covariates=to_series(train_cov, offset),
        val_target=None if val_tgt is None else target_series(preprocessor, val_tgt, offset),
        val_covariates=None if val_cov is None else to_series(val_cov, offset),
        covariates=to_series(all_cov, offset),
        target=target_series(preprocessor, all_tgt, offset),
        preprocessor=preprocessor,
    )


def prepare_from_settings(
    features: FeatureSettings | Settings,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame | None = None,
) -> PreparedSeries:
    """:func:`prepare_darts_timeseries` with the feature and target choices of a stage.

    The one place where the tuner (per fold) and the trainer turn their settings into series.
    ``features`` is a stage's :class:`~kallos_models.stage_settings.FeatureSettings` (resolved
    :class:`~kallos_models.config.Settings` are accepted too).
    """
    if isinstance(features, Settings):
        features = FeatureSettings.from_settings(features)
    return prepare_darts_timeseries(
        train_df,
        val_df,
        feature_groups=features.feature_groups,
        target_col=features.target_col,
        target_transform=features.target_transform,
        group_scalers=features.group_scalers or None,
        optional_features=tuple(features.optional_features),
    )
