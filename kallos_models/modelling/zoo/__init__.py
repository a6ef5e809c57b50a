"""The model zoo: name -> Darts class, fixed kwargs, defaults and Optuna search space.

Each supported forecaster is one :class:`ModelSpec` entry in :data:`MODEL_ZOO` (also importable
under its former name ``MODEL_REGISTRY``; this is unrelated to the MLflow model registry).
Nothing here subclasses a Darts model: a spec is data, and :func:`create_model` turns a spec
plus a parameter mapping into a Darts model: a ``TorchForecastingModel`` (the deep models) or a
regression model over lags (``linear``, ``lightgbm``; ``ModelSpec.kind == "regression"``).

Parameter names are Darts' own constructor names (``hidden_dim``, ``n_rnn_layers``,
``d_model``, ``batch_size``, ``input_chunk_length``, ...) plus ``learning_rate``, which is
passed to Darts as ``optimizer_kwargs={"lr": learning_rate}``.

The package is split by what its parts do:

- :mod:`~kallos_models.modelling.zoo.space`: timeframes, lookback ranges and the search-space
  data classes (:class:`Tunable`, :class:`SearchSpace`, :class:`Constraint`);
- :mod:`~kallos_models.modelling.zoo.specs`: :class:`ModelSpec`, the table of models,
  :func:`model_names` and :func:`get_spec`;
- :mod:`~kallos_models.modelling.zoo.params`: :func:`validate_params`, :func:`create_model`,
  :func:`list_models` and :func:`max_input_chunk_length`.

Every public name is re-exported here. Darts and torch are imported only inside the functions
that build or inspect a model, so importing this package stays cheap (``kallos-run --help``
must answer at once).
"""

from __future__ import annotations

from kallos_models.modelling.zoo.params import (
    chunk_lengths,
    create_model,
    list_models,
    max_input_chunk_length,
    supports_static_covariates,
    validate_params,
)
from kallos_models.modelling.zoo.space import (
    LOOKBACK_DAYS,
    LOOKBACK_MAX_BARS,
    LOOKBACK_MIN_BARS,
    Constraint,
    SearchSpace,
    Tunable,
    bars_per_day,
    lookback_range,
)
from kallos_models.modelling.zoo.specs import (
    COMMON_FIXED_KWARGS,
    DEFAULT_TRAINER_KWARGS,
    MODEL_REGISTRY,
    MODEL_ZOO,
    ModelSpec,
    get_spec,
    model_names,
)

__all__ = [
    "COMMON_FIXED_KWARGS",
    "DEFAULT_TRAINER_KWARGS",
    "LOOKBACK_DAYS",
    "LOOKBACK_MAX_BARS",
    "LOOKBACK_MIN_BARS",
    "MODEL_REGISTRY",
    "MODEL_ZOO",
    "Constraint",
    "ModelSpec",
    "SearchSpace",
    "Tunable",
    "bars_per_day",
    "chunk_lengths",
    "create_model",
    "get_spec",
    "list_models",
    "lookback_range",
    "max_input_chunk_length",
    "model_names",
    "supports_static_covariates",
    "validate_params",
]
