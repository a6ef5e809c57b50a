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
    """

    name: str
    darts_class: str
    fixed_kwargs: Mapping[str, Any]
    defaults: Mapping[str, Any]
    search_space: Callable[[optuna.Trial, str], dict[str, Any]]
    description: str
    constraints: tuple[Constraint, ...] = field(default=())

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


def _spec(
    name: str,
    darts_class: str,
    description: str,
    *,
    space: Mapping[str, Tunable],
    defaults: Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None,
    constraints: tuple[Constraint, ...] = (),
) -> ModelSpec:
    """One model zoo entry: model-specific space and defaults on top of the common ones."""
    return ModelSpec(
        name=name,
        darts_class=darts_class,
        fixed_kwargs=MappingProxyType(dict(fixed or {})),
        defaults=MappingProxyType({**_COMMON_DEFAULTS, **defaults}),
        search_space=SearchSpace(MappingProxyType({**space, **_COMMON_SPACE})),
        description=description,
        constraints=constraints,
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
