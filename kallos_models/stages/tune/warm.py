"""Warm starts: the best parameters of another study tried first (``--warm-start-from``).

A study of the same model on another asset or timeframe has already searched the same space;
its best few configurations are a better first guess than random ones. :func:`enqueue` queues
them (brought inside this study's ranges) as the study's next trials, marked ``warm_start``;
the sampler proposes the rest as usual. :func:`report` compares the best warm-started trial
with the best one the sampler proposed (the "cold" trials), which is how the warm start fared.

Queueing is idempotent: a configuration already queued or tried is not queued again, so the
same command re-run (or resumed after a crash) adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kallos_models.errors import ConfigError
from kallos_models.modelling.zoo.space import SearchSpace
from kallos_models.stage_settings import TuneSettings
from kallos_models.stages.tune.workers import count_states, n_finished

logger = logging.getLogger(__name__)

__all__ = ["WARM_TRIALS", "describe", "enqueue", "load_source", "report"]

#: How many of the source study's best configurations are queued.
WARM_TRIALS = 3

#: The trial user attribute that marks a warm-started trial (value: the source study's name).
MARK = "warm_start"


def load_source(storage: Any, name: str, settings: TuneSettings, study_name: str) -> Any:
    """The study ``name`` to warm-start study ``study_name`` from, checked before the study
    being tuned is created or any trial runs.

    Raises
    ------
    ConfigError
        ``name`` is the study being tuned, is not in ``storage`` (the message lists the
        studies there), tuned another model, or has no completed trial.
    """
    import optuna

    if name == study_name:
        raise ConfigError(
            f"--warm-start-from {name!r} is the study being tuned; name another study "
            "(kallos-run studies)"
        )
    names = sorted(s.study_name for s in storage.get_all_studies())
    if name not in names:
        raise ConfigError(
            f"--warm-start-from: no study {name!r} in the storage; the studies there: "
            f"{', '.join(names) or 'none'} (kallos-run studies)"
        )
    source = optuna.load_study(study_name=name, storage=storage)
    model = source.user_attrs.get("model_name")
    if model is not None and model != settings.model_name:
        raise ConfigError(
            f"--warm-start-from: study {name!r} tuned {model!r}, not {settings.model_name!r}; "
            f"its parameters do not fit this model. Warm-start from a {settings.model_name} "
            "study (another asset or timeframe)"
        )
    if not _complete(source):
        raise ConfigError(
            f"--warm-start-from: study {name!r} has no completed trial yet; tune it first or "
            "start cold"
        )
    return source


def _complete(study: Any) -> list[Any]:
    """The completed trials of ``study``, best (lowest) value first."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in trials if t.value is not None), key=lambda t: t.value)


def enqueue(
    study: Any, source: Any, settings: TuneSettings, space: Any, *, limit: int
) -> dict[str, Any]:
    """Queue the best configurations of ``source`` as ``study``'s next trials.

    Parameters
    ----------
    study : optuna.Study
        The study being tuned.
    source : optuna.Study
        From :func:`load_source`: the same model, any asset or timeframe.
    settings : TuneSettings
        This tune's settings (its timeframe).
    space : SearchSpace or callable
        This study's search space: a :class:`SearchSpace` brings each value inside its
        ranges on this timeframe (:meth:`SearchSpace.fit`); a custom callable takes the
        values as they are.
    limit : int
        Queue at most this many (the trials still to run); at most :data:`WARM_TRIALS`.

    Returns
    -------
    dict
        ``study_name`` (the source), ``n_trials`` (its finished trials: the configurations
        its search tried, which a Deflated Sharpe Ratio of this study's winner must count
        too), ``best_value``, ``queued`` (queued now) and ``adjusted`` (a note per value
        changed to fit this space). All but the last two are also stored on ``study`` as its
        ``warm_start`` attribute.
    """
    from optuna.trial import TrialState

    complete = _complete(source)
    chosen: list[dict[str, Any]] = []
    adjusted: list[str] = []
    for trial in complete:
        if len(chosen) >= min(WARM_TRIALS, limit):
            break
        params = dict(trial.params)
        if isinstance(space, SearchSpace):
            params, notes = space.fit(params, settings.timeframe)
            adjusted += [f"trial {trial.number}: {note}" for note in notes]
        if params and params not in chosen:
            chosen.append(params)
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for params in chosen:
        study.enqueue_trial(params, user_attrs={MARK: source.study_name}, skip_if_exists=True)
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before
    record = {
        "study_name": source.study_name,
        "n_trials": n_finished(count_states(source)),
        "best_value": float(complete[0].value),
    }
    study.set_user_attr(MARK, record)
    logger.info(
        "warm start from study %s (%d trials, best %.6g): %d of its best configuration(s) "
        "queued first%s",
        source.study_name,
        record["n_trials"],
        record["best_value"],
        queued,
        f"; fitted to this space: {'; '.join(adjusted)}" if adjusted else "",
    )
    return {**record, "queued": queued, "adjusted": adjusted}


def report(study: Any) -> dict[str, Any] | None:
    """How the warm start fared: the best warm-started trial against the best cold one.

    Returns
    -------
    dict or None
        None when the study was never warm-started. Else the source's ``study_name``,
        ``n_trials`` and ``best_value``, and this study's ``warm_trials``/``cold_trials``
        (completed), ``best_warm``/``best_cold`` (None without one) and ``best_is_warm``.
    """
    source = study.user_attrs.get(MARK)
    if not isinstance(source, Mapping):
        return None
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    warm = [t.value for t in complete if t.user_attrs.get(MARK) and t.value is not None]
    cold = [t.value for t in complete if not t.user_attrs.get(MARK) and t.value is not None]
    best_warm, best_cold = min(warm, default=None), min(cold, default=None)
    return {
        **dict(source),
        "warm_trials": len(warm),
        "cold_trials": len(cold),
        "best_warm": best_warm,
        "best_cold": best_cold,
        "best_is_warm": best_warm is not None and (best_cold is None or best_warm <= best_cold),
    }


def describe(outcome: Mapping[str, Any]) -> str:
    """:func:`report` as one log line."""

    def fmt(value: Any) -> str:
        return "none" if value is None else f"{value:.6g}"

    return (
        f"warm start from {outcome['study_name']}: best of the {outcome['warm_trials']} "
        f"warm-started trial(s) {fmt(outcome['best_warm'])}, of the {outcome['cold_trials']} "
        f"cold one(s) {fmt(outcome['best_cold'])}; the study's best is "
        f"{'warm-started' if outcome['best_is_warm'] else 'a cold trial'}"
    )
