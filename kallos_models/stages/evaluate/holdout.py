"""Hold-out evaluation: rolling forecasts, metrics against naive persistence, a plot.

Evaluating a bundle (:func:`kallos_models.stages.evaluate.evaluate_model`) loads it (file
checksums and the manifest's digest verified before anything is unpickled, so the facts its
guards read are tamper-evident); :func:`evaluate_loaded` then reads the hold-out window plus
the lookback the model needs from the database, makes one forecast per bar with the fitted
preprocessing (never refit), turns the forecasts back into prices and scores them against
the naive forecast "the next close equals the last known close".
At horizon 1 it also backtests the forecasts against buy-and-hold
(:mod:`kallos_models.modelling.backtest`). It writes ``{stem}_evaluation_metrics.json`` and
``{stem}_evaluation_plot.png``, ``{stem}`` being the asset plus the timeframe unless it is
``1d`` (:func:`kallos_models.files.run_stem`): ``BTC_evaluation_metrics.json``,
``BTC_4h_evaluation_metrics.json``.

The steps are public pieces (:func:`open_bundle`, :func:`load_window`, :func:`score_and_write`)
that the retraining backtest (:mod:`kallos_models.stages.evaluate.retrain`) shares, so both
check, score, record and plot alike.

The forecasts and metrics come from the forecasting core
(:mod:`kallos_models.modelling.forecasting`, :mod:`kallos_models.modelling.metrics`), which
the tuner scores its folds with too, so a fold score and a hold-out score mean the same thing.

Darts, torch and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from kallos_models.config import parse_date, timeframe_to_timedelta
from kallos_models.errors import ArtifactError, ConfigError, DataError
from kallos_models.files import run_stem, write_json
from kallos_models.modelling.backtest import BacktestConfig, backtest_curves, run_backtest
from kallos_models.modelling.bundle_files import manifest_indicators
from kallos_models.modelling.bundles import is_registry_uri
from kallos_models.modelling.forecasting import (
    check_horizon,
    lookback_bars,
    model_chunk_lengths,
    rolling_forecasts,
)
from kallos_models.modelling.intervals import (
    DEFAULT_NAIVE_WINDOW,
    check_after_calibration,
    evaluate_intervals,
)
from kallos_models.modelling.metrics import compute_metrics
from kallos_models.modelling.preprocessing import FeaturePreprocessor
from kallos_models.modelling.selection import deflated_sharpe
from kallos_models.stage_settings import DEFAULT_OUTPUT_DIRS, EvaluateSettings
from kallos_models.stages.evaluate.plot import plot_evaluation
from kallos_models.stages.evaluate.result import EvaluationResult

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUTPUT_PATH",
    "CheckedBundle",
    "EvaluationResult",
    "backtest_config",
    "load_window",
    "evaluate_loaded",
    "open_bundle",
    "score_and_write",
]

#: Where :func:`evaluate_model` writes when ``output_path`` is not set.
DEFAULT_OUTPUT_PATH = f"./{DEFAULT_OUTPUT_DIRS['evaluate']}"


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def _manifest_value(manifest: Mapping[str, Any], key: str, bundle: str) -> Any:
    if key not in manifest or manifest[key] in (None, ""):
        raise ArtifactError(
            f"the manifest {bundle} has no {key!r}; the bundle is incomplete: retrain it "
            "with `kallos-run train`"
        )
    return manifest[key]


def refuse_registry_uri(model_path: str | Path) -> None:
    """ConfigError for a ``models:/`` URI: stages read local bundles only."""
    if is_registry_uri(model_path):
        raise ConfigError(
            f"{model_path} is a registry URI: evaluate it through kallos_models.pipeline."
            "evaluate (what `kallos-run evaluate` calls), which downloads and verifies that "
            "version's bundle first"
        )


def backtest_config(s: EvaluateSettings) -> BacktestConfig:
    """The backtest rules of ``s``, checked (ConfigError) before anything is loaded."""
    return BacktestConfig(mode=s.backtest_mode, threshold=s.backtest_threshold, fee_bps=s.fee_bps)


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle loaded by :func:`open_bundle` and checked against the settings and window.

    Attributes
    ----------
    bundle
        The :class:`~kallos_models.modelling.bundles.LoadedBundle` (model, preprocessing,
        manifest, paths).
    model_name
        The bundle's model (equal to the settings').
    timeframe
        The bundle's timeframe: the evaluation always uses it.
    train_end
        The last bar the bundle was trained on (before the window), or None if unrecorded.
    """

    bundle: Any
    model_name: str
    timeframe: str
    train_end: pd.Timestamp | None

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's verified manifest."""
        return dict(self.bundle.manifest)


def open_bundle(
    s: EvaluateSettings, model_path: str | Path | Any, scaler_path: str | Path | None = None
) -> CheckedBundle:
    """Load a local bundle (checksums first), or take a loaded one (a global model's asset
    view), and check it fits ``s``.

    Raises
    ------
    ConfigError
        ``model_path`` is a registry URI; the bundle's model or asset is not the settings';
        a global model's whole bundle (evaluated per asset by :func:`evaluate_model`).
    ArtifactError
        A bundle file missing or tampered with, or a manifest without a required fact.
    DataError
        The window starts on or before the bundle's last training bar (leakage).
    """
    from kallos_models.modelling import bundles

    if isinstance(model_path, (str, Path)):
        refuse_registry_uri(model_path)
        # every manifest fact read below is verified by load_bundle (digest, checksummed files)
        bundle = bundles.load_bundle(model_path, scaler_path)
    else:
        bundle = model_path
    manifest = bundle.manifest
    where = str(bundle.paths.manifest)
    if not isinstance(bundle.preprocessor, FeaturePreprocessor):
        raise ConfigError(
            f"{bundle.paths.model.name} is a global model over {manifest.get('asset_id')}; "
            "it is judged one asset at a time by `kallos-run evaluate` without --retrain-every "
            "(a retraining backtest refits one asset's model)"
        )
    bundle_model = _manifest_value(manifest, "model_name", where)
    if s.model_name != bundle_model:
        raise ConfigError(
            f"model_name is {s.model_name!r} but the bundle {bundle.paths.model.name} holds "
            f"a {bundle_model!r} model; pass --model-name {bundle_model} or the bundle of a "
            f"{s.model_name!r} model"
        )
    bundle_asset = _manifest_value(manifest, "asset_id", where)
    if str(s.asset_id) != str(bundle_asset):
        raise ConfigError(
            f"asset_id is {s.asset_id!r} but the bundle was trained on {bundle_asset!r}; "
            f"pass --asset-id {bundle_asset} or the bundle of a {s.asset_id!r} model"
        )
    timeframe = str(_manifest_value(manifest, "timeframe", where))  # the bundle's, always
    train_end = parse_date(_manifest_value(manifest, "train_end", where), "train_end")
    if train_end is not None and s.test_start <= train_end:
        raise DataError(
            f"test window starts at {s.test_start}, on or before the end of the model's "
            f"training data ({train_end}): scoring it there would be leakage (the model saw "
            f"those bars); set --test-start-date after {train_end.date()}"
        )
    check_after_calibration(manifest.get("intervals"), s.test_start, "--test-start-date")
    return CheckedBundle(
        bundle=bundle, model_name=str(bundle_model), timeframe=timeframe, train_end=train_end
    )


def required_gap(s: EvaluateSettings, steps: int) -> int:
    """Bars that must lie between the training data's end and the first test bar: ``--gap``
    (default the horizon), and never fewer than ``steps - 1`` (a forecast's origin, ``steps``
    bars before its bar, must not lie inside the training data)."""
    return max(steps if s.gap is None else s.gap, steps - 1)


def check_gap(s: EvaluateSettings, checked: CheckedBundle, steps: int) -> None:
    """Refuse a test window that starts fewer than :func:`required_gap` bars after the
    bundle's last training bar (DataError with the first allowed start and the figures)."""
    if checked.train_end is None:
        return
    bar = timeframe_to_timedelta(checked.timeframe)
    gap = required_gap(s, steps)
    between = -(-(s.test_start - checked.train_end) // bar) - 1
    if between >= gap:
        return
    earliest = checked.train_end + (gap + 1) * bar
    shown = f"{earliest:%Y-%m-%d}" if earliest == earliest.normalize() else str(earliest)
    accept = (
        f", or pass --gap {between} to accept {between} bar(s)"
        if between >= max(steps - 1, 0) and s.gap is None
        else ""
    )
    raise DataError(
        f"the test window starts {between} bar(s) after the end of the model's training "
        f"data ({checked.train_end}); at horizon {steps} a gap of {gap} bar(s) is needed so "
        "that no training target reaches into a forecast's window (--gap, default the "
        f"horizon): set --test-start-date {shown} or later{accept}"
    )


def load_window(
    s: EvaluateSettings,
    checked: CheckedBundle,
    *,
    needed: int,
    why: str,
    start_date: pd.Timestamp | None | Literal["lookback"] = "lookback",
) -> tuple[pd.DataFrame, int]:
    """The window's rows and the history before it, as the bundle's features; and the
    position of the window's first bar in them.

    Parameters
    ----------
    s
        The settings (window, database, gap rule).
    checked
        From :func:`open_bundle`: the timeframe, columns and indicators are the bundle's.
    needed
        Bars of history needed before the window's first bar.
    why
        What needs them, for the error message (e.g. ``"input_chunk_length 30, horizon 1"``).
    start_date
        First bar to load (None: the first stored bar, with indicators computed as
        ``train`` computes them); default ``"lookback"`` loads ``needed + 1`` bars before
        the window.

    Raises
    ------
    DataError
        No bar in the window, or fewer than ``needed`` bars before it.
    """
    from kallos_models.data import datasets

    preprocessor = checked.bundle.preprocessor
    timeframe = checked.timeframe
    bar = timeframe_to_timedelta(timeframe)
    start_ts, end_ts = s.test_start, s.test_end
    columns = list(dict.fromkeys([preprocessor.target_col, *preprocessor.feature_columns]))
    frame = datasets.load_features_from_db(
        str(s.asset_id),
        end_ts,
        s.database.url,
        start_date=start_ts - (needed + 1) * bar if isinstance(start_date, str) else start_date,
        timeframe=timeframe,
        columns=columns,
        max_gap_bars=s.max_gap_bars,
        drop_warmup=True,
        indicators=manifest_indicators(checked.bundle.manifest, columns),
    )
    pos = int(frame.index.searchsorted(start_ts, side="left"))
    if pos >= len(frame):
        raise DataError(
            f"asset {s.asset_id!r} ({timeframe}) has no bars between {start_ts} and "
            f"{end_ts}; its loaded data ends at {frame.index[-1]}: move the test window into "
            "the stored range or ingest newer data"
        )
    if pos < needed:
        raise DataError(
            f"the model needs {needed} {timeframe} bars of history before the test window "
            f"({why}), but {s.asset_id!r} has {pos} before {frame.index[pos]} (usable data "
            f"starts at {frame.index[0]}); set --test-start-date at least {needed - pos} bars "
            "later"
        )
    return frame, pos


def search_trials(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``n_trials`` and ``trials_source`` for :func:`deflated_sharpe` from a bundle's manifest:
    its ``search`` record (the studies that chose its parameters), else 1 trial."""
    search = manifest.get("search")
    n_trials = search.get("n_trials") if isinstance(search, Mapping) else None
    if not isinstance(search, Mapping) or not isinstance(n_trials, int) or n_trials < 1:
        return {
            "n_trials": 1,
            "trials_source": "no search recorded (the parameters were not a tuner's file): "
            "deflated for 1 trial only",
        }
    names = ", ".join(str(study.get("study_name")) for study in search.get("studies") or [])
    return {"n_trials": n_trials, "trials_source": f"study {names}"}


def score_and_write(
    s: EvaluateSettings,
    checked: CheckedBundle,
    results: pd.DataFrame,
    frame: pd.DataFrame,
    pos: int,
    *,
    horizon: int,
    chunks: tuple[int, int],
    config: BacktestConfig,
    source: str,
    extra: Mapping[str, Any] | None = None,
    title_note: str = "",
) -> EvaluationResult:
    """Score forecasts against naive persistence, backtest them, write the JSON and the plot.

    Parameters
    ----------
    s, checked
        The settings and the bundle evaluated.
    results
        One row per bar of the window (:func:`~kallos_models.modelling.forecasting.
        rolling_forecasts` columns).
    frame, pos
        From :func:`load_window`: the rows and the position of the window's first bar.
    horizon
        The step scored.
    chunks
        ``(input_chunk_length, output_chunk_length)`` of the model that forecast.
    config
        The backtest rules (:func:`backtest_config`).
    source
        What the record calls the model (its ``model_path`` key).
    extra
        Keys added to the record after ``model_path``; default None.
    title_note
        Appended to the plot's title; default ``""``.

    Returns
    -------
    EvaluationResult
        The files are written last, each atomically.
    """
    preprocessor = checked.bundle.preprocessor
    timeframe = checked.timeframe
    icl, ocl = chunks
    window_close = frame[preprocessor.target_col].to_numpy(dtype="float64")[pos - 1 :]
    mase_scale = float(np.mean(np.abs(np.diff(window_close))))
    metrics = compute_metrics(
        results["actual"].to_numpy(),
        results["forecast"].to_numpy(),
        results["naive"].to_numpy(),
        origin=results["origin_close"].to_numpy(),
        horizon=horizon,
        mase_scale=mase_scale,
    )
    curves: pd.DataFrame | None = None
    if horizon == 1:
        backtest: dict[str, Any] = run_backtest(results, timeframe=timeframe, config=config)
        curves = backtest_curves(results, timeframe=timeframe, config=config)
        backtest["deflated_sharpe"] = deflated_sharpe(
            curves["strategy_return"].to_numpy(),
            **search_trials(checked.manifest),
            bars_per_year=backtest["bars_per_year"],
        )
    else:
        backtest = {
            "config": dataclasses.asdict(config),
            "strategy": None,
            "buy_and_hold": None,
            "note": f"not run at horizon {horizon}: the backtest trades one-step forecasts only; "
            "evaluate with --horizon 1",
        }
    interval_record = evaluate_intervals(
        results,
        frame[preprocessor.target_col].to_numpy(dtype="float64"),
        frame.index,
        record=checked.manifest.get("intervals"),
        horizon=horizon,
        target_transform=preprocessor.target_transform,
    )
    filled = frame["filled"].iloc[pos:] if "filled" in frame.columns else None
    train_end = checked.train_end
    record: dict[str, Any] = {
        "model_name": checked.model_name,
        "asset_id": str(s.asset_id),
        "timeframe": timeframe,
        "test_start": s.test_start.isoformat(),
        "test_end": s.test_end.isoformat(),
        "first_forecast": results.index[0].isoformat(),
        "last_forecast": results.index[-1].isoformat(),
        "horizon": horizon,
        "gap": required_gap(s, horizon),
        "train_end": None if train_end is None else train_end.isoformat(),
        "target_transform": preprocessor.target_transform,
        "input_chunk_length": icl,
        "output_chunk_length": ocl,
        "n_filled": 0 if filled is None else int(filled.astype(bool).sum()),
        "mase_scale_source": "mean |close[t] - close[t-1]| over the window, from the bar "
        "before its first (the naive one-step MAE)",
        "model_path": source,
        **(extra or {}),
        **metrics,
        "intervals": interval_record,
        "backtest": backtest,
    }

    out_dir = s.output_dir
    stem = run_stem(str(s.asset_id), timeframe=timeframe)
    metrics_path = write_json(out_dir / f"{stem}_evaluation_metrics.json", record)
    title = (
        f"{s.asset_id} {timeframe}  -  {checked.model_name}  -  hold-out "
        f"{results.index[0]:%Y-%m-%d} to {results.index[-1]:%Y-%m-%d}  -  horizon {horizon}"
        f"{title_note}"
    )
    plot_path = plot_evaluation(
        results,
        {**metrics, "backtest": backtest, "intervals": interval_record},
        title=title,
        path=out_dir / f"{stem}_evaluation_plot.png",
        curves=curves,
    )
    logger.info(
        "evaluated %s on %s: rmse %.6g, naive %.6g, ratio %s",
        checked.model_name,
        s.asset_id,
        metrics["rmse"],
        metrics["naive"]["rmse"],
        metrics["rmse_ratio"],
    )
    return EvaluationResult(
        metrics=record,
        metrics_path=metrics_path,
        plot_path=plot_path,
        forecasts=results,
        manifest_path=checked.bundle.paths.manifest,
    )


def evaluate_loaded(
    s: EvaluateSettings, bundle: Any, *, horizon: int | None, source: str
) -> EvaluationResult:
    """:func:`evaluate_model` of a loaded single-asset bundle (or a global one's asset view)."""
    from kallos_models.modelling.fitting import surface_interrupts

    config = backtest_config(s)
    checked = open_bundle(s, bundle)
    model, preprocessor = checked.bundle.model, checked.bundle.preprocessor
    icl, ocl = model_chunk_lengths(model)
    steps = check_horizon(s.horizon if horizon is None else horizon, ocl)
    check_gap(s, checked, steps)
    history = checked.bundle.history(steps)
    needed = lookback_bars(icl, steps, preprocessor.target_transform) + history
    # a model with intervals is judged beside the naive interval, which reads trailing returns
    quantiles = checked.bundle.quantiles
    window = history + DEFAULT_NAIVE_WINDOW if quantiles else 0
    bar = timeframe_to_timedelta(checked.timeframe)
    why = f"input_chunk_length {icl}, horizon {steps}, conformal calibration {history}"
    start = s.test_start - (max(needed, window + steps) + 1) * bar
    frame, pos = load_window(s, checked, needed=needed, why=why, start_date=start)
    with surface_interrupts():
        results = rolling_forecasts(
            model,
            preprocessor,
            frame,
            start=s.test_start,
            horizon=steps,
            quantiles=quantiles,
            history=history,
        )
    return score_and_write(
        s,
        checked,
        results,
        frame,
        pos,
        horizon=steps,
        chunks=(icl, ocl),
        config=config,
        source=source,
    )
