"""Model commands: list `models`, `train`, `evaluate`, run the `demo` (`tune` and `studies`
are in :mod:`kallos_models.cli.tuning`).

`train` and `evaluate` pass their flags to the settings resolver (``**flags``; only
the end date has another settings key per command) and call :mod:`kallos_models.pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, get_args

import click

from kallos_models.cli.options import (
    CONTEXT_SETTINGS,
    asset_id_option,
    basket_option,
    basket_options,
    db_option,
    echo_json,
    end_date_option,
    file_option,
    gap_option,
    json_option,
    max_epochs_option,
    model_option,
    n_trials_option,
    output_option,
    seed_option,
    settings,
    show_progress,
    start_date_option,
    timeframe_option,
    tracking_option,
)
from kallos_models.config import BacktestMode
from kallos_models.errors import ConfigError
from kallos_models.modelling.ensemble import ENSEMBLE_METHODS

logger = logging.getLogger("kallos_models")


@click.command(context_settings=CONTEXT_SETTINGS)
@timeframe_option(help="Timeframe for the lookback ranges [default: 1d].")
@json_option
@click.pass_context
def models(ctx: click.Context, timeframe, as_json) -> None:
    """List the registered models and their tunable parameters.

    \b
    Example:
      kallos-run models --json
    """
    from kallos_models.modelling import zoo

    rows = zoo.list_models(settings(ctx, timeframe=timeframe).timeframe)
    if as_json:
        echo_json(rows)
        return
    for line in _model_lines(rows):
        click.echo(line)


def _model_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        notes = [] if row["deep"] else ["not deep"]
        if row["extra"]:
            notes.append(
                f"needs the {row['extra']} extra" + ("" if row["installed"] else ", missing")
            )
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(f"{row['name']:<12} {row['darts_class']}  {row['description']}{note}")
        lines += [f"    {param:<22} {space}" for param, space in row["tunable"].items()]
    lines.append(
        f"{'ensemble':<12} several of the above combined (train --model-name ensemble "
        "--members A,B,...; trained, not tuned)"
    )
    return lines


def _ensemble_spec(
    model_name: str,
    params_file: Path | None,
    members: str | None,
    member_params: tuple[str, ...],
    method: str | None,
    train_bars: int | None,
) -> Any:
    """The ensemble of train's flags, or None; ConfigError for flags that do not fit."""
    from kallos_models.modelling import ensemble

    ensemble_flags = members or member_params or method or train_bars is not None
    if not ensemble.is_ensemble(model_name):
        if ensemble_flags:
            raise ConfigError(
                "--members, --member-params, --ensemble-method and --ensemble-train-bars are "
                f"for --model-name ensemble, but the model is {model_name!r}"
            )
        if params_file is None:
            raise ConfigError(
                "train needs --params-file: the JSON `kallos-run tune` writes, or a JSON object "
                "of hyperparameters ({} for the defaults)"
            )
        return None
    if params_file is not None:
        raise ConfigError(
            "an ensemble takes its members' parameters from --member-params NAME=FILE, not "
            "--params-file"
        )
    return ensemble.EnsembleSpec.from_flags(members, method, train_bars, member_params)


@click.command(context_settings=CONTEXT_SETTINGS)
@model_option
@basket_options
@end_date_option
@start_date_option
@click.option(
    "--params-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON hyperparameters, or the file `kallos-run tune` writes (required, except for "
    "an ensemble: see --member-params).",
)
@output_option("./trained_models")
@db_option
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@seed_option
@click.option(
    "--accelerator", default=None, help="Lightning accelerator: auto, cpu, gpu [default: auto]."
)
@click.option("--devices", default=None, help="Lightning devices, e.g. 1 or auto [default: auto].")
@click.option("--precision", default=None, help="Lightning precision, e.g. 32-true or bf16-mixed.")
@click.option(
    "--quantiles",
    default=None,
    metavar="Q,Q,...",
    help="Train the model to forecast these quantiles (quantile regression), e.g. "
    "0.05,0.1,0.5,0.9,0.95: with 0.5, in pairs q and 1-q [default: a point model].",
)
@click.option(
    "--conformal",
    is_flag=True,
    help="Wrap the model in Darts' conformal prediction (80% and 90% intervals, or those of "
    "--quantiles), calibrated on the last --calibration-bars bars, held out of the fit.",
)
@click.option(
    "--calibration-bars",
    type=int,
    default=None,
    metavar="BARS",
    help="Conformal calibration window, in bars [default: 200].",
)
@click.option(
    "--members",
    default=None,
    metavar="NAME,NAME,...",
    help="With --model-name ensemble: the zoo models it combines, e.g. gru,lightgbm,linear.",
)
@click.option(
    "--member-params",
    multiple=True,
    metavar="NAME=FILE",
    help="An ensemble member's params file (repeat per member) [default: the zoo's defaults].",
)
@click.option(
    "--ensemble-method",
    type=click.Choice(list(ENSEMBLE_METHODS)),
    default=None,
    help="Combine the members by weights learned on their out-of-sample forecasts of the "
    "last --ensemble-train-bars training bars, or by the plain mean [default: regression].",
)
@click.option(
    "--ensemble-train-bars",
    type=int,
    default=None,
    metavar="BARS",
    help="Bars the regression ensemble learns its weights on [default: 200].",
)
@tracking_option
@click.pass_context
def train(
    ctx: click.Context,
    end_date,
    params_file,
    overwrite,
    quantiles,
    conformal,
    calibration_bars,
    members,
    member_params,
    ensemble_method,
    ensemble_train_bars,
    **flags,
) -> None:
    """Train the final model on all data up to the end date and write its bundle.

    Writes {model}_{asset}.pt (+ .ckpt), _scaler.pkl and _manifest.json, with _{timeframe}
    after the asset unless it is 1d (gru_BTC_4h.pt); prints their paths as JSON. With
    --asset-id BTC,ETH,SOL one global model learns from every asset's series, each scaled on
    its own rows and named by static covariates; its files carry the basket's short name
    (gru_BTC-ETH-SOL_4h.pt, or --run-name) and the manifest lists the basket. With a
    tracking URI the run is logged to MLflow and the bundle registered as a new version of
    {model}_{asset}_{timeframe}. With --quantiles or --conformal, evaluate and predict report
    intervals. --model-name ensemble --members A,B,... trains one bundle of several zoo models
    combined (Darts' RegressionEnsembleModel or NaiveEnsembleModel).

    \b
    Example:
      kallos-run train --model-name gru --asset-id BTC --end-date 2024-06-30 \\
          --params-file gru_BTC_best_params.json
      kallos-run train --model-name lightgbm --asset-id BTC --end-date 2024-06-30 \\
          --params-file lightgbm_BTC_best_params.json --conformal --calibration-bars 250
      kallos-run train --model-name ensemble --members gru,lightgbm,linear --asset-id BTC \\
          --end-date 2024-06-30 --member-params gru=gru_BTC_best_params.json
      kallos-run train --model-name gru --asset-id BTC,ETH,SOL --timeframe 4h \\
          --end-date 2024-06-30 --params-file gru_params.json
    """
    from kallos_models import pipeline
    from kallos_models.modelling.intervals import IntervalSpec

    s = settings(ctx, train_end_date=end_date, **flags)
    spec = IntervalSpec.from_flags(quantiles, conformal, calibration_bars)
    ensemble = _ensemble_spec(
        s.model_name, params_file, members, member_params, ensemble_method, ensemble_train_bars
    )
    result = pipeline.train(
        s,
        params_file or {},
        overwrite=overwrite,
        show_progress=show_progress(ctx),
        intervals=spec,
        members=ensemble,
    )
    echo_json(result.as_dict())


@click.command(context_settings=CONTEXT_SETTINGS)
@model_option
@basket_option(
    help="Asset, e.g. BTC; for a global model one or more assets of its basket, e.g. "
    "BTC,ETH [default: none; with a global model's short name, all]."
)
@click.option(
    "--model-path",
    required=True,
    metavar="PATH|URI",
    help="The bundle's .pt file, or a registered version: models:/NAME@ALIAS or "
    "models:/NAME/VERSION (with --tracking-uri).",
)
@click.option(
    "--scaler-path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bundle's _scaler.pkl [default: the one its manifest names].",
)
@click.option(
    "--test-start-date", default=None, metavar="DATE", help="First day of the hold-out window."
)
@click.option(
    "--test-end-date", default=None, metavar="DATE", help="Last day of the hold-out window."
)
@output_option("./evaluation_results")
@click.option(
    "--horizon",
    type=int,
    default=None,
    help="Bars ahead, at most output_chunk_length [default: 1].",
)
@gap_option(
    help="Bars required between the end of the model's training data and the test window, "
    "so no training target reaches into a forecast's window; refused when fewer "
    "[default: the horizon]."
)
@click.option(
    "--backtest-mode",
    type=click.Choice(list(get_args(BacktestMode))),
    default=None,
    help="Backtest rule: long or flat, or long/short, on the forecast's sign; *_interval "
    "trades only when the narrowest interval excludes the last close; *_confidence sizes by "
    "2 P(up) - 1 [default: long].",
)
@click.option(
    "--backtest-threshold",
    type=float,
    default=None,
    help="Forecast log return needed to take a position [default: 0].",
)
@click.option(
    "--fee-bps", type=float, default=None, help="Cost per unit of position change [default: 10]."
)
@click.option(
    "--retrain-every",
    default=None,
    metavar="BARS",
    help="Refit the model every BARS bars through the window on all data before each refit "
    "(preprocessing too), as live retraining would [default: fit once, the bundle's model].",
)
@click.option(
    "--params-file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hyperparameters of the refits, as for train [default: the bundle's]; needs "
    "--retrain-every.",
)
@db_option
@tracking_option
@click.pass_context
def evaluate(
    ctx: click.Context, model_path, scaler_path, horizon, retrain_every, params_file, **flags
) -> None:
    """Judge a trained bundle on a hold-out window against a naive forecast.

    Writes {asset}_evaluation_metrics.json and {asset}_evaluation_plot.png (BTC_4h_... for a
    timeframe other than 1d); prints the metrics. With a tracking URI they are logged to the
    run of the bundle's registered version. With --retrain-every N the bundle's recipe is
    refit every N bars (a retraining backtest, not tracked); the JSON adds n_refits, refits.
    A global model is judged on each asset chosen from its basket (each asset's own files),
    then pooled: {basket}_evaluation_metrics.json has per_asset and pooled (mean RMSE ratio).

    \b
    Example:
      kallos-run evaluate --model-name gru --asset-id BTC \\
          --model-path trained_models/gru_BTC.pt --scaler-path trained_models/gru_BTC_scaler.pkl \\
          --test-start-date 2024-07-02 --test-end-date 2025-07-04
      kallos-run evaluate --asset-id BTC --model-path models:/gru_BTC_1d@champion \\
          --test-start-date 2024-07-02 --test-end-date 2025-07-04 --tracking-uri sqlite:///mlflow.db
      kallos-run evaluate --asset-id BTC --model-path trained_models/gru_BTC.pt \\
          --test-start-date 2024-07-02 --test-end-date 2025-06-30 --retrain-every 30
      kallos-run evaluate --asset-id BTC,ETH,SOL \\
          --model-path trained_models/gru_BTC-ETH-SOL_4h.pt \\
          --test-start-date 2024-07-02 --test-end-date 2025-07-04
    """
    from kallos_models import pipeline

    s = settings(ctx, horizon=horizon, **flags)
    result = pipeline.evaluate(
        s,
        model_path=model_path,
        scaler_path=scaler_path,
        horizon=horizon,
        retrain_every=retrain_every,
        params_file=params_file,
        show_progress=show_progress(ctx),
    )
    logger.info("metrics: %s; plot: %s", result.metrics_path, result.plot_path)
    if result.tracking and result.tracking.get("version") is not None:
        t = result.tracking
        logger.info("logged to %s version %s", t["registered_model"], t["version"])
    echo_json(result.metrics)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--workdir",
    default="demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the database and every file written.",
)
@file_option(
    type=click.Path(dir_okay=False, path_type=Path),
    help="Candle file to use [default: a generated SYNTHETIC market].",
)
@asset_id_option(metavar=None, help="Asset id [default: SYNTHETIC, or the file name's stem].")
@timeframe_option(default="1d", show_default=True, metavar=None, help="Bar size of the data.")
@model_option(default="gru", show_default=True, metavar=None, help="Model to tune and train.")
@n_trials_option(default=4, show_default=True, help="Tuning trials.")
@max_epochs_option(default=3, show_default=True, help="Epoch cap per fit.")
@click.pass_context
def demo(
    ctx: click.Context, workdir, file_path, asset_id, timeframe, model_name, n_trials, max_epochs
) -> None:
    """Run the main job end to end: ingest, short tune, train, evaluate on SQLite.

    Prints where the params, bundle, metrics and plot are, and the headline metrics.

    \b
    Example:
      kallos-run demo --workdir demo
      kallos-run demo --file BTCUSDT_1d.csv --asset-id BTC
    """
    from kallos_models import demo as quickstart

    result = quickstart.run_demo(
        workdir,
        data_file=file_path,
        asset_id=asset_id,
        timeframe=timeframe,
        model_name=model_name,
        n_trials=n_trials,
        max_epochs=max_epochs,
        show_progress=show_progress(ctx),
    )
    echo_json(result.as_dict())
    click.echo(_demo_headline(result), err=True)


def _demo_headline(result) -> str:
    h = result.headline
    label = " (SYNTHETIC data)" if result.synthetic else ""
    return (
        f"{h['asset_id']}{label}: model RMSE {h['rmse']:.4g} vs naive {h['naive_rmse']:.4g} "
        f"(ratio {h['rmse_ratio']:.3f}); plot: {result.plot_path}"
    )
