"""Point-forecast metrics against naive persistence, and the Diebold-Mariano test.

See ``documentation/evaluation.md`` for the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from kallos_models.errors import DataError
from kallos_models.files import json_float

#: The headline numbers of an evaluation, and where each sits in its metrics record: what
#: the registry shows per version, promotion gates read, and tracking copies to version tags.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "rmse": ("rmse",),
    "naive_rmse": ("naive", "rmse"),
    "rmse_ratio": ("rmse_ratio",),
    "directional_accuracy": ("directional_accuracy",),
    "sharpe": ("backtest", "strategy", "annualised_sharpe"),
    # the probability that the Sharpe ratio survives the search that chose the parameters
    "deflated_sharpe": ("backtest", "deflated_sharpe", "probability"),
    "search_trials": ("backtest", "deflated_sharpe", "n_trials"),
}


def headline(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The hold-out numbers ``kallos-run registry`` shows and checks, from an evaluation record.

    Parameters
    ----------
    record : Mapping
        The metrics :func:`kallos_models.stages.evaluate.evaluate_model` writes.

    Returns
    -------
    dict
        The :data:`HEADLINE_METRICS`: ``rmse``, ``naive_rmse``, ``rmse_ratio``,
        ``directional_accuracy``, ``sharpe`` (the backtest strategy's annualised Sharpe
        ratio), ``deflated_sharpe`` (the probability that it survives the search,
        :func:`kallos_models.modelling.selection.deflated_sharpe`) and ``search_trials`` (the
        trials it is deflated by); None where missing or not finite. For a global model's
        record (``pooled``, ``per_asset``) the pooled figures: the mean RMSE ratio, the
        directional accuracy over all forecasts, the mean of the assets' Sharpe ratios, the
        lowest of their deflated Sharpe ratios; ``rmse`` and ``naive_rmse`` None (prices of
        different assets do not add up).
    """
    if isinstance(record.get("pooled"), Mapping):
        pooled = record["pooled"]
        assets = [headline(r) for r in asset_records(record).values()]

        def every(key: str) -> list[float] | None:
            known = [float(value) for row in assets if (value := row[key]) is not None]
            return known if known and len(known) == len(assets) else None

        sharpes, deflated = every("sharpe"), every("deflated_sharpe")
        trials = every("search_trials")
        return {
            "rmse": None,
            "naive_rmse": None,
            "rmse_ratio": _finite_or_none(pooled.get("rmse_ratio")),
            "directional_accuracy": _finite_or_none(pooled.get("directional_accuracy")),
            "sharpe": float(np.mean(sharpes)) if sharpes else None,
            "deflated_sharpe": min(deflated) if deflated else None,
            "search_trials": max(trials) if trials else None,
        }
    out: dict[str, float | None] = {}
    for name, path in HEADLINE_METRICS.items():
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        out[name] = _finite_or_none(value)
    return out


def asset_records(record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A global model's evaluation records by asset (``per_asset``); empty for one asset."""
    per_asset = record.get("per_asset")
    return dict(per_asset) if isinstance(per_asset, Mapping) else {}


def _finite_or_none(value: Any) -> float | None:
    finite = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if finite and math.isfinite(value) else None


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
        "rmse": json_float(rmse),
        "mae": json_float(mae),
        "mape": None if mape is None else json_float(mape),
        "smape": json_float(smape),
        "mase": None if mase is None else json_float(mase),
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
    out["statistic"] = json_float(statistic)
    out["p_value"] = json_float(2.0 * stats.t.sf(abs(statistic), df=n - 1))
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
    model["directional_accuracy"] = json_float(hits.mean())
    baseline["directional_accuracy"] = None
    naive_rmse = baseline["rmse"]
    ratio = None if not naive_rmse else model["rmse"] / naive_rmse  # type: ignore[operator]
    return {
        **model,
        "n": n,
        "rmse_ratio": None if ratio is None else json_float(ratio),
        "mase_scale": None if scale is None else json_float(scale),
        "naive": {**baseline, "n": n},
        "diebold_mariano": diebold_mariano(
            actual_v - forecast_v, actual_v - naive_v, horizon=horizon
        ),
    }


def _mean(values: list[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return json_float(float(np.mean(finite))) if len(finite) == len(values) and finite else None


def pooled_metrics(per_asset: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Scale-free figures of a global model over its basket, from each asset's metrics.

    Prices differ by orders of magnitude between assets, so errors are never summed across
    them: each asset's error is first taken relative to its own naive forecast.

    Parameters
    ----------
    per_asset : Mapping[str, Mapping]
        Asset -> the record :func:`compute_metrics` returned for it (with ``n``, ``rmse_ratio``,
        ``mase``, ``directional_accuracy``). No default.

    Returns
    -------
    dict
        ``rmse_ratio`` (the mean of the per-asset RMSE ratios, the figure tuning minimises by
        default), ``rmse_ratio_median``, ``rmse_ratio_worst`` (the highest) with
        ``worst_asset``, ``mase`` (mean), ``directional_accuracy`` (over all forecasts of
        all assets), ``assets_beating_naive`` (ratio below 1), ``n_assets`` and ``n``
        (forecasts in all). A mean is None when any asset's value is missing.
    """
    ratios = {asset: record.get("rmse_ratio") for asset, record in per_asset.items()}
    known = {a: float(r) for a, r in ratios.items() if r is not None}
    counts = [int(record.get("n") or 0) for record in per_asset.values()]
    hits: list[Any] = [record.get("directional_accuracy") for record in per_asset.values()]
    total = sum(counts)
    direction: float | None = None
    if total and all(isinstance(h, (int, float)) for h in hits):
        direction = json_float(sum(float(h) * n for h, n in zip(hits, counts, strict=True)) / total)
    worst = max(known, key=lambda a: known[a]) if known else None
    return {
        "rmse_ratio": _mean(list(ratios.values())),
        "rmse_ratio_median": (
            json_float(float(np.median(list(known.values()))))
            if len(known) == len(ratios) and known
            else None
        ),
        "rmse_ratio_worst": None if worst is None else json_float(known[worst]),
        "worst_asset": worst,
        "mase": _mean([record.get("mase") for record in per_asset.values()]),
        "directional_accuracy": direction,
        "assets_beating_naive": sum(1 for r in known.values() if r < 1.0),
        "n_assets": len(per_asset),
        "n": total,
    }
