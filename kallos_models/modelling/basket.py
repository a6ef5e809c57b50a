"""Global models: one model fit on a basket of assets' series at one timeframe.

A global model trains on a list of series, one per asset, each with its own preprocessing
fitted on that asset's own training rows only: prices differ by orders of magnitude between
assets (BTC near 60,000, SOL near 150), and a scaler fit on one asset's rows must never see
another's (nor any validation row). Each asset's target series carries the asset's identity
as Darts static covariates (a one-hot ``asset_<ID>`` column per asset of the basket) for the
models that accept them; the others learn from the scaled series alone. Series of different
lengths and start dates are used as they are: none is cut to the shortest.

:class:`BasketPreprocessor` holds the per-asset :class:`FeaturePreprocessor` objects; it is
the ``_scaler.pkl`` of a global model's bundle (its pickle path must stay
``kallos_models.modelling.basket.BasketPreprocessor``). A bundle's manifest records the
basket under ``basket`` (:func:`basket_record`). Evaluation and prediction work one asset at
a time on an *asset view* of the bundle (:func:`asset_view`): the same model with that
asset's preprocessor and training range, so every single-asset path applies unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import pandas as pd

from kallos_models.config import asset_list
from kallos_models.errors import ArtifactError, ConfigError
from kallos_models.modelling.preprocessing import FeaturePreprocessor, resolve_feature_groups
from kallos_models.modelling.series import PreparedSeries, prepare_darts_timeseries
from kallos_models.stage_settings import FeatureSettings

logger = logging.getLogger(__name__)

__all__ = [
    "STATIC_PREFIX",
    "PREPROCESSOR_TYPES",
    "BasketPreprocessor",
    "Preprocessor",
    "PreparedBasket",
    "asset_manifest",
    "asset_view",
    "basket_assets",
    "basket_record",
    "prepare_basket",
    "select_assets",
    "static_covariates_for",
]

#: Prefix of the one-hot static covariate columns naming a series' asset.
STATIC_PREFIX = "asset_"


def static_covariates_for(assets: Sequence[str], asset: str) -> dict[str, float]:
    """The one-hot asset identity of ``asset`` in ``assets``: ``{"asset_BTC": 1.0, ...}``."""
    return {f"{STATIC_PREFIX}{a}": 1.0 if a == asset else 0.0 for a in assets}


class BasketPreprocessor:
    """The per-asset preprocessing of a global model, one fitted FeaturePreprocessor each.

    Parameters
    ----------
    members : Mapping[str, FeaturePreprocessor]
        Asset -> its preprocessor, fitted on that asset's training rows only; two or more,
        with the same feature columns, groups and target. No default.

    Raises
    ------
    ArtifactError
        Fewer than two members, one not fitted, or members that disagree on the columns.
    """

    def __init__(self, members: Mapping[str, FeaturePreprocessor]) -> None:
        if len(members) < 2:
            raise ArtifactError("a basket needs at least two assets' preprocessors")
        first = next(iter(members.values()))
        for asset, member in members.items():
            if not isinstance(member, FeaturePreprocessor) or not member.fitted:
                raise ArtifactError(f"the preprocessor of {asset!r} is not a fitted one")
            if (member.feature_groups, member.target_col, member.target_transform) != (
                first.feature_groups,
                first.target_col,
                first.target_transform,
            ):
                raise ArtifactError(
                    f"the preprocessor of {asset!r} has other columns than the basket's first"
                )
        self.members: dict[str, FeaturePreprocessor] = dict(members)

    @property
    def assets(self) -> tuple[str, ...]:
        """The basket, in training order."""
        return tuple(self.members)

    def _first(self) -> FeaturePreprocessor:
        return next(iter(self.members.values()))

    @property
    def fitted(self) -> bool:
        """Every member is fitted (always, once constructed)."""
        return all(m.fitted for m in self.members.values())

    @property
    def feature_groups(self) -> dict[str, list[str]]:
        """The feature groups, the same for every asset."""
        return self._first().feature_groups

    @property
    def feature_columns(self) -> list[str]:
        """The feature columns, the same for every asset."""
        return self._first().feature_columns

    @property
    def group_scalers(self) -> dict[str, str]:
        """Scaler name per group, the same for every asset (each fit on its own rows)."""
        return self._first().group_scalers

    @property
    def target_col(self) -> str:
        """The price column of the target."""
        return self._first().target_col

    @property
    def target_transform(self) -> str:
        """``log_return`` or ``price``."""
        return self._first().target_transform

    @property
    def train_start(self) -> Any:
        """The earliest first training bar of any asset."""
        return min(m.train_start for m in self.members.values())

    @property
    def train_end(self) -> Any:
        """The latest last training bar of any asset."""
        return max(m.train_end for m in self.members.values())

    def member(self, asset: str) -> FeaturePreprocessor:
        """The preprocessor of ``asset``; ConfigError naming the basket for another."""
        if asset not in self.members:
            raise ConfigError(
                f"asset {asset!r} is not in the model's basket; it was trained on: "
                f"{', '.join(self.members)}"
            )
        return self.members[asset]

    def describe(self) -> dict[str, Any]:
        """The shared choices of :meth:`FeaturePreprocessor.describe`, and each asset's
        training range under ``assets``."""
        shared = {
            k: v
            for k, v in self._first().describe().items()
            if k not in ("train_start", "train_end", "n_train_rows")
        }
        ranges = {
            asset: {
                "train_start": str(m.train_start),
                "train_end": str(m.train_end),
                "n_train_rows": int(m.n_train_rows),
            }
            for asset, m in self.members.items()
        }
        return {**shared, "assets": ranges}

    def __repr__(self) -> str:
        return f"BasketPreprocessor({', '.join(self.members)})"


#: What a bundle's scaler file holds: one asset's preprocessing, or a basket's.
Preprocessor = Union[FeaturePreprocessor, BasketPreprocessor]  # noqa: UP007
PREPROCESSOR_TYPES = (FeaturePreprocessor, BasketPreprocessor)


@dataclass(frozen=True)
class PreparedBasket:
    """One :class:`PreparedSeries` per asset, and their series as the lists Darts fits on.

    The list attributes have the names of :class:`PreparedSeries`' single series, so
    :func:`kallos_models.modelling.fitting.fit_forecaster` fits either.
    """

    parts: dict[str, PreparedSeries]
    preprocessor: BasketPreprocessor

    def _all(self, name: str) -> list[Any]:
        return [getattr(part, name) for part in self.parts.values()]

    @property
    def train_target(self) -> list[Any]:
        """Each asset's training target series."""
        return self._all("train_target")

    @property
    def train_covariates(self) -> list[Any]:
        """Each asset's training past covariates."""
        return self._all("train_covariates")

    @property
    def val_target(self) -> list[Any] | None:
        """Each asset's validation target, or None without validation rows."""
        values = self._all("val_target")
        return None if any(v is None for v in values) else values

    @property
    def val_covariates(self) -> list[Any] | None:
        """Each asset's validation covariates, or None without validation rows."""
        values = self._all("val_covariates")
        return None if any(v is None for v in values) else values

    @property
    def target(self) -> list[Any]:
        """Each asset's training and validation target, concatenated."""
        return self._all("target")

    @property
    def covariates(self) -> list[Any]:
        """Each asset's training and validation covariates, concatenated."""
        return self._all("covariates")


def shared_feature_groups(
    frames: Mapping[str, pd.DataFrame],
    requested: Mapping[str, Sequence[str]],
    optional: Sequence[str],
) -> dict[str, list[str]]:
    """The feature groups every asset's frame can fill: an optional column absent (or empty)
    in any asset's rows is dropped for all, since one model needs the same inputs."""
    per_asset = {a: resolve_feature_groups(f, requested, optional) for a, f in frames.items()}
    shared: dict[str, list[str]] = {}
    for group, columns in requested.items():
        kept = [c for c in columns if all(c in g.get(group, []) for g in per_asset.values())]
        if kept:
            shared[group] = kept
    for asset, groups in per_asset.items():
        dropped = sorted(
            {c for cols in groups.values() for c in cols} - set(sum(shared.values(), []))
        )
        if dropped:
            logger.info("%s: %s dropped, absent from another asset of the basket", asset, dropped)
    return shared


def prepare_basket(
    frames: Mapping[str, tuple[pd.DataFrame, pd.DataFrame | None]],
    features: FeatureSettings,
    *,
    static_covariates: bool = True,
) -> PreparedBasket:
    """Fit each asset's preprocessing on its own training rows and build its series.

    Parameters
    ----------
    frames : Mapping[str, (DataFrame, DataFrame or None)]
        Asset -> (training rows, validation rows or None), each as
        :func:`kallos_models.data.datasets.load_features_from_db` returns them, at one
        timeframe; two or more assets, of any lengths and start dates. No default.
    features : FeatureSettings
        The feature and target choices, the same for every asset. No default.
    static_covariates : bool, default True
        Attach the one-hot asset identity (:func:`static_covariates_for`) to every target
        series; pass False for a model that does not accept static covariates.

    Returns
    -------
    PreparedBasket

    Raises
    ------
    DataError, ConfigError
        As :func:`kallos_models.modelling.series.prepare_darts_timeseries`, for any asset.
    """
    assets = tuple(frames)
    groups = shared_feature_groups(
        {a: train for a, (train, _) in frames.items()},
        features.feature_groups,
        tuple(features.optional_features),
    )
    parts = {
        asset: prepare_darts_timeseries(
            train,
            val,
            feature_groups=groups,
            target_col=features.target_col,
            target_transform=features.target_transform,
            group_scalers=features.group_scalers or None,
            optional_features=(),
            static_covariates=static_covariates_for(assets, asset) if static_covariates else None,
        )
        for asset, (train, val) in frames.items()
    }
    preprocessor = BasketPreprocessor({a: p.preprocessor for a, p in parts.items()})
    return PreparedBasket(parts=parts, preprocessor=preprocessor)


def basket_record(
    name: str, frames: Mapping[str, pd.DataFrame], preprocessor: BasketPreprocessor
) -> dict[str, Any]:
    """The manifest's ``basket``: its short name, assets, static covariate columns, and each
    asset's training range (``train_start``, ``train_end``, ``train_rows``, ``filled_rows``)."""
    static = next(iter(preprocessor.members.values())).static_covariates
    return {
        "name": name,
        "assets": list(frames),
        "static_covariates": None if not static else list(static),
        "per_asset": {
            asset: {
                "train_start": frame.index[0].isoformat(),
                "train_end": frame.index[-1].isoformat(),
                "train_rows": len(frame),
                "filled_rows": int(frame["filled"].sum()) if "filled" in frame.columns else 0,
            }
            for asset, frame in frames.items()
        },
    }


def basket_assets(manifest: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The assets of a global model's manifest, or None for a single-asset model."""
    record = manifest.get("basket")
    if not isinstance(record, Mapping):
        return None
    assets = record.get("assets")
    if not isinstance(assets, list) or len(assets) < 2:
        raise ArtifactError("the manifest's basket names fewer than two assets; retrain it")
    return tuple(str(a) for a in assets)


def select_assets(manifest: Mapping[str, Any], asset_id: str | None) -> tuple[str, ...]:
    """The assets of a global model to evaluate or forecast.

    Parameters
    ----------
    manifest : Mapping
        A global model's manifest. No default.
    asset_id : str or None
        One asset, a comma list, the basket's name (all), or None (all).

    Raises
    ------
    ConfigError
        An asset outside the basket (the message lists the basket).
    """
    assets = basket_assets(manifest) or ()
    if asset_id is None or asset_id == manifest.get("asset_id"):
        return assets
    chosen = asset_list(asset_id)
    outside = [a for a in chosen if a not in assets]
    if outside:
        raise ConfigError(
            f"asset {', '.join(outside)} is not in the basket of this global model; it was "
            f"trained on {', '.join(assets)}: pass --asset-id with one or more of them"
        )
    return chosen


def asset_manifest(manifest: Mapping[str, Any], asset: str) -> dict[str, Any]:
    """The manifest as one asset sees it: ``asset_id`` and the training range are that
    asset's; ``basket`` stays."""
    per_asset = (manifest.get("basket") or {}).get("per_asset") or {}
    if asset not in per_asset:
        raise ArtifactError(f"the manifest's basket has no training record for {asset!r}")
    return {**dict(manifest), "asset_id": asset, **per_asset[asset]}


def asset_view(bundle: Any, asset: str) -> Any:
    """A loaded global bundle as a single-asset one: the same model, with ``asset``'s
    preprocessor and manifest (:func:`asset_manifest`)."""
    preprocessor = bundle.preprocessor
    if not isinstance(preprocessor, BasketPreprocessor):
        raise ArtifactError(f"{bundle.paths.manifest} is not a global model's bundle")
    return dataclasses.replace(
        bundle,
        preprocessor=preprocessor.member(asset),
        manifest=asset_manifest(bundle.manifest, asset),
    )
