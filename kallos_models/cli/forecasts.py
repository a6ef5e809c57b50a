"""Live-forecast commands: `predict` the bars after the newest stored one, `score` them later.

Both are made for a scheduler: `predict` is idempotent (one stored forecast per model and
origin bar, however often it runs), `score` exits with status 3 when a model's recent RMSE
ratio to naive is above ``--max-ratio`` (the drift alarm), 0 otherwise, 1 on an error.
"""

from __future__ import annotations

import logging

import click

from kallos_models.cli.options import (
    CHECK_FAILED_EXIT_STATUS,
    CONTEXT_SETTINGS,
    asset_id_option,
    db_option,
    echo_json,
    output_option,
    settings,
    timeframe_option,
    tracking_option,
)

logger = logging.getLogger("kallos_models")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--model-path",
    required=True,
    metavar="PATH|URI",
    help="The bundle's .pt file, or models:/NAME@ALIAS / models:/NAME/VERSION.",
)
@asset_id_option(
    metavar="ID[,ID...]",
    help="Asset to forecast; checked against the bundle; for a global model one or more "
    "assets of its basket [default: the bundle's, all of a basket; the asset_id setting of "
    "the environment or config.json does not apply].",
)
@timeframe_option(help="Checked against the bundle's timeframe [default: the bundle's].")
@click.option(
    "--horizon",
    type=int,
    default=None,
    help="Bars ahead, at most output_chunk_length [default: 1].",
)
@click.option(
    "--max-age",
    default=None,
    metavar="DURATION",
    help="Refuse data whose newest closed bar opened longer ago, e.g. 36h, 3d [default: two bars].",
)
@click.option(
    "--as-of",
    default=None,
    metavar="TIME",
    help="Predict as if it were this UTC time (bars still open then are ignored) [default: now].",
)
@click.option(
    "--fill-gaps",
    is_flag=True,
    help="Fill short gaps in the lookback window (up to --max-gap-bars) instead of refusing.",
)
@click.option(
    "--max-gap-bars",
    type=int,
    default=None,
    help="Longest gap --fill-gaps fills, in bars [default: 16].",
)
@click.option("--no-store", is_flag=True, help="Print the forecast without storing it.")
@db_option
@tracking_option
@click.pass_context
def predict(
    ctx: click.Context,
    model_path,
    asset_id,
    timeframe,
    max_age,
    as_of,
    fill_gaps,
    no_store,
    **flags,
) -> None:
    """Forecast the bars after the newest stored bar and store the forecast.

    Uses the bundle's own preprocessing and indicators on the newest closed bars; refuses
    stale data (--max-age) and a lookback window with a missing bar. The forecast is stored
    in the database's `forecasts` table once per model and origin bar (a re-run stores
    nothing new), for `kallos-run score`. Prints the forecast as JSON.

    \b
    Example:
      kallos-run predict --model-path trained_models/gru_BTC.pt
      kallos-run predict --model-path models:/gru_BTC_4h@champion --horizon 3 \\
          --max-age 12h --tracking-uri sqlite:///mlflow.db
    """
    from kallos_models import pipeline
    from kallos_models.live_settings import predict_settings

    # the bundle says which asset: only the flag is checked against it, not a config's asset_id
    s = settings(ctx, **flags).replace(asset_id=asset_id)
    stage = predict_settings(
        s,
        timeframe=timeframe,
        max_age=max_age,
        as_of=as_of,
        fill_gaps=fill_gaps,
        store=not no_store,
    )
    result = pipeline.predict(s, stage, model_path=model_path)
    echo_json(result.record)


@click.command(context_settings=CONTEXT_SETTINGS)
@asset_id_option(
    help="Only this asset [default: all; the asset_id setting of the environment or "
    "config.json does not apply]."
)
@timeframe_option(help="Only this timeframe [default: all].")
@click.option(
    "--model",
    default=None,
    metavar="NAME|ID",
    help="Only this model: its name (gru), registered name, or bundle sha256 prefix "
    "(8+ characters) [default: all].",
)
@click.option(
    "--last",
    default="30d",
    show_default=True,
    metavar="DURATION",
    help="The recent window: forecasts aimed at bars within this of the newest scored one.",
)
@click.option(
    "--window",
    type=int,
    default=30,
    show_default=True,
    help="Scored forecasts per point of the plot's rolling ratio.",
)
@click.option(
    "--max-ratio",
    type=float,
    default=None,
    metavar="R",
    help="Exit with status 3 when a recent RMSE ratio to naive is above R.",
)
@output_option("./scores")
@db_option
@click.pass_context
def score(ctx: click.Context, asset_id, timeframe, model, last, window, max_ratio, **flags) -> None:
    """Score the stored forecasts whose bars have arrived, against naive persistence.

    Per model, asset, timeframe and step: the number of scored forecasts, RMSE, MAE,
    directional accuracy, the same for naive, and their ratio, over all time and over the
    recent window (--last). Prints JSON; draws the rolling ratio to scores/score_plot.png.
    Exit status: 0, or 3 when --max-ratio is given and a recent ratio is above it.

    \b
    Example:
      kallos-run score --asset-id BTC --last 30d --max-ratio 1.05
    """
    from kallos_models.live_settings import score_settings
    from kallos_models.stages.score import score as score_stage

    s = settings(ctx, **flags).replace(asset_id=asset_id)  # all assets unless the flag says
    stage = score_settings(
        s, timeframe=timeframe, model=model, last=last, window=window, max_ratio=max_ratio
    )
    result = score_stage(stage)
    if result.plot_path is not None:
        logger.info("plot: %s", result.plot_path)
    if not result.record["scored"] and not result.record["pending"]:
        logger.warning("no forecasts stored yet (that match): `kallos-run predict` stores them")
    elif not result.record["scored"]:
        logger.warning(
            "no stored forecast has been scored yet (%d waiting for their bars)",
            result.record["pending"],
        )
    echo_json(result.record)
    if result.alarms:
        click.echo(
            f"drift: {len(result.alarms)} recent RMSE ratio(s) above --max-ratio {max_ratio:g}: "
            + "; ".join(f"{a['label']} {a['recent_rmse_ratio']:.4g}" for a in result.alarms),
            err=True,
        )
        ctx.exit(CHECK_FAILED_EXIT_STATUS)
