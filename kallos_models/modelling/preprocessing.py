"""Per-feature-group scaling and the target transform, fit on training rows only.

A :class:`FeaturePreprocessor` holds one scikit-learn pipeline per feature group (past
covariates) and a ``StandardScaler`` for the target. Everything is fit on the rows passed to
:meth:`FeaturePreprocessor.fit`, the training part of a fold or of the final training range, and
later frames (validation, hold-out) are only transformed with that fit. The whole object pickles
as one file: it is the ``_scaler.pkl`` of a model bundle.

The default target is the log return of ``close``; forecasts are turned back into prices with
:meth:`FeaturePreprocessor.to_prices` before any metric or plot. See
``documentation/preprocessing.md`` for the reasons.

Which columns form a group and which scaler each group gets is decided in
:mod:`kallos_models.modelling.feature_groups` (:func:`resolve_feature_groups`,
:data:`SCALER_NAMES`, :data:`DEFAULT_GROUP_SCALERS`, ...); those names are re-exported here.
This module must keep :class:`FeaturePreprocessor`: bundles pickle it under the path
``kallos_models.modelling.preprocessing.FeaturePreprocessor``.

scikit-learn is imported inside the functions that build pipelines, so importing this module
stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling.feature_groups import (
    DEFAULT_GROUP_SCALERS,
    FALLBACK_SCALER,
    SCALER_NAMES,
    TARGET_TRANSFORMS,
    ScalerName,
    TargetTransformName,
    _check_groups,
    _check_scaler_name,
    _make_pipeline,
    resolve_feature_groups,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUP_SCALERS",
    "FALLBACK_SCALER",
    "SCALER_NAMES",
    "TARGET_TRANSFORMS",
    "FeaturePreprocessor",
    "ScalerName",
    "TargetTransformName",
    "resolve_feature_groups",
]


def _first_bad(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[str, Any, int] | None:
    """First column with a NaN/inf value: (column, first bad index label, count), or None."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isfinite(values)
        if bad.any():
            return column, frame.index[int(np.argmax(bad))], int(bad.sum())
    return None


class FeaturePreprocessor:
    """Scalers per feature group and a scaled target, fit on training rows only.

    Parameters
    ----------
    feature_groups
        Group name -> column names (past covariates), usually the output of
        :func:`resolve_feature_groups`.
    target_col
        Price column the target comes from; default ``"close"``.
    target_transform
        ``"log_return"`` (default): the model sees ``log(close_t / close_{t-1})``;
        ``"price"``: the model sees the price itself. Either way the target is then
        standardised with a ``StandardScaler`` fit on the training target values.
    group_scalers
        Group name -> scaler name (one of :data:`SCALER_NAMES`); default None uses
        :data:`DEFAULT_GROUP_SCALERS`, and ``"robust"`` for any other group.

    Raises
    ------
    ConfigError
        Unknown scaler or target transform (lists the valid names), a ``group_scalers`` key that
        is not a group, a column in two groups, or no feature column at all.
    """

    #: Name -> value attached to every target series of this preprocessor as Darts static
    #: covariates (a global model's asset identity, set by ``prepare_darts_timeseries``);
    #: None for a single-asset model (and in bundles saved before global models).
    static_covariates: dict[str, float] | None = None

    def __init__(
        self,
        feature_groups: Mapping[str, Sequence[str]],
        *,
        target_col: str = "close",
        target_transform: TargetTransformName = "log_return",
        group_scalers: Mapping[str, str] | None = None,
    ) -> None:
        groups = {g: cols for g, cols in _check_groups(feature_groups).items() if cols}
        if not groups:
            raise ConfigError(
                "feature_groups has no column; give at least one group with one column, "
                'e.g. {"volume_features": ["volume"]}'
            )
        if target_transform not in TARGET_TRANSFORMS:
            raise ConfigError(
                f"target_transform {target_transform!r} is unknown; "
                f"choose one of: {', '.join(TARGET_TRANSFORMS)}"
            )
        chosen = dict(group_scalers or {})
        unknown = [g for g in chosen if g not in groups]
        if unknown:
            raise ConfigError(
                f"group_scalers names groups {unknown} that are not feature groups; "
                f"feature groups: {', '.join(groups)}"
            )
        self.feature_groups: dict[str, list[str]] = groups
        self.target_col: str = target_col
        self.target_transform: str = target_transform
        self.group_scalers: dict[str, str] = {
            g: _check_scaler_name(chosen.get(g, DEFAULT_GROUP_SCALERS.get(g, FALLBACK_SCALER)), g)
            for g in groups
        }
        self.feature_columns: list[str] = [c for cols in groups.values() for c in cols]
        self.pipelines: dict[str, Any] = {}
        self.target_scaler: Any = None
        self.train_start: Any = None
        self.train_end: Any = None
        self.n_train_rows: int = 0
        self.fitted: bool = False

    # -- helpers ---------------------------------------------------------------------------

    def _require_fitted(self, action: str) -> None:
        if not self.fitted:
            raise DataError(
                f"cannot {action}: the preprocessor is not fitted; call fit(train) first"
            )

    def _check_columns(self, frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{what} frame lacks columns {missing}; it has: "
                f"{', '.join(map(str, frame.columns))}. "
                "Load the same feature columns as for training"
            )
        bad = _first_bad(frame, columns)
        if bad is not None:
            column, when, count = bad
            raise DataError(
                f"{what} frame has {count} NaN/inf value(s) in column {column!r}, the first at "
                f"{when}; drop or fill those rows first (load_features_from_db fills short gaps "
                "and drops indicator warm-up rows)"
            )

    def _check_nonnegative(self, frame: pd.DataFrame, what: str) -> None:
        for group, name in self.group_scalers.items():
            if not name.startswith("log1p_"):
                continue
            for column in self.feature_groups[group]:
                values = frame[column].to_numpy(dtype="float64")
                negative = values < 0
                if negative.any():
                    raise DataError(
                        f"{what} frame has {int(negative.sum())} negative value(s) in column "
                        f"{column!r} (first at {frame.index[int(np.argmax(negative))]}), but group "
                        f"{group!r} uses the {name!r} scaler, which needs values >= 0; fix the "
                        "data or choose another scaler in group_scalers"
                    )

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, train: pd.DataFrame) -> FeaturePreprocessor:
        """Fit every group pipeline and the target scaler on ``train`` alone.

        Parameters
        ----------
        train
            Training rows indexed by time, with ``target_col`` and every feature column.
            No default.

        Returns
        -------
        FeaturePreprocessor
            ``self``, fitted.

        Raises
        ------
        DataError
            A column is missing, a used column has NaN/inf (names the column and the first bad
            timestamp), a ``log1p_*`` group has negative values, a price is not positive for a
            log-return target, or there are fewer than two target values.
        """
        self._check_columns(train, [*self.feature_columns, self.target_col], "training")
        self._check_nonnegative(train, "training")
        target = self.target_values(train)
        if len(target) < 2:
            raise DataError(
                f"training frame has {len(train)} row(s), too few to fit the target scaler; "
                "give it at least 3 rows (a log-return target loses the first one)"
            )
        from sklearn.preprocessing import StandardScaler

        pipelines: dict[str, Any] = {}
        for group, columns in self.feature_groups.items():
            pipeline = _make_pipeline(self.group_scalers[group])
            pipeline.fit(train[columns].to_numpy(dtype="float64"))
            pipelines[group] = pipeline
        target_scaler = StandardScaler()
        target_scaler.fit(target.to_numpy(dtype="float64").reshape(-1, 1))
        self.pipelines = pipelines
        self.target_scaler = target_scaler
        self.train_start = train.index[0]
        self.train_end = train.index[-1]
        self.n_train_rows = len(train)
        self.fitted = True
        logger.debug(
            "preprocessor fit on %d rows (%s .. %s)", len(train), train.index[0], train.index[-1]
        )
        return self

    # -- covariates ------------------------------------------------------------------------

    def transform_covariates(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Scale the feature columns of ``frame`` with the training fit.

        Parameters
        ----------
        frame
            Rows indexed by time with every feature column. No default.

        Returns
        -------
        pandas.DataFrame
            float32, same index, columns = :attr:`feature_columns`.

        Raises
        ------
        DataError
            Not fitted, a column is missing, NaN/inf in a used column, or negative values in a
            ``log1p_*`` group.
        """
        self._require_fitted("transform covariates")
        self._check_columns(frame, self.feature_columns, "covariate")
        self._check_nonnegative(frame, "covariate")
        blocks = [
            np.asarray(
                self.pipelines[group].transform(frame[columns].to_numpy(dtype="float64")),
                dtype="float64",
            )
            for group, columns in self.feature_groups.items()
        ]
        values = np.hstack(blocks).astype(np.float32)
        return pd.DataFrame(values, index=frame.index, columns=list(self.feature_columns))

    # -- target ----------------------------------------------------------------------------

    @property
    def target_name(self) -> str:
        """Name of the target series: ``close_log_return`` or ``close``."""
        if self.target_transform == "log_return":
            return f"{self.target_col}_log_return"
        return self.target_col

    def target_values(self, frame: pd.DataFrame, previous_close: float | None = None) -> pd.Series:
        """The raw (unscaled) target of ``frame``.

        Parameters
        ----------
        frame
            Rows indexed by time with ``target_col``. No default.
        previous_close
            For a log-return target: the close of the bar just before ``frame``, so its first
            row gets a return too; default None drops the first row. Ignored for ``"price"``.

        Returns
        -------
        pandas.Series
            float64; ``log(close_t / close_{t-1})`` or the price, indexed like ``frame``
            (without its first row for a log-return target and no ``previous_close``).

        Raises
        ------
        DataError
            ``target_col`` missing, NaN/inf, or (log return) a price that is not positive.
        """
        self._check_columns(frame, [self.target_col], "target")
        close = frame[self.target_col].astype("float64")
        if self.target_transform == "price":
            return close.rename(self.target_name)
        prices = close.to_numpy()
        if previous_close is not None:
            if not math.isfinite(float(previous_close)) or float(previous_close) <= 0:
                raise DataError(
                    f"previous_close {previous_close!r} is not a positive price; pass the close "
                    "of the bar just before the frame"
                )
            prices = np.concatenate([[float(previous_close)], prices])
        not_positive = prices <= 0
        if not_positive.any():
            first = int(np.argmax(not_positive)) - (1 if previous_close is not None else 0)
            raise DataError(
                f"column {self.target_col!r} has {int(not_positive.sum())} price(s) <= 0 (first at "
                f"{frame.index[max(first, 0)]}); a log-return target needs positive prices: fix "
                "the data or use target_transform='price'"
            )
        returns = np.diff(np.log(prices))
        index = frame.index if previous_close is not None else frame.index[1:]
        return pd.Series(returns, index=index, name=self.target_name)

    def transform_target(
        self, frame: pd.DataFrame, previous_close: float | None = None
    ) -> pd.Series:
        """The scaled target of ``frame``: :meth:`target_values` through the training scaler.

        Parameters
        ----------
        frame
            Rows indexed by time with ``target_col``. No default.
        previous_close
            See :meth:`target_values`; default None.

        Returns
        -------
        pandas.Series
            float32, indexed like :meth:`target_values`.
        """
        self._require_fitted("transform the target")
        raw = self.target_values(frame, previous_close)
        scaled = self.target_scaler.transform(raw.to_numpy(dtype="float64").reshape(-1, 1))
        return pd.Series(scaled.ravel().astype(np.float32), index=raw.index, name=raw.name)

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        """Undo the target scaling: back to log returns or prices.

        Parameters
        ----------
        scaled
            Scaled target values of any shape. No default.

        Returns
        -------
        numpy.ndarray
            float64, same shape.
        """
        self._require_fitted("invert the target")
        values = np.asarray(scaled, dtype="float64")
        mean = float(self.target_scaler.mean_[0])
        scale = float(self.target_scaler.scale_[0])
        return values * scale + mean

    def to_prices(self, scaled_path: np.ndarray, anchor_close: float) -> np.ndarray:
        """Turn a scaled forecast path into prices.

        Parameters
        ----------
        scaled_path
            Scaled forecasts for steps 1..H, steps along the first axis (Darts' ``values()``
            layout: time, component[, sample]). No default.
        anchor_close
            Last known close when the forecast was made. No default. Unused for ``"price"``.

        Returns
        -------
        numpy.ndarray
            Prices, same shape: ``anchor_close * exp(cumsum(returns))`` for a log-return
            target, the inverse-scaled price otherwise.

        Raises
        ------
        DataError
            ``anchor_close`` is not a positive finite price (log-return target).
        """
        raw = self.inverse_target(scaled_path)
        if self.target_transform == "price":
            return raw
        anchor = float(anchor_close)
        if not math.isfinite(anchor) or anchor <= 0:
            raise DataError(
                f"anchor_close {anchor_close!r} is not a positive price; pass the last known "
                "close before the forecast"
            )
        return anchor * np.exp(np.cumsum(raw, axis=0))

    # -- manifest --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the bundle manifest.

        Returns
        -------
        dict
            ``feature_groups``, ``feature_columns``, ``group_scalers``, ``target_col``,
            ``target_transform``, ``target_name``, ``fitted`` and, once fitted, the training
            range (``train_start``, ``train_end``, ``n_train_rows``).
        """
        info: dict[str, Any] = {
            "feature_groups": {g: list(cols) for g, cols in self.feature_groups.items()},
            "feature_columns": list(self.feature_columns),
            "group_scalers": dict(self.group_scalers),
            "target_col": self.target_col,
            "target_transform": self.target_transform,
            "target_name": self.target_name,
            "fitted": self.fitted,
        }
        if self.fitted:
            info["train_start"] = str(self.train_start)
            info["train_end"] = str(self.train_end)
            info["n_train_rows"] = int(self.n_train_rows)
        return info

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "unfitted"
        return (
            f"FeaturePreprocessor({state}, groups={self.group_scalers}, "
            f"target={self.target_col!r}/{self.target_transform})"
        )
