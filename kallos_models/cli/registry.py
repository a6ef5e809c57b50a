"""The `registry` group: list, promote, roll back and archive registered model versions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from kallos_models.cli.options import (
    CHECK_FAILED_EXIT_STATUS,
    CONTEXT_SETTINGS,
    KallosGroup,
    SharedOption,
    asset_options,
    echo_json,
    json_option,
    model_option,
    settings,
    tracking_option,
)
from kallos_models.errors import GateRefusal

version_option = SharedOption("--version", "version", required=True, type=int)
alias_option = SharedOption("--alias", default="champion", show_default=True)


@click.group(cls=KallosGroup, context_settings=CONTEXT_SETTINGS)
@tracking_option
@click.pass_context
def registry(ctx: click.Context, tracking_uri) -> None:
    """List, promote, roll back and archive registered model versions (MLflow).

    A version is {model}_{asset}_{timeframe} as `kallos-run train --tracking-uri` registered
    it; `evaluate --tracking-uri` records its hold-out metrics.

    \b
    Example:
      kallos-run registry --tracking-uri sqlite:///mlflow.db list --asset-id BTC
      kallos-run registry promote --asset-id BTC --version 2 --max-skill-ratio 1.0
    """
    ctx.obj["tracking_uri"] = tracking_uri


def registry_options(func: Callable) -> Callable:
    """`--tracking-uri`, `--model-name`, `--asset-id`, `--timeframe` for registry commands."""
    return tracking_option(model_option(asset_options(func)))


def _registry_settings(ctx: click.Context, tracking_uri, **flags: Any):
    """Settings with the subcommand's --tracking-uri, else the group's; one is required."""
    s = settings(ctx, tracking_uri=tracking_uri or ctx.obj.get("tracking_uri"), **flags)
    from kallos_models.stage_settings import require

    require(s, "tracking_uri")
    return s


@registry.command("list", context_settings=CONTEXT_SETTINGS)
@registry_options
@json_option
@click.pass_context
def registry_list(ctx: click.Context, as_json, **flags) -> None:
    """List registered versions with their aliases and latest hold-out metrics.

    Without --asset-id, every registered model's versions.

    \b
    Example:
      kallos-run registry list --asset-id BTC --tracking-uri sqlite:///mlflow.db
    """
    from kallos_models.mlops import registry as registry_mod

    rows = registry_mod.list_versions(_registry_settings(ctx, **flags))
    if as_json:
        echo_json(rows)
        return
    for line in _version_table(rows):
        click.echo(line)


# Column label and width of a headline metric in `registry list` (others: their key, 10).
_METRIC_COLUMNS = {
    "directional_accuracy": ("dir_acc", 8),
    "sharpe": ("sharpe", 7),
    "deflated_sharpe": ("dsr", 7),
    "search_trials": ("trials", 6),
}


def _version_table(rows: list[dict[str, Any]]) -> list[str]:
    """`registry list` as a table: one line per version, headline metrics to 4 digits."""
    from kallos_models.modelling.metrics import HEADLINE_METRICS

    columns = [(key, *_METRIC_COLUMNS.get(key, (key, 10))) for key in HEADLINE_METRICS]
    line = "{name:<20} {version:>7}  {aliases:<16} {retired:<7}  {run_id:<32}  " + " ".join(
        f"{{{key}:>{width}}}" for key, _, width in columns
    )
    header = dict(name="name", version="version", aliases="aliases", retired="retired")
    lines = [line.format(run_id="run_id", **header, **{key: label for key, label, _ in columns})]
    for row in rows:
        lines.append(
            line.format(
                name=row["name"],
                version=row["version"],
                aliases=",".join(row["aliases"]) or "-",
                retired="yes" if row["retired"] else "no",
                run_id=row["run_id"] or "-",
                **{key: _fmt_number(row[key]) for key, _, _ in columns},
            )
        )
    return lines


def _fmt_number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


@registry.command("promote", context_settings=CONTEXT_SETTINGS)
@registry_options
@version_option(help="Version to promote.")
@alias_option(help="Alias to point at it.")
@click.option(
    "--max-skill-ratio", type=float, default=None, help="Refuse if rmse_ratio is above this."
)
@click.option(
    "--min-directional-accuracy",
    type=float,
    default=None,
    help="Refuse if directional_accuracy (0..1) is below this.",
)
@click.option(
    "--min-sharpe",
    type=float,
    default=None,
    help="Refuse if the backtest strategy's annualised Sharpe is below this.",
)
@click.option(
    "--min-deflated-sharpe",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Refuse if the Deflated Sharpe Ratio (0..1: the probability that the backtest's "
    "Sharpe beats the luckiest of the trials of the study that chose the parameters) is "
    "below this, e.g. 0.95.",
)
@click.option(
    "--gate",
    type=click.Choice(["pooled", "each-asset"]),
    default="pooled",
    show_default=True,
    help="For a global model: check the thresholds on its pooled figures (mean RMSE ratio, "
    "all forecasts' directional accuracy, mean Sharpe) or on every asset's own.",
)
@click.pass_context
def registry_promote(
    ctx: click.Context,
    version,
    alias,
    max_skill_ratio,
    min_directional_accuracy,
    min_sharpe,
    min_deflated_sharpe,
    gate,
    **flags,
) -> None:
    """Point an alias at a version whose hold-out evaluation passes the thresholds.

    A refusal by a threshold says which failed and the value, and exits with status 3; a
    retired version or one never evaluated is an error (status 1).

    \b
    Example:
      kallos-run registry promote --asset-id BTC --version 2 --alias champion \\
          --max-skill-ratio 1.0 --min-directional-accuracy 0.5 --min-sharpe 0.5 \\
          --min-deflated-sharpe 0.95
      kallos-run registry promote --asset-id BTC,ETH,SOL --timeframe 4h --version 1 \\
          --max-skill-ratio 1.0 --gate each-asset
    """
    from kallos_models.mlops import registry as registry_mod

    s = _registry_settings(ctx, **flags)
    thresholds = registry_mod.Thresholds(
        max_skill_ratio=max_skill_ratio,
        min_directional_accuracy=min_directional_accuracy,
        min_sharpe=min_sharpe,
        min_deflated_sharpe=min_deflated_sharpe,
        scope="each_asset" if gate == "each-asset" else "pooled",
    )
    try:
        promoted = registry_mod.promote(s, version, alias=alias, thresholds=thresholds)
    except GateRefusal as exc:
        click.echo(f"Error: {exc}", err=True)  # the gate did its job: status 3, not an error
        ctx.exit(CHECK_FAILED_EXIT_STATUS)
    echo_json(promoted)


@registry.command("rollback", context_settings=CONTEXT_SETTINGS)
@registry_options
@alias_option(help="Alias to move back.")
@click.pass_context
def registry_rollback(ctx: click.Context, alias, **flags) -> None:
    """Move an alias back to the version that held it before.

    \b
    Example:
      kallos-run registry rollback --asset-id BTC --alias champion
    """
    from kallos_models.mlops import registry as registry_mod

    echo_json(registry_mod.rollback(_registry_settings(ctx, **flags), alias=alias))


@registry.command("archive", context_settings=CONTEXT_SETTINGS)
@registry_options
@version_option(help="Version to retire.")
@click.pass_context
def registry_archive(ctx: click.Context, version, **flags) -> None:
    """Tag a version retired: it can no longer be promoted or rolled back to.

    \b
    Example:
      kallos-run registry archive --asset-id BTC --version 1
    """
    from kallos_models.mlops import registry as registry_mod

    echo_json(registry_mod.archive(_registry_settings(ctx, **flags), version))
