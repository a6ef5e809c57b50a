"""The `kallos-run` command line: thin click commands over the library.

Each command resolves settings, calls one library function and prints its result (JSON or
paths) on stdout. Logs and progress go to stderr. A :class:`KallosError` becomes one
``Error: ...`` line and exit status 1; anything else is a bug and keeps its traceback.

The commands live by subject: :mod:`.data` (ingest, assets, demo-data), :mod:`.models`
(models, train, evaluate, demo), :mod:`.tuning` (tune, studies), :mod:`.compare` (compare),
:mod:`.forecasts` (predict, score),
:mod:`.registry` (the registry group); the
options, settings and output helpers they share are in :mod:`.options`.
"""

from __future__ import annotations

from pathlib import Path

import click

from kallos_models.cli import compare, data, forecasts, models, registry, tuning
from kallos_models.cli.options import CONTEXT_SETTINGS, KallosGroup, configure_logging

__all__ = ["cli", "main"]


@click.group(cls=KallosGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file [default: ./config.json if present].",
)
@click.option("-v", "--verbose", count=True, help="More logs on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.version_option(package_name="kallos-models", prog_name="kallos-run")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int, quiet: bool) -> None:
    """Tune, train and evaluate Darts deep forecasters on crypto market data.

    \b
    Example:
      kallos-run ingest --asset-id BTC --timeframe 1d --file BTCUSDT_1d.csv
      kallos-run assets
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    configure_logging(verbose, quiet)


for _command in (
    data.ingest,
    data.assets,
    data.demo_data,
    models.models,
    models.train,
    models.evaluate,
    compare.compare,
    tuning.tune,
    tuning.studies,
    forecasts.predict,
    forecasts.score,
    models.demo,
    registry.registry,
):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kallos-run")
