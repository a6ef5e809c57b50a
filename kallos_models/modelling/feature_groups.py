"""Feature groups and their scalers: which columns are scaled together, and how.

:func:`resolve_feature_groups` keeps the configured groups' columns that the data has (dropping
missing optional ones); :func:`_make_pipeline` builds the unfitted scikit-learn pipeline of one
scaler name (one of :data:`SCALER_NAMES`). The fitted pipelines live in a
:class:`~kallos_models.modelling.preprocessing.FeaturePreprocessor`, which re-exports every name
here. A pipeline holds only scikit-learn objects and numpy functions, so pickled bundles do not
depend on this module's path.

scikit-learn is imported inside the function that builds pipelines, so importing this module
stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from kallos_models.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUP_SCALERS",
    "FALLBACK_SCALER",
    "SCALER_NAMES",
    "TARGET_TRANSFORMS",
    "ScalerName",
    "TargetTransformName",
    "resolve_feature_groups",
]

ScalerName = Literal["standard", "robust", "minmax", "log1p_standard", "log1p_robust", "none"]
TargetTransformName = Literal["log_return", "price"]

SCALER_NAMES: tuple[str, ...] = get_args(ScalerName)
TARGET_TRANSFORMS: tuple[str, ...] = get_args(TargetTransformName)

#: Scaler used for a group when ``group_scalers`` does not name one.
DEFAULT_GROUP_SCALERS: dict[str, str] = {
    "volume_features": "log1p_robust",
    "bounded_features": "minmax",
    "unbounded_features": "robust",
}
#: Scaler for any group not in :data:`DEFAULT_GROUP_SCALERS`.
FALLBACK_SCALER = "robust"


def _check_scaler_name(name: str, group: str) -> str:
    if name not in SCALER_NAMES:
        raise ConfigError(
            f"unknown scaler {name!r} for feature group {group!r}; "
            f"choose one of: {', '.join(SCALER_NAMES)}"
        )
    return name


def _check_groups(feature_groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Validate the shape of ``feature_groups`` and return it as a dict of lists."""
    if not isinstance(feature_groups, Mapping):
        raise ConfigError(
            "feature_groups must map a group name to a list of column names, "
            'e.g. {"volume_features": ["volume"], "bounded_features": ["rsi"]}'
        )
    groups: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for group, columns in feature_groups.items():
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise ConfigError(
                f"feature group {group!r} must be a list of column names, got {columns!r}; "
                f'write it as {{"{group}": ["col_a", "col_b"]}}'
            )
        for column in columns:
            if column in owner:
                raise ConfigError(
                    f"column {column!r} is in feature groups {owner[column]!r} and {group!r}; "
                    "list each column in one group only"
                )
            owner[column] = group
        groups[str(group)] = list(columns)
    return groups


def resolve_feature_groups(
    columns_present: Iterable[str] | pd.DataFrame,
    feature_groups: Mapping[str, Sequence[str]],
    optional_features: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Keep the feature groups' columns that the data has, dropping missing optional ones.

    Parameters
    ----------
    columns_present
        The data frame (a column that is entirely NaN counts as absent) or its column names.
    feature_groups
        Group name -> column names, e.g. :data:`kallos_models.config.DEFAULT_FEATURE_GROUPS`.
    optional_features
        Columns that may be absent or all-NaN (``taker_buy_base_asset_volume`` in plain OHLCV
        files); they are dropped from their group, with a log line. Default ``()``.

    Returns
    -------
    dict[str, list[str]]
        The groups in their given order, each with its usable columns; groups left empty are
        dropped.

    Raises
    ------
    DataError
        A non-optional column is absent or all-NaN (names the column, its group and the columns
        available), or no group has a column left.
    ConfigError
        ``feature_groups`` is not a mapping of group name to a list of column names, or a column
        is in two groups.
    """
    groups = _check_groups(feature_groups)
    optional = set(optional_features)
    if isinstance(columns_present, pd.DataFrame):
        frame = columns_present
        present = [str(c) for c in frame.columns]
        empty = {str(c) for c in frame.columns if frame[c].isna().all()}
    else:
        present = [str(c) for c in columns_present]
        empty = set()
    usable = set(present) - empty
    resolved: dict[str, list[str]] = {}
    for group, columns in groups.items():
        kept: list[str] = []
        for column in columns:
            if column in usable:
                kept.append(column)
                continue
            state = "is entirely empty (all NaN)" if column in empty else "is not in the data"
            if column in optional:
                logger.info("optional feature %r %s; dropped from group %r", column, state, group)
                continue
            raise DataError(
                f"feature column {column!r} of group {group!r} {state}; "
                f"columns available: {', '.join(sorted(usable)) or 'none'}. Remove it from "
                "feature_groups, list it in optional_features, or load data that has it"
            )
        if kept:
            resolved[group] = kept
        else:
            logger.info("feature group %r has no usable column; dropped", group)
    if not resolved:
        raise DataError(
            f"no feature group has a usable column (groups: {', '.join(groups) or 'none'}); "
            f"columns available: {', '.join(sorted(usable)) or 'none'}. "
            "Set feature_groups to columns the data has"
        )
    return resolved


def _make_pipeline(name: str) -> Any:
    """A fresh, unfitted scikit-learn pipeline for the scaler ``name``."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        MinMaxScaler,
        RobustScaler,
        StandardScaler,
    )

    steps: list[tuple[str, Any]] = []
    if name.startswith("log1p_"):
        steps.append(
            (
                "log1p",
                FunctionTransformer(
                    np.log1p, inverse_func=np.expm1, validate=False, check_inverse=False
                ),
            )
        )
    base = name.removeprefix("log1p_")
    if base == "standard":
        steps.append(("scale", StandardScaler()))
    elif base == "robust":
        steps.append(("scale", RobustScaler()))
    elif base == "minmax":
        steps.append(("scale", MinMaxScaler(feature_range=(0.0, 1.0))))
    else:  # "none"
        steps.append(("identity", FunctionTransformer(validate=False)))
    return Pipeline(steps)
