"""Predict: the bars after the newest stored bar, from a bundle, stored in ``forecasts``.

:func:`predict` loads a bundle (checksums and manifest digest verified before anything is
unpickled), finds the newest *closed* bar of the bundle's asset and timeframe (a bar whose
close time is after ``as_of`` is still open and ignored), refuses data that is too old
(``max_age``, default two bars), an origin inside the bundle's training rows (an ``as_of``
in the past whose forecasts would be in-sample), or a lookback window with a missing bar,
loads that window with the bundle's own indicator spec and columns, and forecasts ``horizon``
bars with the fitted preprocessing (never refit), beside the naive forecast (the last close).
Unless told not to, it stores the forecast in the ``forecasts`` table
(:mod:`kallos_models.data.forecast_store`), once per model and origin, for ``score`` to
judge once the bars arrive.

The model is identified by its bundle's manifest digest (the same for a bundle on disk and
the registered version it was uploaded as) plus, from the pipeline, the registered model and
version it was resolved from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.config import Settings, normalise_timeframe, timeframe_to_timedelta
from kallos_models.errors import ArtifactError, ConfigError, DataError
from kallos_models.files import json_float
from kallos_models.live_settings import PredictSettings, predict_settings
from kallos_models.modelling.bundles import is_registry_uri
from kallos_models.modelling.forecasting import (
    check_horizon,
    forecast_after,
    lookback_bars,
    model_chunk_lengths,
)

logger = logging.getLogger(__name__)

__all__ = ["PredictResult", "bundle_identity", "predict"]


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` forecast (``record``, the JSON it prints) and stored."""

    record: dict[str, Any]
    forecasts: pd.DataFrame


def bundle_identity(manifest: Mapping[str, Any]) -> str:
    """The bundle's identity: its manifest digest (``sha256:<hex>``), computed for format-1
    bundles, which carry none."""
    from kallos_models.modelling.bundle_files import MANIFEST_DIGEST_KEY, manifest_digest

    digest = manifest.get(MANIFEST_DIGEST_KEY)
    return str(digest) if isinstance(digest, str) and digest else manifest_digest(manifest)


def _spelled(delta: pd.Timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.3g} days" if hours >= 48 else f"{hours:.3g} hours"


def _fix_ingest(asset: str, timeframe: str) -> str:
    return (
        f"update the data first (kallos-run ingest --asset-id {asset} --timeframe {timeframe} ...)"
    )


def _origin(engine: Any, asset: str, timeframe: str, as_of: pd.Timestamp, max_age: pd.Timedelta):
    """The newest closed bar at ``as_of``, checked to be fresh enough."""
    from kallos_models.data import db
    from kallos_models.data.datasets import describe_assets

    bar = timeframe_to_timedelta(timeframe)
    origin = db.newest_open_time(engine, asset, timeframe, at_most=as_of - bar)
    if origin is None:
        stored = [
            pd.Timestamp(row["first"])
            for row in db.list_assets(engine)
            if row["asset_id"] == asset and row["timeframe"] == timeframe
        ]
        if not stored:
            raise DataError(
                f"asset {asset!r} has no {timeframe} bars in {db.MARKET_TABLE}; "
                f"{describe_assets(engine)}; {_fix_ingest(asset, timeframe)}"
            )
        oldest = stored[0]
        raise DataError(
            f"no {timeframe} bar of {asset!r} had closed by {as_of} (the oldest stored bar "
            f"opens at {oldest} and closes at {oldest + bar}); pass a later --as-of"
        )
    later = db.newest_open_time(engine, asset, timeframe)
    if later is not None and later > origin:
        logger.info("ignoring bars after %s: still open at %s", origin, as_of)
    age = as_of - origin
    if age > max_age:
        raise DataError(
            f"the newest closed {timeframe} bar of {asset!r} opened at {origin}, "
            f"{_spelled(age)} before {as_of:%Y-%m-%d %H:%M} UTC, older than --max-age "
            f"{_spelled(max_age)}: {_fix_ingest(asset, timeframe)}, or raise --max-age"
        )
    return origin


def _check_out_of_sample(
    origin: pd.Timestamp, manifest: Mapping[str, Any], bar: pd.Timedelta, as_of: pd.Timestamp
) -> None:
    """Refuse an origin before the bundle's last training bar: its forecasts would be of bars
    the model was fit on (an ``--as-of`` in the past, backfilling), and scoring them would
    flatter the model."""
    from kallos_models.modelling.intervals import check_after_calibration

    # the first forecast bar must lie after the calibration window
    check_after_calibration(manifest.get("intervals"), origin + bar, "--as-of")
    recorded = manifest.get("train_end")
    if recorded is None:
        return
    train_end = pd.Timestamp(recorded)
    if train_end.tzinfo is not None:
        train_end = train_end.tz_convert("UTC").tz_localize(None)
    if origin < train_end:
        raise DataError(
            f"the newest closed bar at {as_of:%Y-%m-%d %H:%M} UTC opened at {origin}, inside "
            f"the bundle's training rows (they end at {train_end}): its forecasts would be of "
            "bars the model was fit on; pass --as-of "
            f"{(train_end + bar).isoformat()} or later, or a bundle trained on less data"
        )


def _check_window(
    frame: pd.DataFrame, expected: pd.DatetimeIndex, asset: str, timeframe: str, fill: bool
) -> None:
    """Refuse a lookback window with a missing bar (or, unless ``fill``, a filled one)."""
    absent = ~expected.isin(frame.index)
    if not fill:
        flagged = frame["filled"].astype(bool)
        absent |= expected.isin(frame.index[flagged.to_numpy()])
    missing = expected[absent]
    if len(missing):
        raise DataError(
            f"the lookback window {expected[0]} .. {expected[-1]} ({len(expected)} {timeframe} "
            f"bars) of {asset!r} misses {len(missing)} bar(s), the first at {missing[0]}: "
            f"ingest them (kallos-run ingest --asset-id {asset} --timeframe {timeframe} ...)"
            + ("" if fill else ", or pass --fill-gaps to fill short gaps as training did")
        )


def _check_columns(frame: pd.DataFrame, columns: list[str], asset: str) -> None:
    empty = [c for c in columns if c in frame.columns and frame[c].isna().any()]
    if empty:
        raise DataError(
            f"the stored {asset!r} candles lack {', '.join(empty)} in the lookback window, but "
            "the bundle was trained with them: ingest candles that carry them (the Binance "
            "kline format) or retrain without them"
        )


def _step_intervals(row: pd.Series, quantiles: tuple[float, ...] | None) -> dict[str, Any]:
    """A step's price quantiles and intervals (None where the step has none: beyond the
    first step of a log-return target); nothing for a point model."""
    from kallos_models.modelling.intervals import interval_levels, quantile_column

    if not quantiles:
        return {}
    values = {q: float(row[quantile_column(q)]) for q in quantiles}
    if not all(np.isfinite(v) for v in values.values()):
        return {"quantiles": None, "intervals": None}
    return {
        "quantiles": {f"{q:g}": json_float(v) for q, v in values.items()},
        "intervals": [
            {"level": level, "lower": json_float(values[lo]), "upper": json_float(values[hi])}
            for level, lo, hi in interval_levels(quantiles)
        ],
    }


def _interval_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not record:
        return None
    keys = ("method", "conformal_model", "quantiles", "levels", "calibration_bars")
    return {key: record.get(key) for key in keys if record.get(key) is not None}


def predict(
    settings: Settings | PredictSettings,
    *,
    model_path: str | Path,
    source: str | None = None,
    registered: Mapping[str, Any] | None = None,
) -> PredictResult:
    """Forecast the bars after the newest closed bar; store the forecast once per origin.

    Parameters
    ----------
    settings
        :class:`~kallos_models.stage_settings.PredictSettings` (built from resolved
        :class:`Settings`, which are accepted too): database, asset and timeframe (checked
        against the bundle's; None takes them), ``horizon`` (1 .. the model's
        ``output_chunk_length``), ``max_age``, ``as_of``, ``fill_gaps`` and ``store``.
    model_path
        The bundle's model file (``{stem}.pt``), a local path.
    source
        What the record calls the model (``model.source``); default None: ``model_path``.
    registered
        ``{"name": ..., "version": ...}`` of the registered version the bundle was
        downloaded from (the pipeline passes it); default None.

    Returns
    -------
    PredictResult

    Raises
    ------
    ConfigError
        A ``models:/`` URI (resolve it through :func:`kallos_models.pipeline.predict`), an
        asset or timeframe not the bundle's, a horizon above ``output_chunk_length``.
    ArtifactError
        A bundle missing, incomplete or tampered with.
    DataError
        No closed bar; the newest older than ``max_age``; the newest before the bundle's last
        training bar (in-sample); a missing bar in the lookback window; a column the bundle
        needs absent from the stored candles.
    DatabaseError
        The database refuses the write of the forecast (pass ``store=False``).
    """
    from kallos_models.data import db, forecast_store
    from kallos_models.modelling import basket, bundles

    if is_registry_uri(model_path):
        raise ConfigError(
            f"{model_path} is a registry URI: predict from it through kallos_models.pipeline."
            "predict (what `kallos-run predict` calls), which downloads and verifies it first"
        )
    s = settings if isinstance(settings, PredictSettings) else predict_settings(settings)
    bundle = bundles.load_bundle(model_path)
    manifest = bundle.manifest
    named = str(manifest.get("asset_id") or "")
    timeframe = str(manifest.get("timeframe") or "")
    if not named or not timeframe:
        raise ArtifactError(
            f"the manifest {bundle.paths.manifest} names no asset or timeframe; retrain it"
        )
    if s.timeframe is not None and normalise_timeframe(s.timeframe) != timeframe:
        raise ConfigError(
            f"--timeframe is {s.timeframe} but the bundle was trained on {timeframe} bars; "
            f"drop --timeframe or pass the bundle of a {s.timeframe} model"
        )
    in_basket = basket.basket_assets(manifest)
    if in_basket is None:
        if s.asset_id is not None and s.asset_id != named:
            raise ConfigError(
                f"asset_id is {s.asset_id!r} but the bundle was trained on {named!r}; pass "
                f"--asset-id {named} or the bundle of a {s.asset_id!r} model"
            )
        views = {named: bundle}
    else:  # a global model: each chosen asset of its basket, through its own preprocessing
        views = {
            a: basket.asset_view(bundle, a) for a in basket.select_assets(manifest, s.asset_id)
        }
    as_of = s.as_of if s.as_of is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    reg = dict(registered or {})
    model_id = bundle_identity(manifest)  # the forecasts table's key
    model = {  # the "model" of every record; each asset's train_end is added to it
        "name": str(manifest.get("model_name") or ""),
        "registered_model": reg.get("name"),
        "version": reg.get("version"),
        "bundle_sha256": model_id.removeprefix("sha256:"),
        "source": str(Path(model_path)) if source is None else source,
    }
    engine = db.create_db_engine(s.database.url)
    try:
        made = [
            _forecast(s, engine, view, asset, timeframe, as_of) for asset, view in views.items()
        ]
        created = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
        rows = [row for one in made for row in _rows(one, timeframe, created, model_id, model)]
        # one statement: every asset's forecast is stored, or none
        stored = forecast_store.store_forecasts(engine, rows) if s.store else None
    finally:
        engine.dispose()
    records = {one.asset: _record(one, timeframe, as_of, model, stored) for one in made}
    if in_basket is None:
        return PredictResult(record=records[named], forecasts=made[0].path)
    if len(records) == 1:
        record = {**records[made[0].asset], "basket": named}
    else:
        record = {
            "basket": named,
            "assets": list(records),
            "stored": None if stored is None else stored.as_dict(),
            "per_asset": records,
        }
    forecasts = pd.concat([one.path.assign(asset_id=one.asset) for one in made])
    return PredictResult(record=record, forecasts=forecasts)


@dataclass(frozen=True)
class _Made:
    """One asset's forecast: the bundle (a global model's asset view) that made it, the path
    in prices, its origin bar and that bar's close."""

    asset: str
    bundle: Any
    path: pd.DataFrame
    origin: pd.Timestamp
    origin_close: float


def _forecast(
    s: PredictSettings,
    engine: Any,
    bundle: Any,
    asset: str,
    timeframe: str,
    as_of: pd.Timestamp,
) -> _Made:
    """One asset's forecast path after its newest closed bar."""
    from kallos_models.data import datasets
    from kallos_models.modelling import bundle_files

    manifest = bundle.manifest
    model, preprocessor = bundle.model, bundle.preprocessor
    icl, ocl = model_chunk_lengths(model)
    steps = check_horizon(s.horizon, ocl)
    bar = timeframe_to_timedelta(timeframe)
    max_age = s.max_age if s.max_age is not None else 2 * bar
    origin = _origin(engine, asset, timeframe, as_of, max_age)
    _check_out_of_sample(origin, manifest, bar, as_of)
    history = bundle.history(steps)
    needed = lookback_bars(icl, 1, preprocessor.target_transform) + history
    expected = pd.date_range(end=origin, periods=needed, freq=bar, name="open_time")
    columns = list(dict.fromkeys([preprocessor.target_col, *preprocessor.feature_columns]))
    frame = datasets.load_features_from_db(
        asset,
        origin,
        engine,
        start_date=expected[0],
        timeframe=timeframe,
        columns=columns,
        max_gap_bars=s.max_gap_bars if s.fill_gaps else needed,
        drop_warmup=True,
        indicators=bundle_files.manifest_indicators(manifest, columns),
    )
    _check_window(frame, expected, asset, timeframe, s.fill_gaps)
    frame = frame.loc[expected]
    _check_columns(frame, columns, asset)
    path = forecast_after(
        model,
        preprocessor,
        frame,
        horizon=steps,
        quantiles=bundle.quantiles,
        history=history,
    )
    name = str(manifest.get("model_name") or "")
    logger.info("%s %s %s: forecast from %s for %s", name, asset, timeframe, origin, path.index[-1])
    return _Made(asset, bundle, path, origin, float(frame[preprocessor.target_col].iloc[-1]))


def _rows(
    made: _Made,
    timeframe: str,
    created: pd.Timestamp,
    model_id: str,
    model: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The forecasts table's rows of one asset's forecast path."""
    path, version = made.path, model["version"]
    return [
        {
            "model_id": model_id,
            "asset_id": made.asset,
            "timeframe": timeframe,
            "origin_time": made.origin.to_pydatetime(),
            "step": int(step),
            "target_time": when.to_pydatetime(),
            "forecast": float(value),
            "origin_close": made.origin_close,
            "model_name": model["name"],
            "registered_model": model["registered_model"],
            "model_version": None if version is None else str(version),
            "created_at": created.to_pydatetime(),
        }
        for when, step, value in zip(path.index, path["step"], path["forecast"], strict=True)
    ]


def _record(
    made: _Made, timeframe: str, as_of: pd.Timestamp, model: Mapping[str, Any], stored: Any
) -> dict[str, Any]:
    """The JSON of one asset's forecast."""
    manifest, path, close = made.bundle.manifest, made.path, made.origin_close
    return {
        "asset_id": made.asset,
        "timeframe": timeframe,
        "model": {**model, "train_end": manifest.get("train_end")},
        "as_of": as_of.isoformat(),
        "origin": {"time": made.origin.isoformat(), "close": json_float(close)},
        "age_hours": json_float((as_of - made.origin).total_seconds() / 3600),
        "horizon": len(path),
        "steps": [
            {
                "step": int(step),
                "time": when.isoformat(),
                "forecast": json_float(value),
                "return": json_float(value / close - 1.0),
                "log_return": json_float(float(np.log(value / close))),
                "naive": json_float(close),
                **_step_intervals(path.loc[when], made.bundle.quantiles),
            }
            for when, step, value in zip(path.index, path["step"], path["forecast"], strict=True)
        ],
        "intervals": _interval_summary(manifest.get("intervals")),
        "stored": None if stored is None else stored.as_dict(),
    }
