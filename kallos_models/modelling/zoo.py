"""Model registry: name -> Darts class, fixed kwargs, defaults and Optuna search space.

Each supported forecaster is one :class:`ModelSpec` entry in :data:`MODEL_REGISTRY`. Nothing
here subclasses a Darts model: a spec is data, and :func:`create_model` turns a spec plus a
parameter mapping into a Darts ``TorchForecastingModel``.

Parameter names are Darts' own constructor names (``hidden_dim``, ``n_rnn_layers``,
``d_model``, ``batch_size``, ``input_chunk_length``, ...) plus ``learning_rate``, which is
passed to Darts as ``optimizer_kwargs={"lr": learning_rate}``.

Darts and torch are imported only inside the functions that build or inspect a model, so
importing this module stays cheap (``kallos-run --help`` must answer at once).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from kallos_models.config import timeframe_to_timedelta
from kallos_models.errors import ModelError

if TYPE_CHECKING:
    import optuna
    from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel

logger = logging.getLogger(__name__)

__all__ = [
    "COMMON_FIXED_KWARGS",
    "DEFAULT_TRAINER_KWARGS",
    "LOOKBACK_DAYS",
    "LOOKBACK_MAX_BARS",
    "LOOKBACK_MIN_BARS",
    "MODEL_REGISTRY",
    "Constraint",
    "ModelSpec",
    "SearchSpace",
    "Tunable",
    "bars_per_day",
    "create_model",
    "get_spec",
    "list_models",
    "lookback_range",
    "max_input_chunk_length",
    "model_names",
    "validate_params",
]

# --------------------------------------------------------------------------------------------
# Timeframes and lookback
# --------------------------------------------------------------------------------------------

#: Lookback searched on daily bars, in days (inclusive bounds).
LOOKBACK_DAYS: tuple[int, int] = (30, 70)
#: Smallest lookback, in bars, on any timeframe.
LOOKBACK_MIN_BARS = 8
#: Largest lookback, in bars, on any timeframe.
LOOKBACK_MAX_BARS = 512


def bars_per_day(timeframe: str) -> float:
    """Number of bars of ``timeframe`` in one day.

    Parameters
    ----------
    timeframe : str
        Bar length as ``<number><unit>``, unit one of ``m`` (minutes), ``h`` (hours),
        ``d`` (days), ``w`` (weeks): ``"15m"``, ``"1h"``, ``"4h"``, ``"1d"``, ``"1w"``.

    Returns
    -------
    float
        ``"1d"`` -> 1.0, ``"4h"`` -> 6.0, ``"2h"`` -> 12.0, ``"1h"`` -> 24.0,
        ``"15m"`` -> 96.0, ``"1w"`` -> 1/7.

    Raises
    ------
    ConfigError
        If ``timeframe`` is not of the accepted form; the message names the accepted forms.
    """
    return 86400.0 / timeframe_to_timedelta(timeframe).total_seconds()


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def lookback_range(timeframe: str) -> tuple[int, int]:
    """Bounds, in bars, of the ``input_chunk_length`` a search space samples.

    On daily bars the range is ``LOOKBACK_DAYS`` = (30, 70) bars. Other timeframes keep the
    same number of *days*: each bound is multiplied by :func:`bars_per_day` and rounded
    (half up), then clamped to ``[LOOKBACK_MIN_BARS, LOOKBACK_MAX_BARS]`` = [8, 512] bars.
    So ``"4h"`` -> (180, 420), ``"2h"`` -> (360, 512), ``"1h"`` -> (512, 512),
    ``"1w"`` -> (8, 10).

    Parameters
    ----------
    timeframe : str
        Bar length, see :func:`bars_per_day`.

    Returns
    -------
    tuple of (int, int)
        Inclusive lower and upper bound, in bars.

    Raises
    ------
    ConfigError
        If ``timeframe`` is not understood.
    """
    per_day = bars_per_day(timeframe)
    low, high = (
        min(max(_round_half_up(days * per_day), LOOKBACK_MIN_BARS), LOOKBACK_MAX_BARS)
        for days in LOOKBACK_DAYS
    )
    return low, high


# --------------------------------------------------------------------------------------------
# Search spaces as data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tunable:
    """One tunable hyperparameter range, used both to sample and to describe it.

    Build with :meth:`integer`, :meth:`real`, :meth:`choice` or :meth:`lookback`.

    Parameters
    ----------
    kind : {"int", "float", "choice", "lookback"}
        ``"lookback"`` is an int range whose bounds come from :func:`lookback_range`.
    low, high : float or None, default None
        Inclusive bounds of ``"int"`` and ``"float"`` ranges.
    log : bool, default False
        Sample on a log scale.
    choices : tuple, default ()
        Values of a ``"choice"``.
    """

    kind: Literal["int", "float", "choice", "lookback"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def integer(cls, low: int, high: int, *, log: bool = False) -> Tunable:
        """Int range ``low..high`` inclusive (log scale if ``log``, default False)."""
        return cls("int", low, high, log)

    @classmethod
    def real(cls, low: float, high: float, *, log: bool = False) -> Tunable:
        """Float range ``low..high`` (log scale if ``log``, default False)."""
        return cls("float", float(low), float(high), log)

    @classmethod
    def choice(cls, *choices: Any) -> Tunable:
        """One of ``choices``."""
        return cls("choice", choices=tuple(choices))

    @classmethod
    def lookback(cls) -> Tunable:
        """Int range given by :func:`lookback_range` of the timeframe."""
        return cls("lookback")

    def bounds(self, timeframe: str) -> tuple[Any, Any]:
        """Smallest and largest value this range can yield on ``timeframe``."""
        if self.kind == "lookback":
            return lookback_range(timeframe)
        if self.kind == "choice":
            return min(self.choices), max(self.choices)
        return self.low, self.high

    def sample(self, trial: optuna.Trial, name: str, timeframe: str) -> Any:
        """Ask ``trial`` for a value of parameter ``name``."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        low, high = self.bounds(timeframe)
        if self.kind == "float":
            return trial.suggest_float(name, low, high, log=self.log)
        return trial.suggest_int(name, int(low), int(high), log=self.log)

    def describe(self, timeframe: str) -> str:
        """Range as text: ``"int 1..4"``, ``"float 1e-05..0.01 log"``, ``"choice [32, 64]"``."""
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        low, high = self.bounds(timeframe)
        kind = "int" if self.kind == "lookback" else self.kind
        return f"{kind} {low}..{high}" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    """A model's search space: parameter name -> :class:`Tunable`.

    Calling it with ``(trial, timeframe)`` samples every parameter, in order, and returns
    ``{name: value}``; it is what :attr:`ModelSpec.search_space` holds for every built-in
    model.
    """

    params: Mapping[str, Tunable]

    def __call__(self, trial: optuna.Trial, timeframe: str) -> dict[str, Any]:
        """Sample every parameter from ``trial``; lookback bounds follow ``timeframe``."""
        return {
            name: tunable.sample(trial, name, timeframe) for name, tunable in self.params.items()
        }

    def describe(self, timeframe: str) -> dict[str, str]:
        """``{name: range as text}``, see :meth:`Tunable.describe`."""
        return {name: tunable.describe(timeframe) for name, tunable in self.params.items()}


@dataclass(frozen=True)
class Constraint:
    """A relation between two parameters that Darts would otherwise reject late (or never).

    Parameters
    ----------
    kind : {"less_than", "divides"}
        ``"less_than"``: ``left < right``. ``"divides"``: ``right % left == 0``.
    left, right : str
        Parameter names.
    """

    kind: Literal["less_than", "divides"]
    left: str
    right: str

    def describe(self) -> str:
        """The rule as text, e.g. ``"kernel_size < input_chunk_length"``."""
        if self.kind == "less_than":
            return f"{self.left} < {self.right}"
        return f"{self.right} % {self.left} == 0"

    def violated(self, kwargs: Mapping[str, Any]) -> bool:
        """True when both parameters are set and the rule does not hold."""
        left, right = kwargs.get(self.left), kwargs.get(self.right)
        if not isinstance(left, numbers.Real) or not isinstance(right, numbers.Real):
            return False
        if self.kind == "less_than":
            return not left < right
        return left == 0 or right % left != 0


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and tune one model.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"gru"``.
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
        Relations checked by :func:`validate_params` before Darts sees the parameters.
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
# The registry
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
    """One registry entry: model-specific space and defaults on top of the common ones."""
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

#: Registry key -> spec. Adding a model is adding one entry to ``_SPECS``.
MODEL_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def model_names() -> list[str]:
    """Registered model names, sorted.

    Returns
    -------
    list of str
    """
    return sorted(MODEL_REGISTRY)


def get_spec(model_name: str) -> ModelSpec:
    """The registry entry of ``model_name``.

    Parameters
    ----------
    model_name : str
        Registry key, e.g. ``"gru"``.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelError
        ``unknown model 'x'; available: dlinear, gru, ...``.
    """
    spec = MODEL_REGISTRY.get(model_name)
    if spec is None:
        raise ModelError(f"unknown model {model_name!r}; available: {', '.join(model_names())}")
    return spec


# --------------------------------------------------------------------------------------------
# Parameter validation and model construction
# --------------------------------------------------------------------------------------------

# Set by create_model's own arguments or by Darts internally; never a user parameter.
_INTERNAL_PARAMS = frozenset({"self", "args", "kwargs", "train_sample_shape"})
_POSITIVE_INT_PARAMS = ("input_chunk_length", "output_chunk_length", "batch_size", "n_epochs")


def _import_darts_class(darts_class: str) -> Any:
    module_name, _, class_name = darts_class.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


@cache
def _accepted_params(darts_class: str) -> frozenset[str]:
    """Keyword names the Darts class accepts, found the way Darts itself validates them.

    The ``__init__`` of the class and of every base class, plus the ``PLForecastingModule``
    kwargs (``optimizer_kwargs``, ``loss_fn``, ``likelihood``, ...), plus ``learning_rate``.
    """
    from darts.models.forecasting.pl_forecasting_module import PLForecastingModule

    names = set(inspect.signature(PLForecastingModule.__init__).parameters)
    for base in inspect.getmro(_import_darts_class(darts_class)):
        if base is object:
            break
        names.update(inspect.signature(base.__init__).parameters)  # type: ignore[misc]
    return frozenset((names - _INTERNAL_PARAMS) | {"learning_rate"})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_values(spec: ModelSpec, kwargs: Mapping[str, Any]) -> None:
    prefix = f"model {spec.name!r}:"
    for name in _POSITIVE_INT_PARAMS:
        if name in kwargs and not (_is_int(kwargs[name]) and int(kwargs[name]) >= 1):
            raise ModelError(f"{prefix} {name} must be an integer >= 1, got {kwargs[name]!r}")
    optimizer_kwargs = kwargs.get("optimizer_kwargs") or {}
    if not isinstance(optimizer_kwargs, Mapping):
        raise ModelError(f"{prefix} optimizer_kwargs must be a mapping, got {optimizer_kwargs!r}")
    lr = optimizer_kwargs.get("lr")
    if lr is not None and not (_is_number(lr) and 0 < float(lr) < math.inf):
        raise ModelError(f"{prefix} learning_rate must be a number > 0, got {lr!r}")
    dropout = kwargs.get("dropout")
    if dropout is not None and not (_is_number(dropout) and 0 <= float(dropout) < 1):
        raise ModelError(f"{prefix} dropout must be a number in [0, 1), got {dropout!r}")
    for constraint in spec.constraints:
        if constraint.violated(kwargs):
            raise ModelError(
                f"{prefix} parameters must satisfy {constraint.describe()}; got "
                f"{constraint.left}={kwargs[constraint.left]!r}, "
                f"{constraint.right}={kwargs[constraint.right]!r}"
            )


def _apply_fixed(merged: dict[str, Any], fixed: Mapping[str, Any], model_name: str) -> None:
    for name, value in fixed.items():
        if name in merged and merged[name] != value:
            logger.warning(
                "model %r: parameter %s=%r is replaced by the fixed value %r",
                model_name,
                name,
                merged[name],
                value,
            )
        merged[name] = value


def validate_params(
    model_name: str,
    params: Mapping[str, Any],
    *,
    trainer_kwargs: Mapping[str, Any] | None = None,
    random_state: int | None = None,
    n_epochs: int | None = None,
) -> dict[str, Any]:
    """Check ``params`` for ``model_name`` and return the full Darts constructor kwargs.

    Merge order, later wins: the spec's defaults, ``params``, the ``n_epochs`` and
    ``random_state`` arguments (when not None), the spec's fixed kwargs,
    :data:`COMMON_FIXED_KWARGS`, and ``pl_trainer_kwargs`` built from
    :data:`DEFAULT_TRAINER_KWARGS` with ``trainer_kwargs`` merged over them. A user value
    that a fixed value replaces is logged as a warning. ``learning_rate`` becomes
    ``optimizer_kwargs["lr"]`` (merged into any ``optimizer_kwargs`` given); when ``params``
    already carries ``optimizer_kwargs["lr"]`` and no ``learning_rate``, the default
    ``learning_rate`` is not applied, so the returned kwargs validate again unchanged.

    Parameters
    ----------
    model_name : str
        Registry key.
    params : Mapping[str, Any]
        Darts constructor names plus ``learning_rate`` and ``n_epochs``.
    trainer_kwargs : Mapping[str, Any] or None, default None
        Lightning trainer kwargs (``callbacks``, ``accelerator``, ``devices``, ``precision``,
        ...) merged over :data:`DEFAULT_TRAINER_KWARGS`.
    random_state : int or None, default None
        Seed passed to Darts; overrides ``params["random_state"]`` when not None.
    n_epochs : int or None, default None
        Overrides ``params["n_epochs"]`` when not None.

    Returns
    -------
    dict
        Keyword arguments for the Darts class.

    Raises
    ------
    ModelError
        Unknown model; a parameter the Darts class does not take (the message names it and
        lists the valid ones); ``input_chunk_length``, ``output_chunk_length``,
        ``batch_size`` or ``n_epochs`` not an integer >= 1; ``learning_rate`` not > 0;
        ``dropout`` outside [0, 1); a violated :class:`Constraint` of the model.
    """
    spec = get_spec(model_name)
    if not isinstance(params, Mapping):
        raise ModelError(f"model {model_name!r}: params must be a mapping, got {type(params)}")
    accepted = _accepted_params(spec.darts_class)
    unknown = sorted(str(name) for name in params if name not in accepted)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        verb = "is" if len(unknown) == 1 else "are"
        noun = "parameter" if len(unknown) == 1 else "parameters"
        raise ModelError(
            f"{noun} {names} {verb} not accepted by model {model_name!r} "
            f"(darts {spec.darts_class_name}); valid parameters: {', '.join(sorted(accepted))}"
        )

    merged: dict[str, Any] = dict(spec.defaults)
    user_optimizer_kwargs = params.get("optimizer_kwargs") or {}
    if "learning_rate" not in params and "lr" in user_optimizer_kwargs:
        merged.pop("learning_rate", None)
    merged.update(params)
    if n_epochs is not None:
        merged["n_epochs"] = n_epochs
    if random_state is not None:
        merged["random_state"] = random_state
    if "learning_rate" in merged:
        learning_rate = merged.pop("learning_rate")
        merged["optimizer_kwargs"] = {**(merged.get("optimizer_kwargs") or {}), "lr": learning_rate}
    _apply_fixed(merged, spec.fixed_kwargs, model_name)
    _apply_fixed(merged, COMMON_FIXED_KWARGS, model_name)
    merged["pl_trainer_kwargs"] = {**DEFAULT_TRAINER_KWARGS, **(trainer_kwargs or {})}
    _check_values(spec, merged)
    return merged


def create_model(
    model_name: str,
    params: Mapping[str, Any],
    *,
    trainer_kwargs: Mapping[str, Any] | None = None,
    random_state: int | None = None,
    n_epochs: int | None = None,
) -> TorchForecastingModel:
    """Build an untrained Darts model from the registry.

    Parameters
    ----------
    model_name : str
        Registry key, see :func:`model_names`.
    params : Mapping[str, Any]
        Hyperparameters (Darts constructor names plus ``learning_rate`` and ``n_epochs``);
        missing ones come from the spec's defaults.
    trainer_kwargs : Mapping[str, Any] or None, default None
        Lightning trainer kwargs merged over :data:`DEFAULT_TRAINER_KWARGS`
        (``callbacks``, ``accelerator``, ``devices``, ``precision`` pass through).
    random_state : int or None, default None
        Seed for Darts; overrides ``params["random_state"]`` when not None.
    n_epochs : int or None, default None
        Overrides ``params["n_epochs"]`` when not None.

    Returns
    -------
    darts.models.forecasting.torch_forecasting_model.TorchForecastingModel

    Raises
    ------
    ModelError
        Everything :func:`validate_params` raises, and a ``ValueError`` raised by the Darts
        constructor (re-raised as ``ModelError`` naming the model).
    """
    spec = get_spec(model_name)
    kwargs = validate_params(
        model_name,
        params,
        trainer_kwargs=trainer_kwargs,
        random_state=random_state,
        n_epochs=n_epochs,
    )
    darts_cls = _import_darts_class(spec.darts_class)
    try:
        return darts_cls(**kwargs)
    except ValueError as exc:
        raise ModelError(
            f"model {model_name!r} (darts {spec.darts_class_name}) rejected its parameters: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Describing the registry
# --------------------------------------------------------------------------------------------


def _describe_space(spec: ModelSpec, timeframe: str) -> dict[str, str]:
    if isinstance(spec.search_space, SearchSpace):
        return spec.search_space.describe(timeframe)
    return {}


def list_models(timeframe: str = "1d") -> list[dict[str, Any]]:
    """Every registered model as plain data (for ``kallos-run models --json``).

    Parameters
    ----------
    timeframe : str, default "1d"
        Timeframe used to resolve the lookback range in ``tunable``.

    Returns
    -------
    list of dict
        Sorted by name; each with ``name``, ``darts_class``, ``description``,
        ``fixed_kwargs`` (model-specific only), ``defaults``, ``tunable``
        (``{param: "int 1..4" | "float 1e-05..0.01 log" | "choice [32, 64, 128]"}``;
        empty for a search space that is not a :class:`SearchSpace`) and ``constraints``
        (e.g. ``["kernel_size < input_chunk_length"]``).

    Raises
    ------
    ConfigError
        If ``timeframe`` is not understood.
    """
    bars_per_day(timeframe)
    return [
        {
            "name": spec.name,
            "darts_class": spec.darts_class,
            "description": spec.description,
            "fixed_kwargs": dict(spec.fixed_kwargs),
            "defaults": dict(spec.defaults),
            "tunable": _describe_space(spec, timeframe),
            "constraints": [constraint.describe() for constraint in spec.constraints],
        }
        for spec in (MODEL_REGISTRY[name] for name in model_names())
    ]


def max_input_chunk_length(model_name: str, timeframe: str) -> int:
    """Largest ``input_chunk_length`` the model's search space can sample on ``timeframe``.

    Used to size walk-forward folds. For a search space that is not a :class:`SearchSpace`,
    or one without ``input_chunk_length``, the upper bound of :func:`lookback_range`.

    Parameters
    ----------
    model_name : str
        Registry key.
    timeframe : str
        Bar length, see :func:`bars_per_day`.

    Returns
    -------
    int

    Raises
    ------
    ModelError
        Unknown model.
    ConfigError
        Timeframe not understood.
    """
    spec = get_spec(model_name)
    upper = lookback_range(timeframe)[1]
    space = spec.search_space
    if isinstance(space, SearchSpace) and "input_chunk_length" in space.params:
        upper = int(space.params["input_chunk_length"].bounds(timeframe)[1])
    return upper
