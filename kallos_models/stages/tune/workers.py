"""The workers that run a study's trials: trial-state counts, the one-line-per-trial logger,
the trial loop, spawned worker processes with their log forwarding, and what a worker's
outcome (an error, a crash, an early death) means for the tune."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from kallos_models import errors
from kallos_models.errors import KallosError, ModelError
from kallos_models.stage_settings import TuneSettings
from kallos_models.stages.tune.objective import Job, job_steps, make_objective, replace_job
from kallos_models.stages.tune.pruning import Steps, make_pruner
from kallos_models.stages.tune.quiet import quiet
from kallos_models.stages.tune.storage import TrialGate, open_storage

logger = logging.getLogger(__name__)

#: Trial states that count towards ``n_trials``.
FINISHED_STATE_NAMES = ("COMPLETE", "PRUNED")
#: Trials in a row that may fail (non-finite score, model error) before tuning stops.
MAX_FAILURES_IN_A_ROW = 5
#: Trial states in the order counts are shown.
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
#: Seconds a worker waits for a spawned sibling to stop after Ctrl-C before signalling it.
_INTERRUPT_GRACE_S = 5.0


def count_states(study: Any) -> dict[str, int]:
    """Trial state name -> count for ``study`` (every state of :data:`STATE_ORDER` present)."""
    counts = dict.fromkeys(STATE_ORDER, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def n_finished(counts: Mapping[str, int]) -> int:
    """The trials of ``counts`` that count towards ``n_trials`` (COMPLETE + PRUNED)."""
    return sum(counts.get(name, 0) for name in FINISHED_STATE_NAMES)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _best_value(study: Any) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def _eta(study: Any, n_trials: int, workers: int, deadline: float | None) -> str:
    """``7 of 20 finished, about 3.2 min left``: the mean duration of the finished trials
    times the missing ones over the workers, or the time to the deadline when that is sooner."""
    durations = [
        t.duration.total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.state.name in FINISHED_STATE_NAMES and t.duration is not None
    ]
    missing = max(0, n_trials - len(durations))
    left = sum(durations) / len(durations) * missing / max(1, workers) if durations else 0.0
    if deadline is not None:
        left = min(left, max(0.0, deadline - time.time()))
    shown = f"{left / 60:.1f} min" if left >= 90 else f"{left:.0f} s"
    return f"{len(durations)} of {n_trials} finished, about {shown} left"


class _TrialLogger:
    """Optuna callback: one INFO line per finished trial with the estimated time left;
    remembers the last state."""

    def __init__(self, job: Job, steps: Steps) -> None:
        self.metric = job.settings.metric
        self.steps = steps
        self.n_trials = job.settings.n_trials
        self.workers = job.settings.workers
        self.deadline = job.deadline
        self.last_state: str | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        self.last_state = trial.state.name
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        value = trial.value
        if trial.state.name == "PRUNED" and trial.intermediate_values:
            step = max(trial.intermediate_values)
            what = self.metric if self.steps.is_fold(step) else "val_loss"
            how = "stopped by the timeout" if trial.user_attrs.get("stopped") == "timeout" else ""
            detail = (
                f"{how or 'pruned'} at {self.steps.describe(step)}, "
                f"{what} {_fmt(trial.intermediate_values[step])}"
            )
        elif trial.state.name == "FAIL":
            detail = str(trial.user_attrs.get("error", "non-finite score"))
        else:
            detail = f"{self.metric} {_fmt(value)}"
        logger.info(
            "trial %d %s: %s; best so far %s (%.1f s; %s)",
            trial.number,
            trial.state.name,
            detail,
            _fmt(_best_value(study)),
            seconds,
            _eta(study, self.n_trials, self.workers, self.deadline),
        )


def _fail_stale(study: Any) -> None:
    import optuna

    optuna.storages.fail_stale_trials(study)


def _running_numbers(study: Any) -> set[int]:
    from optuna.trial import TrialState

    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def _fail_new_running(study: Any, before: set[int]) -> None:
    """After Ctrl-C while this worker held the gate: mark FAIL the trial it had started.

    Ctrl-C inside Optuna's ``ask`` (the trial row is written, the objective has not run yet)
    leaves a RUNNING trial that Optuna does not fail and that carries no ``worker`` tag, or the
    tag of the dead worker whose retry it is. While the gate is held no other worker starts a
    trial, so a RUNNING trial not in ``before`` is this worker's.
    """
    from optuna.trial import TrialState

    for number in sorted(_running_numbers(study) - before):
        with contextlib.suppress(Exception):
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            logger.info("marked trial %d, interrupted as it started, as FAIL", number)


def run_worker(job: Job, worker_index: int) -> None:
    """Run trials of the study until it has ``n_trials`` finished ones (or the deadline)."""
    import optuna

    s = job.settings
    storage = open_storage(job.storage, create=False)
    existing = optuna.load_study(study_name=job.study_name, storage=storage)
    # A different seed per worker and per resume: a resumed study does not redraw the
    # random start-up parameters its first trials already used.
    seed = s.trainer.seed + 1000 * worker_index + len(existing.trials)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    steps = job_steps(job)
    pruner = job.pruner if job.pruner is not None else make_pruner(s.pruner, steps)
    study = optuna.load_study(
        study_name=job.study_name, storage=storage, sampler=sampler, pruner=pruner
    )
    gate = TrialGate(job.storage, job.study_name)
    objective = make_objective(job, gate)
    on_trial = _TrialLogger(job, steps)
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
                counts = count_states(study)
                finished = n_finished(counts)
                if finished >= s.n_trials:
                    return
                wait = finished + counts["RUNNING"] >= s.n_trials
                if not wait:
                    on_trial.last_state = None
                    running = _running_numbers(study)
                    try:
                        study.optimize(objective, n_trials=1, callbacks=[on_trial])
                    except KeyboardInterrupt:
                        if gate.held:  # before the objective tagged the new trial
                            _fail_new_running(study, running)
                        raise
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


class Outcome(NamedTuple):
    """How one worker ended.

    ``status`` is ``ok``, ``interrupted``, ``error`` (a :class:`KallosError`: ``kind`` its
    class name, ``message`` its text, ``error`` the pickled exception or None when it does not
    pickle), ``crash`` (a bug: ``message`` the traceback) or ``died`` (no outcome came back:
    ``message`` the exit code).
    """

    worker: int
    status: str
    kind: str | None = None
    message: str | None = None
    error: bytes | None = None


def _error_outcome(index: int, exc: KallosError) -> Outcome:
    """The outcome of a worker stopped by ``exc``, the exception itself pickled when it can be."""
    payload: bytes | None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)  # a subclass whose __init__ takes other arguments fails here
        payload = pickled
    except Exception:
        payload = None
    return Outcome(index, "error", type(exc).__name__, str(exc), payload)


def _worker_process(
    job: Job, worker_index: int, log_queue: Any, result_queue: Any, level: int
) -> None:
    """Entry point of a spawned worker: run trials, report the :class:`Outcome` on
    ``result_queue``."""
    _install_queue_logging(log_queue, level)
    outcome: Outcome
    try:
        if job.torch_threads is not None:
            import torch

            torch.set_num_threads(job.torch_threads)
        with quiet(job.show_progress):
            run_worker(job, worker_index)
        outcome = Outcome(worker_index, "ok")
    except KeyboardInterrupt:
        outcome = Outcome(worker_index, "interrupted")
    except KallosError as exc:
        outcome = _error_outcome(worker_index, exc)
    except BaseException as exc:  # a bug: hand the traceback to the parent
        import traceback

        outcome = Outcome(worker_index, "crash", type(exc).__name__, traceback.format_exc())
    result_queue.put(outcome)


def _forward_logs(queue: Any) -> None:
    while True:
        record = queue.get()
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


def run_workers(job: Job, owners: set[str], n_workers: int) -> list[Outcome]:
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
    worker_job = replace_job(job, torch_threads=threads)
    processes = []
    host = socket.gethostname()
    own_outcome = Outcome(0, "ok")
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
                run_worker(worker_job, 0)
            except KallosError as exc:
                own_outcome = _error_outcome(0, exc)
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
    reported = {o.worker for o in outcomes}
    for index, p in enumerate(processes, start=1):
        if index not in reported:
            outcomes.append(Outcome(index, "died", None, f"exit code {p.exitcode}"))
    return sorted(outcomes, key=lambda o: o.worker)


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


def fail_owned_running(study: Any, owners: set[str]) -> list[int]:
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


def _worker_error(outcome: Outcome) -> KallosError:
    """The :class:`KallosError` a worker sent back, its message prefixed by ``worker N: ``.

    The pickled exception keeps its class (and attributes); one that did not pickle is rebuilt
    from its class name in :mod:`kallos_models.errors`, or as a plain :class:`KallosError`.
    """
    message = f"worker {outcome.worker}: {outcome.message}"
    if outcome.error is not None:
        try:
            exc = pickle.loads(outcome.error)
        except Exception:
            exc = None
        if isinstance(exc, KallosError):
            exc.args = (message,)
            return exc
    cls = getattr(errors, outcome.kind or "", KallosError)
    if not (isinstance(cls, type) and issubclass(cls, KallosError)):
        cls = KallosError
    return cls(message)


def raise_worker_errors(
    outcomes: list[Outcome], counts: Mapping[str, int], settings: TuneSettings
) -> None:
    """Re-raise the first worker's error or crash; complain when workers died too early.

    Raises
    ------
    KallosError
        A worker's :class:`KallosError` (same class, ``worker N: `` prefixed), or workers
        that died before the study had ``settings.n_trials`` finished trials.
    RuntimeError
        A worker crashed on a bug; the message holds its traceback.
    """
    for outcome in outcomes:
        if outcome.status == "error":
            raise _worker_error(outcome)
        if outcome.status == "crash":
            raise RuntimeError(
                f"tuning worker {outcome.worker} crashed with {outcome.kind}:\n{outcome.message}"
            )
    died = [f"worker {o.worker} ({o.message})" for o in outcomes if o.status == "died"]
    if died and n_finished(counts) < settings.n_trials:
        raise KallosError(
            f"{', '.join(died)} ended early; the study has {n_finished(counts)} of "
            f"{settings.n_trials} finished trials. Run the same command again to resume"
        )
