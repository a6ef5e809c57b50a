"""Tuning commands: `tune` (search hyperparameters) and `studies` (list a storage's studies).

`tune` passes its flags to the settings resolver (``**flags``; the end date is
``tune_end_date``) and calls :func:`kallos_models.pipeline.tune`.
"""

from __future__ import annotations

from typing import get_args

import click

from kallos_models.cli.options import (
    CONTEXT_SETTINGS,
    basket_options,
    db_option,
    echo_json,
    end_date_option,
    gap_option,
    json_option,
    max_epochs_option,
    model_option,
    n_trials_option,
    optuna_schema_option,
    output_option,
    seed_option,
    settings,
    show_progress,
    start_date_option,
    storage_option,
    tracking_option,
)
from kallos_models.config import Pruner

__all__ = ["studies", "tune"]


@click.command(context_settings=CONTEXT_SETTINGS)
@model_option
@basket_options
@end_date_option(help="Last day of data used for tuning.")
@start_date_option(help="First day of data [default: all].")
@db_option
@n_trials_option
@click.option("--study-name", default=None, help="[default: {model}_{asset or basket}_{timeframe}]")
@optuna_schema_option(help="PostgreSQL schema for Optuna's tables.")
@storage_option
@click.option(
    "--workers", type=int, default=None, help="Worker processes on this machine [default: 1]."
)
@max_epochs_option
@click.option(
    "--metric",
    type=click.Choice(["rmse", "mae", "mape", "smape", "rmse_rel_naive"]),
    default=None,
    help="Fold score, averaged over folds (for a basket, first over its assets; scale-free "
    "scores only) [default: rmse; rmse_rel_naive for a basket].",
)
@gap_option(
    help="Bars left out between each fold's training and validation rows (purged folds) "
    "[default: the horizon]."
)
@click.option(
    "--pruner",
    type=click.Choice(list(get_args(Pruner))),
    default=None,
    help="Stops hopeless trials from the validation loss of each epoch and each fold's score: "
    "median (worse than the completed trials' median at the same step), halving (successive "
    "halving), hyperband, or none [default: median].",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SEC",
    help="Wall-clock budget of the whole tune: no trial starts after it, and running trials "
    "are pruned at their next epoch or fold.",
)
@click.option(
    "--space",
    type=click.Choice(["auto", "cpu", "full"]),
    default="auto",
    show_default=True,
    help="Search space and epoch budget: cpu caps widths and depths and trains at most 20 "
    "epochs per fold (unless --max-epochs); full is the seed's space; auto keeps a resumed "
    "study's, else full with a GPU and cpu without.",
)
@click.option(
    "--warm-start-from",
    default=None,
    metavar="STUDY",
    help="Try the best 3 configurations of this study first (the same model on another "
    "asset or timeframe, in the same storage; values fitted to this search space).",
)
@output_option(".")
@seed_option(help="Sampler seed [default: 42].")
@tracking_option
@click.pass_context
def tune(ctx: click.Context, end_date, space, warm_start_from, **flags) -> None:
    """Search hyperparameters with Optuna over walk-forward cross-validation.

    Resumes the stored study; writes {model}_{asset}_best_params.json (gru_BTC_4h_... for a
    timeframe other than 1d) and report plots. With a tracking URI: one MLflow run per tune,
    a child run per trial. With --asset-id BTC,ETH,SOL each trial fits one global model per
    fold (every asset split at the same dates) and scores the mean of the assets' scores,
    each asset's kept on the trial (asset_scores).

    \b
    Example:
      kallos-run tune --model-name gru --asset-id BTC --end-date 2023-12-31 --n-trials 20
      kallos-run tune --model-name gru --asset-id BTC,ETH,SOL --timeframe 4h \\
          --end-date 2023-12-31 --n-trials 20
      kallos-run tune --model-name gru --asset-id ETH --end-date 2023-12-31 \\
          --n-trials 20 --warm-start-from gru_BTC_1d
    """
    from kallos_models import pipeline

    # Ctrl-C / SIGTERM: the tune marks its running trial FAIL, writes the best params so far
    # and re-raises; the CLI group prints tune.interrupt_note and exits 130 / 143
    s = settings(ctx, tune_end_date=end_date, **flags)
    result = pipeline.tune(
        s, show_progress=show_progress(ctx), warm_start_from=warm_start_from, space=space
    )
    echo_json(result.summary)


tune.interrupt_note = (  # type: ignore[attr-defined]
    "the running trial was marked failed; run the same command to resume."
)


@click.command(context_settings=CONTEXT_SETTINGS)
@db_option
@storage_option
@optuna_schema_option
@json_option
@click.pass_context
def studies(ctx: click.Context, db_url, storage_url, optuna_schema, as_json) -> None:
    """List the Optuna studies in a storage with trial counts and best values.

    \b
    Example:
      kallos-run studies --db-url postgresql://kallos@db/kallos --optuna-schema optuna --json
    """
    from kallos_models.stages import tune as tuner

    s = settings(ctx, db_url=db_url, storage_url=storage_url, optuna_schema=optuna_schema)
    rows = tuner.list_studies(tuner.storage_url_for(s), s.optuna_schema)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        counts = ", ".join(f"{k.lower()} {v}" for k, v in row["trials"].items())
        click.echo(f"{row['name']}: best {row['best_value']} ({counts})")
