"""What every `kallos-run` command shares: options declared once, settings, logging, output.

An option used by several commands is a :class:`SharedOption`, declared here once with its
name, type, metavar and usual help; a command writes ``@db_option``, or
``@seed_option(help=...)`` where its own text (or default) differs.
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

from kallos_models.errors import KallosError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

#: Exit status of a check that ran and failed: `score --max-ratio` past the ratio (drift), and
#: `registry promote` refused by a threshold. 1 stays an error, 2 a usage error.
CHECK_FAILED_EXIT_STATUS = 3


class KallosGroup(click.Group):
    """A group that turns library errors into `Error: ...` lines with exit status 1, a
    missing required setting into a usage error (exit status 2), and Ctrl-C or SIGTERM into
    one line and exit status 130 or 143 (not click's "Aborted!" and 1), in this one place.

    The signals are handled by the root group only (a subgroup such as `registry` passes
    them up). A command may say what an interrupt left with an ``interrupt_note`` attribute
    (`tune`: its running trial marked failed); the default says the command stopped."""

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return self._invoke_translated(ctx)
        from kallos_models.signals import sigterm_as_interrupt

        with sigterm_as_interrupt() as stop:  # kill (SIGTERM) cleans up as Ctrl-C does
            try:
                return self._invoke_translated(ctx)
            except KeyboardInterrupt:
                sub = ctx.invoked_subcommand
                name = sub or ctx.info_name
                command = self.get_command(ctx, sub) if sub else None
                note = getattr(command, "interrupt_note", None) or (
                    f"{name} stopped before it finished; what it writes is written whole or "
                    "not at all: run the same command again."
                )
                click.echo(f"{stop.word}: {note}", err=True)
                ctx.exit(stop.exit_status)  # 130 after Ctrl-C, 143 after SIGTERM

    def _invoke_translated(self, ctx: click.Context) -> Any:
        from kallos_models.stage_settings import MissingSettingError

        try:
            return super().invoke(ctx)
        except MissingSettingError as exc:
            raise click.UsageError(str(exc), ctx=click.get_current_context(silent=True)) from None
        except KallosError as exc:
            raise click.ClickException(str(exc)) from None


class SharedOption:
    """A click option declared once; ``@opt`` uses it as declared, ``@opt(**changes)`` with
    a command's own help text or default."""

    def __init__(self, *param_decls: str, **attrs: Any) -> None:
        self.param_decls = param_decls
        self.attrs = attrs

    def __call__(self, func: Callable | None = None, /, **changes: Any) -> Callable:
        if func is None:
            return click.option(*self.param_decls, **{**self.attrs, **changes})
        return click.option(*self.param_decls, **self.attrs)(func)


db_option = SharedOption(
    "--db-url",
    default=None,
    metavar="URL",
    help="Database URL (sqlite:///kallos.db, postgresql://user:pw@host/db). "
    "Default: KALLOS_DB_URL, POSTGRES_* in .env, config.json, else ./kallos.db.",
)
asset_id_option = SharedOption(
    "--asset-id", default=None, metavar="ID", help="Asset identifier, e.g. BTC."
)
basket_option = SharedOption(
    "--asset-id",
    default=None,
    metavar="ID[,ID...]",
    help="Asset, e.g. BTC; or a basket, e.g. BTC,ETH,SOL: one global model over all of them.",
)
run_name_option = SharedOption(
    "--run-name",
    default=None,
    metavar="NAME",
    help="Short name of a basket's files, study and registered model [default: its assets "
    "joined by -, e.g. BTC-ETH-SOL].",
)
timeframe_option = SharedOption(
    "--timeframe",
    default=None,
    metavar="TF",
    help="Bar size: 1d, 4h, 2h, 1h, 15m ... [default: 1d]",
)
model_option = SharedOption(
    "--model-name",
    default=None,
    metavar="NAME",
    help="Model from `kallos-run models` [default: gru].",
)
tracking_option = SharedOption(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking and registry URI, e.g. sqlite:///mlflow.db (needs the mlflow "
    "extra). Default: KALLOS_TRACKING_URI, config.json, MLFLOW_TRACKING_URI, else off.",
)
storage_option = SharedOption(
    "--storage-url",
    default=None,
    metavar="URL",
    help="Optuna storage [default: the --db-url database].",
)
optuna_schema_option = SharedOption(
    "--optuna-schema", default=None, help="PostgreSQL schema holding Optuna's tables."
)
json_option = SharedOption("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
seed_option = SharedOption("--seed", type=int, default=None, help="Random seed [default: 42].")
start_date_option = SharedOption(
    "--start-date", default=None, metavar="DATE", help="First day of training data [default: all]."
)
end_date_option = SharedOption(
    "--end-date", default=None, metavar="DATE", help="Last day of training data (YYYY-MM-DD)."
)
file_option = SharedOption(
    "--file",
    "file_path",
    default=None,
    type=click.Path(path_type=Path),
    help="CSV (optionally zipped) or Parquet file of candles.",
)
n_trials_option = SharedOption(
    "--n-trials",
    type=int,
    default=None,
    help="Finished trials the study should reach [default: 20].",
)
max_epochs_option = SharedOption(
    "--max-epochs", type=int, default=None, help="Epoch cap per fold [default: 100]."
)
gap_option = SharedOption("--gap", type=click.IntRange(min=0), default=None, metavar="BARS")
_output_path_option = SharedOption("--output-path", default=None, metavar="DIR")


def output_option(default_text: str) -> Callable[[Callable], Callable]:
    """`--output-path`, with the command's own default directory in its help."""
    return _output_path_option(help=f"Directory for the files written [default: {default_text}].")


def asset_options(func: Callable) -> Callable:
    """`--asset-id` and `--timeframe`, in that order."""
    return asset_id_option(timeframe_option(func))


def basket_options(func: Callable) -> Callable:
    """`--asset-id` (one asset or a basket), `--run-name` and `--timeframe`, in that order."""
    return basket_option(run_name_option(timeframe_option(func)))


def configure_logging(verbose: int, quiet: bool) -> None:
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


def settings(ctx: click.Context, **flags: Any):
    """Resolve settings for a command: flags > environment > config file > defaults."""
    from kallos_models.config import resolve_settings

    return resolve_settings(flags, config_path=ctx.obj.get("config_path"))


def show_progress(ctx: click.Context) -> bool:
    """Progress bars only with ``-v``."""
    return ctx.obj["verbose"] > 0


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))
