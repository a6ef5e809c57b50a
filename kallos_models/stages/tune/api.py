"""Hyperparameter search with Optuna over walk-forward cross-validation.

One trial samples a parameter set from the model's search space and, for every walk-forward
fold, fits the preprocessing on the fold's training rows, trains the model with early stopping
on the fold's validation rows, forecasts the validation rows one bar ahead (rolling, prices) and
scores them with the chosen metric. The trial's value is the mean fold score. After each fold
the score is reported to Optuna (``step`` = fold index) so a :class:`optuna.pruners.MedianPruner`
can stop a clearly worse trial early.

The study lives in an Optuna RDB storage: the data database by default (optionally in its own
PostgreSQL schema), or ``storage_url``. It is resumed by name, and only the trials still missing
run. ``workers > 1`` runs that many processes (spawn context) against one PostgreSQL storage;
the same command started on several machines cooperates the same way. Heartbeats turn the
trial of a killed worker into FAIL and queue it again.

``documentation/tuner.md`` describes the fold sizing, pruning, storage, workers, crash recovery
and the output file. Optuna, Darts and torch are imported inside the functions that need them,
so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL

from kallos_models import errors
from kallos_models.config import Settings, parse_date
from kallos_models.data import datasets, db
from kallos_models.errors import ConfigError, DatabaseError, DataError, KallosError, ModelError
from kallos_models.files import atomic_write_bytes, run_stem, write_json
from kallos_models.modelling import series, zoo

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

__all__ = [
    "TuneResult",
    "default_study_name",
    "list_studies",
    "storage_url_for",
    "tune",
]

#: A PostgreSQL schema name kallos-models accepts for Optuna's tables.
SCHEMA_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Trial states that count towards ``n_trials``.
FINISHED_STATE_NAMES = ("COMPLETE", "PRUNED")
#: How many times a trial whose worker died (stale heartbeat) is queued again.
MAX_STALE_RETRIES = 3
#: Trials a MedianPruner lets finish before it prunes anything.
PRUNER_STARTUP_TRIALS = 5
#: Trials in a row that may fail (non-finite score, model error) before tuning stops.
MAX_FAILURES_IN_A_ROW = 5
#: Seconds a worker waits for a spawned sibling to stop after Ctrl-C before signalling it.
_INTERRUPT_GRACE_S = 5.0
_STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
#: Loggers whose INFO lines (device banners, dataset sizes) drown the one line per trial.
_NOISY_LOGGERS = (
    "pytorch_lightning",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric",
    "darts",
)
#: Warnings every fold would repeat; they say nothing about the trial.
_ROUTINE_WARNINGS = (
    ".*pin_memory.*",
    ".*LeafSpec.*",
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*overflow encountered in exp.*",  # a diverged trial; its FAIL line says so
)

SearchSpaceFn = Callable[[Any, str], dict[str, Any]]


class TuneObserver(Protocol):
    """Told when a tune's trials start and when they are over (MLflow tracking is one)."""

    def start(self, study_name: str, storage: str) -> None:
        """Before the first trial: the study's name and its storage URL, password masked."""

    def finish(
        self,
        study: Any,
        owners: Iterable[str],
        *,
        status: str = "FINISHED",
        files: Iterable[Path | None] = (),
    ) -> Any:
        """After the trials (``status`` FINISHED, FAILED or KILLED); ``owners`` are the
        ``host:pid`` of this tune's processes, ``files`` the params file and report plots."""


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` did.

    Attributes
    ----------
    study
        The :class:`optuna.Study`, loaded from its storage.
    params_path
        The ``{model}_{asset}_best_params.json`` written, or None when no trial completed.
    report_paths
        The tuning report plots written (optimization history, parameter importances).
    summary
        JSON-able summary: ``params_path``, ``report_paths``, ``study_name``, ``storage``
        (password masked), ``optuna_schema``, ``value``, ``metric``, ``params``, ``n_epochs``,
        ``best_trial``, ``trial_counts`` (state -> count), ``n_trials`` (target),
        ``n_finished``, ``n_new_trials``, ``folds`` and ``timed_out``.
    """

    study: Any
    params_path: Path | None
    report_paths: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageSpec:
    """Where the study lives. ``url`` carries the password; show :attr:`masked` instead."""

    url: str
    schema: str | None
    heartbeat_interval: int | None = None
    grace_period: int | None = None

    @property
    def masked(self) -> str:
        return db.mask_url(self.url)

    @property
    def backend(self) -> str:
        return db.resolve_url(self.url).get_backend_name()

    def describe(self) -> str:
        return self.masked + (f" (schema {self.schema})" if self.schema else "")


def storage_url_for(settings: Settings) -> str:
    """The Optuna storage URL of ``settings``, password included (never print it).

    Parameters
    ----------
    settings : Settings
        ``storage_url`` when set, else the data database (``db_url`` or ``db_kwargs``).

    Returns
    -------
    str
        A SQLAlchemy URL; ``postgresql://`` is given the psycopg2 driver.

    Raises
    ------
    ConfigError
        No database is configured, or the URL does not parse.
    """
    source: str | Mapping[str, Any] | None = settings.storage_url or settings.db_url
    if not source:
        source = settings.db_kwargs
    if not source:
        raise ConfigError(
            "no Optuna storage: pass --storage-url or --db-url (KALLOS_STORAGE_URL, "
            "KALLOS_DB_URL), or db_kwargs in a notebook"
        )
    return db.resolve_url(source).render_as_string(hide_password=False)


def _check_schema(schema: str | None, url: str) -> str | None:
    if schema is None or schema == "":
        return None
    if not SCHEMA_PATTERN.match(schema):
        raise ConfigError(
            f"optuna_schema {schema!r} is not a plain identifier; use letters, digits and "
            "underscores, starting with a letter or underscore (e.g. optuna)"
        )
    backend = db.resolve_url(url).get_backend_name()
    if backend != "postgresql":
        raise ConfigError(
            f"optuna_schema {schema!r} needs a PostgreSQL storage, but the storage is "
            f"{backend} ({db.mask_url(url)}); drop --optuna-schema or pass a PostgreSQL "
            "--storage-url / --db-url"
        )
    return schema


def _quote_ident(name: str) -> str:
    # name matched SCHEMA_PATTERN, so it holds no quote; quoting keeps its case.
    return '"' + name.replace('"', '""') + '"'


def _engine_kwargs(spec: _StorageSpec) -> dict[str, Any]:
    if spec.backend == "sqlite":
        return {"connect_args": {"timeout": 30}}
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if spec.schema:
        connect_args["options"] = f"-csearch_path={_quote_ident(spec.schema)}"
    return {"pool_pre_ping": True, "connect_args": connect_args}


def _connect_error(spec: _StorageSpec, exc: BaseException) -> DatabaseError:
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    text = detail[0] if detail else type(exc).__name__
    password = db.resolve_url(spec.url).password
    if password:
        text = text.replace(str(password), "***")
    return DatabaseError(
        f"cannot open the Optuna storage {spec.describe()}: {text}; check --storage-url "
        "(KALLOS_STORAGE_URL) or --db-url and that the server is running"
    )


def _plain_engine(spec: _StorageSpec) -> sa.Engine:
    """A SQLAlchemy engine on the storage (same search_path as Optuna's), checked to connect."""
    kwargs = _engine_kwargs(spec)
    if spec.backend == "postgresql":
        kwargs = {**kwargs, "isolation_level": "AUTOCOMMIT"}
    try:
        engine = sa.create_engine(db.resolve_url(spec.url), **kwargs)
        with engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
    except Exception as exc:  # unreachable server, refused login, missing driver
        raise _connect_error(spec, exc) from None
    return engine


def _ensure_schema(spec: _StorageSpec) -> None:
    if not spec.schema:
        return
    without_path = _StorageSpec(url=spec.url, schema=None)
    engine = _plain_engine(without_path)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(spec.schema)}"))
    except sa.exc.IntegrityError:
        pass  # created at the same moment by another worker
    except sa.exc.SQLAlchemyError as exc:
        raise _connect_error(spec, exc) from None
    finally:
        engine.dispose()


def _open_storage(spec: _StorageSpec, *, create: bool = True) -> Any:
    """An Optuna RDBStorage for ``spec``: schema created, tables created, heartbeats on."""
    import optuna

    if create:
        _ensure_schema(spec)
    _plain_engine(spec).dispose()  # reachable, with a masked message when not
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(spec)}
    if spec.heartbeat_interval is not None:
        kwargs.update(
            heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_STALE_RETRIES
            ),
        )
    last: Exception | None = None
    for _attempt in range(3):  # CREATE TABLE races between machines starting together
        try:
            return optuna.storages.RDBStorage(spec.url, skip_table_creation=not create, **kwargs)
        except sa.exc.IntegrityError as exc:
            last = exc
            time.sleep(0.5)
        except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise _connect_error(spec, exc) from None
    raise _connect_error(spec, last or RuntimeError("table creation raced"))


def _storage_spec(settings: Settings) -> _StorageSpec:
    url = storage_url_for(settings)
    schema = _check_schema(settings.optuna_schema, url)
    backend = db.resolve_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"Optuna storage backend {backend!r} is not supported; use SQLite or PostgreSQL "
            f"(got {db.mask_url(url)})"
        )
    if settings.workers > 1 and backend == "sqlite":
        raise ConfigError(
            f"workers={settings.workers} needs a PostgreSQL storage: SQLite locks under "
            "concurrent writers (see Optuna's FAQ). Pass --storage-url "
            "postgresql://user:password@host:5432/db (or a PostgreSQL --db-url), or use "
            "--workers 1"
        )
    if settings.heartbeat_interval < 1 or settings.grace_period < 1:
        raise ConfigError(
            "heartbeat_interval and grace_period must be at least 1 second, got "
            f"{settings.heartbeat_interval} and {settings.grace_period}"
        )
    if settings.grace_period <= settings.heartbeat_interval:
        raise ConfigError(
            f"grace_period ({settings.grace_period} s) must be longer than heartbeat_interval "
            f"({settings.heartbeat_interval} s), or live trials would be taken for dead ones; "
            "use e.g. heartbeat_interval 60 and grace_period 120"
        )
    return _StorageSpec(
        url=url,
        schema=schema,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
    )


class _TrialGate:
    """Makes "count the trials, then start one" atomic across processes and machines.

    On PostgreSQL a session-level advisory lock keyed on the study is held from the count
    until the new trial is RUNNING in the storage (the objective releases it first thing), so
    two workers never both start the last missing trial. A worker that dies releases the lock
    with its connection. On SQLite (one worker only) it does nothing.
    """

    def __init__(self, spec: _StorageSpec, study_name: str) -> None:
        self._engine = _plain_engine(spec) if spec.backend == "postgresql" else None
        digest = hashlib.sha256(f"kallos-tune:{spec.schema}:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: Any = None

    def acquire(self) -> None:
        if self._engine is None or self._conn is not None:
            return
        conn = self._engine.connect()
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._conn = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        finally:
            conn.close()

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()


# --------------------------------------------------------------------------------------------
# Quiet libraries
# --------------------------------------------------------------------------------------------


class _TrialFailureLogFilter(logging.Filter):
    """Drop Optuna's own log lines (and traceback) for a trial failure that tune reports itself.

    That is a trial stopped by Ctrl-C, by a :class:`KallosError` (re-raised as one ``Error:``
    line) or by a non-finite score (tune logs the reason); a bug keeps Optuna's traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dropped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        match = re.match(r"Trial (\d+) failed", message)
        if match is None:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if (
            isinstance(exc, (KeyboardInterrupt, KallosError))
            or "KeyboardInterrupt" in message
            or "nan is not acceptable" in message
        ):
            self._dropped.add(match.group(1))
            return False
        return match.group(1) not in self._dropped


@contextlib.contextmanager
def _quiet(show_progress: bool) -> Iterator[None]:
    """Silence Optuna's per-trial INFO logs, Lightning's and Darts' INFO lines and their
    routine warnings (unless ``show_progress``); Optuna's experimental warnings always."""
    import optuna
    import pytorch_lightning  # noqa: F401  # sets its logger's level on import: do it first

    previous = optuna.logging.get_verbosity()
    noisy = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    interrupt_filter = _TrialFailureLogFilter()
    optimize_logger = logging.getLogger("optuna.study._optimize")
    optimize_logger.addFilter(interrupt_filter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
            if not show_progress:
                optuna.logging.set_verbosity(logging.WARNING)
                for lg in noisy:
                    lg.setLevel(logging.WARNING)
                for pattern in _ROUTINE_WARNINGS:
                    warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        optimize_logger.removeFilter(interrupt_filter)
        optuna.logging.set_verbosity(previous)
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs; pickled to spawned workers."""

    settings: Settings
    frame: pd.DataFrame
    n_splits: int
    val_size: int
    min_train_size: int
    max_lookback: int
    storage: _StorageSpec
    study_name: str
    search_space: SearchSpaceFn | None
    pruner: Any
    show_progress: bool
    deadline: float | None
    torch_threads: int | None = None


def _owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fold_score(metrics: Mapping[str, Any], metric: str) -> float:
    value = metrics.get("rmse_ratio") if metric == "rmse_rel_naive" else metrics.get(metric)
    return float("nan") if value is None else float(value)


def _folds(job: _Job) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    return list(
        datasets.get_walk_forward_splits(
            job.frame, job.n_splits, job.val_size, min_train_size=job.min_train_size
        )
    )


def _prepare(job: _Job, train_df: pd.DataFrame, val_df: pd.DataFrame) -> Any:
    return series.prepare_from_settings(job.settings, train_df, val_df)


def _make_objective(job: _Job, gate: _TrialGate) -> Callable[[Any], float]:
    import optuna

    from kallos_models.modelling import fitting, forecasting, metrics

    s = job.settings
    spec = zoo.get_spec(s.model_name)
    space = job.search_space or spec.search_space
    folds = _folds(job)
    trainer_kwargs = fitting.build_trainer_kwargs(
        accelerator=s.accelerator,
        devices=s.devices,
        precision=s.precision,
        show_progress=job.show_progress,
    )
    owner = _owner_tag()

    def objective(trial: optuna.Trial) -> float:
        gate.release()  # the trial is RUNNING in the storage: other workers may count it
        trial.set_user_attr("worker", owner)
        params = dict(space(trial, s.timeframe))
        lookback = int(params.get("input_chunk_length", spec.defaults["input_chunk_length"]))
        if lookback > job.max_lookback:
            raise ConfigError(
                f"the search space sampled input_chunk_length {lookback}, above the "
                f"{job.max_lookback} bars the walk-forward folds were sized for; keep "
                "input_chunk_length within zoo.lookback_range(timeframe)"
            )
        # names the model does not take are a search-space mistake: stop, do not retry
        zoo.validate_params(s.model_name, params)
        trial.set_user_attr("params", params)
        scores: list[float] = []
        best_epochs: list[int] = []
        epochs_run: list[int] = []
        fold_seconds: list[float] = []
        trial.set_user_attr("fold_train_sizes", [len(tr) for tr, _ in folds])
        trial.set_user_attr("fold_val_sizes", [len(va) for _, va in folds])
        trial.set_user_attr("fold_val_starts", [str(va.index[0]) for _, va in folds])

        def record() -> None:
            trial.set_user_attr("fold_scores", scores)
            trial.set_user_attr("best_epochs", best_epochs)
            trial.set_user_attr("epochs_run", epochs_run)
            trial.set_user_attr("fold_seconds", [round(x, 3) for x in fold_seconds])
            if best_epochs:
                trial.set_user_attr("n_epochs", max(1, round(sum(best_epochs) / len(best_epochs))))

        for index, (train_df, val_df) in enumerate(folds):
            started = time.perf_counter()
            prepared = _prepare(job, train_df, val_df)
            try:
                fit = fitting.fit_forecaster(
                    s.model_name,
                    params,
                    prepared,
                    max_epochs=s.max_epochs,
                    seed=s.seed,
                    trainer_kwargs=trainer_kwargs,
                )
                needed = forecasting.lookback_bars(
                    int(fit.model.input_chunk_length), 1, prepared.preprocessor.target_transform
                )
                context = pd.concat([train_df.iloc[-needed:], val_df])
                forecasts = forecasting.rolling_forecasts(
                    fit.model, prepared.preprocessor, context, start=val_df.index[0], horizon=1
                )
                scores_now = metrics.compute_metrics(
                    forecasts["actual"].to_numpy(),
                    forecasts["forecast"].to_numpy(),
                    forecasts["naive"].to_numpy(),
                    origin=forecasts["origin_close"].to_numpy(),
                    horizon=1,
                )
            except ModelError as exc:  # e.g. a diverged model forecasting NaN
                logger.warning("trial %d fold %d failed: %s", trial.number, index + 1, exc)
                trial.set_user_attr("error", str(exc))
                record()
                return float("nan")
            score = _fold_score(scores_now, s.metric)
            scores.append(score)
            best_epochs.append(int(fit.best_epoch or fit.epochs_run or 1))
            epochs_run.append(int(fit.epochs_run))
            fold_seconds.append(time.perf_counter() - started)
            record()
            if not math.isfinite(score):
                logger.warning(
                    "trial %d fold %d: %s is not finite; the trial fails",
                    trial.number,
                    index + 1,
                    s.metric,
                )
                return float("nan")
            trial.report(score, step=index)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after fold {index + 1}/{len(folds)}: {s.metric} {score:.6g}"
                )
        return float(sum(scores) / len(scores))

    return objective


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def _states(study: Any) -> dict[str, int]:
    counts = dict.fromkeys(_STATE_ORDER, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _finished(counts: Mapping[str, int]) -> int:
    return sum(counts.get(name, 0) for name in FINISHED_STATE_NAMES)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _best_value(study: Any) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


class _TrialLogger:
    """Optuna callback: one INFO line per finished trial; remembers the last state."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.last_state: str | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        self.last_state = trial.state.name
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        value = trial.value
        if trial.state.name == "PRUNED" and trial.intermediate_values:
            step = max(trial.intermediate_values)
            detail = f"after fold {step + 1}, {self.metric} {_fmt(trial.intermediate_values[step])}"
        elif trial.state.name == "FAIL":
            detail = str(trial.user_attrs.get("error", "non-finite score"))
        else:
            detail = f"{self.metric} {_fmt(value)}"
        logger.info(
            "trial %d %s: %s; best so far %s (%.1f s)",
            trial.number,
            trial.state.name,
            detail,
            _fmt(_best_value(study)),
            seconds,
        )


def _fail_stale(study: Any) -> None:
    import optuna

    optuna.storages.fail_stale_trials(study)


def _run_worker(job: _Job, worker_index: int) -> None:
    """Run trials of the study until it has ``n_trials`` finished ones (or the deadline)."""
    import optuna

    s = job.settings
    storage = _open_storage(job.storage, create=False)
    existing = optuna.load_study(study_name=job.study_name, storage=storage)
    # A different seed per worker and per resume: a resumed study does not redraw the
    # random start-up parameters its first trials already used.
    seed = s.seed + 1000 * worker_index + len(existing.trials)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    study = optuna.load_study(
        study_name=job.study_name, storage=storage, sampler=sampler, pruner=job.pruner
    )
    gate = _TrialGate(job.storage, job.study_name)
    objective = _make_objective(job, gate)
    on_trial = _TrialLogger(s.metric)
    poll = max(0.5, min(2.0, (job.storage.heartbeat_interval or 4) / 2))
    failures_in_a_row = 0
    try:
        while True:
            if job.deadline is not None and time.time() >= job.deadline:
                logger.info("timeout reached: worker %d starts no new trial", worker_index)
                return
            gate.acquire()
            try:
                _fail_stale(study)
                counts = _states(study)
                finished = _finished(counts)
                if finished >= s.n_trials:
                    return
                wait = finished + counts["RUNNING"] >= s.n_trials
                if not wait:
                    on_trial.last_state = None
                    study.optimize(objective, n_trials=1, callbacks=[on_trial])
            finally:
                gate.release()
            if wait:  # the last missing trials are running elsewhere; wait for them
                time.sleep(poll)
                continue
            if on_trial.last_state == "FAIL":
                failures_in_a_row += 1
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                    raise ModelError(
                        f"{failures_in_a_row} trials in a row failed (non-finite scores or "
                        "model errors, see the log); check the data and narrow the search "
                        "space (e.g. a lower learning_rate range)"
                    )
            else:
                failures_in_a_row = 0
    finally:
        gate.close()


def _install_queue_logging(queue: Any, level: int) -> None:
    from logging.handlers import QueueHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(QueueHandler(queue))
    root.setLevel(level)
    logging.getLogger("kallos_models").setLevel(level)


def _worker_process(
    job: _Job, worker_index: int, log_queue: Any, result_queue: Any, level: int
) -> None:
    """Entry point of a spawned worker: run trials, report the outcome on ``result_queue``."""
    _install_queue_logging(log_queue, level)
    outcome: tuple[int, str, str | None, str | None]
    try:
        if job.torch_threads is not None:
            import torch

            torch.set_num_threads(job.torch_threads)
        with _quiet(job.show_progress):
            _run_worker(job, worker_index)
        outcome = (worker_index, "ok", None, None)
    except KeyboardInterrupt:
        outcome = (worker_index, "interrupted", None, None)
    except KallosError as exc:
        outcome = (worker_index, "error", type(exc).__name__, str(exc))
    except BaseException as exc:  # a bug: hand the traceback to the parent
        import traceback

        outcome = (worker_index, "crash", type(exc).__name__, traceback.format_exc())
    result_queue.put(outcome)


def _forward_logs(queue: Any) -> None:
    while True:
        record = queue.get()
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


def _run_workers(
    job: _Job, owners: set[str], n_workers: int
) -> list[tuple[int, str, str | None, str | None]]:
    """Run ``n_workers`` workers to completion: this process is worker 0, the others are
    spawned processes.

    This process has its imports and data loaded already; spawning it a twin would pay a
    second start-up (importing torch and Darts takes seconds) for nothing.
    """
    import multiprocessing
    import threading

    ctx = multiprocessing.get_context("spawn")
    log_queue = ctx.Queue()
    result_queue = ctx.Queue()
    forwarder = threading.Thread(target=_forward_logs, args=(log_queue,), daemon=True)
    forwarder.start()
    level = logging.getLogger("kallos_models").getEffectiveLevel()
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    worker_job = _replace_job(job, torch_threads=threads)
    processes = []
    host = socket.gethostname()
    own_outcome: tuple[int, str, str | None, str | None] = (0, "ok", None, None)
    try:
        for index in range(1, n_workers):
            process = ctx.Process(
                target=_worker_process,
                args=(worker_job, index, log_queue, result_queue, level),
                name=f"kallos-tune-{index}",
            )
            process.start()
            owners.add(f"{host}:{process.pid}")
            processes.append(process)
        logger.info(
            "running %d workers: this process and %d spawned (torch threads %d each)",
            n_workers,
            n_workers - 1,
            threads,
        )
        try:
            import torch

            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                _run_worker(worker_job, 0)
            except KallosError as exc:
                own_outcome = (0, "error", type(exc).__name__, str(exc))
            finally:
                torch.set_num_threads(previous_threads)
            while any(p.is_alive() for p in processes):
                for p in processes:
                    p.join(timeout=0.5)
        except KeyboardInterrupt:
            _stop_workers(processes)
            raise
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
            p.join()
        log_queue.put(None)
        forwarder.join(timeout=5)
    outcomes = [own_outcome]
    while not result_queue.empty():
        outcomes.append(result_queue.get())
    reported = {o[0] for o in outcomes}
    for index, p in enumerate(processes, start=1):
        if index not in reported:
            outcomes.append((index, "died", None, f"exit code {p.exitcode}"))
    return sorted(outcomes)


def _stop_workers(processes: list[Any]) -> None:
    """After Ctrl-C: let workers fail their trials themselves, then signal, then kill."""
    deadline = time.monotonic() + _INTERRUPT_GRACE_S
    while time.monotonic() < deadline and any(p.is_alive() for p in processes):
        time.sleep(0.1)
    for p in processes:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
    for p in processes:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()


def _replace_job(job: _Job, **changes: Any) -> _Job:
    import dataclasses

    return dataclasses.replace(job, **changes)


def _fail_owned_running(study: Any, owners: set[str]) -> list[int]:
    """Mark FAIL the RUNNING trials started by this process and its workers."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") in owners:
            with contextlib.suppress(Exception):
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                failed.append(trial.number)
    if failed:
        logger.info("marked interrupted trials %s as FAIL", failed)
    return failed


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _stem(settings: Settings) -> str:
    return run_stem(settings.model_name, str(settings.asset_id), timeframe=settings.timeframe)


def _best_payload(
    study: Any, settings: Settings, spec: _StorageSpec, counts: Mapping[str, int]
) -> dict[str, Any] | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    params = dict(best.user_attrs.get("params") or best.params)
    params.pop("n_epochs", None)
    n_epochs = best.user_attrs.get("n_epochs")
    if not isinstance(n_epochs, int) or n_epochs < 1:
        n_epochs = max(1, int(n_epochs or 1))
    return {
        "model_name": settings.model_name,
        "asset_id": settings.asset_id,
        "timeframe": settings.timeframe,
        "params": params,
        "n_epochs": n_epochs,
        "value": float(best.value),
        "metric": settings.metric,
        "trial_counts": dict(counts),
        "study_name": study.study_name,
        "storage": spec.masked,
        "optuna_schema": spec.schema,
        "best_trial": best.number,
        "fold_scores": best.user_attrs.get("fold_scores"),
        "end_date": str(parse_date(settings.tune_end_date, "tune_end_date")),
        "start_date": settings.start_date,
    }


def _save_plot(path: Path, draw: Callable[[], Any]) -> Path:
    """Draw an Optuna matplotlib plot and write it as PNG.

    Optuna's plots call ``plt.style.use("ggplot")``; the ``rc_context`` undoes that on exit, so
    the style does not leak into later figures (the evaluation plot, a notebook's own).
    """
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        result = draw()
        figure = result.figure if hasattr(result, "figure") else result[0].figure
        try:
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            return atomic_write_bytes(path, buffer.getvalue())
        finally:
            plt.close(figure)


def _write_reports(study: Any, settings: Settings, out_dir: Path) -> list[Path]:
    import optuna
    from optuna.trial import TrialState

    stem = _stem(settings)
    paths: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return paths
    plots = optuna.visualization.matplotlib
    try:
        paths.append(
            _save_plot(
                out_dir / f"{stem}_optimization_history.png",
                lambda: plots.plot_optimization_history(study),
            )
        )
    except (ValueError, RuntimeError, ImportError) as exc:
        logger.info("optimization history plot skipped: %s", exc)
    varying = [
        name
        for name in {n for t in complete for n in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    ]
    if len(complete) < 2 or not varying:
        logger.info(
            "parameter importance plot skipped: it needs at least 2 completed trials with "
            "different parameters (have %d completed)",
            len(complete),
        )
        return paths
    try:
        paths.append(
            _save_plot(
                out_dir / f"{stem}_param_importances.png",
                lambda: plots.plot_param_importances(study),
            )
        )
    except (ValueError, RuntimeError, ZeroDivisionError, ImportError) as exc:
        logger.info("parameter importance plot skipped: %s", exc)
    return paths


def _write_outputs(
    study: Any, settings: Settings, spec: _StorageSpec
) -> tuple[Path | None, list[Path], dict[str, Any] | None]:
    counts = _states(study)
    payload = _best_payload(study, settings, spec, counts)
    if payload is None:
        logger.warning("no trial completed yet: no params file written")
        return None, [], None
    out_dir = Path(settings.output_path or ".")
    path = out_dir / f"{_stem(settings)}_best_params.json"
    write_json(path, payload)
    logger.info("best params of trial %d written to %s", payload["best_trial"], path)
    reports = _write_reports(study, settings, out_dir)
    return path, reports, payload


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def default_study_name(settings: Settings) -> str:
    """``settings.study_name``, or ``{model}_{asset}_{timeframe}``.

    Parameters
    ----------
    settings : Settings
        Resolved settings. No default.

    Returns
    -------
    str
    """
    return settings.study_name or f"{settings.model_name}_{settings.asset_id}_{settings.timeframe}"


#: Study user attributes that must match when a study is resumed.
_STUDY_KEYS = (
    "model_name",
    "asset_id",
    "timeframe",
    "metric",
    "end_date",
    "start_date",
    "target_col",
    "target_transform",
)


def _study_attrs(settings: Settings) -> dict[str, Any]:
    end = parse_date(settings.tune_end_date, "tune_end_date")
    start = parse_date(settings.start_date, "start_date")
    return {
        "model_name": settings.model_name,
        "asset_id": settings.asset_id,
        "timeframe": settings.timeframe,
        "metric": settings.metric,
        "end_date": str(end),
        "start_date": None if start is None else str(start),
        "target_col": settings.target_col,
        "target_transform": settings.target_transform,
    }


def _check_study(study: Any, wanted: Mapping[str, Any]) -> None:
    stored = study.user_attrs
    if not stored:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        return
    differ = [
        f"{key} {stored.get(key)!r} (now {wanted[key]!r})"
        for key in _STUDY_KEYS
        if key in stored and stored.get(key) != wanted[key]
    ]
    if differ:
        raise ConfigError(
            f"study {study.study_name!r} was tuned with {', '.join(differ)}; its trial values "
            "are not comparable with this run. Pass a new --study-name (study_name=...) or the "
            "same settings as before"
        )


def _fold_sizes(frame: pd.DataFrame, settings: Settings, max_lookback: int) -> dict[str, int]:
    spec = zoo.get_spec(settings.model_name)
    try:
        return datasets.calculate_dynamic_wf_kwargs(
            len(frame),
            max_lookback,
            output_chunk_length=int(spec.defaults.get("output_chunk_length", 1)),
        )
    except DataError as exc:
        raise DataError(
            f"{settings.asset_id} ({settings.timeframe}, {frame.index[0]} .. "
            f"{frame.index[-1]}, model {settings.model_name}): {exc}"
        ) from None


def tune(
    settings: Settings,
    *,
    show_progress: bool = False,
    search_space: SearchSpaceFn | None = None,
    pruner: Any = None,
    observers: Sequence[TuneObserver] = (),
) -> TuneResult:
    """Tune ``settings.model_name`` on ``settings.asset_id`` (what ``kallos-run tune`` calls).

    Everything a user can get wrong is checked before the first trial: the model name, the
    end date, the storage (reachable, schema, workers on SQLite), the data (rows up to the end
    date, enough for the folds, the feature columns). Then the study is created or resumed and
    only the missing trials run (finished = COMPLETE + PRUNED). Finally the best parameters
    are written to ``{model}_{asset}_best_params.json`` in ``settings.output_path`` (default
    the working directory) with the tuning report plots beside them.

    Parameters
    ----------
    settings : Settings
        Resolved settings; uses ``model_name``, ``asset_id``, ``timeframe``, ``start_date``,
        ``tune_end_date`` (required), ``db_url``/``db_kwargs``, ``storage_url``,
        ``optuna_schema``, ``study_name``, ``n_trials``, ``workers``, ``max_epochs``,
        ``metric``, ``seed``, ``timeout``, ``heartbeat_interval``, ``grace_period``,
        ``output_path``, the feature and target settings and the trainer settings.
    show_progress : bool, default False
        Show Lightning progress bars and Optuna's own log lines.
    search_space : callable or None, default None
        ``(trial, timeframe) -> params`` replacing the registry's search space (tests, custom
        searches); with ``workers > 1`` it must be importable (a module-level function). Its
        ``input_chunk_length`` must stay within
        :func:`kallos_models.modelling.zoo.max_input_chunk_length`.
    pruner : optuna.pruners.BasePruner or None, default None
        None uses ``MedianPruner(n_startup_trials=5, n_warmup_steps=0)`` on the fold reports.
    observers : sequence of TuneObserver, default ()
        Told when the trials start and when they are over (also after Ctrl-C or an error);
        :func:`kallos_models.pipeline.tune` passes MLflow's tracker here when tracking is on.

    Returns
    -------
    TuneResult

    Raises
    ------
    ConfigError
        Missing asset or end date, bad dates, a schema on a non-PostgreSQL storage, workers > 1
        on SQLite, a resumed study tuned with other settings.
    DataError
        No rows up to the end date, too few rows for the folds (says how many are needed), a
        missing feature column.
    ModelError
        Unknown model; too many trials failing in a row.
    DatabaseError
        The data database or the storage cannot be reached (password masked).
    KeyboardInterrupt
        Re-raised after Ctrl-C: the running trials are FAIL, none is left RUNNING, and the
        params file holds the best trial so far when one completed.
    """
    import optuna

    started = time.time()
    zoo.get_spec(settings.model_name)  # unknown model: ModelError listing the names
    if not settings.asset_id:
        raise ConfigError("no asset to tune: pass --asset-id (asset_id=...), e.g. BTC")
    end = parse_date(settings.tune_end_date, "tune_end_date")
    if end is None:
        raise ConfigError(
            "tuning needs an end date: pass --end-date YYYY-MM-DD (tune_end_date); rows after "
            "it are never seen by tuning"
        )
    storage_spec = _storage_spec(settings)
    max_lookback = zoo.max_input_chunk_length(settings.model_name, settings.timeframe)
    data_source: str | Mapping[str, Any] | None = settings.db_url or settings.db_kwargs
    if not data_source:
        raise ConfigError("no database: pass --db-url (KALLOS_DB_URL) or db_kwargs")
    engine = db.create_db_engine(data_source)
    try:
        frame = datasets.load_features_from_db(
            settings.asset_id,
            end,
            engine,
            start_date=settings.start_date,
            timeframe=settings.timeframe,
            max_gap_bars=settings.max_gap_bars,
        )
    finally:
        engine.dispose()
    sizes = _fold_sizes(frame, settings, max_lookback)
    job = _Job(
        settings=settings,
        frame=frame,
        n_splits=sizes["n_splits"],
        val_size=sizes["val_size"],
        min_train_size=sizes["min_train_size"],
        max_lookback=max_lookback,
        storage=storage_spec,
        study_name=default_study_name(settings),
        search_space=search_space,
        pruner=pruner
        or optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0, interval_steps=1
        ),
        show_progress=show_progress,
        deadline=None,
    )
    first_train, first_val = next(
        datasets.get_walk_forward_splits(
            frame, job.n_splits, job.val_size, min_train_size=job.min_train_size
        )
    )
    _prepare(job, first_train, first_val)  # feature columns and values, before any trial
    logger.info(
        "%s %s: %d rows %s .. %s; %d folds of %d validation bars (first training part %d rows)",
        settings.asset_id,
        settings.timeframe,
        len(frame),
        frame.index[0],
        frame.index[-1],
        job.n_splits,
        job.val_size,
        len(first_train),
    )

    with _quiet(show_progress):
        storage = _open_storage(storage_spec)
        study = optuna.create_study(
            study_name=job.study_name,
            storage=storage,
            direction="minimize",
            load_if_exists=True,
        )
        _check_study(study, _study_attrs(settings))
        before = _states(study)
        n_before = sum(before.values())
        missing = max(0, settings.n_trials - _finished(before))
        logger.info(
            "study %s in %s: %d of %d trials finished; %s",
            job.study_name,
            storage_spec.describe(),
            _finished(before),
            settings.n_trials,
            f"running {missing} more on {min(settings.workers, missing)} worker(s)"
            if missing
            else "none to run",
        )
        if settings.timeout is not None:  # like Optuna's timeout: from the first trial on
            job = _replace_job(job, deadline=time.time() + float(settings.timeout))
        owners = {_owner_tag()}
        outcomes: list[tuple[int, str, str | None, str | None]] = []
        for observer in observers:
            observer.start(job.study_name, storage_spec.masked)
        try:
            n_workers = min(settings.workers, missing)
            if n_workers == 1:
                _run_worker(job, 0)
            elif n_workers > 1:
                outcomes = _run_workers(job, owners, n_workers)
        except KeyboardInterrupt:
            _fail_owned_running(study, owners)
            logger.warning(
                "interrupted: the running trial(s) are FAIL; %d of %d trials finished. Run the "
                "same command again to resume",
                _finished(_states(study)),
                settings.n_trials,
            )
            with contextlib.suppress(Exception):
                _write_outputs(study, settings, storage_spec)
            _tell_finished(observers, study, owners, "KILLED")
            raise
        except BaseException:
            _tell_finished(observers, study, owners, "FAILED")
            raise
        params_path, reports, payload = _write_outputs(study, settings, storage_spec)
        counts = _states(study)
        failed = any(status != "ok" for _, status, _, _ in outcomes)
        _tell_finished(
            observers, study, owners, "FAILED" if failed else "FINISHED", [params_path, *reports]
        )

    _raise_worker_errors(outcomes, counts, settings)
    timed_out = job.deadline is not None and time.time() >= job.deadline
    if _finished(counts) < settings.n_trials and not timed_out and not outcomes:
        logger.warning(
            "study %s has %d of %d finished trials",
            job.study_name,
            _finished(counts),
            settings.n_trials,
        )
    if payload is None and not timed_out:
        raise ModelError(
            f"study {job.study_name!r} has no completed trial (states: {counts}); "
            "check the log for failed trials"
        )
    summary: dict[str, Any] = {
        "params_path": None if params_path is None else str(params_path),
        "report_paths": [str(p) for p in reports],
        "study_name": job.study_name,
        "storage": storage_spec.masked,
        "optuna_schema": storage_spec.schema,
        "model_name": settings.model_name,
        "asset_id": settings.asset_id,
        "metric": settings.metric,
        "value": None if payload is None else payload["value"],
        "params": None if payload is None else payload["params"],
        "n_epochs": None if payload is None else payload["n_epochs"],
        "best_trial": None if payload is None else payload["best_trial"],
        "trial_counts": counts,
        "n_trials": settings.n_trials,
        "n_finished": _finished(counts),
        "n_new_trials": sum(counts.values()) - n_before,
        "folds": {
            "n_splits": job.n_splits,
            "val_size": job.val_size,
            "min_train_size": job.min_train_size,
        },
        "timed_out": timed_out,
        "seconds": round(time.time() - started, 1),
    }
    return TuneResult(study=study, params_path=params_path, report_paths=reports, summary=summary)


def _tell_finished(
    observers: Sequence[TuneObserver],
    study: Any,
    owners: set[str],
    status: str,
    files: Sequence[Path | None] = (),
) -> None:
    for observer in observers:
        observer.finish(study, owners, status=status, files=files)


def _raise_worker_errors(
    outcomes: list[tuple[int, str, str | None, str | None]],
    counts: Mapping[str, int],
    settings: Settings,
) -> None:
    for index, status, kind, message in outcomes:
        if status == "error":
            cls = getattr(errors, kind or "", KallosError)
            if not (isinstance(cls, type) and issubclass(cls, KallosError)):
                cls = KallosError
            raise cls(f"worker {index}: {message}")
        if status == "crash":
            raise RuntimeError(f"tuning worker {index} crashed with {kind}:\n{message}")
    died = [f"worker {i} ({m})" for i, status, _, m in outcomes if status == "died"]
    if died and _finished(counts) < settings.n_trials:
        raise KallosError(
            f"{', '.join(died)} ended early; the study has {_finished(counts)} of "
            f"{settings.n_trials} finished trials. Run the same command again to resume"
        )


def list_studies(
    storage: str | URL | Mapping[str, Any], optuna_schema: str | None = None
) -> list[dict[str, Any]]:
    """The studies in an Optuna storage, with trial counts and best values.

    Parameters
    ----------
    storage : str, URL or dict
        Storage URL (or the seed's ``db_kwargs`` dict).
    optuna_schema : str or None, default None
        PostgreSQL schema holding Optuna's tables; None: the default schema.

    Returns
    -------
    list of dict
        One per study, by name: ``name``, ``direction``, ``trials`` (state -> count),
        ``n_trials``, ``n_finished``, ``best_value``, ``best_trial``, ``datetime_start`` and
        the study's ``model_name``, ``asset_id``, ``timeframe``, ``metric`` and ``end_date``
        when it was created by :func:`tune`. Empty when the storage holds no Optuna tables.

    Raises
    ------
    DatabaseError
        The storage cannot be reached (URL shown with its password masked).
    ConfigError
        A schema on a non-PostgreSQL storage, or a malformed schema name.
    """
    import optuna

    resolved = db.resolve_url(storage)
    url = resolved.render_as_string(hide_password=False)
    spec = _StorageSpec(url=url, schema=_check_schema(optuna_schema, url))
    if resolved.get_backend_name() == "sqlite" and resolved.database not in (None, "", ":memory:"):
        if not Path(str(resolved.database)).is_file():
            return []  # listing never creates a database file
    engine = _plain_engine(spec)
    try:
        has_tables = sa.inspect(engine).has_table("studies", schema=spec.schema)
    finally:
        engine.dispose()
    if not has_tables:
        return []
    with _quiet(False):
        rdb = _open_storage(spec, create=False)
        rows = []
        try:
            for frozen in sorted(rdb.get_all_studies(), key=lambda s: s.study_name):
                trials = rdb.get_all_trials(frozen._study_id, deepcopy=False)
                counts = dict.fromkeys(_STATE_ORDER, 0)
                for trial in trials:
                    counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
                complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
                minimize = frozen.direction == optuna.study.StudyDirection.MINIMIZE
                best = (min if minimize else max)(complete, key=lambda t: t.value, default=None)
                starts = [t.datetime_start for t in trials if t.datetime_start is not None]
                attrs = frozen.user_attrs
                rows.append(
                    {
                        "name": frozen.study_name,
                        "direction": frozen.direction.name.lower(),
                        "trials": counts,
                        "n_trials": len(trials),
                        "n_finished": _finished(counts),
                        "best_value": None if best is None else float(best.value),
                        "best_trial": None if best is None else best.number,
                        "datetime_start": str(min(starts)) if starts else None,
                        **{
                            key: attrs.get(key)
                            for key in ("model_name", "asset_id", "timeframe", "metric", "end_date")
                        },
                    }
                )
        except sa.exc.SQLAlchemyError as exc:
            raise _connect_error(spec, exc) from None
        finally:
            rdb.engine.dispose()
    return rows
