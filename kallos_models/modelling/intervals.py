"""Prediction intervals: what a bundle asks for, how Darts makes them, how they are judged.

Two ways to an interval, both Darts' own (DESIGN.md: no hand-written conformal):

- **quantile regression** (``train --quantiles``): a deep model is trained with Darts'
  ``QuantileRegression`` likelihood, a regression model (``lightgbm``, ``linear``) with
  ``likelihood="quantile"``; the model itself outputs the quantiles.
- **conformal prediction** (``train --conformal``): any fitted model is wrapped in Darts'
  ``ConformalNaiveModel`` (a point model) or ``ConformalQRModel`` (a quantile model). The
  wrapper holds no fitted state: it calibrates each forecast on the ``calibration_bars`` most
  recent residuals known at the forecast's origin. ``train`` holds the last
  ``calibration_bars`` bars out of the fit, so the first forecasts after training are
  calibrated on residuals of bars the model never trained on; later ones on the realised
  residuals of the window itself (online conformal, no look-ahead: Darts uses only residuals
  whose bars had closed at the origin). The bundle stores the base model; the manifest's
  ``intervals`` record says how to wrap it (:func:`wrap_model`).

Quantiles are turned into prices with the fitted preprocessing. That is exact for the
one-step forecast of a log-return target and for every step of a price target (a quantile of
a monotone transform is the transform of the quantile). For a log-return target beyond one
step the price is a sum of per-step returns whose joint distribution Darts does not give, so
no interval is reported there (:func:`price_quantiles_supported`).

The judge (:func:`interval_metrics`): per nominal level, empirical coverage, mean width (in
price and as a fraction of the origin close) and the interval (Winkler) score; per quantile,
the pinball loss; each beside the same for the naive interval, the empirical quantiles of the
past ``h``-step log returns over a trailing window applied to the last close
(:func:`naive_quantiles`). See ``documentation/evaluation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kallos_models.errors import ArtifactError, ConfigError, DataError, ModelError
from kallos_models.files import json_float

__all__ = [
    "DEFAULT_CALIBRATION_BARS",
    "DEFAULT_NAIVE_WINDOW",
    "DEFAULT_QUANTILES",
    "IntervalSpec",
    "calibration_end",
    "calibration_history",
    "check_after_calibration",
    "check_quantiles",
    "evaluate_intervals",
    "frame_quantiles",
    "interval_levels",
    "interval_metrics",
    "naive_quantiles",
    "parse_quantiles",
    "price_quantiles_supported",
    "quantile_column",
    "record_quantiles",
    "wrap_model",
]

#: The quantiles of ``--quantiles``/``--conformal`` when none are given: 80% and 90% intervals.
DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.5, 0.9, 0.95)
#: Bars held out of the fit to calibrate a conformal model, and its rolling calibration length.
DEFAULT_CALIBRATION_BARS = 200
#: Trailing returns behind the naive interval (a conformal bundle uses its calibration length).
DEFAULT_NAIVE_WINDOW = 200
#: Fewest trailing returns a naive interval is computed from.
MIN_NAIVE_RETURNS = 20


def quantile_column(q: float, prefix: str = "q") -> str:
    """Column name of quantile ``q`` in a forecast frame: ``q0.05``, ``naive_q0.05``."""
    return f"{prefix}{float(q):g}"


def frame_quantiles(frame: Any, prefix: str = "q") -> dict[float, np.ndarray]:
    """The quantile columns of a forecast frame (named by :func:`quantile_column`) as float64
    arrays, by quantile, lowest first; ``{}`` for a point forecast."""
    found = {}
    for column in frame.columns:
        name = str(column)
        if name.startswith(prefix):
            try:
                found[float(name[len(prefix) :])] = frame[column].to_numpy(dtype="float64")
            except ValueError:
                continue
    return dict(sorted(found.items()))


def check_quantiles(quantiles: Sequence[Any]) -> tuple[float, ...]:
    """``quantiles`` as floats, checked: increasing, in (0, 1), with 0.5, symmetric around it.

    Darts requires the median (the point forecast) and symmetric pairs (each pair is one
    interval: 0.05 and 0.95 make the 90% interval).

    Raises
    ------
    ConfigError
        Not numbers, not strictly increasing, outside (0, 1), no 0.5, no pair below 0.5, or a
        quantile without its mirror ``1 - q``.
    """
    hint = "e.g. --quantiles 0.05,0.1,0.5,0.9,0.95"
    try:
        values = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"quantiles must be numbers, got {list(quantiles)!r}; {hint}") from exc
    if isinstance(quantiles, (str, bytes)) or any(isinstance(q, bool) for q in quantiles):
        raise ConfigError(f"quantiles must be numbers, got {quantiles!r}; {hint}")
    if not all(math.isfinite(q) and 0.0 < q < 1.0 for q in values):
        raise ConfigError(f"quantiles must lie strictly between 0 and 1, got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"quantiles must be strictly increasing, got {list(values)}; {hint}")
    if not any(abs(q - 0.5) < 1e-9 for q in values):
        raise ConfigError(
            f"quantiles must include the median 0.5 (the point forecast), got {list(values)}"
        )
    lower = [q for q in values if q < 0.5 - 1e-9]
    upper = sorted((q for q in values if q > 0.5 + 1e-9), reverse=True)
    if (
        not lower
        or len(lower) != len(upper)
        or any(abs((lo + hi) - 1.0) > 1e-6 for lo, hi in zip(lower, upper, strict=True))
    ):
        raise ConfigError(
            f"quantiles must come in pairs q and 1 - q around 0.5 (each pair is one interval), "
            f"got {list(values)}; {hint}"
        )
    return tuple(0.5 if abs(q - 0.5) < 1e-9 else q for q in values)


def parse_quantiles(text: str) -> tuple[float, ...]:
    """``"0.05,0.1,0.5,0.9,0.95"`` as checked quantiles (:func:`check_quantiles`)."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise ConfigError("--quantiles is empty; e.g. --quantiles 0.05,0.1,0.5,0.9,0.95")
    try:
        values = [float(part) for part in parts]
    except ValueError as exc:
        raise ConfigError(
            f"--quantiles {text!r} is not a comma-separated list of numbers; e.g. "
            "--quantiles 0.05,0.1,0.5,0.9,0.95"
        ) from exc
    return check_quantiles(values)


def interval_levels(quantiles: Sequence[float]) -> list[tuple[float, float, float]]:
    """``(level, lower_q, upper_q)`` per interval, narrowest first: (0.8, 0.1, 0.9), ..."""
    lower = sorted((q for q in quantiles if q < 0.5), reverse=True)
    return [(round(1.0 - 2.0 * q, 10), q, round(1.0 - q, 10)) for q in lower]


@dataclass(frozen=True)
class IntervalSpec:
    """What ``train`` is asked for: quantile regression, conformal prediction, or both.

    Attributes
    ----------
    quantiles
        The quantiles, checked by :func:`check_quantiles`; default :data:`DEFAULT_QUANTILES`.
    quantile_regression
        Train the model itself to output the quantiles (Darts' quantile likelihood).
    conformal
        Wrap the model in Darts' conformal prediction (``ConformalQRModel`` over a quantile
        model, else ``ConformalNaiveModel``), calibrated on ``calibration_bars`` bars held
        out of the fit.
    calibration_bars
        Bars held out of the fit and used (rolling) as the calibration set; at least 10.
    symmetric
        Symmetric conformal scores (the absolute error) or one per tail; default True.
    """

    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    quantile_regression: bool = False
    conformal: bool = False
    calibration_bars: int = DEFAULT_CALIBRATION_BARS
    symmetric: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", check_quantiles(self.quantiles))
        bars = self.calibration_bars
        if isinstance(bars, bool) or not isinstance(bars, (int, np.integer)) or bars < 10:
            raise ConfigError(
                f"calibration_bars must be a whole number of bars >= 10, got {bars!r} (the "
                "90% interval needs at least 10 calibration residuals; 200 is the default)"
            )
        object.__setattr__(self, "calibration_bars", int(bars))

    @classmethod
    def from_flags(
        cls, quantiles: str | None, conformal: bool, calibration_bars: int | None
    ) -> IntervalSpec | None:
        """The spec of ``train``'s flags: ``--quantiles`` (quantile regression with those
        quantiles), ``--conformal`` (with ``--calibration-bars``); None when neither is given.

        Raises
        ------
        ConfigError
            A bad quantile list, or ``--calibration-bars`` without ``--conformal``.
        """
        if calibration_bars is not None and not conformal:
            raise ConfigError(
                "--calibration-bars sets the conformal calibration window; pass --conformal too"
            )
        if quantiles is None and not conformal:
            return None
        return cls(
            quantiles=DEFAULT_QUANTILES if quantiles is None else parse_quantiles(quantiles),
            quantile_regression=quantiles is not None,
            conformal=conformal,
            calibration_bars=(
                DEFAULT_CALIBRATION_BARS if calibration_bars is None else calibration_bars
            ),
        )

    @property
    def active(self) -> bool:
        """Whether any interval is asked for."""
        return self.quantile_regression or self.conformal

    def record(self, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The manifest's ``intervals`` entry (what :func:`wrap_model` reads back)."""
        method = "conformal" if self.conformal else "quantile"
        out: dict[str, Any] = {
            "method": method,
            "quantiles": list(self.quantiles),
            "quantile_regression": self.quantile_regression,
            "levels": [level for level, _, _ in interval_levels(self.quantiles)],
        }
        if self.conformal:
            out.update(
                conformal_model=(
                    "ConformalQRModel" if self.quantile_regression else "ConformalNaiveModel"
                ),
                calibration_bars=self.calibration_bars,
                symmetric=self.symmetric,
                **dict(calibration or {}),
            )
        return out


def record_quantiles(record: Mapping[str, Any] | None) -> tuple[float, ...] | None:
    """The quantiles of a manifest's ``intervals`` entry, or None for a point model."""
    if not record:
        return None
    try:
        return check_quantiles(record["quantiles"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(
            f"the bundle's intervals record {dict(record)!r} has no valid quantiles; retrain it"
        ) from exc


def calibration_history(record: Mapping[str, Any] | None, horizon: int) -> int:
    """Bars of history a conformal model needs beyond its base model's lookback: its
    calibration residuals and the horizon of the forecasts they come from (0 otherwise)."""
    if not record or record.get("method") != "conformal":
        return 0
    return int(record["calibration_bars"]) + 2 * int(horizon)


def wrap_model(model: Any, record: Mapping[str, Any] | None) -> Any:
    """The model as forecasting uses it: a conformal bundle's base model in its Darts
    conformal wrapper (from the manifest's ``intervals`` record), any other model as is."""
    if not record or record.get("method") != "conformal":
        return model
    from darts.models import ConformalNaiveModel, ConformalQRModel

    classes = {"ConformalNaiveModel": ConformalNaiveModel, "ConformalQRModel": ConformalQRModel}
    name = record.get("conformal_model")
    if name not in classes:
        raise ArtifactError(f"the bundle's conformal model {name!r} is unknown; retrain it")
    try:
        return classes[name](
            model,
            quantiles=list(record_quantiles(record) or DEFAULT_QUANTILES),
            symmetric=bool(record.get("symmetric", True)),
            cal_length=int(record["calibration_bars"]),
        )
    except ValueError as exc:
        raise ModelError(f"Darts refused the {name} wrapper: {exc}") from exc


def price_quantiles_supported(target_transform: str, step: int) -> bool:
    """Whether a quantile of the scaled target at ``step`` is a quantile of the price there:
    always for a price target, only the first step for a log-return target."""
    return target_transform == "price" or int(step) == 1


def naive_quantiles(
    close: np.ndarray,
    origins: np.ndarray,
    *,
    horizon: int,
    quantiles: Sequence[float],
    window: int = DEFAULT_NAIVE_WINDOW,
) -> np.ndarray:
    """The naive interval: empirical quantiles of past ``horizon``-step log returns.

    For the origin at position ``o`` of ``close``: the returns ``log(close[t] / close[t - h])``
    for the ``window`` bars ``t`` ending at ``o`` (all known at the origin), their empirical
    quantiles (NumPy's linear interpolation) applied to ``close[o]``. Fewer than
    :data:`MIN_NAIVE_RETURNS` returns before an origin give NaN there.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(origins), len(quantiles))``, prices.
    """
    close = np.asarray(close, dtype="float64")
    h = int(horizon)
    log_close = np.log(close)
    returns = np.full(len(close), np.nan)
    returns[h:] = log_close[h:] - log_close[:-h]
    out = np.full((len(origins), len(quantiles)), np.nan)
    for row, origin in enumerate(np.asarray(origins, dtype=int)):
        past = returns[max(h, origin - int(window) + 1) : origin + 1]
        past = past[np.isfinite(past)]
        if len(past) >= MIN_NAIVE_RETURNS:
            out[row] = close[origin] * np.exp(np.quantile(past, list(quantiles)))
    return out


def _pinball(actual: np.ndarray, predicted: np.ndarray, q: float) -> float:
    diff = actual - predicted
    return float(np.mean(np.maximum(q * diff, (q - 1.0) * diff)))


def _level_scores(
    actual: np.ndarray, origin: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float
) -> dict[str, Any]:
    alpha = 1.0 - level
    width = upper - lower
    below = np.clip(lower - actual, 0.0, None)
    above = np.clip(actual - upper, 0.0, None)
    winkler = width + (2.0 / alpha) * (below + above)
    return {
        "coverage": json_float(float(np.mean((actual >= lower) & (actual <= upper)))),
        "mean_width": json_float(width.mean()),
        "mean_relative_width": json_float(np.mean(width / origin)),
        "winkler": json_float(winkler.mean()),
    }


def interval_metrics(
    actual: np.ndarray,
    origin_close: np.ndarray,
    model_quantiles: np.ndarray,
    naive: np.ndarray | None,
    quantiles: Sequence[float],
) -> dict[str, Any]:
    """Score interval forecasts against the realised prices, beside the naive interval.

    Parameters
    ----------
    actual, origin_close
        Realised prices and the close at each forecast's origin (1-D, same length).
    model_quantiles
        Shape ``(n, len(quantiles))``: the model's price quantiles per point.
    naive
        The same for the naive interval (:func:`naive_quantiles`), or None; points where the
        naive interval is NaN are left out of every score (model and naive alike), and the
        count is ``n``.
    quantiles
        The quantile levels, increasing (:func:`check_quantiles`).

    Returns
    -------
    dict
        ``quantiles``, ``n``, ``levels`` (narrowest first: ``level``, ``coverage``,
        ``mean_width``, ``mean_relative_width``, ``winkler``, ``naive`` (the same four) and
        ``winkler_ratio`` (model / naive)) and ``pinball`` (``{"0.05": {"model", "naive",
        "ratio"}}``).

    Raises
    ------
    DataError
        Shapes that disagree, a non-finite model quantile, or no point left to score.
    """
    qs = check_quantiles(quantiles)
    actual = np.asarray(actual, dtype="float64")
    origin = np.asarray(origin_close, dtype="float64")
    model_q = np.asarray(model_quantiles, dtype="float64")
    if model_q.shape != (len(actual), len(qs)) or origin.shape != actual.shape:
        raise DataError(
            f"interval forecasts of shape {model_q.shape} do not match {len(actual)} points "
            f"and {len(qs)} quantiles"
        )
    if not np.isfinite(model_q).all():
        raise ModelError("the model produced a non-finite quantile; retrain it")
    naive_q = None if naive is None else np.asarray(naive, dtype="float64")
    keep = np.ones(len(actual), dtype=bool)
    if naive_q is not None:
        keep = np.isfinite(naive_q).all(axis=1)
    if not keep.any():
        raise DataError("no forecast has both a model and a naive interval to score")
    actual, origin, model_q = actual[keep], origin[keep], model_q[keep]
    naive_q = None if naive_q is None else naive_q[keep]
    column = {q: i for i, q in enumerate(qs)}
    levels = []
    for level, lo, hi in interval_levels(qs):
        entry: dict[str, Any] = {
            "level": level,
            **_level_scores(actual, origin, model_q[:, column[lo]], model_q[:, column[hi]], level),
        }
        if naive_q is not None:
            base = _level_scores(
                actual, origin, naive_q[:, column[lo]], naive_q[:, column[hi]], level
            )
            entry["naive"] = base
            ratio = None if not base["winkler"] else entry["winkler"] / base["winkler"]
            entry["winkler_ratio"] = None if ratio is None else json_float(ratio)
        levels.append(entry)
    pinball = {}
    for q, i in column.items():
        model_loss = _pinball(actual, model_q[:, i], q)
        item: dict[str, Any] = {"model": json_float(model_loss)}
        if naive_q is not None:
            naive_loss = _pinball(actual, naive_q[:, i], q)
            item["naive"] = json_float(naive_loss)
            item["ratio"] = json_float(model_loss / naive_loss) if naive_loss > 0 else None
        pinball[f"{q:g}"] = item
    return {"quantiles": list(qs), "n": int(keep.sum()), "levels": levels, "pinball": pinball}


def calibration_end(record: Mapping[str, Any] | None) -> Any:
    """The last bar of a conformal bundle's calibration window (a naive UTC timestamp), or
    None: forecasts scored before it would be judged on bars the calibration saw."""
    import pandas as pd

    if not record or not record.get("calibration_end"):
        return None
    stamp = pd.Timestamp(record["calibration_end"])
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def evaluate_intervals(
    results: Any,
    close: np.ndarray,
    index: Any,
    *,
    record: Mapping[str, Any] | None,
    horizon: int,
    target_transform: str,
) -> dict[str, Any] | None:
    """The ``intervals`` entry of an evaluation record, or None for a point model.

    Parameters
    ----------
    results
        :func:`~kallos_models.modelling.forecasting.rolling_forecasts` output with the
        quantile columns.
    close, index
        The closes and bar times of the loaded frame (the history before the window feeds the
        naive interval).
    record
        The bundle manifest's ``intervals`` entry.
    horizon, target_transform
        The step scored and the bundle's target: beyond the first step of a log-return
        target no interval is scored (the record says why).

    Returns
    -------
    dict or None
        ``method``, ``quantiles``, ``naive_window`` (the trailing returns of the naive
        interval: a conformal bundle's calibration length, else :data:`DEFAULT_NAIVE_WINDOW`)
        and what :func:`interval_metrics` returns.
    """
    quantiles = record_quantiles(record)
    if not quantiles or record is None:
        return None
    base: dict[str, Any] = {
        "method": record.get("method"),
        "conformal_model": record.get("conformal_model"),
        "quantiles": list(quantiles),
    }
    if not price_quantiles_supported(target_transform, horizon):
        return {
            **base,
            "levels": None,
            "note": f"no interval at horizon {horizon}: the model's quantiles are of each "
            "step's log return, and a quantile of the price after several steps is not a sum "
            "of per-step quantiles; evaluate intervals with --horizon 1 (or train on "
            "target_transform price)",
        }
    window = int(record.get("calibration_bars") or DEFAULT_NAIVE_WINDOW)
    origins = np.asarray(index.get_indexer(results.index), dtype=int) - int(horizon)
    model_q = results[[quantile_column(q) for q in quantiles]].to_numpy(dtype="float64")
    naive = naive_quantiles(close, origins, horizon=horizon, quantiles=quantiles, window=window)
    scored = interval_metrics(
        results["actual"].to_numpy(dtype="float64"),
        results["origin_close"].to_numpy(dtype="float64"),
        model_q,
        naive,
        quantiles,
    )
    return {**base, "naive_window": window, **scored}


def check_after_calibration(record: Mapping[str, Any] | None, first: Any, flag: str) -> None:
    """Refuse a first forecast bar (or origin) ``first`` on or before the end of a conformal
    bundle's calibration window: its intervals would be judged on bars they were calibrated
    on (DataError naming ``flag``, the option that moves it)."""
    calibrated = calibration_end(record)
    if calibrated is not None and first <= calibrated:
        raise DataError(
            f"{first} is on or before the end of the model's conformal calibration window "
            f"({calibrated}): its intervals would be judged on bars they were calibrated on; "
            f"move {flag} so that the first forecast bar falls after {calibrated}"
        )
