"""Hold-out evaluation: rolling forecasts, metrics against naive persistence, a plot.

:func:`evaluate_model` loads a saved bundle (checksums verified before anything is unpickled),
reads the hold-out window plus the lookback the model needs from the database, makes one
forecast per bar with the fitted preprocessing (never refit), turns the forecasts back into
prices and scores them against the naive forecast "the next close equals the last known close".
At horizon 1 it also backtests the forecasts against buy-and-hold
(:mod:`kallos_models.backtest`). It writes ``{asset}_evaluation_metrics.json`` and
``{asset}_evaluation_plot.png``.

:func:`rolling_forecasts` and :func:`compute_metrics` are also what the tuner scores its folds
with, so a fold score and a hold-out score mean the same thing. See
``documentation/evaluation.md`` for the alignment of forecasts and the metric formulas.

Darts, torch and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.artifacts import atomic_write
from kallos_models.backtest import BacktestConfig, backtest_curves, run_backtest
from kallos_models.config import Settings, parse_date, timeframe_to_timedelta
from kallos_models.errors import ArtifactError, ConfigError, DataError, ModelError
from kallos_models.preprocessing import FeaturePreprocessor

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUTPUT_PATH",
    "EvaluationResult",
    "compute_metrics",
    "diebold_mariano",
    "evaluate_model",
    "lookback_bars",
    "plot_evaluation",
    "rolling_forecasts",
    "safe_asset_name",
]

#: Where :func:`evaluate_model` writes when ``settings.output_path`` is None.
DEFAULT_OUTPUT_PATH = "./evaluation_results"

RESULT_COLUMNS: tuple[str, ...] = ("actual", "forecast", "naive", "origin_close")


# --------------------------------------------------------------------------------------------
# Rolling forecasts
# --------------------------------------------------------------------------------------------


def _model_chunk_lengths(model: Any) -> tuple[int, int]:
    """``(input_chunk_length, output_chunk_length)`` of a Darts torch model."""
    try:
        icl = int(model.input_chunk_length)
        ocl = int(model.output_chunk_length)
    except (AttributeError, TypeError) as exc:
        raise ModelError(
            f"{type(model).__name__} has no input_chunk_length/output_chunk_length; rolling "
            "forecasts need a Darts torch forecasting model (see architectures.create_model)"
        ) from exc
    return icl, ocl


def _check_horizon(horizon: int, output_chunk_length: int) -> int:
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


def rolling_forecasts(
    model: Any,
    preprocessor: FeaturePreprocessor,
    frame: pd.DataFrame,
    *,
    start: pd.Timestamp,
    horizon: int = 1,
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
        Untransformed rows as returned by :func:`kallos_models.datasets.load_features_from_db`:
        a regular DatetimeIndex, the target column and the feature columns. It must hold at
        least :func:`lookback_bars` rows before ``start`` and runs to the last bar evaluated.
    start
        First bar evaluated; the first bar of ``frame`` at or after it is used.
    horizon
        Forecast step scored, in bars; default 1. At most the model's
        ``output_chunk_length``.

    Returns
    -------
    pandas.DataFrame
        Indexed by the forecast timestamps (every bar of ``frame`` from ``start`` on), float64
        columns ``actual``, ``forecast``, ``naive`` and ``origin_close``.

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
    from kallos_models.datasets import _bar_offset, _check_grid, _to_series

    icl, ocl = _model_chunk_lengths(model)
    horizon = _check_horizon(horizon, ocl)
    offset = _bar_offset(frame, "frame")
    _check_grid(frame, offset, "frame")
    start_ts = _to_timestamp(start, "start")
    pos = int(frame.index.searchsorted(start_ts, side="left"))
    if pos >= len(frame):
        raise DataError(
            f"no bar at or after start {start_ts} to forecast: the frame ends at "
            f"{frame.index[-1]}; load rows up to the end of the evaluation window"
        )
    needed = lookback_bars(icl, horizon, preprocessor.target_transform)
    if pos < needed:
        extra = (
            " + 1 for the log-return target"
            if preprocessor.target_transform == "log_return"
            else ""
        )
        raise DataError(
            f"forecasting from {frame.index[pos]} at horizon {horizon} needs {needed} bars of "
            f"lookback before it (input_chunk_length {icl} + horizon {horizon} - 1{extra}), "
            f"but the frame has {pos} (it starts at {frame.index[0]}); load rows from "
            f"{frame.index[pos] - needed * offset} or start the evaluation later"
        )

    covariates = _to_series(preprocessor.transform_covariates(frame), offset)
    target = _to_series(preprocessor.transform_target(frame), offset)
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
    for fc in forecasts:
        first = index.get_loc(fc.start_time())
        origin = int(first) - 1
        anchor = float(close[origin])
        path = np.asarray(fc.values(copy=False), dtype="float64")[:, 0]
        prices = preprocessor.to_prices(path, anchor)
        when = origin + horizon
        times.append(index[when])
        rows.append((float(close[when]), float(prices[horizon - 1]), anchor, anchor))
    results = pd.DataFrame(
        rows, index=pd.DatetimeIndex(times, name=index.name or "open_time"), columns=RESULT_COLUMNS
    )
    if not np.isfinite(results["forecast"].to_numpy()).all():
        bad = results.index[~np.isfinite(results["forecast"].to_numpy())]
        raise ModelError(
            f"the model produced {len(bad)} non-finite forecast(s), the first for {bad[0]}; "
            "the model has diverged: retrain it (lower learning_rate) before evaluating"
        )
    return results


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _as_vector(values: Any, name: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim > 1 and sum(size > 1 for size in array.shape) <= 1:
        array = array.reshape(-1)  # a column or row vector
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    if length is not None and len(array) != length:
        raise DataError(f"{name} has {len(array)} values but actual has {length}; align them")
    if not np.isfinite(array).all():
        first = int(np.argmax(~np.isfinite(array)))
        raise DataError(f"{name} has a NaN/inf value at position {first}; drop those points")
    return array


def _point_metrics(
    actual: np.ndarray, forecast: np.ndarray, mase_scale: float | None
) -> dict[str, float | None]:
    error = actual - forecast
    abs_error = np.abs(error)
    mae = float(abs_error.mean())
    rmse = float(np.sqrt(np.mean(error**2)))
    abs_actual = np.abs(actual)
    mape = None if (abs_actual == 0).any() else float(100.0 * np.mean(abs_error / abs_actual))
    denom = abs_actual + np.abs(forecast)
    ratio = np.divide(2.0 * abs_error, denom, out=np.zeros_like(abs_error), where=denom > 0)
    smape = float(100.0 * ratio.mean())
    mase = None if not mase_scale else mae / mase_scale
    return {
        "rmse": _json_float(rmse),
        "mae": _json_float(mae),
        "mape": None if mape is None else _json_float(mape),
        "smape": _json_float(smape),
        "mase": None if mase is None else _json_float(mase),
    }


def diebold_mariano(
    errors_model: np.ndarray, errors_baseline: np.ndarray, *, horizon: int = 1
) -> dict[str, Any]:
    """Diebold-Mariano test of equal squared-error loss, with the HLN correction.

    ``d_t = e_model,t**2 - e_baseline,t**2``; ``dbar`` its mean over ``n`` points;
    ``gamma_k = (1/n) * sum_{t>k} (d_t - dbar)(d_{t-k} - dbar)``; the long-run variance of
    ``dbar`` is Newey-West with ``h - 1`` lags (Bartlett weights ``1 - k/h``):
    ``V = (gamma_0 + 2 * sum_{k=1}^{h-1} (1 - k/h) gamma_k) / n``. ``DM = dbar / sqrt(V)``,
    multiplied by the Harvey-Leybourne-Newbold factor
    ``sqrt((n + 1 - 2h + h(h-1)/n) / n)``; the two-sided p-value is from Student's t with
    ``n - 1`` degrees of freedom. A negative statistic means the model's squared errors are
    smaller than the baseline's.

    Parameters
    ----------
    errors_model, errors_baseline
        Forecast errors (actual - forecast) of the two forecasts at the same points.
    horizon
        Forecast horizon ``h`` of the errors, in steps; default 1.

    Returns
    -------
    dict
        ``statistic`` and ``p_value`` (None when undefined, with a ``note`` saying why),
        ``loss`` (``"squared"``), ``horizon``, ``n``.
    """
    from scipy import stats

    e1 = _as_vector(errors_model, "errors_model")
    e2 = _as_vector(errors_baseline, "errors_baseline", len(e1))
    h = int(horizon)
    n = len(e1)
    out: dict[str, Any] = {
        "statistic": None,
        "p_value": None,
        "loss": "squared",
        "horizon": h,
        "n": n,
    }
    if n < 2:
        out["note"] = f"needs at least 2 points, got {n}"
        return out
    d = e1**2 - e2**2
    dbar = float(d.mean())
    centred = d - dbar
    scale = max(float(np.max(np.abs(d))), float(np.max(e1**2)), float(np.max(e2**2)), 1e-300)
    if float(np.max(np.abs(centred))) <= 1e-12 * scale:
        out["note"] = (
            "the loss differential has zero variance (the two forecasts' squared errors differ "
            "by a constant, e.g. identical forecasts); the test is undefined"
        )
        return out
    variance = float(centred @ centred) / n
    for k in range(1, min(h, n)):
        gamma_k = float(centred[k:] @ centred[:-k]) / n
        variance += 2.0 * (1.0 - k / h) * gamma_k
    variance /= n
    if not variance > 0:
        out["note"] = "the estimated variance of the mean loss differential is not positive"
        return out
    statistic = dbar / math.sqrt(variance)
    correction = (n + 1 - 2 * h + h * (h - 1) / n) / n
    if correction <= 0:
        out["note"] = f"too few points ({n}) for horizon {h}: the HLN correction is undefined"
        return out
    statistic *= math.sqrt(correction)
    out["statistic"] = _json_float(statistic)
    out["p_value"] = _json_float(2.0 * stats.t.sf(abs(statistic), df=n - 1))
    return out


def compute_metrics(
    actual: np.ndarray,
    forecast: np.ndarray,
    naive: np.ndarray,
    *,
    origin: np.ndarray | None = None,
    horizon: int = 1,
    mase_scale: float | None = None,
) -> dict[str, Any]:
    """Point metrics of a forecast and of the naive baseline, their ratio and a DM test.

    Parameters
    ----------
    actual, forecast, naive
        Realised prices, model forecasts and naive forecasts at the same points (1-D, finite).
    origin
        Last known close at each forecast's origin, for the directional accuracy; default
        None uses ``naive`` (which is the origin close for persistence).
    horizon
        Forecast step of the points, for the Diebold-Mariano variance; default 1.
    mase_scale
        Denominator of MASE; default None uses the mean absolute one-step change of
        ``actual`` over the points, ``mean(|actual[t] - actual[t-1]|)`` (``n - 1`` changes).
        A scale of 0 (or fewer than two points) gives ``mase`` None.

    Returns
    -------
    dict
        JSON-able: ``rmse``, ``mae``, ``mape`` (percent; None if an actual is 0), ``smape``
        (percent), ``mase``, ``directional_accuracy`` (share in [0, 1]), ``n``, ``naive``
        (the same metrics for the naive forecast, ``directional_accuracy`` None), ``rmse_ratio``
        (model RMSE / naive RMSE; None if the naive RMSE is 0), ``mase_scale`` and
        ``diebold_mariano`` (see :func:`diebold_mariano`).

    Raises
    ------
    DataError
        Empty input, arrays of different lengths, or NaN/inf values.
    """
    actual_v = _as_vector(actual, "actual")
    n = len(actual_v)
    if n == 0:
        raise DataError("no points to score; the evaluation window is empty")
    forecast_v = _as_vector(forecast, "forecast", n)
    naive_v = _as_vector(naive, "naive", n)
    origin_v = naive_v if origin is None else _as_vector(origin, "origin", n)
    if mase_scale is None:
        mase_scale = float(np.mean(np.abs(np.diff(actual_v)))) if n > 1 else None
    elif not math.isfinite(float(mase_scale)) or float(mase_scale) < 0:
        raise DataError(f"mase_scale must be a finite number >= 0, got {mase_scale!r}")
    scale = None if mase_scale is None else float(mase_scale)

    model = _point_metrics(actual_v, forecast_v, scale)
    baseline = _point_metrics(actual_v, naive_v, scale)
    hits = np.sign(forecast_v - origin_v) == np.sign(actual_v - origin_v)
    model["directional_accuracy"] = _json_float(hits.mean())
    baseline["directional_accuracy"] = None
    naive_rmse = baseline["rmse"]
    ratio = None if not naive_rmse else model["rmse"] / naive_rmse  # type: ignore[operator]
    return {
        **model,
        "n": n,
        "rmse_ratio": None if ratio is None else _json_float(ratio),
        "mase_scale": None if scale is None else _json_float(scale),
        "naive": {**baseline, "n": n},
        "diebold_mariano": diebold_mariano(
            actual_v - forecast_v, actual_v - naive_v, horizon=horizon
        ),
    }


# --------------------------------------------------------------------------------------------
# Files: atomic writes, plot
# --------------------------------------------------------------------------------------------


def safe_asset_name(asset_id: str) -> str:
    """A file-name form of ``asset_id``, the same rule the model bundle's names use.

    Parameters
    ----------
    asset_id
        Asset id, e.g. ``BTC`` or ``BTC/USDT``. No default.

    Returns
    -------
    str
        ``asset_id`` itself when it is only ASCII letters, digits, ``.``, ``_``, ``-`` and does
        not start with ``.``; otherwise the other characters become ``_`` and ``-`` plus 8 hex
        digits of its sha256 are appended (``BTC/USDT`` -> ``BTC_USDT-<hash>``), so two ids
        never share a file. See :func:`kallos_models.artifacts.safe_file_stem`.
    """
    from kallos_models.artifacts import safe_file_stem

    return safe_file_stem(str(asset_id))


def _fmt_price(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _plot_equity(axis: Any, curves: pd.DataFrame, backtest: Mapping[str, Any] | None) -> None:
    """Equity of the strategy and of buy-and-hold, both from 1.0 one bar before the first."""
    missing = [c for c in ("position", "strategy_equity", "buy_and_hold_equity") if c not in curves]
    if missing:
        raise DataError(f"curves lack columns {missing}; pass the output of backtest_curves")
    index = pd.DatetimeIndex(curves.index)
    step = index[1] - index[0] if len(index) > 1 else pd.Timedelta(0)
    times = pd.DatetimeIndex([index[0] - step]).append(index).to_pydatetime()
    config = (backtest or {}).get("config") or {}
    summary = {key: (backtest or {}).get(key) or {} for key in ("strategy", "buy_and_hold")}
    mode = str(config.get("mode", "strategy")).replace("_", "/")
    fee = config.get("fee_bps")
    name = f"strategy ({mode}{'' if fee is None else f', {fee:g} bps'})"
    for column, label, color, stats in (
        ("buy_and_hold_equity", "buy & hold", "grey", summary["buy_and_hold"]),
        ("strategy_equity", name, "tab:green", summary["strategy"]),
    ):
        equity = np.concatenate([[1.0], curves[column].to_numpy(dtype="float64")])
        text = f"{label}: {equity[-1] - 1.0:+.1%}"
        if stats.get("annualised_sharpe") is not None:
            text += f", Sharpe {stats['annualised_sharpe']:.2f}"
        if stats.get("max_drawdown") is not None:
            text += f", max DD {stats['max_drawdown']:.1%}"
        axis.plot(times, equity, color=color, linewidth=1.3, label=text)
    axis.axhline(1.0, color="black", linewidth=0.8, alpha=0.6)
    position = curves["position"].to_numpy(dtype="float64")
    # bars in the market shaded, green long and red short (a bar spans its origin to its close)
    for sign, color, label in ((1.0, "tab:green", "long"), (-1.0, "tab:red", "short")):
        held = np.concatenate([[False], position == sign])
        if held.any():
            axis.fill_between(
                times,
                0,
                1,
                where=held,
                step="pre",
                transform=axis.get_xaxis_transform(),
                color=color,
                alpha=0.08,
                linewidth=0,
                label=f"strategy {label}",
            )
    axis.set_ylabel("equity (start = 1)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper left", frameon=True, fontsize=9)


def plot_evaluation(
    results: pd.DataFrame,
    metrics: Mapping[str, Any],
    *,
    title: str,
    path: str | Path,
    curves: pd.DataFrame | None = None,
) -> Path:
    """Plot forecasts against actual prices, the residuals and the backtest, to a PNG.

    Top panel: actual, forecast and naive prices; middle panel (same time axis): residuals
    ``actual - forecast`` and a zero line; with ``curves``, a bottom panel of the backtest's
    equity (strategy against buy-and-hold, from 1.0 at the first origin close). The title is
    ``title`` and, on a second line, the headline metrics: RMSE, naive RMSE, their ratio and
    the directional accuracy.

    Parameters
    ----------
    results
        Output of :func:`rolling_forecasts` (``actual``, ``forecast``, ``naive`` columns).
    metrics
        Output of :func:`compute_metrics`; a ``backtest`` key (from
        :func:`kallos_models.backtest.run_backtest`) adds the Sharpe ratios to the legend.
    title
        First title line, e.g. ``"BTC 1d - gru - 2024-07-01 to 2025-06-30 - horizon 1"``.
    path
        PNG file to write (through a temporary file and a rename); its directory is created.
    curves
        Output of :func:`kallos_models.backtest.backtest_curves` for the same bars; default
        None draws no backtest panel.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    DataError
        ``results`` is empty or lacks a column.
    """
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    missing = [c for c in ("actual", "forecast", "naive") if c not in results.columns]
    if missing:
        raise DataError(f"results lack columns {missing}; pass the output of rolling_forecasts")
    if results.empty:
        raise DataError("no forecasts to plot; the evaluation window is empty")

    naive = metrics.get("naive") or {}
    headline = (
        f"RMSE {_fmt_price(metrics.get('rmse'))}  |  naive RMSE {_fmt_price(naive.get('rmse'))}"
        f"  |  ratio {_fmt(metrics.get('rmse_ratio'), '.3f')}"
        f"  |  directional accuracy {_fmt(metrics.get('directional_accuracy'), '.1%')}"
        f"  |  n = {metrics.get('n', len(results))}"
    )
    times = pd.DatetimeIndex(results.index).to_pydatetime()
    residual = results["actual"].to_numpy(dtype="float64") - results["forecast"].to_numpy(
        dtype="float64"
    )
    if curves is None:
        fig = Figure(figsize=(12, 7), dpi=110)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
        fig.subplots_adjust(left=0.07, right=0.985, top=0.89, bottom=0.07, hspace=0.08)
        axes = [top, bottom]
    else:
        fig = Figure(figsize=(12, 9.5), dpi=110)
        axes = list(fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3, 1.8]}))
        # fixed margins: a constrained layout would draw the figure twice (a third of the time)
        fig.subplots_adjust(left=0.07, right=0.985, top=0.915, bottom=0.05, hspace=0.08)
        top, bottom = axes[0], axes[1]
    # naive underneath, actual over it, the forecast on top: the two forecasts often overlap
    top.plot(
        times,
        results["naive"],
        color="tab:orange",
        linewidth=1.0,
        linestyle="--",
        zorder=1,
        label="naive (last close)",
    )
    top.plot(times, results["actual"], color="black", linewidth=1.4, zorder=2, label="actual")
    top.plot(
        times, results["forecast"], color="tab:blue", linewidth=1.2, zorder=3, label="forecast"
    )
    top.set_ylabel("price")
    top.grid(True, alpha=0.3)
    handles, labels = top.get_legend_handles_labels()
    order = [labels.index(name) for name in ("actual", "forecast", "naive (last close)")]
    top.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left")
    bottom.axhline(0.0, color="grey", linewidth=1.0)
    bottom.plot(times, residual, color="tab:red", linewidth=1.0, label="actual - forecast")
    bottom.fill_between(times, residual, 0.0, color="tab:red", alpha=0.15)
    bottom.set_ylabel("residual")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", frameon=True)
    if curves is not None:
        _plot_equity(axes[2], curves, metrics.get("backtest"))
    locator = mdates.AutoDateLocator(minticks=5, maxticks=12)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle(f"{title}\n{headline}", fontsize=11)

    target = Path(path)
    atomic_write(target, lambda handle: fig.savefig(handle, format="png", dpi=110))
    return target


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_model` computed and wrote.

    Attributes
    ----------
    metrics
        The metrics and their context, as written to ``metrics_path``.
    metrics_path
        ``{output_path}/{asset}_evaluation_metrics.json``.
    plot_path
        ``{output_path}/{asset}_evaluation_plot.png``.
    forecasts
        One row per evaluated bar: ``actual``, ``forecast``, ``naive``, ``origin_close``.
    tracking
        Where :func:`kallos_models.tracking.log_evaluation` logged the metrics (registered
        model, version, run id), or None when tracking is off.
    """

    metrics: dict[str, Any]
    metrics_path: Path
    plot_path: Path
    forecasts: pd.DataFrame
    tracking: dict[str, Any] | None = None


def _manifest_value(manifest: Mapping[str, Any], key: str, bundle: str) -> Any:
    if key not in manifest or manifest[key] in (None, ""):
        raise ArtifactError(
            f"the manifest {bundle} has no {key!r}; the bundle is incomplete: retrain it "
            "with `kallos-run train`"
        )
    return manifest[key]


def _backtest_config(settings: Settings) -> BacktestConfig:
    """The backtest rules from ``backtest_mode``, ``backtest_threshold`` and ``fee_bps``."""
    return BacktestConfig(
        mode=settings.backtest_mode,
        threshold=float(settings.backtest_threshold),
        fee_bps=float(settings.fee_bps),
    )


def evaluate_model(
    settings: Settings,
    *,
    model_path: str | Path,
    scaler_path: str | Path | None = None,
    horizon: int | None = None,
) -> EvaluationResult:
    """Evaluate a saved model on a hold-out window it never saw; write metrics and a plot.

    Steps: check the window; load the bundle (checksums verified before unpickling); check
    that model, asset and window fit the bundle (no overlap with training, horizon at most
    the model's ``output_chunk_length``); load the window plus the lookback from the database
    (the bundle's timeframe); make rolling forecasts; score them against naive persistence;
    at horizon 1, backtest them against buy-and-hold (:func:`kallos_models.backtest.run_backtest`,
    under the metrics' ``backtest`` key; at other horizons the key holds the config, null
    results and a note); write ``{asset}_evaluation_metrics.json`` and
    ``{asset}_evaluation_plot.png`` (with an equity panel when there is a backtest).

    Parameters
    ----------
    settings
        ``asset_id``, ``model_name``, ``test_start_date`` and ``test_end_date`` (both
        required), ``db_url``/``db_kwargs``, ``max_gap_bars``, ``horizon``, ``output_path``
        (default None writes to ``./evaluation_results``), and ``backtest_mode``,
        ``backtest_threshold`` and ``fee_bps`` for the backtest.
    model_path
        The bundle's model file (``{model}_{asset}.pt``), or a registry URI
        (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``): that version's bundle is
        downloaded to a temporary directory and verified like a local one (needs
        ``tracking_uri``).
    scaler_path
        The bundle's scaler file; default None takes it from the manifest beside the model.
        Not with a registry URI.
    horizon
        Forecast step scored, in bars; default None uses ``settings.horizon``.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    ConfigError
        A window date missing or reversed, ``model_name`` or ``asset_id`` not those of the
        bundle, a horizon above the model's ``output_chunk_length``, or backtest settings out
        of range (a negative threshold, ``fee_bps`` outside ``[0, 5000)``).
    ArtifactError
        A bundle file missing or tampered with (checksum mismatch).
    DataError
        The window starts on or before the end of training (leakage), too little history
        before the window, or no rows in it.
    TrackingError
        A registry URI names no registered model, version or alias; MLflow refused to log.

    Notes
    -----
    With ``tracking_uri`` set the metrics and plot are logged to the run of the model version
    trained as this bundle (:func:`kallos_models.tracking.log_evaluation`).
    """
    from kallos_models import registry, tracking

    tracking.require_mlflow(settings)
    if tracking.is_registry_uri(model_path):
        if scaler_path is not None:
            raise ConfigError(
                "--scaler-path does not go with a models:/ URI: the registered bundle brings "
                "its own scaler"
            )
        with registry.downloaded_bundle(settings, str(model_path)) as local_model:
            return _evaluate_bundle(settings, local_model, None, horizon, str(model_path))
    return _evaluate_bundle(settings, model_path, scaler_path, horizon, str(Path(model_path)))


def _evaluate_bundle(
    settings: Settings,
    model_path: str | Path,
    scaler_path: str | Path | None,
    horizon: int | None,
    source: str,
) -> EvaluationResult:
    """:func:`evaluate_model` on a local bundle; ``source`` is what the record calls it."""
    from kallos_models import artifacts, datasets, tracking

    start_ts = parse_date(settings.test_start_date, "test_start_date")
    end_ts = parse_date(settings.test_end_date, "test_end_date")
    if start_ts is None or end_ts is None:
        raise ConfigError(
            "evaluation needs a hold-out window: set --test-start-date and --test-end-date "
            "(or test_start_date / test_end_date in config.json), e.g. 2024-07-01 and 2025-06-30"
        )
    if start_ts > end_ts:
        raise ConfigError(
            f"test window is reversed: --test-start-date {start_ts.date()} is after "
            f"--test-end-date {end_ts.date()}; swap them"
        )
    if not settings.asset_id:
        raise ConfigError("evaluation needs an asset: pass --asset-id, e.g. --asset-id BTC")
    backtest_config = _backtest_config(settings)

    bundle = artifacts.load_bundle(model_path, scaler_path)
    manifest = bundle.manifest
    where = str(bundle.paths.manifest)
    bundle_model = _manifest_value(manifest, "model_name", where)
    if settings.model_name != bundle_model:
        raise ConfigError(
            f"model_name is {settings.model_name!r} but the bundle {Path(model_path).name} holds "
            f"a {bundle_model!r} model; pass --model-name {bundle_model} or the bundle of a "
            f"{settings.model_name!r} model"
        )
    bundle_asset = _manifest_value(manifest, "asset_id", where)
    if str(settings.asset_id) != str(bundle_asset):
        raise ConfigError(
            f"asset_id is {settings.asset_id!r} but the bundle was trained on {bundle_asset!r}; "
            f"pass --asset-id {bundle_asset} or the bundle of a {settings.asset_id!r} model"
        )
    timeframe = str(_manifest_value(manifest, "timeframe", where))
    if settings.timeframe != timeframe:
        logger.info(
            "using the bundle's timeframe %s (settings say %s)", timeframe, settings.timeframe
        )
    train_end = parse_date(_manifest_value(manifest, "train_end", where), "train_end")
    if train_end is not None and start_ts <= train_end:
        raise DataError(
            f"test window starts at {start_ts}, on or before the end of the model's training "
            f"data ({train_end}): scoring it there would be leakage (the model saw those bars); "
            f"set --test-start-date after {train_end.date()}"
        )
    model = bundle.model
    preprocessor = bundle.preprocessor
    icl, ocl = _model_chunk_lengths(model)
    steps = _check_horizon(settings.horizon if horizon is None else horizon, ocl)
    needed = lookback_bars(icl, steps, preprocessor.target_transform)
    bar = timeframe_to_timedelta(timeframe)

    db_source = settings.db_url or settings.db_kwargs
    if not db_source:
        raise ConfigError("no database: pass --db-url or set db_kwargs in config.json")
    columns = list(dict.fromkeys([preprocessor.target_col, *preprocessor.feature_columns]))
    frame = datasets.load_features_from_db(
        str(settings.asset_id),
        end_ts,
        db_source,
        start_date=start_ts - (needed + 1) * bar,
        timeframe=timeframe,
        columns=columns,
        max_gap_bars=settings.max_gap_bars,
        drop_warmup=True,
    )
    pos = int(frame.index.searchsorted(start_ts, side="left"))
    if pos >= len(frame):
        raise DataError(
            f"asset {settings.asset_id!r} ({timeframe}) has no bars between {start_ts} and "
            f"{end_ts}; its loaded data ends at {frame.index[-1]}: move the test window into "
            "the stored range or ingest newer data"
        )
    if pos < needed:
        raise DataError(
            f"the model needs {needed} {timeframe} bars of history before the test window "
            f"(input_chunk_length {icl}, horizon {steps}), but {settings.asset_id!r} has {pos} "
            f"before {frame.index[pos]} (usable data starts at {frame.index[0]}); set "
            f"--test-start-date at least {needed - pos} bars later"
        )

    results = rolling_forecasts(model, preprocessor, frame, start=start_ts, horizon=steps)
    window_close = frame[preprocessor.target_col].to_numpy(dtype="float64")[pos - 1 :]
    mase_scale = float(np.mean(np.abs(np.diff(window_close))))
    metrics = compute_metrics(
        results["actual"].to_numpy(),
        results["forecast"].to_numpy(),
        results["naive"].to_numpy(),
        origin=results["origin_close"].to_numpy(),
        horizon=steps,
        mase_scale=mase_scale,
    )
    curves: pd.DataFrame | None = None
    if steps == 1:
        backtest: dict[str, Any] = run_backtest(
            results, timeframe=timeframe, config=backtest_config
        )
        curves = backtest_curves(results, timeframe=timeframe, config=backtest_config)
    else:
        backtest = {
            "config": dataclasses.asdict(backtest_config),
            "strategy": None,
            "buy_and_hold": None,
            "note": f"not run at horizon {steps}: the backtest trades one-step forecasts only; "
            "evaluate with --horizon 1",
        }
    filled = frame["filled"].iloc[pos:] if "filled" in frame.columns else None
    record: dict[str, Any] = {
        "model_name": bundle_model,
        "asset_id": str(settings.asset_id),
        "timeframe": timeframe,
        "test_start": start_ts.isoformat(),
        "test_end": end_ts.isoformat(),
        "first_forecast": results.index[0].isoformat(),
        "last_forecast": results.index[-1].isoformat(),
        "horizon": steps,
        "train_end": None if train_end is None else train_end.isoformat(),
        "target_transform": preprocessor.target_transform,
        "input_chunk_length": icl,
        "output_chunk_length": ocl,
        "n_filled": 0 if filled is None else int(filled.astype(bool).sum()),
        "mase_scale_source": "mean |close[t] - close[t-1]| over the window, from the bar "
        "before its first (the naive one-step MAE)",
        "model_path": source,
        **metrics,
        "backtest": backtest,
    }

    out_dir = Path(settings.output_path or DEFAULT_OUTPUT_PATH)
    stem = safe_asset_name(str(settings.asset_id))
    metrics_path = atomic_write(
        out_dir / f"{stem}_evaluation_metrics.json",
        lambda handle: handle.write(
            (json.dumps(record, indent=2, allow_nan=False) + "\n").encode("utf-8")
        ),
    )
    title = (
        f"{settings.asset_id} {timeframe}  -  {bundle_model}  -  hold-out "
        f"{results.index[0]:%Y-%m-%d} to {results.index[-1]:%Y-%m-%d}  -  horizon {steps}"
    )
    plot_path = plot_evaluation(
        results,
        {**metrics, "backtest": backtest},
        title=title,
        path=out_dir / f"{stem}_evaluation_plot.png",
        curves=curves,
    )
    logger.info(
        "evaluated %s on %s: rmse %.6g, naive %.6g, ratio %s",
        bundle_model,
        settings.asset_id,
        metrics["rmse"],
        metrics["naive"]["rmse"],
        metrics["rmse_ratio"],
    )
    tracked = tracking.log_evaluation(
        settings, bundle.paths.manifest, record, metrics_path, plot_path
    )  # None unless tracking is on
    return EvaluationResult(
        metrics=record,
        metrics_path=metrics_path,
        plot_path=plot_path,
        forecasts=results,
        tracking=tracked,
    )
