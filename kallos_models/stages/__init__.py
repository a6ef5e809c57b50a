"""The stages of the pipeline: tune, train, evaluate.

Each stage takes its settings and returns a result object; none imports another stage, the
MLflow integration (:mod:`kallos_models.mlops`) or the CLI. Observers (tracking) are wired in
from above, by :mod:`kallos_models.pipeline`.
"""
