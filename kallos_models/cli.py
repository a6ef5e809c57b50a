"""The `kallos-run` command line: thin click commands over the library.

Each command resolves settings, calls one library function and prints its result (JSON or
paths) on stdout. Logs and progress go to stderr. A :class:`KallosError` becomes one
``Error: ...`` line and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kallos_models.errors import DataError, KallosError

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
    """The one place where log levels are set: ours at INFO, third parties' at WARNING.

    A handler on the root logger also stops Lightning from adding its own (it does so only
    when the root has none), so its "GPU available" lines obey ``-v``. Library warnings
    (torch, Lightning) are shown with ``-v`` only.
    """
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    ours = logging.getLogger("kallos_models")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    ours.handlers[:] = [handler]
    ours.setLevel(logging.ERROR if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO))
    ours.propagate = False
    others = logging.StreamHandler(sys.stderr)
    others.setFormatter(fmt)
    others.setLevel(logging.INFO if verbose >= 1 and not quiet else logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [others]
    if verbose == 0:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


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


def tracking_option(func: Callable) -> Callable:
    """`--tracking-uri`, read the same by every command that logs to MLflow."""
    return click.option(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking and registry URI, e.g. sqlite:///mlflow.db (needs the mlflow "
        "extra). Default: KALLOS_TRACKING_URI, config.json, MLFLOW_TRACKING_URI, else off.",
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
    default=None,
    type=click.Path(path_type=Path),
    help="CSV (optionally zipped) or Parquet file of candles.",
)
@click.option(
    "--binance",
    "symbol",
    default=None,
    metavar="SYMBOL",
    help="Download Binance's monthly spot archive for SYMBOL (e.g. BTCUSDT) instead of --file.",
)
@click.option(
    "--start", default=None, metavar="YYYY-MM", help="First archive month [default: 2017-08]."
)
@click.option(
    "--end", default=None, metavar="YYYY-MM", help="Last archive month [default: last full month]."
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
    fmt,
    skip_invalid,
    db_url,
) -> None:
    """Load candles into the database, with their indicators.

    From a file, or from Binance's public monthly archive (checksums verified, cached,
    resumable). Validates every row, upserts the valid ones in one transaction and prints a
    JSON summary.

    \b
    Example:
      kallos-run ingest --asset-id BTC --timeframe 4h --file BTCUSDT_4h.csv --skip-invalid
      kallos-run ingest --asset-id BTC --timeframe 1d --binance BTCUSDT --start 2018-01
    """
    from kallos_models.data import db
    from kallos_models.data import ingest as ingest_mod

    if (file_path is None) == (symbol is None):
        raise click.UsageError("give exactly one of --file PATH or --binance SYMBOL")
    if symbol is None and (start or end):
        raise click.UsageError("--start and --end go with --binance")
    s = _settings(ctx, asset_id=asset_id, timeframe=timeframe, db_url=db_url)
    asset = _require(s.asset_id, "--asset-id", "asset_id")
    if file_path is not None and not file_path.is_file():  # before the database is created
        raise DataError(f"file {file_path} does not exist; check the --file path")
    engine = db.create_db_engine(s.db_url or s.db_kwargs)
    if file_path is not None:
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
        return
    from kallos_models.data import binance_archive

    result = binance_archive.ingest_binance_archive(
        engine,
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
    for warning in result.ingest.warnings if result.ingest else []:
        logger.warning(warning)
    _echo_json(result.as_dict())
    if result.months_refused:
        months = ", ".join(result.months_refused)
        raise click.ClickException(
            f"archive months {months} failed their checksum and were not ingested (the other "
            f"{len(result.months_used)} months were); run the same command again to retry them"
        )


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
    from kallos_models.data import db

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


def model_option(func: Callable) -> Callable:
    """`--model-name`, read the same by every command."""
    return click.option(
        "--model-name",
        default=None,
        metavar="NAME",
        help="Model from `kallos-run models` [default: gru].",
    )(func)


def output_option(default_text: str) -> Callable[[Callable], Callable]:
    def decorate(func: Callable) -> Callable:
        return click.option(
            "--output-path",
            default=None,
            metavar="DIR",
            help=f"Directory for the files written [default: {default_text}].",
        )(func)

    return decorate


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--timeframe",
    default=None,
    metavar="TF",
    help="Timeframe for the lookback ranges [default: 1d].",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.pass_context
def models(ctx: click.Context, timeframe, as_json) -> None:
    """List the registered models and their tunable parameters.

    \b
    Example:
      kallos-run models --json
    """
    from kallos_models.modelling import zoo as architectures

    s = _settings(ctx, timeframe=timeframe)
    rows = architectures.list_models(s.timeframe)
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']:<12} {row['darts_class']}  {row['description']}")
        for param, space in row["tunable"].items():
            click.echo(f"    {param:<22} {space}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@model_option
@asset_options
@click.option(
    "--end-date", default=None, metavar="DATE", help="Last day of training data (YYYY-MM-DD)."
)
@click.option(
    "--start-date", default=None, metavar="DATE", help="First day of training data [default: all]."
)
@click.option(
    "--params-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON hyperparameters, or the file `kallos-run tune` writes.",
)
@output_option("./trained_models")
@db_option
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--seed", type=int, default=None, help="Random seed [default: 42].")
@click.option(
    "--accelerator", default=None, help="Lightning accelerator: auto, cpu, gpu [default: auto]."
)
@click.option("--devices", default=None, help="Lightning devices, e.g. 1 or auto [default: auto].")
@click.option("--precision", default=None, help="Lightning precision, e.g. 32-true or bf16-mixed.")
@tracking_option
@click.pass_context
def train(
    ctx: click.Context,
    model_name,
    asset_id,
    timeframe,
    end_date,
    start_date,
    params_file,
    output_path,
    db_url,
    overwrite,
    seed,
    accelerator,
    devices,
    precision,
    tracking_uri,
) -> None:
    """Train the final model on all data up to the end date and write its bundle.

    Prints the bundle's paths as JSON. With a tracking URI the run is logged to MLflow and
    the bundle registered as a new version of {model}_{asset}_{timeframe}.

    \b
    Example:
      kallos-run train --model-name gru --asset-id BTC --end-date 2024-06-30 \\
          --params-file gru_BTC_best_params.json
    """
    from kallos_models import pipeline

    s = _settings(
        ctx,
        model_name=model_name,
        asset_id=asset_id,
        timeframe=timeframe,
        train_end_date=end_date,
        start_date=start_date,
        output_path=output_path,
        db_url=db_url,
        seed=seed,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        tracking_uri=tracking_uri,
    )
    _require(s.asset_id, "--asset-id", "asset_id")
    _require(s.train_end_date, "--end-date", "train_end_date")
    result = pipeline.train(
        s, params_file, overwrite=overwrite, show_progress=ctx.obj["verbose"] > 0
    )
    _echo_json(result.as_dict())


@cli.command(context_settings=CONTEXT_SETTINGS)
@model_option
@click.option("--asset-id", default=None, metavar="ID", help="Asset identifier, e.g. BTC.")
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
@click.option(
    "--backtest-mode",
    type=click.Choice(["long", "long_short"]),
    default=None,
    help="Backtest rule: long or flat, or long/short [default: long].",
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
@db_option
@tracking_option
@click.pass_context
def evaluate(
    ctx: click.Context,
    model_name,
    asset_id,
    model_path,
    scaler_path,
    test_start_date,
    test_end_date,
    output_path,
    horizon,
    backtest_mode,
    backtest_threshold,
    fee_bps,
    db_url,
    tracking_uri,
) -> None:
    """Judge a trained bundle on a hold-out window against a naive forecast.

    Writes {asset}_evaluation_metrics.json and {asset}_evaluation_plot.png; prints the metrics.
    With a tracking URI they are logged to the run of the bundle's registered version.

    \b
    Example:
      kallos-run evaluate --model-name gru --asset-id BTC \\
          --model-path trained_models/gru_BTC.pt --scaler-path trained_models/gru_BTC_scaler.pkl \\
          --test-start-date 2024-07-01 --test-end-date 2025-07-04
      kallos-run evaluate --asset-id BTC --model-path models:/gru_BTC_1d@champion \\
          --test-start-date 2024-07-01 --test-end-date 2025-07-04 --tracking-uri sqlite:///mlflow.db
    """
    from kallos_models import pipeline

    s = _settings(
        ctx,
        model_name=model_name,
        asset_id=asset_id,
        test_start_date=test_start_date,
        test_end_date=test_end_date,
        output_path=output_path,
        horizon=horizon,
        backtest_mode=backtest_mode,
        backtest_threshold=backtest_threshold,
        fee_bps=fee_bps,
        db_url=db_url,
        tracking_uri=tracking_uri,
    )
    _require(s.asset_id, "--asset-id", "asset_id")
    result = pipeline.evaluate(s, model_path=model_path, scaler_path=scaler_path, horizon=horizon)
    logger.info("metrics: %s; plot: %s", result.metrics_path, result.plot_path)
    if result.tracking and result.tracking.get("version") is not None:
        t = result.tracking
        logger.info("logged to %s version %s", t["registered_model"], t["version"])
    _echo_json(result.metrics)


@cli.command(context_settings=CONTEXT_SETTINGS)
@model_option
@asset_options
@click.option("--end-date", default=None, metavar="DATE", help="Last day of data used for tuning.")
@click.option(
    "--start-date", default=None, metavar="DATE", help="First day of data [default: all]."
)
@db_option
@click.option(
    "--n-trials",
    type=int,
    default=None,
    help="Finished trials the study should reach [default: 20].",
)
@click.option("--study-name", default=None, help="[default: {model}_{asset}_{timeframe}]")
@click.option("--optuna-schema", default=None, help="PostgreSQL schema for Optuna's tables.")
@click.option(
    "--storage-url",
    default=None,
    metavar="URL",
    help="Optuna storage [default: the --db-url database].",
)
@click.option(
    "--workers", type=int, default=None, help="Worker processes on this machine [default: 1]."
)
@click.option("--max-epochs", type=int, default=None, help="Epoch cap per fold [default: 100].")
@click.option(
    "--metric",
    type=click.Choice(["rmse", "mae", "mape", "smape", "rmse_rel_naive"]),
    default=None,
    help="Fold score, averaged over folds [default: rmse].",
)
@click.option("--timeout", type=float, default=None, help="Stop starting trials after SEC seconds.")
@output_option(".")
@click.option("--seed", type=int, default=None, help="Sampler seed [default: 42].")
@tracking_option
@click.pass_context
def tune(
    ctx: click.Context,
    model_name,
    asset_id,
    timeframe,
    end_date,
    start_date,
    db_url,
    n_trials,
    study_name,
    optuna_schema,
    storage_url,
    workers,
    max_epochs,
    metric,
    timeout,
    output_path,
    seed,
    tracking_uri,
) -> None:
    """Search hyperparameters with Optuna over walk-forward cross-validation.

    Resumes the stored study; writes {model}_{asset}_best_params.json and report plots.
    With a tracking URI: one MLflow run per tune, a child run per trial.

    \b
    Example:
      kallos-run tune --model-name gru --asset-id BTC --end-date 2023-12-31 --n-trials 20
    """
    from kallos_models import pipeline

    s = _settings(
        ctx,
        model_name=model_name,
        asset_id=asset_id,
        timeframe=timeframe,
        tune_end_date=end_date,
        start_date=start_date,
        db_url=db_url,
        n_trials=n_trials,
        study_name=study_name,
        optuna_schema=optuna_schema,
        storage_url=storage_url,
        workers=workers,
        max_epochs=max_epochs,
        metric=metric,
        timeout=timeout,
        output_path=output_path,
        seed=seed,
        tracking_uri=tracking_uri,
    )
    _require(s.asset_id, "--asset-id", "asset_id")
    _require(s.tune_end_date, "--end-date", "tune_end_date")
    try:
        result = pipeline.tune(s, show_progress=ctx.obj["verbose"] > 0)
    except KeyboardInterrupt:
        click.echo(
            "Interrupted: the running trial was marked failed; run the same command to resume.",
            err=True,
        )
        ctx.exit(130)
    _echo_json(result.summary)


@cli.command(context_settings=CONTEXT_SETTINGS)
@db_option
@click.option(
    "--storage-url",
    default=None,
    metavar="URL",
    help="Optuna storage [default: the --db-url database].",
)
@click.option("--optuna-schema", default=None, help="PostgreSQL schema holding Optuna's tables.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.pass_context
def studies(ctx: click.Context, db_url, storage_url, optuna_schema, as_json) -> None:
    """List the Optuna studies in a storage with trial counts and best values.

    \b
    Example:
      kallos-run studies --db-url postgresql://kallos@db/kallos --optuna-schema optuna --json
    """
    from kallos_models.stages import tune as tuner

    s = _settings(ctx, db_url=db_url, storage_url=storage_url, optuna_schema=optuna_schema)
    rows = tuner.list_studies(tuner.storage_url_for(s), s.optuna_schema)
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        counts = ", ".join(f"{k.lower()} {v}" for k, v in row["trials"].items())
        click.echo(f"{row['name']}: best {row['best_value']} ({counts})")


@cli.group(cls=KallosGroup, context_settings=CONTEXT_SETTINGS)
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


def _registry_settings(ctx: click.Context, tracking_uri, model_name, asset_id, timeframe):
    s = _settings(
        ctx,
        tracking_uri=tracking_uri or ctx.obj.get("tracking_uri"),
        model_name=model_name,
        asset_id=asset_id,
        timeframe=timeframe,
    )
    _require(s.tracking_uri, "--tracking-uri", "tracking_uri")
    return s


_HEADLINE = ("rmse", "naive_rmse", "rmse_ratio", "directional_accuracy", "sharpe")


def _fmt_number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


@registry.command("list", context_settings=CONTEXT_SETTINGS)
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.pass_context
def registry_list(ctx: click.Context, tracking_uri, model_name, asset_id, timeframe, as_json):
    """List registered versions with their aliases and latest hold-out metrics.

    Without --asset-id, every registered model's versions.

    \b
    Example:
      kallos-run registry list --asset-id BTC --tracking-uri sqlite:///mlflow.db
    """
    from kallos_models.mlops import registry as registry_mod

    s = _registry_settings(ctx, tracking_uri, model_name, asset_id, timeframe)
    rows = registry_mod.list_versions(s)
    if as_json:
        _echo_json(rows)
        return
    line = (
        "{name:<20} {version:>7}  {aliases:<16} {retired:<7}  {run_id:<32}  {rmse:>10} "
        "{naive_rmse:>10} {rmse_ratio:>10} {directional_accuracy:>8} {sharpe:>7}"
    )
    click.echo(
        line.format(
            name="name",
            version="version",
            aliases="aliases",
            retired="retired",
            run_id="run_id",
            rmse="rmse",
            naive_rmse="naive_rmse",
            rmse_ratio="rmse_ratio",
            directional_accuracy="dir_acc",
            sharpe="sharpe",
        )
    )
    for row in rows:
        numbers = {k: _fmt_number(row[k]) for k in _HEADLINE}
        click.echo(
            line.format(
                name=row["name"],
                version=row["version"],
                aliases=",".join(row["aliases"]) or "-",
                retired="yes" if row["retired"] else "no",
                run_id=row["run_id"] or "-",
                **numbers,
            )
        )


@registry.command("promote", context_settings=CONTEXT_SETTINGS)
@registry_options
@click.option("--version", "version", required=True, type=int, help="Version to promote.")
@click.option("--alias", default="champion", show_default=True, help="Alias to point at it.")
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
@click.pass_context
def registry_promote(
    ctx: click.Context,
    tracking_uri,
    model_name,
    asset_id,
    timeframe,
    version,
    alias,
    max_skill_ratio,
    min_directional_accuracy,
    min_sharpe,
):
    """Point an alias at a version whose hold-out evaluation passes the thresholds.

    A refusal says which threshold failed and the value (exit status 1).

    \b
    Example:
      kallos-run registry promote --asset-id BTC --version 2 --alias champion \\
          --max-skill-ratio 1.0 --min-directional-accuracy 0.5 --min-sharpe 0.5
    """
    from kallos_models.mlops import registry as registry_mod

    s = _registry_settings(ctx, tracking_uri, model_name, asset_id, timeframe)
    thresholds = registry_mod.Thresholds(
        max_skill_ratio=max_skill_ratio,
        min_directional_accuracy=min_directional_accuracy,
        min_sharpe=min_sharpe,
    )
    _echo_json(registry_mod.promote(s, version, alias=alias, thresholds=thresholds))


@registry.command("rollback", context_settings=CONTEXT_SETTINGS)
@registry_options
@click.option("--alias", default="champion", show_default=True, help="Alias to move back.")
@click.pass_context
def registry_rollback(ctx: click.Context, tracking_uri, model_name, asset_id, timeframe, alias):
    """Move an alias back to the version that held it before.

    \b
    Example:
      kallos-run registry rollback --asset-id BTC --alias champion
    """
    from kallos_models.mlops import registry as registry_mod

    s = _registry_settings(ctx, tracking_uri, model_name, asset_id, timeframe)
    _echo_json(registry_mod.rollback(s, alias=alias))


@registry.command("archive", context_settings=CONTEXT_SETTINGS)
@registry_options
@click.option("--version", "version", required=True, type=int, help="Version to retire.")
@click.pass_context
def registry_archive(ctx: click.Context, tracking_uri, model_name, asset_id, timeframe, version):
    """Tag a version retired: it can no longer be promoted or rolled back to.

    \b
    Example:
      kallos-run registry archive --asset-id BTC --version 1
    """
    from kallos_models.mlops import registry as registry_mod

    s = _registry_settings(ctx, tracking_uri, model_name, asset_id, timeframe)
    _echo_json(registry_mod.archive(s, version))


@cli.command("demo-data", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV file to write (timestamp,open,high,low,close,volume).",
)
@click.option("--bars", type=int, default=1500, show_default=True, help="Number of bars.")
@click.option("--timeframe", default="1d", show_default=True, help="Bar size.")
@click.option("--start", default="2020-01-01", show_default=True, help="First open time.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed.")
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
    _echo_json(
        {
            "path": str(path),
            "rows": bars,
            "timeframe": timeframe,
            "synthetic": True,
            "description": synthetic.DESCRIPTION,
        }
    )


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--workdir",
    default="demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the database and every file written.",
)
@click.option(
    "--file",
    "file_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Candle file to use [default: a generated SYNTHETIC market].",
)
@click.option(
    "--asset-id", default=None, help="Asset id [default: SYNTHETIC, or the file name's stem]."
)
@click.option("--timeframe", default="1d", show_default=True, help="Bar size of the data.")
@click.option("--model-name", default="gru", show_default=True, help="Model to tune and train.")
@click.option("--n-trials", type=int, default=4, show_default=True, help="Tuning trials.")
@click.option("--max-epochs", type=int, default=3, show_default=True, help="Epoch cap per fit.")
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
        show_progress=ctx.obj["verbose"] > 0,
    )
    _echo_json(result.as_dict())
    h = result.headline
    label = " (SYNTHETIC data)" if result.synthetic else ""
    click.echo(
        f"{h['asset_id']}{label}: model RMSE {h['rmse']:.4g} vs naive {h['naive_rmse']:.4g} "
        f"(ratio {h['rmse_ratio']:.3f}); plot: {result.plot_path}",
        err=True,
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kallos-run")
