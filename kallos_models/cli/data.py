"""Data commands: `ingest` candles, list `assets`, write a `demo-data` market."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kallos_models.cli.options import (
    CONTEXT_SETTINGS,
    asset_options,
    db_option,
    echo_json,
    file_option,
    json_option,
    seed_option,
    settings,
    timeframe_option,
)
from kallos_models.errors import DataError

if TYPE_CHECKING:
    from kallos_models.data.ingest import FileFormat

logger = logging.getLogger("kallos_models")


@click.command(context_settings=CONTEXT_SETTINGS)
@asset_options
@file_option
@click.option(
    "--binance",
    "symbol",
    default=None,
    metavar="SYMBOL",
    help="Download Binance's spot archive for SYMBOL (e.g. BTCUSDT) instead of --file: monthly "
    "files, then the current month's daily files up to yesterday when --end is omitted or "
    "names the current month.",
)
@click.option(
    "--start", default=None, metavar="YYYY-MM", help="First archive month [default: 2017-08]."
)
@click.option(
    "--end",
    default=None,
    metavar="YYYY-MM",
    help="Last archive month [default: the current month: monthly files to the last full "
    "month, then daily files to yesterday]; a past month takes monthly files only.",
)
@click.option(
    "--exchange",
    "exchange_id",
    default=None,
    metavar="ID",
    help="Fetch the bars after the newest stored one from this exchange's API through ccxt "
    "(e.g. binance; needs the exchange extra) instead of --file.",
)
@click.option(
    "--symbol",
    "symbol_pair",
    default=None,
    metavar="SYMBOL",
    help="Market for --exchange, e.g. BTC/USDT.",
)
@click.option(
    "--since",
    default=None,
    metavar="DATE",
    help="First open time for --exchange (UTC) [default: the bar after the newest stored one; "
    "required when nothing is stored].",
)
@click.option(
    "--exchange-url",
    default=None,
    envvar="KALLOS_EXCHANGE_URL",
    metavar="URL",
    help="Base URL replacing the exchange's API host (a proxy, a local server). "
    "Default: KALLOS_EXCHANGE_URL, else the exchange's own.",
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
def ingest(
    ctx: click.Context,
    asset_id,
    timeframe,
    file_path,
    symbol,
    start,
    end,
    exchange_id,
    symbol_pair,
    since,
    exchange_url,
    fmt,
    skip_invalid,
    db_url,
) -> None:
    """Load candles into the database (indicators are computed when data is loaded).

    From a file, from Binance's public archive (monthly files, then the daily files of the
    current month when --end reaches it; checksums verified, cached, resumable), or from an
    exchange's API through ccxt (only the closed bars after the newest stored one). Validates
    every row, upserts the valid ones in one transaction and prints a JSON summary.

    \b
    Example:
      kallos-run ingest --asset-id BTC --timeframe 4h --file BTCUSDT_4h.csv --skip-invalid
      kallos-run ingest --asset-id BTC --timeframe 1d --binance BTCUSDT --start 2018-01
      kallos-run ingest --asset-id BTC --timeframe 4h --exchange binance --symbol BTC/USDT
    """
    _check_sources(file_path, symbol, exchange_id, start, end, symbol_pair, since)
    s = settings(ctx, asset_id=asset_id, timeframe=timeframe, db_url=db_url)
    from kallos_models.stage_settings import require

    asset = require(s, "asset_id")
    if file_path is not None:
        summary = _ingest_file(ctx, s, asset, file_path, fmt, skip_invalid)
        _print_ingest(summary.warnings, summary.as_dict())
        return
    if exchange_id is not None:
        fetched = _ingest_exchange(
            ctx, s, asset, exchange_id, symbol_pair, since, exchange_url, skip_invalid
        )
        warnings = fetched.ingest.warnings if fetched.ingest else []
        _print_ingest(warnings, fetched.as_dict(), fetched.notes)
        return
    result = _ingest_archive(ctx, s, asset, symbol, start, end, skip_invalid)
    _print_ingest(result.ingest.warnings if result.ingest else [], result.as_dict(), result.notes)
    if result.months_refused or result.days_refused:
        refused = [*result.months_refused, *result.days_refused]
        raise click.ClickException(
            _refused_message(refused, [*result.months_used, *result.days_used])
        )


def _check_sources(file_path, symbol, exchange_id, start, end, symbol_pair, since) -> None:
    """Exactly one source, and each source's own options only with it (usage errors)."""
    if sum(x is not None for x in (file_path, symbol, exchange_id)) != 1:
        raise click.UsageError("give exactly one of --file PATH, --binance SYMBOL or --exchange ID")
    if symbol is None and (start or end):
        raise click.UsageError("--start and --end go with --binance")
    if exchange_id is None and (symbol_pair or since):
        raise click.UsageError("--symbol and --since go with --exchange")
    if exchange_id is not None and not symbol_pair:
        raise click.UsageError("--exchange needs --symbol, e.g. --symbol BTC/USDT")


def _ingest_exchange(
    ctx: click.Context, s, asset: str, exchange_id, symbol, since, url, skip_invalid: bool
):
    """`ingest --exchange`: the library's :func:`~kallos_models.data.exchange.ingest_exchange`."""
    from kallos_models.data import db, exchange
    from kallos_models.stage_settings import data_source

    db.check_key(asset, s.timeframe)
    exchange.check_exchange(exchange_id, api_url=url)  # before the database is created
    return exchange.ingest_exchange(
        db.create_db_engine(data_source(s).url, for_writing=True),
        asset,
        exchange_id,
        symbol,
        s.timeframe,
        since=since,
        api_url=url,
        skip_invalid=skip_invalid,
        progress=_progress(ctx),
    )


def _ingest_file(
    ctx: click.Context, s, asset: str, file_path: Path, fmt: FileFormat, skip_invalid: bool
):
    """`ingest --file`: the library's :func:`~kallos_models.data.ingest.ingest_file`."""
    from kallos_models.data import db
    from kallos_models.data import ingest as ingest_mod
    from kallos_models.stage_settings import data_source

    if not file_path.is_file():  # before the database is created
        raise DataError(f"file {file_path} does not exist; check the --file path")
    db.check_key(asset, s.timeframe)
    return ingest_mod.ingest_file(
        db.create_db_engine(data_source(s).url, for_writing=True),
        asset,
        s.timeframe,
        file_path,
        fmt=fmt,
        skip_invalid=skip_invalid,
        progress=_progress(ctx),
    )


def _ingest_archive(ctx: click.Context, s, asset: str, symbol, start, end, skip_invalid: bool):
    """`ingest --binance`: the library's :func:`~kallos_models.data.binance_archive.
    ingest_binance_archive`."""
    from kallos_models.data import binance_archive, db
    from kallos_models.stage_settings import data_source

    db.check_key(asset, s.timeframe)
    return binance_archive.ingest_binance_archive(
        db.create_db_engine(data_source(s).url, for_writing=True),
        asset,
        symbol,
        s.timeframe,
        start=start or "2017-08",
        end=end,
        base_url=s.binance_archive_url,
        cache_dir=s.binance_cache_dir,
        skip_invalid=skip_invalid,
        progress=_progress(ctx),
    )


def _print_ingest(
    warnings: Iterable[str], summary: dict[str, Any], notes: Iterable[str] = ()
) -> None:
    """The ingest's warnings and notes as log lines on stderr, its summary as JSON on stdout."""
    for warning in warnings:
        logger.warning(warning)
    for note in notes:
        logger.info(note)
    echo_json(summary)


def _refused_message(refused: list[str], used: list[str]) -> str:
    return (
        f"archive files {', '.join(refused)} failed their checksum and were not ingested (the "
        f"other {len(used)} files were); run the same command again to retry them"
    )


def _progress(ctx: click.Context) -> Callable[[int, float], None]:
    """Ingest progress on stderr once a file is big (100,000 rows read): a bar redrawn in
    place on a terminal, a line per tenth of the file otherwise (logs, CI)."""
    state = {"shown": -1}
    terminal = sys.stderr.isatty()

    def report(rows: int, fraction: float) -> None:
        if rows < 100_000 or ctx.obj.get("quiet"):
            return
        tenth = int(fraction * 10)
        if not terminal and tenth <= state["shown"]:
            return
        state["shown"] = tenth
        bar = "#" * int(fraction * 30)
        line = f"ingest [{bar:<30}] {fraction:4.0%} {rows:,} rows read"
        if terminal:
            click.echo("\r" + line + ("\n" if fraction >= 1 else ""), err=True, nl=False)
        else:
            click.echo(line, err=True)

    return report


@click.command(context_settings=CONTEXT_SETTINGS)
@db_option
@json_option
@click.pass_context
def assets(ctx: click.Context, db_url, as_json) -> None:
    """List the assets in the database.

    One line per asset and timeframe: rows, first and last open time (UTC).

    \b
    Example:
      kallos-run assets --json
    """
    from kallos_models.data import db
    from kallos_models.stage_settings import data_source

    s = settings(ctx, db_url=db_url)
    rows = db.list_assets(db.create_db_engine(data_source(s).url))
    if as_json:
        echo_json(rows)
        return
    for line in _asset_table(rows):
        click.echo(line)


def _asset_table(rows: list[dict[str, Any]]) -> list[str]:
    line = "{asset_id:<16} {timeframe:<9} {rows:>8}  {first:<19}  {last:<19}"
    header = {key: key for key in ("asset_id", "timeframe", "rows", "first", "last")}
    return [line.format(**header), *(line.format(**r) for r in rows)]


@click.command("demo-data", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV file to write (timestamp,open,high,low,close,volume).",
)
@click.option("--bars", type=int, default=1500, show_default=True, help="Number of bars.")
@timeframe_option(default="1d", show_default=True, metavar=None, help="Bar size.")
@click.option("--start", default="2020-01-01", show_default=True, help="First open time.")
@seed_option(default=7, show_default=True, help="Random seed.")
def demo_data(output, bars, timeframe, start, seed) -> None:
    """Write a SYNTHETIC market (GARCH volatility clusters) as an OHLCV CSV.

    The data is not real; every place that shows it says SYNTHETIC.

    \b
    Example:
      kallos-run demo-data --output SYNTHETIC_1d_synthetic.csv --bars 1500
    """
    from kallos_models.data import synthetic

    path = synthetic.write_market_csv(
        synthetic.generate_market(bars, timeframe=timeframe, start=start, seed=seed), output
    )
    echo_json(
        {
            "path": str(path),
            "rows": bars,
            "timeframe": timeframe,
            "synthetic": True,
            "description": synthetic.DESCRIPTION,
        }
    )
