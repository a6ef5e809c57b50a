"""Hyperparameter search with Optuna over walk-forward cross-validation.

One trial samples a parameter set from the model's search space and, for every walk-forward
fold, fits the preprocessing on the fold's training rows, trains the model with early stopping
on the fold's validation rows, forecasts the validation rows one bar ahead (rolling, prices) and
scores them with the chosen metric. The trial's value is the mean fold score. Every epoch's
validation loss and every fold's score are reported to Optuna (:mod:`.pruning` numbers the
steps) so the pruner can stop a clearly worse trial inside its first fold.

The study lives in an Optuna RDB storage: the data database by default (optionally in its own
PostgreSQL schema), or ``storage_url``. It is resumed by name, and only the trials still missing
run. ``workers > 1`` runs that many processes (spawn context) against one PostgreSQL storage;
the same command started on several machines cooperates the same way. Heartbeats turn the
trial of a killed worker into FAIL and queue it again.

The modules: :mod:`.api` (:func:`tune`), :mod:`.studies` (:func:`list_studies`), :mod:`.warm`
(warm starts from another study), :mod:`.storage` (the Optuna
storage and the trial gate), :mod:`.objective` (folds and the objective), :mod:`.workers` (the
trial loop and worker processes), :mod:`.reports` (params file and plots), :mod:`.quiet`
(library logs and warnings) and :mod:`.interrupts` (SIGTERM as Ctrl-C, a guarded clean-up).
``documentation/tuner.md`` describes the fold sizing, pruning, storage, workers, crash recovery,
interrupts and the output file. Optuna, Darts and torch are imported inside the functions that
need them, so importing this package stays cheap.
"""

from kallos_models.stages.tune.api import (
    TuneObserver,
    TuneResult,
    default_study_name,
    storage_url_for,
    tune,
)
from kallos_models.stages.tune.studies import list_studies

__all__ = [
    "TuneObserver",
    "TuneResult",
    "default_study_name",
    "list_studies",
    "storage_url_for",
    "tune",
]
