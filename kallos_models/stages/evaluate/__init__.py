"""The evaluate stage: judge a bundle on a hold-out window (see :mod:`.holdout`), fitted once
or refit every N bars through it (:mod:`.retrain`); a global model per asset of its basket,
then pooled (:mod:`.basket`)."""

from kallos_models.stages.evaluate.api import evaluate_model
from kallos_models.stages.evaluate.holdout import DEFAULT_OUTPUT_PATH, EvaluationResult
from kallos_models.stages.evaluate.plot import plot_evaluation
from kallos_models.stages.evaluate.retrain import retrain_backtest

__all__ = [
    "DEFAULT_OUTPUT_PATH",
    "EvaluationResult",
    "evaluate_model",
    "plot_evaluation",
    "retrain_backtest",
]
