"""The `kallos-run` command line: thin click commands over the library.

Each command resolves settings, calls one library function and prints its result (JSON or
paths) on stdout. Logs and progress go to stderr. A :class:`KallosError` becomes one
``Error: ...`` line and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kallos_models.errors import KallosError

logger = logging.getLogger("kallos_models")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class KallosGroup(click.Group):
    """A group that turns library errors into `Error: ...` lines with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KallosError as exc:
            raise click.ClickException(str(exc)) from None


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("kallos_models")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Third-party chatter (Lightning, Optuna) only with -v.
    for name in ("lightning", "pytorch_lightning", "lightning.pytorch", "optuna", "darts"):
        logging.getLogger(name).setLevel(logging.INFO if verbose >= 1 else logging.WARNING)


def _settings(ctx: click.Context, **flags: Any):
    """Resolve settings for a command: flags > environment > config file > defaults."""
    from kallos_models.config import resolve_settings

    return resolve_settings(flags, config_path=ctx.obj.get("config_path"))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def db_option(func: Callable) -> Callable:
    """`--db-url`, read the same by every command."""
    return click.option(
        "--db-url",
        default=None,
        metavar="URL",
        help="Database URL (sqlite:///kallos.db, postgresql://user:pw@host/db). "
        "Default: KALLOS_DB_URL, POSTGRES_* in .env, config.json, else ./kallos.db.",
    )(func)


def asset_options(func: Callable) -> Callable:
    """`--asset-id` and `--timeframe`, read the same by every command."""
    func = click.option(
        "--timeframe",
        default=None,
        metavar="TF",
        help="Bar size: 1d, 4h, 2h, 1h, 15m ... [default: 1d]",
    )(func)
    return click.option(
        "--asset-id", default=None, metavar="ID", help="Asset identifier, e.g. BTC."
    )(func)


def _require(value: Any, flag: str, key: str) -> Any:
    if value is None or value == "":
        raise click.UsageError(f"missing {flag} (or `{key}` in config.json / KALLOS_{key.upper()})")
    return value


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
    _configure_logging(verbose, quiet)


@cli.command(context_settings=CONTEXT_SETTINGS)
@asset_options
@click.option(
    "--file",
    "file_path",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV (optionally zipped) or Parquet file of candles.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "binance", "ohlcv"]),
    default="auto",
    show_default=True,
    help="binance: the 12 kline columns; ohlcv: timestamp,open,high,low,close,volume.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Ingest the valid rows and report the invalid ones."
)
@db_option
@click.pass_context
def ingest(ctx: click.Context, asset_id, timeframe, file_path, fmt, skip_invalid, db_url) -> None:
    """Load a candle file into the database, with its indicators.

    Validates every row, upserts the valid ones in one transaction and prints a JSON summary.

    \b
    Example:
      kallos-run ingest --asset-id BTC --timeframe 4h --file BTCUSDT_4h.csv --skip-invalid
    """
    from kallos_models import db
    from kallos_models import ingest as ingest_mod

    s = _settings(ctx, asset_id=asset_id, timeframe=timeframe, db_url=db_url)
    asset = _require(s.asset_id, "--asset-id", "asset_id")
    engine = db.create_db_engine(s.db_url or s.db_kwargs)
    summary = ingest_mod.ingest_file(
        engine,
        asset,
        s.timeframe,
        file_path,
        fmt=fmt,
        skip_invalid=skip_invalid,
        progress=_progress(ctx),
    )
    for warning in summary.warnings:
        logger.warning(warning)
    _echo_json(summary.as_dict())


def _progress(ctx: click.Context) -> Callable[[int, int], None]:
    """A progress callback that logs to stderr for large writes."""
    state = {"last": 0}

    def report(done: int, total: int) -> None:
        if total < 10_000 or ctx.obj.get("quiet"):
            return
        if done - state["last"] >= 10_000 or done == total:
            state["last"] = done
            click.echo(f"written {done}/{total} rows", err=True)

    return report


@cli.command(context_settings=CONTEXT_SETTINGS)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.pass_context
def assets(ctx: click.Context, db_url, as_json) -> None:
    """List the assets in the database.

    One line per asset and timeframe: rows, first and last open time (UTC).

    \b
    Example:
      kallos-run assets --json
    """
    from kallos_models import db

    s = _settings(ctx, db_url=db_url)
    rows = db.list_assets(db.create_db_engine(s.db_url or s.db_kwargs))
    if as_json:
        _echo_json(rows)
        return
    line = "{asset_id:<16} {timeframe:<9} {rows:>8}  {first:<19}  {last:<19}"
    click.echo(
        line.format(
            asset_id="asset_id", timeframe="timeframe", rows="rows", first="first", last="last"
        )
    )
    for r in rows:
        click.echo(line.format(**r))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kallos-run")
