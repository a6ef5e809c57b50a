"""The model zoo: one :class:`ModelSpec` per supported forecaster, in :data:`MODEL_ZOO`.

A spec is data (Darts class path, fixed kwargs, defaults, search space, constraints); nothing
here subclasses a Darts model or imports Darts. :func:`get_spec` looks a model up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from kallos_models.errors import ModelError
from kallos_models.modelling.zoo.space import Constraint, SearchSpace, Tunable

if TYPE_CHECKING:
    import optuna

__all__ = [
    "COMMON_FIXED_KWARGS",
    "DEFAULT_TRAINER_KWARGS",
    "MODEL_REGISTRY",
    "MODEL_ZOO",
    "ModelSpec",
    "get_spec",
    "model_names",
]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and tune one model.

    Parameters
    ----------
    name : str
        Model name (the key in :data:`MODEL_ZOO`), e.g. ``"gru"``.
    darts_class : str
        Dotted path of the Darts class, imported lazily, e.g. ``"darts.models.BlockRNNModel"``.
    fixed_kwargs : Mapping[str, Any]
        Always applied, merged over sampled or user parameters (``{"model": "GRU"}`` for gru).
        :data:`COMMON_FIXED_KWARGS` and the trainer kwargs are applied to every model on top.
    defaults : Mapping[str, Any]
        Hyperparameters used when a params mapping omits them.
    search_space : Callable[[optuna.Trial, str], dict[str, Any]]
        ``(trial, timeframe) -> sampled params`` (Darts names plus ``learning_rate``).
    description : str
        One line for ``kallos-run models``.
    constraints : tuple of Constraint, default ()
        Relations checked by :func:`~kallos_models.modelling.zoo.params.validate_params`
        before Darts sees the parameters.
    kind : str, default "torch"
        ``"torch"``: a deep Darts ``TorchForecastingModel`` (Lightning, epochs, a checkpoint
        file). ``"regression"``: a Darts regression model over lags (``LightGBMModel``,
        ``LinearRegressionModel``) whose ``input_chunk_length`` becomes ``lags`` and
        ``lags_past_covariates``; no epochs, no trainer, no checkpoint.
    estimator : str or None, default None
        For a regression model: the dotted path of the estimator Darts wraps (its
        ``get_params()`` names are accepted parameters), e.g. ``"lightgbm.LGBMRegressor"``.
    extra : str or None, default None
        The package extra the model needs (``pip install "kallos-models[lightgbm]"``), or
        None when the base install has it.
    """

    name: str
    darts_class: str
    fixed_kwargs: Mapping[str, Any]
    defaults: Mapping[str, Any]
    search_space: Callable[[optuna.Trial, str], dict[str, Any]]
    description: str
    constraints: tuple[Constraint, ...] = field(default=())
    kind: str = "torch"
    estimator: str | None = None
    extra: str | None = None

    @property
    def deep(self) -> bool:
        """Whether this is a deep (torch, Lightning-trained) model."""
        return self.kind == "torch"

    @property
    def cpu_search_space(self) -> Callable[[optuna.Trial, str], dict[str, Any]]:
        """The search space sized for a machine without a GPU: widths and depths capped by
        :data:`CPU_CAPS` (:meth:`SearchSpace.capped`); other spaces unchanged."""
        if not self.deep or not isinstance(self.search_space, SearchSpace):
            return self.search_space
        return self.search_space.capped(CPU_CAPS)

    @property
    def darts_class_name(self) -> str:
        """Last part of :attr:`darts_class`, e.g. ``"BlockRNNModel"``."""
        return self.darts_class.rsplit(".", 1)[-1]


# --------------------------------------------------------------------------------------------
# The model zoo
# --------------------------------------------------------------------------------------------

#: Applied to every model, over user and model-fixed values.
COMMON_FIXED_KWARGS: Mapping[str, Any] = MappingProxyType(
    {"save_checkpoints": False, "force_reset": True, "log_tensorboard": False}
)

#: Lightning trainer settings; the caller's ``trainer_kwargs`` are merged over them.
DEFAULT_TRAINER_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "accelerator": "auto",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }
)

#: The widest and deepest a deep model's tune samples on a machine without a GPU, by
#: parameter name (:attr:`ModelSpec.cpu_search_space`). A GRU of width 256 and 4 layers, in
#: the full space, costs about 65 s an epoch on 1,936 daily rows on 2 cores.
CPU_CAPS: Mapping[str, float] = MappingProxyType(
    {
        "hidden_dim": 64,
        "n_rnn_layers": 2,
        "d_model": 32,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dim_feedforward": 64,
        "num_filters": 16,
        "num_stacks": 3,
        "num_blocks": 2,
        "num_layers": 2,
        "layer_widths": 128,
        "hidden_size": 32,
        "lstm_layers": 1,
        "ff_size": 64,
        "decoder_output_dim": 16,
    }
)

_COMMON_DEFAULTS: dict[str, Any] = {
    "input_chunk_length": 30,
    "output_chunk_length": 1,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "n_epochs": 100,
}

_COMMON_SPACE: dict[str, Tunable] = {
    "batch_size": Tunable.choice(32, 64, 128),
    "input_chunk_length": Tunable.lookback(),
    "learning_rate": Tunable.real(1e-5, 1e-2, log=True),
}

_RNN_SPACE: dict[str, Tunable] = {
    "hidden_dim": Tunable.integer(32, 256, log=True),
    "n_rnn_layers": Tunable.integer(1, 4),
    "dropout": Tunable.real(0.0, 0.7),
}


#: Defaults shared by the regression models: the lookback and the forecast chunk.
_REGRESSION_DEFAULTS: dict[str, Any] = {"input_chunk_length": 30, "output_chunk_length": 1}


def _spec(
    name: str,
    darts_class: str,
    description: str,
    *,
    space: Mapping[str, Tunable],
    defaults: Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None,
    constraints: tuple[Constraint, ...] = (),
    estimator: str | None = None,
    extra: str | None = None,
) -> ModelSpec:
    """One model zoo entry: model-specific space and defaults on top of the common ones.

    With ``estimator`` it is a regression model over lags, whose common part is only the
    lookback (``input_chunk_length``) and the chunk; else a deep (torch) model.
    """
    regression = estimator is not None
    common_defaults = _REGRESSION_DEFAULTS if regression else _COMMON_DEFAULTS
    common_space = {"input_chunk_length": Tunable.lookback()} if regression else _COMMON_SPACE
    return ModelSpec(
        name=name,
        darts_class=darts_class,
        fixed_kwargs=MappingProxyType(dict(fixed or {})),
        defaults=MappingProxyType({**common_defaults, **defaults}),
        search_space=SearchSpace(MappingProxyType({**space, **common_space})),
        description=description,
        constraints=constraints,
        kind="regression" if regression else "torch",
        estimator=estimator,
        extra=extra,
    )


_SPECS: tuple[ModelSpec, ...] = (
    _spec(
        "gru",
        "darts.models.BlockRNNModel",
        "GRU encoder with a fully connected head (Darts BlockRNNModel, model='GRU').",
        space=_RNN_SPACE,
        defaults={"hidden_dim": 64, "n_rnn_layers": 2, "dropout": 0.2},
        fixed={"model": "GRU"},
    ),
    _spec(
        "lstm",
        "darts.models.BlockRNNModel",
        "LSTM encoder with a fully connected head (Darts BlockRNNModel, model='LSTM').",
        space=_RNN_SPACE,
        defaults={"hidden_dim": 64, "n_rnn_layers": 2, "dropout": 0.2},
        fixed={"model": "LSTM"},
    ),
    _spec(
        "transformer",
        "darts.models.TransformerModel",
        "Encoder-decoder Transformer over the lookback window.",
        space={
            "d_model": Tunable.choice(16, 32, 64),
            "nhead": Tunable.choice(2, 4),
            "num_encoder_layers": Tunable.integer(1, 3),
            "num_decoder_layers": Tunable.integer(1, 3),
            "dim_feedforward": Tunable.choice(32, 64, 128, 256),
            "dropout": Tunable.real(0.0, 0.5),
        },
        defaults={
            "d_model": 32,
            "nhead": 4,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "dim_feedforward": 128,
            "dropout": 0.1,
        },
        constraints=(Constraint("divides", "nhead", "d_model"),),
    ),
    _spec(
        "tcn",
        "darts.models.TCNModel",
        "Temporal convolutional network (dilated causal convolutions).",
        space={
            "kernel_size": Tunable.integer(2, 7),
            "num_filters": Tunable.integer(4, 32, log=True),
            "dilation_base": Tunable.integer(2, 4),
            "dropout": Tunable.real(0.0, 0.5),
        },
        defaults={"kernel_size": 3, "num_filters": 16, "dilation_base": 2, "dropout": 0.2},
        constraints=(
            Constraint("less_than", "kernel_size", "input_chunk_length"),
            Constraint("less_than", "output_chunk_length", "input_chunk_length"),
        ),
    ),
    _spec(
        "nbeats",
        "darts.models.NBEATSModel",
        "N-BEATS, generic architecture: stacks of fully connected blocks with residual links.",
        space={
            "num_stacks": Tunable.integer(2, 6),
            "num_blocks": Tunable.integer(1, 3),
            "num_layers": Tunable.integer(2, 4),
            "layer_widths": Tunable.choice(64, 128, 256),
            "dropout": Tunable.real(0.0, 0.3),
        },
        defaults={
            "num_stacks": 4,
            "num_blocks": 1,
            "num_layers": 4,
            "layer_widths": 128,
            "dropout": 0.0,
        },
    ),
    _spec(
        "nhits",
        "darts.models.NHiTSModel",
        "N-HiTS: N-BEATS-like stacks working at several sampling rates.",
        space={
            "num_stacks": Tunable.integer(2, 4),
            "num_blocks": Tunable.integer(1, 3),
            "num_layers": Tunable.integer(1, 3),
            "layer_widths": Tunable.choice(64, 128, 256, 512),
            "dropout": Tunable.real(0.0, 0.3),
        },
        defaults={
            "num_stacks": 3,
            "num_blocks": 1,
            "num_layers": 2,
            "layer_widths": 256,
            "dropout": 0.1,
        },
    ),
    _spec(
        "tft",
        "darts.models.TFTModel",
        "Temporal Fusion Transformer; a relative index stands in for future covariates.",
        space={
            "hidden_size": Tunable.choice(16, 32, 64),
            "lstm_layers": Tunable.integer(1, 2),
            "num_attention_heads": Tunable.choice(1, 2, 4),
            "dropout": Tunable.real(0.0, 0.3),
        },
        defaults={
            "hidden_size": 32,
            "lstm_layers": 1,
            "num_attention_heads": 4,
            "dropout": 0.1,
        },
        fixed={"add_relative_index": True},
    ),
    _spec(
        "tide",
        "darts.models.TiDEModel",
        "TiDE: MLP encoder-decoder with a temporal decoder.",
        space={
            "hidden_size": Tunable.choice(32, 64, 128, 256),
            "num_encoder_layers": Tunable.integer(1, 3),
            "num_decoder_layers": Tunable.integer(1, 3),
            "decoder_output_dim": Tunable.choice(4, 8, 16, 32),
            "dropout": Tunable.real(0.0, 0.5),
        },
        defaults={
            "hidden_size": 128,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "decoder_output_dim": 16,
            "dropout": 0.1,
        },
    ),
    _spec(
        "tsmixer",
        "darts.models.TSMixerModel",
        "TSMixer: MLPs mixing along time and along features.",
        space={
            "hidden_size": Tunable.choice(16, 32, 64, 128),
            "ff_size": Tunable.choice(16, 32, 64, 128),
            "num_blocks": Tunable.integer(1, 4),
            "dropout": Tunable.real(0.0, 0.5),
        },
        defaults={"hidden_size": 64, "ff_size": 64, "num_blocks": 2, "dropout": 0.1},
    ),
    _spec(
        "dlinear",
        "darts.models.DLinearModel",
        "DLinear: linear layers on a moving-average trend and the remainder.",
        space={"kernel_size": Tunable.integer(3, 25)},
        defaults={"kernel_size": 7},
    ),
    _spec(
        "nlinear",
        "darts.models.NLinearModel",
        "NLinear: one linear layer on the window minus its last value.",
        space={},
        defaults={},
    ),
    _spec(
        "linear",
        "darts.models.LinearRegressionModel",
        "Linear regression (least squares) on lags of the target and the past covariates.",
        space={},
        defaults={},
        estimator="sklearn.linear_model.LinearRegression",
    ),
    _spec(
        "lightgbm",
        "darts.models.LightGBMModel",
        "Gradient-boosted trees (LightGBM) on lags of the target and the past covariates.",
        space={
            "n_estimators": Tunable.integer(50, 800, log=True),
            "learning_rate": Tunable.real(0.01, 0.3, log=True),
            "num_leaves": Tunable.integer(4, 64, log=True),
            "min_child_samples": Tunable.integer(5, 100, log=True),
            "colsample_bytree": Tunable.real(0.3, 1.0),
            "reg_lambda": Tunable.real(1e-3, 10.0, log=True),
        },
        defaults={
            "n_estimators": 200,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": 20,
            "colsample_bytree": 0.8,
            "reg_lambda": 1.0,
        },
        # quiet (LightGBM prints to stdout otherwise) and the same trees for the same seed
        fixed={"verbose": -1, "deterministic": True, "force_row_wise": True},
        estimator="lightgbm.LGBMRegressor",
        extra="lightgbm",
    ),
)

#: The model zoo: model name -> spec. Adding a model is adding one entry to ``_SPECS``.
MODEL_ZOO: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
#: Former name of :data:`MODEL_ZOO` (the same dict), kept for existing imports. Not the
#: MLflow model registry.
MODEL_REGISTRY: dict[str, ModelSpec] = MODEL_ZOO


def model_names() -> list[str]:
    """Names of the models in the zoo, sorted.

    Returns
    -------
    list of str
    """
    return sorted(MODEL_ZOO)


def get_spec(model_name: str) -> ModelSpec:
    """The model zoo entry of ``model_name``.

    Parameters
    ----------
    model_name : str
        Model name (the key in :data:`MODEL_ZOO`), e.g. ``"gru"``.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelError
        ``unknown model 'x'; available: dlinear, gru, ...``.
    """
    spec = MODEL_ZOO.get(model_name)
    if spec is None:
        raise ModelError(f"unknown model {model_name!r}; available: {', '.join(model_names())}")
    return spec
