"""The quickstart: ingest, a short tune, train and evaluate, end to end on embedded SQLite."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.config import Settings, resolve_settings, timeframe_to_timedelta
from kallos_models.data import db
from kallos_models.errors import DataError, ModelError

logger = logging.getLogger(__name__)

#: Share of the bars held out for evaluation (the tail of the series).
HOLDOUT_SHARE = 0.15


@dataclass(frozen=True)
class DemoResult:
    """Where everything the quickstart made lies, and the headline metrics."""

    data_file: Path
    synthetic: bool
    database: str
    params_path: Path
    bundle: dict[str, str | None]
    metrics_path: Path
    plot_path: Path
    headline: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "data_file": str(self.data_file),
            "synthetic": self.synthetic,
            "database": self.database,
            "params_path": str(self.params_path),
            "bundle": self.bundle,
            "metrics_path": str(self.metrics_path),
            "plot_path": str(self.plot_path),
            "headline": self.headline,
        }


def split_dates(first: pd.Timestamp, last: pd.Timestamp, timeframe: str) -> dict[str, str]:
    """Tune/train end and hold-out window: the last ``HOLDOUT_SHARE`` of the bars is the test,
    one bar after the training data (the default gap at horizon 1)."""
    step = timeframe_to_timedelta(timeframe)
    n_bars = int((last - first) / step) + 1
    test_bars = max(int(n_bars * HOLDOUT_SHARE), 10)
    test_start = last - step * (test_bars - 1)
    train_end = test_start - 2 * step
    if train_end <= first:
        raise DataError(f"{n_bars} bars are too few for a quickstart; give a longer file")
    return {
        "tune_end_date": str(train_end),
        "train_end_date": str(train_end),
        "test_start_date": str(test_start),
        "test_end_date": str(last),
    }


def run_demo(
    workdir: str | Path = "demo",
    *,
    data_file: str | Path | None = None,
    asset_id: str | None = None,
    timeframe: str = "1d",
    model_name: str = "gru",
    n_trials: int = 4,
    max_epochs: int = 3,
    seed: int = 42,
    show_progress: bool = False,
) -> DemoResult:
    """Run the main job end to end in ``workdir`` on a SQLite database there.

    Parameters
    ----------
    workdir
        Directory for the database, params, bundle, metrics and plot; default ``demo``.
    data_file
        Candle file to use; default None generates a SYNTHETIC market (labelled so everywhere).
    asset_id
        Asset id to store; default ``SYNTHETIC`` for generated data, else the file's stem.
    timeframe
        Bar size of the data; default ``1d``.
    model_name
        Model to tune and train; default ``gru``.
    n_trials
        Tuning trials; default 4.
    max_epochs
        Epoch cap per fit; default 3.
    seed
        Seed for sampler and training; default 42.
    show_progress
        Lightning progress bars; default False.
    """
    from kallos_models import pipeline
    from kallos_models.data import ingest, synthetic

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    synthetic_data = data_file is None
    if data_file is None:
        asset = asset_id or synthetic.SYNTHETIC_ASSET_ID
        path = synthetic.write_market_csv(
            synthetic.generate_market(timeframe=timeframe, seed=seed),
            work / f"{asset}_{timeframe}_synthetic.csv",
        )
        logger.info("%s -> %s", synthetic.DESCRIPTION, path)
    else:
        path = Path(data_file)
        asset = asset_id or path.stem.split("_")[0]
    db_url = f"sqlite:///{(work / 'kallos.db').as_posix()}"
    engine = db.create_db_engine(db_url)
    logger.info("step 1/4: ingest %s as %s %s", path, asset, timeframe)
    summary = ingest.ingest_file(engine, asset, timeframe, path, skip_invalid=True)
    first, last = pd.Timestamp(summary.first), pd.Timestamp(summary.last)
    dates = split_dates(first, last, timeframe)
    settings: Settings = resolve_settings(
        {
            "db_url": db_url,
            "asset_id": asset,
            "timeframe": timeframe,
            "model_name": model_name,
            "n_trials": n_trials,
            "max_epochs": max_epochs,
            "seed": seed,
            **dates,
        },
        cwd=work,
    )
    logger.info("step 2/4: tune %d trials up to %s", n_trials, dates["tune_end_date"])
    tuned = pipeline.tune(settings.replace(output_path=str(work)), show_progress=show_progress)
    if tuned.params_path is None:  # tune raises when no trial completed; a timeout may not
        raise ModelError("the demo's tuning completed no trial; run it again with more trials")
    logger.info("step 3/4: train up to %s", dates["train_end_date"])
    trained = pipeline.train(
        settings.replace(output_path=str(work / "trained_models")),
        tuned.params_path,
        overwrite=True,
        show_progress=show_progress,
    )
    logger.info("step 4/4: evaluate %s .. %s", dates["test_start_date"], dates["test_end_date"])
    evaluated = pipeline.evaluate(
        settings.replace(output_path=str(work / "evaluation_results")),
        model_path=trained.paths.model,
        scaler_path=trained.paths.scaler,
    )
    m = evaluated.metrics
    headline = {
        "asset_id": asset,
        "synthetic": synthetic_data,
        "test_window": [dates["test_start_date"], dates["test_end_date"]],
        "rmse": m["rmse"],
        "naive_rmse": m["naive"]["rmse"],
        "rmse_ratio": m["rmse_ratio"],
        "directional_accuracy": m["directional_accuracy"],
    }
    return DemoResult(
        data_file=path,
        synthetic=synthetic_data,
        database=db_url,
        params_path=Path(tuned.params_path),
        bundle=trained.paths.as_dict(),
        metrics_path=evaluated.metrics_path,
        plot_path=evaluated.plot_path,
        headline=headline,
    )
