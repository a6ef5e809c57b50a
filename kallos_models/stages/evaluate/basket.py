"""Hold-out evaluation of a global model: each asset of its basket, then the basket pooled.

:func:`evaluate_basket` is what :func:`kallos_models.stages.evaluate.evaluate_model` runs for
a global model's bundle (:mod:`kallos_models.modelling.basket`). Each chosen asset (``--asset-id``
one or more of the basket, or all of it) is judged exactly as a single-asset model is, on
the bundle's *asset view* (the one model with that asset's preprocessing and training range)
and on the same window, and writes its own ``{asset}[_{timeframe}]_evaluation_metrics.json``
and plot. The basket's record, ``{name}[_{timeframe}]_evaluation_metrics.json`` (``name``
the bundle's short name), holds every asset's metrics under ``per_asset`` and scale-free
pooled figures under ``pooled`` (:func:`kallos_models.modelling.metrics.pooled_metrics`);
its plot has one panel per asset.

Everything is written in a hidden staging folder inside the output folder and moved into
place at the end, the basket's JSON last: an asset that cannot be evaluated (no rows in the
window, too little history) stops the run with its error and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.errors import DataError
from kallos_models.files import atomic_write, run_stem, write_json
from kallos_models.modelling import basket
from kallos_models.modelling.metrics import pooled_metrics
from kallos_models.stage_settings import EvaluateSettings
from kallos_models.stages.evaluate.holdout import evaluate_loaded
from kallos_models.stages.evaluate.result import EvaluationResult

logger = logging.getLogger(__name__)

__all__ = ["evaluate_basket", "plot_basket"]


def plot_basket(
    results: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    path: Path,
) -> Path:
    """One panel per asset: actual, forecast and naive prices, each on its own scale.

    Parameters
    ----------
    results : Mapping[str, DataFrame]
        Asset -> its forecasts (``actual``, ``forecast``, ``naive``). No default.
    metrics : Mapping[str, Mapping]
        Asset -> its metrics (``rmse_ratio``, ``directional_accuracy``), for the panel titles.
        No default.
    title : str
        The figure's title. No default.
    path : Path
        The PNG written (atomically). No default.

    Returns
    -------
    Path
    """
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 2.0 + 2.6 * len(results)), dpi=110)
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for axis, (asset, frame) in zip(axes, results.items(), strict=True):
        times = pd.DatetimeIndex(frame.index).to_pydatetime()
        axis.plot(times, frame["naive"], color="tab:orange", linewidth=1.0, linestyle="--")
        axis.plot(times, frame["actual"], color="black", linewidth=1.3, label="actual")
        axis.plot(times, frame["forecast"], color="tab:blue", linewidth=1.1, label="forecast")
        record = metrics.get(asset) or {}
        ratio, hits = record.get("rmse_ratio"), record.get("directional_accuracy")
        axis.set_title(
            f"{asset}: RMSE ratio to naive "
            f"{'n/a' if ratio is None else f'{ratio:.3f}'}, directional accuracy "
            f"{'n/a' if hits is None else f'{hits:.1%}'}",
            fontsize=10,
            loc="left",
        )
        axis.set_ylabel("price")
        axis.grid(True, alpha=0.3)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
        axis.xaxis.set_major_locator(locator)
        axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[0].legend(["naive (last close)", "actual", "forecast"], loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.985, top=1 - 0.9 / fig.get_figheight(), hspace=0.45)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    return path


def evaluate_basket(
    s: EvaluateSettings, bundle: Any, *, horizon: int | None, source: str
) -> EvaluationResult:
    """Evaluate a loaded global model on the chosen assets of its basket; pool the figures.

    Parameters
    ----------
    s : EvaluateSettings
        As for a single-asset model; ``asset_id`` is one asset of the basket, a comma list
        of them, or the bundle's short name (all). No default.
    bundle : LoadedBundle
        The global model's verified bundle. No default.
    horizon : int or None
        Forecast step scored; None: ``s.horizon``.
    source : str
        What the records call the model (their ``model_path`` key).

    Returns
    -------
    EvaluationResult
        The basket's record (``model_name``, ``basket``, ``assets``, ``timeframe``, the
        window, ``horizon``, ``model_path``, ``per_asset``, ``pooled``), its files, every
        asset's forecasts with an ``asset_id`` column, and each asset's own result under
        ``per_asset``.

    Raises
    ------
    ConfigError
        An asset outside the basket (the message lists it), or the errors of a single-asset
        evaluation, for any asset.
    DataError
        As a single-asset evaluation, naming the asset.
    """
    assets = basket.select_assets(bundle.manifest, s.asset_id)
    name = str(bundle.manifest.get("asset_id"))
    out_dir = s.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    timeframe = str(bundle.manifest.get("timeframe"))
    stem = run_stem(name, timeframe=timeframe)
    with contextlib.ExitStack() as stack:
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}_evaluation.", dir=out_dir))
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        own: dict[str, EvaluationResult] = {}
        for asset in assets:
            view = basket.asset_view(bundle, asset)
            settings = dataclasses.replace(s, asset_id=asset, output_dir=staging)
            logger.info("evaluating %s on %s (%d of %d)", name, asset, len(own) + 1, len(assets))
            try:
                own[asset] = evaluate_loaded(settings, view, horizon=horizon, source=source)
            except DataError as exc:
                raise DataError(f"{asset}: {exc}") from exc
        first = next(iter(own.values())).metrics
        per_asset = {asset: result.metrics for asset, result in own.items()}
        record = {
            "model_name": first["model_name"],
            "basket": name,
            "assets": list(assets),
            "timeframe": timeframe,
            "test_start": s.test_start.isoformat(),
            "test_end": s.test_end.isoformat(),
            "horizon": first["horizon"],
            "model_path": source,
            "pooled": pooled_metrics(per_asset),
            "per_asset": per_asset,
        }
        staged_json = write_json(staging / f"{stem}_evaluation_metrics.json", record)
        staged_plot = plot_basket(
            {asset: result.forecasts for asset, result in own.items()},
            per_asset,
            title=f"{first['model_name']} over {name} {timeframe}  -  hold-out "
            f"{s.test_start:%Y-%m-%d} to {s.test_end:%Y-%m-%d}  -  horizon {first['horizon']}",
            path=staging / f"{stem}_evaluation_plot.png",
        )
        # published last, the basket's JSON after everything it describes
        published: dict[str, EvaluationResult] = {}
        for asset, result in own.items():
            for staged in (result.plot_path, result.metrics_path):
                os.replace(staged, out_dir / staged.name)
            published[asset] = dataclasses.replace(
                result,
                metrics_path=out_dir / result.metrics_path.name,
                plot_path=out_dir / result.plot_path.name,
            )
        plot_path = out_dir / staged_plot.name
        os.replace(staged_plot, plot_path)
        metrics_path = out_dir / staged_json.name
        os.replace(staged_json, metrics_path)
    pooled = record["pooled"]
    logger.info(
        "evaluated %s over %s: mean RMSE ratio %s, %d of %d assets beat naive",
        record["model_name"],
        ", ".join(assets),
        pooled["rmse_ratio"],
        pooled["assets_beating_naive"],
        pooled["n_assets"],
    )
    forecasts = pd.concat(
        [result.forecasts.assign(asset_id=asset) for asset, result in own.items()]
    )
    return EvaluationResult(
        metrics=record,
        metrics_path=metrics_path,
        plot_path=plot_path,
        forecasts=forecasts,
        manifest_path=bundle.paths.manifest,
        per_asset=published,
    )
