"""Pruning inside folds: the step numbering of a trial's reports, the pruners ``--pruner``
names, and the Lightning callback that reports each epoch's validation loss.

A trial reports two kinds of value to Optuna, never at the same step:

- during fold ``k``'s training, after epoch ``e`` (0-based), the best validation loss of that
  fit so far, at step ``k * (E + 1) + e`` (``E`` = ``max_epochs``); when early stopping ends
  the fit before epoch ``E``, its best loss is reported once more at the block's last epoch
  step ``k * (E + 1) + E - 1``, so every trial has a value of the same kind at that step;
- after fold ``k`` is scored, the fold's score (the tuning metric) at step ``k * (E + 1) + E``.

So the steps of one fold are ``E + 1`` apart and a step's kind never depends on the trial: a
pruner comparing trials at one step compares like with like. A regression model (no epochs)
has ``E = 0``: fold ``k`` reports its score at step ``k``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, get_args

from kallos_models.config import Pruner

#: The names ``--pruner`` takes.
PRUNERS: tuple[str, ...] = get_args(Pruner)
#: Completed trials a median pruner waits for before it prunes anything. They run in full, so
#: they are the floor of a pruned tune's time: with 5 a 20-trial tune measured 0.60x of the
#: unpruned one, with 3 0.24x (on the CPU space, a little wider than the first run's), the best
#: value within 0.4% both times (documentation/performance.md).
PRUNER_STARTUP_TRIALS = 3
#: Ratio between the rungs of a successive-halving or Hyperband pruner.
REDUCTION_FACTOR = 3


@dataclass(frozen=True)
class Steps:
    """The step numbering of one study (see the module docstring).

    Attributes
    ----------
    epochs
        ``E``: the most epochs of one fold's fit (0 for a model without epochs).
    n_splits
        Folds per trial.
    """

    epochs: int
    n_splits: int

    @property
    def stride(self) -> int:
        """Steps per fold: ``E + 1``."""
        return self.epochs + 1

    @property
    def last(self) -> int:
        """The last step of a trial (its last fold's score)."""
        return self.n_splits * self.stride - 1

    def epoch(self, fold: int, epoch: int) -> int:
        """The step of fold ``fold``'s epoch ``epoch`` (both 0-based)."""
        return fold * self.stride + epoch

    def fold(self, fold: int) -> int:
        """The step of fold ``fold``'s score."""
        return fold * self.stride + self.epochs

    def is_fold(self, step: int) -> bool:
        """Whether ``step`` holds a fold score (else an epoch's validation loss)."""
        return step % self.stride == self.epochs

    def describe(self, step: int) -> str:
        """``fold 2 epoch 7`` or ``fold 2`` (1-based, as the log shows them)."""
        fold, offset = divmod(step, self.stride)
        if offset == self.epochs:
            return f"fold {fold + 1}"
        return f"fold {fold + 1} epoch {offset + 1}"


class SameStepMedianPruner:
    """Prune a trial whose value at its latest step is worse than the median of the completed
    trials' values at that same step.

    Optuna's ``MedianPruner`` compares the best of *all* a trial's values with the others' at
    one step, which mixes validation losses with fold scores here; this one compares values
    of one kind only. Epoch steps before ``warmup_epochs`` within a fold are never pruned.
    """

    def __init__(self, steps: Steps, *, n_startup_trials: int, warmup_epochs: int) -> None:
        self.steps = steps
        self.n_startup_trials = n_startup_trials
        self.warmup_epochs = warmup_epochs

    def prune(self, study: Any, trial: Any) -> bool:
        """Optuna's pruner interface."""
        from optuna.trial import TrialState

        step = trial.last_step
        if step is None:
            return False
        if not self.steps.is_fold(step) and step % self.steps.stride < self.warmup_epochs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.n_startup_trials:
            return False
        others = sorted(
            t.intermediate_values[step]
            for t in completed
            if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])
        )
        if not others:
            return False
        middle = len(others) // 2
        median = others[middle] if len(others) % 2 else (others[middle - 1] + others[middle]) / 2
        return value > median


def make_pruner(name: str, steps: Steps) -> Any:
    """The pruner ``name`` (one of :data:`PRUNERS`) for a study numbered by ``steps``.

    ``median``: :class:`SameStepMedianPruner` after :data:`PRUNER_STARTUP_TRIALS` (3) completed
    trials, with a warm-up of a
    fifth of the epochs (1 to 5). ``halving``: Optuna's ``SuccessiveHalvingPruner`` from one
    epoch (rungs at 1, 3, 9, ... steps). ``hyperband``: Optuna's ``HyperbandPruner`` over
    steps 1 to the trial's last. ``none``: nothing is pruned (the values are still reported).
    """
    import optuna

    if name == "median":
        warmup = max(1, min(5, steps.epochs // 5)) if steps.epochs else 0
        return SameStepMedianPruner(
            steps, n_startup_trials=PRUNER_STARTUP_TRIALS, warmup_epochs=warmup
        )
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=REDUCTION_FACTOR
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=steps.last + 1, reduction_factor=REDUCTION_FACTOR
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    from kallos_models.errors import ConfigError

    raise ConfigError(f"pruner {name!r} is not one of {', '.join(PRUNERS)} (--pruner)")


def make_epoch_reporter(trial: Any, steps: Steps, fold: int, deadline: float | None) -> Any:
    """A Lightning callback reporting fold ``fold``'s best validation loss after each epoch to
    ``trial``; it stops the fit (``trainer.should_stop``) when the pruner says so or the
    tune's ``deadline`` (a ``time.time()``) has passed, and records why in ``stopped``."""
    import pytorch_lightning as pl

    class _EpochReporter(pl.Callback):
        def __init__(self) -> None:
            self.best = math.inf
            self.last_step: int | None = None
            self.stopped: str | None = None  # "pruned" or "timeout"

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or self.stopped is not None:
                return
            value = trainer.callback_metrics.get("val_loss")
            if value is None:
                return
            loss = float(value)
            self.best = loss if math.isnan(loss) else min(self.best, loss)
            epoch = min(int(trainer.current_epoch), steps.epochs - 1)
            self.report(steps.epoch(fold, epoch))
            if self.stopped is None and deadline is not None and time.time() >= deadline:
                self.stopped = "timeout"
            if self.stopped is not None:
                trainer.should_stop = True

        def report(self, step: int) -> None:
            """Report the best loss at ``step`` (once) and ask the pruner."""
            if self.last_step is not None and step <= self.last_step or math.isinf(self.best):
                return
            self.last_step = step
            trial.report(self.best, step=step)
            if trial.should_prune():
                self.stopped = "pruned"

        def finish(self) -> None:
            """After the fit: the best loss at the block's last epoch step (early stopping)."""
            if self.stopped is None:
                self.report(steps.epoch(fold, steps.epochs - 1))

    return _EpochReporter()
