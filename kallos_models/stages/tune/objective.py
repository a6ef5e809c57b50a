"""One trial's work: the :class:`Job` a worker runs, the walk-forward folds and the objective
that fits, forecasts and scores every fold."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from kallos_models.data import datasets
from kallos_models.errors import ConfigError, DataError, ModelError
from kallos_models.modelling import basket, series, zoo
from kallos_models.stage_settings import TuneSettings
from kallos_models.stages.tune.pruning import Steps, make_epoch_reporter
from kallos_models.stages.tune.storage import StorageSpec, TrialGate

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

SearchSpaceFn = Callable[[Any, str], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """Everything one worker needs; pickled to spawned workers."""

    settings: TuneSettings
    frame: pd.DataFrame  # one asset's rows; for a basket the calendar the folds are cut on
    n_splits: int
    val_size: int
    min_train_size: int
    max_lookback: int
    storage: StorageSpec
    study_name: str
    search_space: SearchSpaceFn | None
    pruner: Any  # an Optuna pruner, or None: the one ``settings.pruner`` names
    show_progress: bool
    deadline: float | None
    torch_threads: int | None = None
    #: A basket's rows by asset (a global model); None for one asset.
    frames: dict[str, pd.DataFrame] | None = None


def replace_job(job: Job, **changes: Any) -> Job:
    """``job`` with ``changes`` (a deadline, a torch thread count)."""
    return dataclasses.replace(job, **changes)


def job_steps(job: Job) -> Steps:
    """The step numbering of ``job``'s reports (:mod:`.pruning`)."""
    deep = zoo.get_spec(job.settings.model_name).deep
    return Steps(epochs=job.settings.trainer.max_epochs if deep else 0, n_splits=job.n_splits)


def owner_tag() -> str:
    """``host:pid`` of this process, stored on the trials it starts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _fold_score(metrics: Mapping[str, Any], metric: str) -> float:
    value = metrics.get("rmse_ratio") if metric == "rmse_rel_naive" else metrics.get(metric)
    return float("nan") if value is None else float(value)


def calendar(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The period every asset of a basket covers (its first asset's rows there): the folds
    are cut on it, so each fold splits all assets at the same dates."""
    start = max(frame.index[0] for frame in frames.values())
    end = min(frame.index[-1] for frame in frames.values())
    if start > end:
        first = min(frames, key=lambda a: frames[a].index[-1])
        last = max(frames, key=lambda a: frames[a].index[0])
        raise DataError(
            f"the basket's assets share no period: {first}'s rows end at "
            f"{frames[first].index[-1]}, before {last}'s start at {frames[last].index[0]}; "
            "tune assets whose histories overlap"
        )
    return next(iter(frames.values())).loc[start:end]


def folds(job: Job) -> list[dict[str, tuple[pd.DataFrame, pd.DataFrame]]]:
    """Each fold's training and validation rows, by asset, ``settings.gap`` bars apart (the
    purged bars are neither fitted nor scored; they are forecast inputs only). A basket's
    validation rows are those of the calendar fold's dates; each asset trains on all its rows
    up to the gap before them."""
    gap = job.settings.gap
    splits = datasets.get_walk_forward_splits(
        job.frame, job.n_splits, job.val_size, min_train_size=job.min_train_size, gap=gap
    )
    if job.frames is None:
        return [{job.settings.asset_id: split} for split in splits]
    out = []
    for _, val_ref in splits:
        start, end = val_ref.index[0], val_ref.index[-1]
        parts = {}
        for asset, f in job.frames.items():
            before = f.loc[f.index < start]
            parts[asset] = (before.iloc[: len(before) - gap], f.loc[start:end])
        out.append(parts)
    return out


def asset_frame(job: Job, asset: str) -> pd.DataFrame:
    """All the tuning rows of ``asset`` (a fold's forecast inputs come from them)."""
    return job.frame if job.frames is None else job.frames[asset]


def prepare(job: Job, parts: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]) -> Any:
    """The fold's preprocessing fitted on each asset's training rows and its series. The gap's
    bars are transformed with the validation rows (they are the inputs of its first windows)
    and then cut from the validation target that early stopping scores."""
    contiguous = {}
    for asset, (train, val) in parts.items():
        frame = asset_frame(job, asset)
        contiguous[asset] = (train, frame.loc[frame.index > train.index[-1]].loc[: val.index[-1]])
    start = next(iter(parts.values()))[1].index[0]  # a basket's folds share their dates
    if job.frames is None:
        ((train_df, val_df),) = contiguous.values()
        return _from(start, series.prepare_from_settings(job.settings.features, train_df, val_df))
    prepared = basket.prepare_basket(
        contiguous,
        job.settings.features,
        static_covariates=zoo.supports_static_covariates(job.settings.model_name),
    )
    return dataclasses.replace(
        prepared, parts={a: _from(start, p) for a, p in prepared.parts.items()}
    )


def _from(start: pd.Timestamp, prepared: series.PreparedSeries) -> series.PreparedSeries:
    """``prepared`` with its validation target starting at ``start`` (after the gap)."""
    target = prepared.val_target
    if target is None or target.start_time() >= start:
        return prepared
    return dataclasses.replace(prepared, val_target=target.slice(start, target.end_time()))


def _score_asset(
    model: Any, preprocessor: Any, asset: str, frame: pd.DataFrame, val_df: pd.DataFrame
) -> dict[str, Any]:
    """One asset's one-step forecasts of its fold's validation rows, scored against naive;
    their inputs are the rows of ``frame`` before them (the gap's bars included)."""
    from kallos_models.modelling import forecasting, metrics

    own = (
        preprocessor.member(asset)
        if isinstance(preprocessor, basket.BasketPreprocessor)
        else preprocessor
    )
    needed = forecasting.lookback_bars(
        forecasting.model_chunk_lengths(model)[0], 1, own.target_transform
    )
    context = pd.concat([frame.loc[frame.index < val_df.index[0]].iloc[-needed:], val_df])
    forecasts = forecasting.rolling_forecasts(model, own, context, start=val_df.index[0], horizon=1)
    return metrics.compute_metrics(
        forecasts["actual"].to_numpy(),
        forecasts["forecast"].to_numpy(),
        forecasts["naive"].to_numpy(),
        origin=forecasts["origin_close"].to_numpy(),
        horizon=1,
    )


def make_objective(job: Job, gate: TrialGate) -> Callable[[Any], float]:
    """The Optuna objective of ``job``: the mean fold score of one sampled parameter set.

    Each epoch's best validation loss and each fold's score are reported (steps numbered by
    :class:`.pruning.Steps`) so the pruner can stop the trial inside a fold; past the tune's
    deadline the trial is pruned at its next epoch or fold. A model error or a non-finite
    score makes the trial's value NaN (a FAIL).
    """
    import optuna

    from kallos_models.modelling import fitting

    s = job.settings
    spec = zoo.get_spec(s.model_name)
    space = job.search_space or spec.search_space
    fold_parts = folds(job)
    steps = job_steps(job)
    trainer_kwargs = fitting.build_trainer_kwargs(
        accelerator=s.trainer.accelerator,
        devices=s.trainer.devices,
        precision=s.trainer.precision,
        show_progress=job.show_progress,
    )
    owner = owner_tag()

    def objective(trial: optuna.Trial) -> float:
        # tagged first: until the gate is released, a RUNNING trial without this tag that the
        # worker did not see before it asked is its own (see workers.run_worker)
        trial.set_user_attr("worker", owner)
        gate.release()  # the trial is RUNNING in the storage: other workers may count it
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
        by_asset: dict[str, list[float]] = {asset: [] for asset in fold_parts[0]}
        first = [next(iter(parts.values())) for parts in fold_parts]
        trial.set_user_attr("fold_train_sizes", [len(tr) for tr, _ in first])
        trial.set_user_attr("fold_val_sizes", [len(va) for _, va in first])
        trial.set_user_attr("fold_val_starts", [str(va.index[0]) for _, va in first])

        def record() -> None:
            trial.set_user_attr("fold_scores", scores)
            trial.set_user_attr("best_epochs", best_epochs)
            trial.set_user_attr("epochs_run", epochs_run)
            trial.set_user_attr("fold_seconds", [round(x, 3) for x in fold_seconds])
            if job.frames is not None:  # a basket: each asset's own fold scores and mean
                trial.set_user_attr("asset_fold_scores", by_asset)
                trial.set_user_attr(
                    "asset_scores",
                    {a: sum(v) / len(v) if v else None for a, v in by_asset.items()},
                )
            if best_epochs:
                trial.set_user_attr("n_epochs", max(1, round(sum(best_epochs) / len(best_epochs))))

        def stop(why: str, where: str) -> optuna.TrialPruned:
            trial.set_user_attr("stopped", why)
            record()
            if why == "timeout":
                return optuna.TrialPruned(f"stopped by the timeout at {where}")
            return optuna.TrialPruned(f"pruned at {where}")

        for index, parts in enumerate(fold_parts):
            if index and job.deadline is not None and time.time() >= job.deadline:
                raise stop("timeout", f"the start of fold {index + 1}")
            started = time.perf_counter()
            prepared = prepare(job, parts)
            reporter = make_epoch_reporter(trial, steps, index, job.deadline) if spec.deep else None
            try:
                # Lightning turns Ctrl-C in a fit or a predict into sys.exit(1); this makes it a
                # KeyboardInterrupt again, which Optuna turns into a FAIL and re-raises
                with fitting.surface_interrupts():
                    fit = fitting.fit_forecaster(
                        s.model_name,
                        params,
                        prepared,
                        max_epochs=s.trainer.max_epochs,
                        seed=s.trainer.seed,
                        trainer_kwargs=trainer_kwargs,
                        extra_callbacks=() if reporter is None else (reporter,),
                    )
                    if reporter is not None:
                        reporter.finish()
                        if reporter.stopped is not None:
                            assert reporter.last_step is not None
                            raise stop(reporter.stopped, steps.describe(reporter.last_step))
                    asset_scores = {
                        asset: _fold_score(
                            _score_asset(
                                fit.model,
                                prepared.preprocessor,
                                asset,
                                asset_frame(job, asset),
                                val_rows,
                            ),
                            s.metric,
                        )
                        for asset, (_, val_rows) in parts.items()
                    }
            except ModelError as exc:  # e.g. a diverged model forecasting NaN
                logger.warning("trial %d fold %d failed: %s", trial.number, index + 1, exc)
                trial.set_user_attr("error", str(exc))
                record()
                return float("nan")
            for asset, value in asset_scores.items():
                by_asset[asset].append(value)
            # a basket's fold score: the mean of its assets' scale-free scores
            score = sum(asset_scores.values()) / len(asset_scores)
            scores.append(score)
            if spec.deep:  # a regression model has no epochs to record
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
            trial.report(score, step=steps.fold(index))
            if trial.should_prune():
                raise stop("pruned", f"fold {index + 1}/{len(fold_parts)}")
        return float(sum(scores) / len(scores))

    return objective
