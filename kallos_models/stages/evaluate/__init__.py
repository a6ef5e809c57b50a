"""The evaluate stage: judge a bundle on a hold-out window (see :mod:`.holdout`)."""

from kallos_models.stages.evaluate.holdout import (
    DEFAULT_OUTPUT_PATH,
    EvaluationResult,
    evaluate_model,
)
from kallos_models.stages.evaluate.plot import plot_evaluation

__all__ = [
    "DEFAULT_OUTPUT_PATH",
    "EvaluationResult",
    "evaluate_model",
    "plot_evaluation",
]
