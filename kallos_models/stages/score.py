"""Score: how the stored live forecasts fared once their bars arrived, against naive.

:func:`score` reads the ``forecasts`` table joined with the candles stored since
(:func:`kallos_models.data.forecast_store.forecasts_with_actuals`) and scores each group of
forecasts (one model, asset, timeframe and step) with the metrics ``evaluate`` uses
(:func:`kallos_models.modelling.metrics.compute_metrics`: RMSE, MAE, directional accuracy,
the same for the naive forecast made at the same origin, the RMSE ratio, Diebold-Mariano),
over all time and over a recent window: the forecasts whose target bar lies within ``last``
of the newest scored target bar. It draws the rolling RMSE ratio of each group (over
``window`` scored forecasts) to ``{output}/score_plot.png``. With ``max_ratio`` set, every
group whose recent ratio is above it is an alarm (the CLI exits with status 3). A group with
no forecast in the recent window and none pending has stopped forecasting (a champion
replaced, or a ``predict`` job that keeps failing): it is marked ``stale`` and warned about,
not an alarm, since a replaced model stops by design and a failing ``predict`` exits 1 itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.config import Settings, normalise_timeframe
from kallos_models.files import atomic_write, json_float
from kallos_models.live_settings import ScoreSettings, score_settings
from kallos_models.modelling.metrics import compute_metrics

logger = logging.getLogger(__name__)

__all__ = ["PLOT_NAME", "ScoreResult", "score"]

#: The plot's file name in the output folder.
PLOT_NAME = "score_plot.png"
_GROUP = ["model_id", "asset_id", "timeframe", "step"]


@dataclass(frozen=True)
class ScoreResult:
    """What :func:`score` computed: ``record`` (the JSON it prints), the alarms among its
    groups, and the plot (None when nothing was scored)."""

    record: dict[str, Any]
    alarms: list[dict[str, Any]]
    plot_path: Path | None


def _metrics(rows: pd.DataFrame, step: int) -> dict[str, Any] | None:
    if rows.empty:
        return None
    m = compute_metrics(
        rows["actual"].to_numpy(),
        rows["forecast"].to_numpy(),
        rows["origin_close"].to_numpy(),
        horizon=step,
    )
    return {
        "n": m["n"],
        "first_target": rows["target_time"].iloc[0].isoformat(),
        "last_target": rows["target_time"].iloc[-1].isoformat(),
        "rmse": m["rmse"],
        "mae": m["mae"],
        "directional_accuracy": m["directional_accuracy"],
        "naive": {"rmse": m["naive"]["rmse"], "mae": m["naive"]["mae"]},
        "rmse_ratio": m["rmse_ratio"],
        "diebold_mariano_p": m["diebold_mariano"]["p_value"],
    }


def rolling_ratio(rows: pd.DataFrame, window: int) -> pd.Series:
    """RMSE ratio to naive over the last ``window`` scored forecasts, by target time."""
    model = (rows["actual"] - rows["forecast"]) ** 2
    naive = (rows["actual"] - rows["origin_close"]) ** 2
    periods = min(window, len(rows))
    ratio = np.sqrt(model.rolling(window, min_periods=periods).mean()) / np.sqrt(
        naive.rolling(window, min_periods=periods).mean()
    )
    return pd.Series(
        ratio.replace([np.inf, -np.inf], np.nan).to_numpy(), index=rows["target_time"]
    ).dropna()


def _version(value: Any) -> int | str | None:
    """A registered version as the registry numbers it (stored as text)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value) if str(value).isdigit() else str(value)


def _label(group: dict[str, Any]) -> str:
    model = group["model"]
    who = model["registered_model"] or model["name"]
    version = f" v{model['version']}" if model["version"] else ""
    return f"{who}{version} {group['asset_id']} {group['timeframe']} step {group['step']}"


def _plot(curves: list[tuple[str, pd.Series]], s: ScoreSettings) -> Path:
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=110)
    axis = fig.subplots()
    for label, series in curves:
        axis.plot(series.index.to_pydatetime(), series.to_numpy(), linewidth=1.2, label=label)
    axis.axhline(1.0, color="black", linewidth=0.9, alpha=0.7, label="naive (ratio 1)")
    if s.max_ratio is not None:
        axis.axhline(
            s.max_ratio, color="tab:red", linestyle="--", label=f"--max-ratio {s.max_ratio:g}"
        )
    axis.set_ylabel(f"RMSE / naive RMSE, last {s.window} forecasts")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    locator = mdates.AutoDateLocator(minticks=4, maxticks=12)
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle("live forecasts against naive persistence (below 1: better than naive)")
    path = s.output_dir / PLOT_NAME
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    return path


def score(settings: Settings | ScoreSettings) -> ScoreResult:
    """Score the stored forecasts whose bars have arrived; flag drift above ``max_ratio``.

    Parameters
    ----------
    settings
        :class:`~kallos_models.stage_settings.ScoreSettings` (built from resolved
        :class:`Settings`, which are accepted too): database, filters (asset, timeframe,
        model: name, registered name or a ``model_id`` prefix), the recent window ``last``,
        the plot's rolling ``window``, ``max_ratio`` and the output folder.

    Returns
    -------
    ScoreResult
        ``record``: ``groups`` (per model, asset, timeframe and step: the model's identity,
        ``all`` and ``recent`` metrics, ``pending`` forecasts whose bar has not arrived,
        ``stale``: scored before but with nothing recent or pending, a model that stopped
        forecasting, logged as a warning and never an alarm),
        ``scored`` and ``pending`` totals, ``recent_from``, ``max_ratio``, ``alarms`` and
        ``plot``.

    Raises
    ------
    DatabaseError
        The database cannot be reached.
    """
    from kallos_models.data import db, forecast_store

    s = settings if isinstance(settings, ScoreSettings) else score_settings(settings)
    timeframe = None if s.timeframe is None else normalise_timeframe(s.timeframe)
    engine = db.create_db_engine(s.database.url)
    try:
        stored = forecast_store.forecasts_with_actuals(
            engine, asset_id=s.asset_id, timeframe=timeframe, model=s.model
        )
    finally:
        engine.dispose()
    arrived = stored["actual"].notna()
    scored = stored[arrived]
    recent_from = None if scored.empty else scored["target_time"].max() - s.last
    groups: list[dict[str, Any]] = []
    curves: list[tuple[str, pd.Series]] = []
    alarms: list[dict[str, Any]] = []
    for _, everything in stored.groupby(_GROUP, sort=True):
        first = everything.iloc[0]
        step = int(first["step"])
        rows = everything[everything["actual"].notna()].sort_values("target_time")
        recent = rows if recent_from is None else rows[rows["target_time"] > recent_from]
        group = {
            "model": {
                "id": first["model_id"],
                "name": first["model_name"],
                "registered_model": first["registered_model"],
                "version": _version(first["model_version"]),
            },
            "asset_id": first["asset_id"],
            "timeframe": first["timeframe"],
            "step": step,
            "all": _metrics(rows, step),
            "recent": _metrics(recent, step),
            "pending": int(everything["actual"].isna().sum()),
        }
        # scored once, but nothing in the recent window and nothing waiting: it stopped
        group["stale"] = bool(len(rows)) and group["recent"] is None and not group["pending"]
        if group["stale"]:
            logger.warning(
                "%s: no forecast in the recent window (its last scored bar is %s): it has "
                "stopped forecasting (a replaced model, or a predict job that fails); no drift "
                "alarm can be raised for it",
                _label(group),
                rows["target_time"].iloc[-1],
            )
        groups.append(group)
        curve = rolling_ratio(rows, s.window) if len(rows) else pd.Series(dtype="float64")
        if not curve.empty:
            curves.append((_label(group), curve))
        ratio = (group["recent"] or {}).get("rmse_ratio")
        if s.max_ratio is not None and ratio is not None and ratio > s.max_ratio:
            alarms.append({"label": _label(group), "recent_rmse_ratio": ratio})
            logger.warning(
                "%s: recent RMSE ratio %.4g above --max-ratio %g", _label(group), ratio, s.max_ratio
            )
    plot_path = _plot(curves, s) if curves else None
    record = {
        "scored": int(len(scored)),
        "pending": int((~arrived).sum()),
        "last": f"{s.last.total_seconds() / 86400:g}d",
        "recent_from": None if recent_from is None else recent_from.isoformat(),
        "max_ratio": None if s.max_ratio is None else json_float(s.max_ratio),
        "groups": groups,
        "alarms": alarms,
        "plot": None if plot_path is None else str(plot_path),
    }
    return ScoreResult(record=record, alarms=alarms, plot_path=plot_path)
