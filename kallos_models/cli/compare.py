"""`compare`: several trained bundles ranked on one hold-out window (a leaderboard).

The command calls :func:`kallos_models.compare.compare_models` and prints its summary as JSON
on stdout (so ``kallos-run compare ... > lb.json`` works) and the table on stderr (not with
``-q``). The window, horizon and backtest options are ``evaluate``'s own, so they read and
mean the same in both commands.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from kallos_models.cli.models import evaluate
from kallos_models.cli.options import (
    CONTEXT_SETTINGS,
    asset_id_option,
    db_option,
    echo_json,
    output_option,
    settings,
    tracking_option,
)

#: The options of `evaluate` that `compare` takes as they are: they set each evaluation.
EVALUATE_OPTIONS = (
    "test_start_date",
    "test_end_date",
    "horizon",
    "gap",
    "backtest_mode",
    "backtest_threshold",
    "fee_bps",
)


def evaluate_options(func: Callable) -> Callable:
    """`evaluate`'s window, horizon and backtest options, the same click objects, in its order."""
    borrowed = [param for param in evaluate.params if param.name in EVALUATE_OPTIONS]
    missing = set(EVALUATE_OPTIONS) - {param.name for param in borrowed}
    if missing:  # a renamed evaluate option: a bug, found by any test that imports the CLI
        raise RuntimeError(f"`evaluate` has no option(s) {sorted(missing)} for `compare`")
    # click builds a command's options from __click_params__, last decorator first
    params = func.__dict__.setdefault("__click_params__", [])
    params.extend(reversed(borrowed))
    return func


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--model-path",
    "model_paths",
    multiple=True,
    required=True,
    metavar="PATH|URI",
    help="A bundle's .pt file, or a registered version: models:/NAME@ALIAS or "
    "models:/NAME/VERSION (with --tracking-uri). Once per model, at least two.",
)
@asset_id_option(
    metavar="ID[,ID...]",
    help="Asset(s) to rank the models on; a global model takes any asset of its basket "
    "[default: the assets every bundle holds].",
)
@evaluate_options
@output_option("./evaluation_results")
@db_option
@tracking_option(
    help="MLflow tracking and registry URI, to load models:/ URIs (nothing is logged). "
    "Default: KALLOS_TRACKING_URI, config.json, MLFLOW_TRACKING_URI, else off."
)
@click.pass_context
def compare(ctx: click.Context, model_paths: tuple[str, ...], **flags) -> None:
    """Rank several trained bundles on one hold-out window against a naive forecast.

    Evaluates every bundle (same asset and timeframe) on the same bars as `evaluate` does,
    each into {output}/{model}/; ranks them by RMSE ratio to naive, with Diebold-Mariano
    p-values against naive and against the leader, directional accuracy, interval coverage
    where a model has intervals, and the backtest's Sharpe ratio and drawdown. Writes
    {asset}_leaderboard.json and {asset}_leaderboard.png (each model's cumulative squared
    error minus naive's); prints the JSON on stdout and the table on stderr. A global model
    is ranked on any asset of its basket, beside single-asset models of it; over several
    assets each gets its leaderboard, and {assets}_leaderboard.json ranks the models by
    their mean RMSE ratio over them.

    \b
    Example:
      kallos-run compare --test-start-date 2024-07-02 --test-end-date 2025-07-04 \\
          --model-path trained_models/gru_BTC.pt --model-path trained_models/lightgbm_BTC.pt \\
          --model-path trained_models/linear_BTC.pt > leaderboard.json
      kallos-run compare --test-start-date 2024-07-02 --test-end-date 2025-07-04 \\
          --model-path models:/gru_BTC_1d@champion --model-path trained_models/gru_BTC.pt \\
          --tracking-uri sqlite:///mlflow.db
      kallos-run compare --test-start-date 2024-07-02 --test-end-date 2025-07-04 \\
          --asset-id ETH --model-path trained_models/gru_BTC-ETH-SOL_4h.pt \\
          --model-path trained_models/gru_ETH_4h.pt
    """
    from kallos_models.compare import compare_models, format_boards

    result = compare_models(settings(ctx, **flags), model_paths)
    if not ctx.obj["quiet"]:
        click.echo(format_boards(result.summary), err=True)
    echo_json(result.summary)
