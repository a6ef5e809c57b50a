"""The tune stage's entry point, :func:`tune`, and its result types.

:func:`tune` checks everything a user can get wrong, creates or resumes the study and runs the
missing trials (:mod:`.workers`, :mod:`.objective`) in its storage (:mod:`.storage`), then
writes the outputs (:mod:`.reports`). See the package docstring and ``documentation/tuner.md``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from kallos_models.config import Settings
from kallos_models.data import datasets, db
from kallos_models.data.features import resolve_indicators
from kallos_models.errors import ConfigError, DataError, ModelError
from kallos_models.modelling import fitting, zoo
from kallos_models.modelling.ensemble import is_ensemble
from kallos_models.stage_settings import TuneSettings, study_name_for, tune_settings
from kallos_models.stages.tune.budget import choose
from kallos_models.stages.tune.interrupts import finish_before_stopping
from kallos_models.stages.tune.objective import (
    Job,
    SearchSpaceFn,
    calendar,
    folds,
    owner_tag,
    prepare,
    replace_job,
)
from kallos_models.stages.tune.quiet import quiet
from kallos_models.stages.tune.reports import write_outputs
from kallos_models.stages.tune.storage import (
    open_storage,
    storage_spec_for,
    storage_url_for,
)
from kallos_models.stages.tune.warm import describe as describe_warm_start
from kallos_models.stages.tune.warm import enqueue as enqueue_warm_start
from kallos_models.stages.tune.warm import load_source as warm_start_source
from kallos_models.stages.tune.warm import report as warm_start_report
from kallos_models.stages.tune.workers import (
    Outcome,
    count_states,
    fail_owned_running,
    n_finished,
    raise_worker_errors,
    run_worker,
    run_workers,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TuneObserver",
    "TuneResult",
    "default_study_name",
    "storage_url_for",
    "tune",
]


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
        ``n_finished``, ``n_new_trials``, ``folds``, ``pruner``, ``space`` (cpu, full or
        custom), ``max_epochs``, ``timed_out``, ``seconds`` and ``warm_start``
        (:func:`.warm.report`, None without a warm start).
    """

    study: Any
    params_path: Path | None
    report_paths: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def default_study_name(settings: Settings | TuneSettings) -> str:
    """``study_name``, or ``{model}_{asset}_{timeframe}``.

    Parameters
    ----------
    settings : Settings or TuneSettings
        Resolved settings, or the stage's own. No default.

    Returns
    -------
    str
    """
    if isinstance(settings, TuneSettings):
        return settings.study_name
    return study_name_for(settings)


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
    "assets",
    "gap",
    "max_epochs",
    "space",
)


def _study_attrs(settings: TuneSettings, space: str) -> dict[str, Any]:
    return {
        "space": space,
        "model_name": settings.model_name,
        "asset_id": settings.asset_id,
        "timeframe": settings.timeframe,
        "metric": settings.metric,
        "end_date": str(settings.end),
        "start_date": None if settings.start is None else str(settings.start),
        "target_col": settings.features.target_col,
        "target_transform": settings.features.target_transform,
        "assets": list(settings.assets or (settings.asset_id,)),
        "gap": settings.gap,
        "max_epochs": settings.trainer.max_epochs,
    }


def _stored_attrs(storage: Any, study_name: str) -> dict[str, Any]:
    """The attributes of study ``study_name`` when it exists already, else empty."""
    for study in storage.get_all_studies():
        if study.study_name == study_name:
            return dict(study.user_attrs)
    return {}


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


def _fold_sizes(frame: pd.DataFrame, settings: TuneSettings, max_lookback: int) -> dict[str, int]:
    spec = zoo.get_spec(settings.model_name)
    try:
        return datasets.calculate_dynamic_wf_kwargs(
            len(frame),
            max_lookback,
            output_chunk_length=int(spec.defaults.get("output_chunk_length", 1)),
            gap=settings.gap,
        )
    except DataError as exc:
        raise DataError(
            f"{settings.asset_id} ({settings.timeframe}, {frame.index[0]} .. "
            f"{frame.index[-1]}, model {settings.model_name}): {exc}"
        ) from None


def tune(
    settings: Settings | TuneSettings,
    *,
    show_progress: bool = False,
    search_space: SearchSpaceFn | None = None,
    pruner: Any = None,
    observers: Sequence[TuneObserver] = (),
    warm_start_from: str | None = None,
    space: str = "auto",
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
        None uses the one ``settings.pruner`` names (median, hyperband, halving or none; see
        :mod:`.pruning` for the steps it is told about: every epoch and every fold).
    observers : sequence of TuneObserver, default ()
        Told when the trials start and when they are over (also after Ctrl-C or an error);
        :func:`kallos_models.pipeline.tune` passes MLflow's tracker here when tracking is on.
    warm_start_from : str or None, default None
        A study of the same model in the same storage (another asset or timeframe): its best
        configurations (up to :data:`.warm.WARM_TRIALS`, within the trials still to run) are
        queued as the first trials (:func:`.warm.enqueue`); the summary's ``warm_start``
        compares the best warm-started trial with the best cold one.
    space : {"auto", "cpu", "full"}, default "auto"
        The search space and epoch budget (:mod:`.budget`): ``auto`` keeps a resumed study's
        space, else searches the full space with a GPU and the CPU space (widths and depths
        capped, at most 20 epochs per fold unless ``max_epochs`` is set to another number
        than 100) without. Ignored with ``search_space``.

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
        Re-raised after Ctrl-C, wherever it lands (also inside a Lightning fit or predict):
        the running trials are FAIL, none is left RUNNING, and the params file holds the best
        trial so far when one completed. A second Ctrl-C during that clean-up is only logged;
        a third stops it.
    """
    import optuna

    started = time.time()
    if is_ensemble(settings.model_name):
        raise ConfigError(
            "an ensemble is trained, not tuned: tune each member (--model-name gru, then "
            "lightgbm ...), then `kallos-run train --model-name ensemble --members ... "
            "--member-params NAME=FILE` with the params files tune wrote"
        )
    zoo.get_spec(settings.model_name)  # unknown model: ModelError listing the names
    settings = settings if isinstance(settings, TuneSettings) else tune_settings(settings)
    fitting.check_accelerator(settings.trainer.accelerator)  # before any data is read
    storage_spec = storage_spec_for(settings)
    max_lookback = zoo.max_input_chunk_length(settings.model_name, settings.timeframe)
    indicators = resolve_indicators(settings.features.indicators)  # bad entries fail now
    assets = settings.assets or (settings.asset_id,)
    engine = db.create_db_engine(settings.database.url)
    try:
        frames = {
            asset: datasets.load_features_from_db(
                asset,
                settings.end,
                engine,
                start_date=settings.start,
                timeframe=settings.timeframe,
                max_gap_bars=settings.max_gap_bars,
                indicators=indicators,
            )
            for asset in assets
        }
    finally:
        engine.dispose()
    # a basket's folds are cut on the period all its assets cover: same dates for every asset
    frame = calendar(frames) if len(frames) > 1 else frames[assets[0]]
    sizes = _fold_sizes(frame, settings, max_lookback)
    job = Job(
        settings=settings,
        frame=frame,
        n_splits=sizes["n_splits"],
        val_size=sizes["val_size"],
        min_train_size=sizes["min_train_size"],
        max_lookback=max_lookback,
        storage=storage_spec,
        study_name=settings.study_name,
        search_space=search_space,
        pruner=pruner,
        show_progress=show_progress,
        deadline=None,
        frames=frames if len(frames) > 1 else None,
    )
    first = folds(job)[0]
    prepare(job, first)  # feature columns and values, before any trial
    logger.info(
        "%s %s: %d rows %s .. %s; %d folds of %d validation bars, %d bar(s) after their "
        "training parts (first %s rows)",
        ", ".join(assets),
        settings.timeframe,
        sum(len(f) for f in frames.values()),
        frame.index[0],
        frame.index[-1],
        job.n_splits,
        job.val_size,
        settings.gap,
        "/".join(str(len(train)) for train, _ in first.values()),
    )

    with quiet(show_progress):
        storage = open_storage(storage_spec)
        source = (
            None
            if warm_start_from is None
            else warm_start_source(storage, warm_start_from, settings, job.study_name)
        )
        budget = choose(settings, space, search_space, _stored_attrs(storage, job.study_name))
        settings = budget.settings
        job = replace_job(job, settings=settings, search_space=budget.search_space)
        study = optuna.create_study(
            study_name=job.study_name,
            storage=storage,
            direction="minimize",
            load_if_exists=True,
        )
        _check_study(study, _study_attrs(settings, budget.name))
        before = count_states(study)
        n_before = sum(before.values())
        missing = max(0, settings.n_trials - n_finished(before))
        if source is not None:
            fit_to = job.search_space or zoo.get_spec(settings.model_name).search_space
            enqueue_warm_start(study, source, settings, fit_to, limit=missing)
        logger.info(
            "study %s in %s: %d of %d trials finished; %s",
            job.study_name,
            storage_spec.describe(),
            n_finished(before),
            settings.n_trials,
            f"running {missing} more on {min(settings.workers, missing)} worker(s)"
            if missing
            else "none to run",
        )
        if settings.timeout is not None:  # like Optuna's timeout: from the first trial on
            job = replace_job(job, deadline=time.time() + float(settings.timeout))
        owners = {owner_tag()}
        outcomes: list[Outcome] = []
        for observer in observers:
            observer.start(job.study_name, storage_spec.masked)
        try:
            n_workers = min(settings.workers, missing)
            if n_workers == 1:
                run_worker(job, 0)
            elif n_workers > 1:
                outcomes = run_workers(job, owners, n_workers)
        except KeyboardInterrupt:
            with finish_before_stopping("marking the interrupted trial(s) FAIL"):
                fail_owned_running(study, owners)
                logger.warning(
                    "interrupted: the running trial(s) are FAIL; %d of %d trials finished. "
                    "Run the same command again to resume",
                    n_finished(count_states(study)),
                    settings.n_trials,
                )
                with contextlib.suppress(Exception):
                    write_outputs(study, settings, storage_spec)
            _tell_finished(observers, study, owners, "KILLED")
            raise
        except BaseException:
            with contextlib.suppress(Exception):  # Optuna fails no trial on a SystemExit
                fail_owned_running(study, owners)
            _tell_finished(observers, study, owners, "FAILED")
            raise
        params_path, reports, payload = write_outputs(study, settings, storage_spec)
        counts = count_states(study)
        failed = any(o.status != "ok" for o in outcomes)
        _tell_finished(
            observers, study, owners, "FAILED" if failed else "FINISHED", [params_path, *reports]
        )

    raise_worker_errors(outcomes, counts, settings)
    timed_out = job.deadline is not None and time.time() >= job.deadline
    if n_finished(counts) < settings.n_trials and not timed_out and not outcomes:
        logger.warning(
            "study %s has %d of %d finished trials",
            job.study_name,
            n_finished(counts),
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
        "n_finished": n_finished(counts),
        "n_new_trials": sum(counts.values()) - n_before,
        "folds": {
            "n_splits": job.n_splits,
            "val_size": job.val_size,
            "min_train_size": job.min_train_size,
            "gap": settings.gap,
        },
        "pruner": settings.pruner if pruner is None else type(pruner).__name__,
        "space": budget.name,
        "max_epochs": settings.trainer.max_epochs,
        "timed_out": timed_out,
        "seconds": round(time.time() - started, 1),
        "warm_start": warm_start_report(study),
    }
    if summary["warm_start"] is not None:
        logger.info("%s", describe_warm_start(summary["warm_start"]))
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
