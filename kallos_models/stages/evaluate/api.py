"""The evaluate stage's entry point: :func:`evaluate_model` of one bundle, single or global."""

from __future__ import annotations

from pathlib import Path

from kallos_models.config import Settings
from kallos_models.errors import ConfigError
from kallos_models.modelling import basket, bundles
from kallos_models.stage_settings import EvaluateSettings, evaluate_settings
from kallos_models.stages.evaluate.basket import evaluate_basket
from kallos_models.stages.evaluate.holdout import (
    backtest_config,
    evaluate_loaded,
    refuse_registry_uri,
)
from kallos_models.stages.evaluate.result import EvaluationResult

__all__ = ["evaluate_model"]


def evaluate_model(
    settings: Settings | EvaluateSettings,
    *,
    model_path: str | Path,
    scaler_path: str | Path | None = None,
    horizon: int | None = None,
    source: str | None = None,
) -> EvaluationResult:
    """Evaluate a saved model on a hold-out window it never saw; write metrics and a plot.

    A global model's bundle is judged on each chosen asset of its basket, then pooled
    (:func:`kallos_models.stages.evaluate.basket.evaluate_basket`); any other by
    :func:`kallos_models.stages.evaluate.holdout.evaluate_loaded`.

    Steps: check the window; load the bundle (checksums verified before unpickling); check
    that model, asset and window fit the bundle (no overlap with training, horizon at most
    the model's ``output_chunk_length``); load the window plus the lookback from the database
    (the bundle's timeframe); make rolling forecasts; score them against naive persistence;
    at horizon 1, backtest them against buy-and-hold
    (:func:`kallos_models.modelling.backtest.run_backtest`,
    under the metrics' ``backtest`` key; at other horizons the key holds the config, null
    results and a note); write ``{stem}_evaluation_metrics.json`` and
    ``{stem}_evaluation_plot.png`` (with an equity panel when there is a backtest).

    Parameters
    ----------
    settings
        The stage's settings (:func:`kallos_models.stage_settings.evaluate_settings` builds
        them from resolved :class:`Settings`, which are accepted too): asset and model name
        (both checked against the bundle; for a global model one or more assets of its
        basket, or its short name for all), the hold-out window (required), database,
        ``max_gap_bars``, ``horizon``, ``output_dir`` (default ``./evaluation_results``) and
        the backtest rules (mode, threshold, fee in bps). The timeframe, indicators and
        features are the bundle's. Settings with ``retrain_every`` are refused: that is
        :func:`kallos_models.stages.evaluate.retrain.retrain_backtest`.
    model_path
        The bundle's model file (``{stem}.pt``), a local path.
    scaler_path
        The bundle's scaler file; default None takes it from the manifest beside the model.
    horizon
        Forecast step scored, in bars; default None uses the settings' ``horizon``.
    source
        What the metrics record calls the model (its ``model_path`` key); default None uses
        ``model_path`` (the pipeline passes the ``models:/`` URI it resolved).

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
        A bundle file missing or tampered with (checksum mismatch), no manifest beside the
        model file (an interrupted save), or the manifest edited (its digest does not match,
        or its train end, columns or timeframe disagree with the checksummed files).
    DataError
        The window starts on or before the end of training (leakage), too little history
        before the window, or no rows in it.

    Notes
    -----
    This stage reads local bundles only: :func:`kallos_models.pipeline.evaluate` resolves a
    ``models:/`` URI to a downloaded, verified bundle first, and logs the result to MLflow
    when tracking is on.
    """
    refuse_registry_uri(model_path)
    source = str(Path(model_path)) if source is None else source
    s = settings if isinstance(settings, EvaluateSettings) else evaluate_settings(settings)
    if s.retrain_every is not None:
        raise ConfigError(
            "these settings ask for a retraining backtest (retrain_every "
            f"{s.retrain_every}); run it with kallos_models.stages.evaluate.retrain_backtest "
            "(what `kallos-run evaluate --retrain-every` calls)"
        )
    backtest_config(s)  # bad backtest settings fail before the bundle is read
    bundle = bundles.load_bundle(model_path, scaler_path)
    if basket.basket_assets(bundle.manifest) is not None:
        return evaluate_basket(s, bundle, horizon=horizon, source=source)
    return evaluate_loaded(s, bundle, horizon=horizon, source=source)
