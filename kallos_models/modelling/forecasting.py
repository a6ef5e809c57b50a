"""Rolling forecasts of a fitted model over a frame, in prices, beside naive persistence.

The forecasting core under the stages: the tuner scores its folds and ``evaluate`` its
hold-out window with :func:`rolling_forecasts`, and ``predict`` forecasts the bars after the
newest one with :func:`forecast_after`, so a fold score and a hold-out score mean the same
thing. Darts and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.config import parse_date
from kallos_models.errors import ConfigError, DataError, ModelError
from kallos_models.modelling.intervals import price_quantiles_supported, quantile_column
from kallos_models.modelling.preprocessing import FeaturePreprocessor

logger = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = ("actual", "forecast", "naive", "origin_close")


def model_chunk_lengths(model: Any) -> tuple[int, int]:
    """``(input_chunk_length, output_chunk_length)`` of a Darts model from the zoo (ModelError).

    A torch model has both attributes; for a regression model over lags the lookback is its
    oldest lag of the target or of the past covariates (``extreme_lags``); a Darts conformal
    wrapper has those of the model it wraps.
    """
    from darts.models.forecasting.conformal_models import ConformalModel

    if isinstance(model, ConformalModel):
        model = model.model
    try:
        ocl = int(model.output_chunk_length)
        if hasattr(model, "input_chunk_length"):
            return int(model.input_chunk_length), ocl
        lags = model.extreme_lags
        oldest = min(lag for lag in (lags[0], lags[2]) if lag is not None)
        return int(-oldest), ocl
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{type(model).__name__} has no input_chunk_length/output_chunk_length; rolling "
            "forecasts need a Darts forecasting model of the zoo (see zoo.create_model)"
        ) from exc


def check_horizon(horizon: int, output_chunk_length: int) -> int:
    """``horizon`` as an int, checked to be in ``1 .. output_chunk_length`` (ConfigError)."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ConfigError(f"horizon must be a whole number of bars >= 1, got {horizon!r}")
    horizon = int(horizon)
    if horizon > output_chunk_length:
        raise ConfigError(
            f"horizon {horizon} exceeds the model's output_chunk_length {output_chunk_length}: "
            "longer horizons would feed the model future values of past covariates; use "
            f"--horizon <= {output_chunk_length} or retrain with output_chunk_length >= {horizon}"
        )
    return horizon


def lookback_bars(input_chunk_length: int, horizon: int, target_transform: str) -> int:
    """Bars needed before the first evaluated bar.

    The first forecast that lands on the first evaluated bar ``start`` at step ``horizon`` is
    made at the origin ``start - horizon`` bars; its input window is the ``input_chunk_length``
    bars ending at that origin, and a log-return target needs one more close before them.

    Parameters
    ----------
    input_chunk_length
        The model's lookback, in bars.
    horizon
        Forecast step that is scored, in bars.
    target_transform
        ``"log_return"`` or ``"price"``.

    Returns
    -------
    int
        ``input_chunk_length + horizon - 1``, plus 1 for ``"log_return"``.
    """
    return (
        int(input_chunk_length) + int(horizon) - 1 + (1 if target_transform == "log_return" else 0)
    )


def _to_timestamp(value: Any, name: str) -> pd.Timestamp:
    ts = parse_date(value, name)
    if ts is None:
        raise ConfigError(f"{name} is required; give a date such as 2024-07-01")
    return ts


def _price_paths(
    preprocessor: FeaturePreprocessor,
    forecast: Any,
    anchor: float,
    quantiles: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A Darts forecast (one path, or one column per quantile) as prices from ``anchor``.

    Returns the point path (the median of a quantile forecast) and, for a quantile forecast,
    a ``(steps, len(quantiles))`` array of price quantiles, sorted along each row (quantile
    regression can cross) and NaN at the steps where a quantile of the scaled target is not
    a quantile of the price (:func:`~kallos_models.modelling.intervals.price_quantiles_supported`).
    """
    values = np.asarray(forecast.values(copy=False), dtype="float64")
    if not quantiles:
        return preprocessor.to_prices(values[:, 0], anchor), None
    if values.shape[1] != len(quantiles):
        raise ModelError(
            f"the model forecast {values.shape[1]} component(s), not the {len(quantiles)} "
            "quantiles its bundle records; retrain it"
        )
    median = list(quantiles).index(0.5)
    values = np.sort(values, axis=1)
    priced = np.column_stack(
        [preprocessor.to_prices(values[:, i], anchor) for i in range(len(quantiles))]
    )
    for step in range(1, len(values) + 1):
        if not price_quantiles_supported(preprocessor.target_transform, step):
            priced[step - 1, :] = np.nan
    return preprocessor.to_prices(values[:, median], anchor), priced


def rolling_forecasts(
    model: Any,
    preprocessor: FeaturePreprocessor,
    frame: pd.DataFrame,
    *,
    start: pd.Timestamp,
    horizon: int = 1,
    quantiles: Sequence[float] | None = None,
    history: int = 0,
) -> pd.DataFrame:
    """One ``horizon``-step forecast per bar from ``start`` to the end of ``frame``, in prices.

    The forecast for bar ``T`` is made at the origin ``t0 = T - horizon`` bars from the
    ``input_chunk_length`` bars ending at ``t0`` (target and past covariates); it is a path
    of ``horizon`` scaled targets whose first step is ``t0 + 1``. The path is turned into
    prices from the anchor ``close[t0]`` (:meth:`FeaturePreprocessor.to_prices`: cumulative for
    log returns) and its last step is the forecast for ``T``. The naive persistence forecast
    for ``T`` is the same anchor, the last close known at the origin.

    Parameters
    ----------
    model
        A fitted Darts torch forecasting model that takes past covariates.
    preprocessor
        The preprocessing fitted with the model; only used to transform (never refit).
    frame
        Untransformed rows as returned by :func:`kallos_models.data.datasets.load_features_from_db`:
        a regular DatetimeIndex, the target column and the feature columns. It must hold at
        least :func:`lookback_bars` rows before ``start`` and runs to the last bar evaluated.
    start
        First bar evaluated; the first bar of ``frame`` at or after it is used.
    horizon
        Forecast step scored, in bars; default 1. At most the model's
        ``output_chunk_length``.
    quantiles
        The quantiles a probabilistic model (quantile regression or a Darts conformal
        wrapper) forecasts; default None for a point model. The median is the ``forecast``.
    history
        Bars needed before ``start`` beyond the model's lookback (a conformal model's
        calibration, :func:`~kallos_models.modelling.intervals.calibration_history`);
        default 0.

    Returns
    -------
    pandas.DataFrame
        Indexed by the forecast timestamps (every bar of ``frame`` from ``start`` on), float64
        columns ``actual``, ``forecast``, ``naive`` and ``origin_close``; with ``quantiles``
        also one price column per quantile (``q0.05``, ...; NaN beyond the first step of a
        log-return target).

    Raises
    ------
    ConfigError
        ``horizon`` below 1 or above the model's ``output_chunk_length``.
    DataError
        ``frame`` not on a regular grid, no bar at or after ``start``, fewer rows before
        ``start`` than :func:`lookback_bars`, or a transform error (missing column, NaN).
    ModelError
        The model produced non-finite forecasts, or Darts did not forecast the bars asked for.
    """
    from kallos_models.modelling.series import bar_offset, check_grid, target_series, to_series

    icl, ocl = model_chunk_lengths(model)
    horizon = check_horizon(horizon, ocl)
    offset = bar_offset(frame, "frame")
    check_grid(frame, offset, "frame")
    start_ts = _to_timestamp(start, "start")
    pos = int(frame.index.searchsorted(start_ts, side="left"))
    if pos >= len(frame):
        raise DataError(
            f"no bar at or after start {start_ts} to forecast: the frame ends at "
            f"{frame.index[-1]}; load rows up to the end of the evaluation window"
        )
    needed = lookback_bars(icl, horizon, preprocessor.target_transform) + int(history)
    if pos < needed:
        extra = (
            " + 1 for the log-return target"
            if preprocessor.target_transform == "log_return"
            else ""
        ) + (f" + {history} for the conformal calibration" if history else "")
        raise DataError(
            f"forecasting from {frame.index[pos]} at horizon {horizon} needs {needed} bars of "
            f"lookback before it (input_chunk_length {icl} + horizon {horizon} - 1{extra}), "
            f"but the frame has {pos} (it starts at {frame.index[0]}); load rows from "
            f"{frame.index[pos] - needed * offset} or start the evaluation later"
        )

    covariates = to_series(preprocessor.transform_covariates(frame), offset)
    target = target_series(preprocessor, preprocessor.transform_target(frame), offset)
    first_step = frame.index[pos - (horizon - 1)]
    forecasts = model.historical_forecasts(
        series=target,
        past_covariates=covariates,
        start=first_step,
        forecast_horizon=horizon,
        stride=1,
        retrain=False,
        last_points_only=False,
        verbose=False,
        predict_likelihood_parameters=bool(quantiles),
    )
    expected = len(frame) - pos
    if len(forecasts) != expected or (forecasts and forecasts[0].start_time() != first_step):
        got = forecasts[0].start_time() if forecasts else "nothing"
        raise ModelError(
            f"Darts made {len(forecasts)} forecasts starting at {got}; expected {expected} "
            f"starting at {first_step}. Check that the model was trained with these covariates"
        )

    close = frame[preprocessor.target_col].to_numpy(dtype="float64")
    index = frame.index
    times: list[pd.Timestamp] = []
    rows: list[tuple[float, float, float, float]] = []
    bands: list[np.ndarray] = []
    for fc in forecasts:
        first = index.get_loc(fc.start_time())
        origin = int(first) - 1
        anchor = float(close[origin])
        prices, priced = _price_paths(preprocessor, fc, anchor, quantiles)
        when = origin + horizon
        times.append(index[when])
        rows.append((float(close[when]), float(prices[horizon - 1]), anchor, anchor))
        if priced is not None:
            bands.append(priced[horizon - 1])
    results = pd.DataFrame(
        rows, index=pd.DatetimeIndex(times, name=index.name or "open_time"), columns=RESULT_COLUMNS
    )
    if quantiles:
        for i, q in enumerate(quantiles):
            results[quantile_column(q)] = [band[i] for band in bands]
    if not np.isfinite(results["forecast"].to_numpy()).all():
        bad = results.index[~np.isfinite(results["forecast"].to_numpy())]
        raise ModelError(
            f"the model produced {len(bad)} non-finite forecast(s), the first for {bad[0]}; "
            "the model has diverged: retrain it (lower learning_rate) before evaluating"
        )
    return results


def forecast_after(
    model: Any,
    preprocessor: FeaturePreprocessor,
    frame: pd.DataFrame,
    *,
    horizon: int = 1,
    quantiles: Sequence[float] | None = None,
    history: int = 0,
) -> pd.DataFrame:
    """The ``horizon`` bars after the last bar of ``frame``, forecast from it, in prices.

    The same forecast :func:`rolling_forecasts` makes from an origin inside a frame, made
    from the frame's last bar: the model reads the ``input_chunk_length`` bars ending there
    (target and past covariates, transformed with the fitted preprocessing, never refit), and
    its path is turned into prices from the last close.

    Parameters
    ----------
    model
        A fitted Darts torch forecasting model that takes past covariates.
    preprocessor
        The preprocessing fitted with the model.
    frame
        Untransformed rows on a regular grid ending at the origin, at least
        :func:`lookback_bars` ``(icl, 1, transform)`` of them.
    horizon
        Bars ahead, ``1 .. output_chunk_length``; default 1.
    quantiles, history
        As :func:`rolling_forecasts`.

    Returns
    -------
    pandas.DataFrame
        Indexed by the forecast bars' open times (``step`` 1..horizon), float64 columns
        ``forecast`` and ``naive`` (the last close) and int ``step``; with ``quantiles`` one
        price column per quantile (NaN beyond the first step of a log-return target).

    Raises
    ------
    ConfigError, DataError, ModelError
        As :func:`rolling_forecasts`.
    """
    from kallos_models.modelling.fitting import surface_interrupts
    from kallos_models.modelling.series import bar_offset, check_grid, target_series, to_series

    icl, ocl = model_chunk_lengths(model)
    horizon = check_horizon(horizon, ocl)
    offset = bar_offset(frame, "frame")
    check_grid(frame, offset, "frame")
    needed = lookback_bars(icl, 1, preprocessor.target_transform) + int(history)
    if len(frame) < needed:
        raise DataError(
            f"forecasting from {frame.index[-1]} needs {needed} bars ending there "
            f"(input_chunk_length {icl}"
            + (f", conformal calibration {history}" if history else "")
            + f"), but the frame has {len(frame)}; load more history"
        )
    frame = frame.iloc[-needed:]
    covariates = to_series(preprocessor.transform_covariates(frame), offset)
    target = target_series(preprocessor, preprocessor.transform_target(frame), offset)
    with surface_interrupts():
        predicted = model.predict(
            n=horizon,
            series=target,
            past_covariates=covariates,
            verbose=False,
            predict_likelihood_parameters=bool(quantiles),
        )
    anchor = float(frame[preprocessor.target_col].iloc[-1])
    prices, priced = _price_paths(preprocessor, predicted, anchor, quantiles)
    times = pd.date_range(frame.index[-1] + offset, periods=horizon, freq=offset)
    if len(prices) != horizon or not np.isfinite(prices).all():
        raise ModelError(
            f"the model produced {len(prices)} forecast(s), not {horizon} finite ones, from "
            f"{frame.index[-1]}; the model has diverged: retrain it (lower learning_rate)"
        )
    out = pd.DataFrame(
        {"step": np.arange(1, horizon + 1), "forecast": prices, "naive": anchor},
        index=pd.DatetimeIndex(times, name=frame.index.name or "open_time"),
    )
    if priced is not None:
        for i, q in enumerate(quantiles or ()):
            out[quantile_column(q)] = priced[:, i]
    return out
