"""Tune runs: one parent run per tune and one child run per trial it ran."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from kallos_models.config import Settings
from kallos_models.data import db
from kallos_models.mlops.tracking.client import (
    TAG_KIND,
    _ends_failed_on_error,
    _experiment_id,
    _log,
    _ms,
    _tracking_uri,
    enabled,
    require_mlflow,
    session,
)
from kallos_models.stage_settings import tune_settings

logger = logging.getLogger(__name__)

__all__ = ["TuneTracker"]


class TuneTracker:
    """One parent run per tune and one child run per trial it ran; a no-op without tracking.

    :func:`kallos_models.pipeline.tune` makes one at its start (which fails at once when MLflow
    is missing), calls :meth:`start` before the first trial and :meth:`finish` once the trials
    are over (also after Ctrl-C or an error). Child runs are written in :meth:`finish`, from
    the parent process, for the trials whose ``worker`` user attribute is one of this tune's
    processes and that started after :meth:`start`; so ``workers > 1`` needs nothing more.
    """

    def __init__(self, settings: Settings) -> None:
        require_mlflow(settings)
        self.settings = settings
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.started: datetime | None = None
        self.study_name: str | None = None

    def start(self, study_name: str, storage: str) -> None:
        """Open the parent run ``tune {study_name}`` with the tuning settings as params.

        Parameters
        ----------
        study_name : str
            The Optuna study. No default.
        storage : str
            The storage URL, password masked. No default.
        """
        if not enabled(self.settings):
            return
        s = self.settings
        self.started = datetime.now()
        self.study_name = study_name
        with session(s) as client:
            self.experiment_id = _experiment_id(client, s)
            run = client.create_run(
                self.experiment_id,
                run_name=f"tune {study_name}",
                tags={
                    TAG_KIND: "tune",
                    "optuna.study_name": study_name,
                    "kallos.model_name": s.model_name,
                    "kallos.asset_id": tune_settings(s).asset_id,
                    "kallos.timeframe": s.timeframe,
                },
            )
            with _ends_failed_on_error(client, run.info.run_id):
                _log(
                    client,
                    run.info.run_id,
                    params={
                        "model_name": s.model_name,
                        "asset_id": s.asset_id,  # one asset, or the basket as a list
                        "timeframe": s.timeframe,
                        "metric": tune_settings(s).metric,
                        "n_trials": s.n_trials,
                        "tune_end_date": s.tune_end_date,
                        "start_date": s.start_date,
                        "max_epochs": s.max_epochs,
                        "seed": s.seed,
                        "workers": s.workers,
                        "target_col": s.target_col,
                        "target_transform": s.target_transform,
                        "study_name": study_name,
                        "storage": db.mask_url(storage),
                    },
                )
            self.run_id = run.info.run_id
        logger.info("tracking tune run %s in %s", self.run_id, db.mask_url(_tracking_uri(s)))

    def finish(
        self,
        study: Any,
        owners: Iterable[str],
        *,
        status: str = "FINISHED",
        files: Iterable[Path | None] = (),
    ) -> int:
        """Log the trials this tune ran as child runs, the best value and files; end the run.

        Parameters
        ----------
        study : optuna.Study
            The study. No default.
        owners : iterable of str
            ``host:pid`` of this process and its workers (the trials' ``worker`` attribute).
        status : str, default "FINISHED"
            ``FINISHED``, ``FAILED`` or ``KILLED``. When not ``FINISHED`` a tracking error is
            logged as a warning instead of raised, so it never hides the first error.
        files : iterable of Path, default ()
            Files to attach to the parent run (the params file and report plots).

        Returns
        -------
        int
            Child runs written.
        """
        if self.run_id is None:
            return 0
        run_id, self.run_id = self.run_id, None
        try:
            with session(self.settings) as client:
                written = self._log_trials(client, run_id, study, set(owners))
                best = _best_trial(study)
                _log(
                    client,
                    run_id,
                    metrics={"best_value": None if best is None else best.value},
                    tags={"optuna.best_trial": None if best is None else best.number},
                )
                for path in files:
                    if path is not None and Path(path).is_file():
                        client.log_artifact(run_id, str(path))
                client.set_terminated(run_id, status)
        except Exception as exc:
            if status == "FINISHED":
                raise
            logger.warning("could not close the MLflow tune run %s: %s", run_id, exc)
            return 0
        logger.info("tracked %d trial run(s) under tune run %s", written, run_id)
        return written

    def _log_trials(self, client: Any, parent: str, study: Any, owners: set[str]) -> int:
        written = 0
        for trial in study.get_trials(deepcopy=False):
            if not trial.state.is_finished() or trial.user_attrs.get("worker") not in owners:
                continue
            if self.started and trial.datetime_start and trial.datetime_start < self.started:
                continue
            state = trial.state.name
            run = client.create_run(
                self.experiment_id,
                start_time=_ms(trial.datetime_start),
                run_name=f"trial {trial.number}",
                tags={
                    "mlflow.parentRunId": parent,
                    TAG_KIND: "tune-trial",
                    "optuna.study_name": self.study_name,
                    "optuna.trial_number": str(trial.number),
                    "optuna.state": state,
                    "optuna.worker": trial.user_attrs.get("worker"),
                },
            )
            attrs = trial.user_attrs
            error = attrs.get("error")
            _log(
                client,
                run.info.run_id,
                params={**(attrs.get("params") or {}), **trial.params},
                metrics={"value": trial.value, "n_epochs": attrs.get("n_epochs")},
                steps=[
                    ("fold_score", score, index)
                    for index, score in enumerate(attrs.get("fold_scores") or [])
                ],
                tags={"optuna.error": None if error is None else str(error)[:4000]},
            )
            client.set_terminated(
                run.info.run_id,
                "FAILED" if state == "FAIL" else "FINISHED",
                end_time=_ms(trial.datetime_complete),
            )
            written += 1
        return written


def _best_trial(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None
