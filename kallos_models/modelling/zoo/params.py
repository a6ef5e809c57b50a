"""Parameter validation, model construction and the zoo described as plain data.

:func:`validate_params` merges a spec's defaults, the caller's parameters and the fixed kwargs
into Darts constructor kwargs and checks them; :func:`create_model` builds the Darts model.
Darts and torch are imported only inside the functions that build or inspect a model.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from kallos_models.errors import ModelError
from kallos_models.modelling.intervals import check_quantiles
from kallos_models.modelling.zoo.space import SearchSpace, bars_per_day, lookback_range
from kallos_models.modelling.zoo.specs import (
    COMMON_FIXED_KWARGS,
    DEFAULT_TRAINER_KWARGS,
    MODEL_ZOO,
    ModelSpec,
    get_spec,
    model_names,
)

if TYPE_CHECKING:
    from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel

logger = logging.getLogger(__name__)

__all__ = [
    "chunk_lengths",
    "create_model",
    "list_models",
    "max_input_chunk_length",
    "validate_params",
]

# --------------------------------------------------------------------------------------------
# Parameter validation and model construction
# --------------------------------------------------------------------------------------------

# Set by create_model's own arguments or by Darts internally; never a user parameter.
_INTERNAL_PARAMS = frozenset({"self", "args", "kwargs", "train_sample_shape"})
_POSITIVE_INT_PARAMS = ("input_chunk_length", "output_chunk_length", "batch_size", "n_epochs")


def _import_darts_class(darts_class: str) -> Any:
    module_name, _, class_name = darts_class.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


#: Set from ``input_chunk_length`` for a regression model (and ``model``, the estimator, by the
#: Darts class itself); never given directly.
_LAG_PARAMS = frozenset({"lags", "lags_past_covariates", "lags_future_covariates", "model"})


def supports_static_covariates(model_name: str) -> bool:
    """Whether the Darts class of ``model_name`` reads static covariates (a global model's
    asset identity); imports that class."""
    cls = _import_darts_class(get_spec(model_name).darts_class)
    return bool(cls.supports_static_covariates.fget(object.__new__(cls)))


def _init_params(darts_class: str) -> set[str]:
    names: set[str] = set()
    for base in inspect.getmro(_import_darts_class(darts_class)):
        if base is object:
            break
        names.update(inspect.signature(base.__init__).parameters)  # type: ignore[misc]
    return names


@cache
def _accepted_params(darts_class: str, estimator: str | None = None) -> frozenset[str]:
    """Keyword names the Darts class accepts, found the way Darts itself validates them.

    A torch model: the ``__init__`` of the class and of every base class, plus the
    ``PLForecastingModule`` kwargs (``optimizer_kwargs``, ``loss_fn``, ``likelihood``, ...),
    plus ``learning_rate``. A regression model (``estimator`` given): the class's own names
    except the lags, plus the estimator's ``get_params()`` names (what Darts passes on to
    it), plus ``input_chunk_length`` (the lookback the lags are made from).
    """
    if estimator is not None:
        module_name, _, class_name = estimator.rpartition(".")
        wrapped = getattr(importlib.import_module(module_name), class_name)
        names = _init_params(darts_class) - _LAG_PARAMS
        names |= set(wrapped().get_params())
        return frozenset((names - _INTERNAL_PARAMS) | {"input_chunk_length"})
    from darts.models.forecasting.pl_forecasting_module import PLForecastingModule

    names = set(inspect.signature(PLForecastingModule.__init__).parameters)
    names |= _init_params(darts_class)
    return frozenset((names - _INTERNAL_PARAMS) | {"learning_rate"})


def _installed(spec: ModelSpec) -> bool:
    """Whether the package of the model's estimator can be imported (always, for a torch model)."""
    return (
        spec.estimator is None or importlib.util.find_spec(spec.estimator.split(".")[0]) is not None
    )


def _check_installed(spec: ModelSpec) -> None:
    """Refuse, naming the extra to install, a model whose estimator package is missing."""
    if spec.estimator is not None and not _installed(spec):
        package = spec.estimator.split(".")[0]
        extra = spec.extra or package
        raise ModelError(
            f"model {spec.name!r} needs the {package} package: pip install "
            f"'kallos-models[{extra}]' (or pip install {package})"
        )


def chunk_lengths(kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """``(input_chunk_length, output_chunk_length)`` of the kwargs :func:`validate_params`
    returns: a regression model's lookback is its ``lags``."""
    lookback = kwargs["input_chunk_length"] if "input_chunk_length" in kwargs else kwargs["lags"]
    return int(lookback), int(kwargs["output_chunk_length"])


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
    if spec.kind == "regression" and "learning_rate" in kwargs:
        rate = kwargs["learning_rate"]
        if not (_is_number(rate) and 0 < float(rate) < math.inf):
            raise ModelError(f"{prefix} learning_rate must be a number > 0, got {rate!r}")
    dropout = kwargs.get("dropout")
    if dropout is not None and not (_is_number(dropout) and 0 <= float(dropout) < 1):
        raise ModelError(f"{prefix} dropout must be a number in [0, 1), got {dropout!r}")
    _check_types_against_defaults(spec, kwargs, prefix)
    for constraint in spec.constraints:
        if constraint.violated(kwargs):
            raise ModelError(
                f"{prefix} parameters must satisfy {constraint.describe()}; got "
                f"{constraint.left}={kwargs[constraint.left]!r}, "
                f"{constraint.right}={kwargs[constraint.right]!r}"
            )


#: Parameters checked above with their own rule.
_CHECKED_ALONE = frozenset({*_POSITIVE_INT_PARAMS, "learning_rate", "dropout"})
#: Integer parameters Darts also takes as one integer per stack.
_INT_OR_LIST_PARAMS = frozenset({"layer_widths"})


def _check_types_against_defaults(spec: ModelSpec, kwargs: Mapping[str, Any], prefix: str) -> None:
    """A value of the zoo's type for every parameter the zoo gives a default: an integer >= 1
    where the default is an integer (``"eight"``, ``8.5``, ``-8`` and ``true`` are refused, not
    passed on to Darts), a finite number >= 0 where it is a number, true/false where it is."""
    for name, default in spec.defaults.items():
        if name not in kwargs or name in _CHECKED_ALONE:
            continue
        value = kwargs[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ModelError(f"{prefix} {name} must be true or false, got {value!r}")
        elif isinstance(default, numbers.Integral):
            whole = _is_int(value) and int(value) >= 1
            if name in _INT_OR_LIST_PARAMS and isinstance(value, (list, tuple)):
                whole = bool(value) and all(_is_int(v) and int(v) >= 1 for v in value)
            if not whole:
                raise ModelError(f"{prefix} {name} must be an integer >= 1, got {value!r}")
        elif isinstance(default, numbers.Real):
            if not (_is_number(value) and math.isfinite(float(value)) and float(value) >= 0):
                raise ModelError(f"{prefix} {name} must be a number >= 0, got {value!r}")


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
    quantiles: Sequence[float] | None = None,
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
        Model name, see :func:`model_names`.
    params : Mapping[str, Any]
        Darts constructor names plus ``learning_rate`` and ``n_epochs``.
    trainer_kwargs : Mapping[str, Any] or None, default None
        Lightning trainer kwargs (``callbacks``, ``accelerator``, ``devices``, ``precision``,
        ...) merged over :data:`DEFAULT_TRAINER_KWARGS`.
    random_state : int or None, default None
        Seed passed to Darts; overrides ``params["random_state"]`` when not None.
    n_epochs : int or None, default None
        Overrides ``params["n_epochs"]`` when not None.
    quantiles : sequence of float or None, default None
        Train the model to output these quantiles (checked by
        :func:`kallos_models.modelling.intervals.check_quantiles`): Darts'
        ``QuantileRegression`` likelihood for a deep model, ``likelihood="quantile"`` for a
        regression model. None: a point model.

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
        ``dropout`` outside [0, 1); a violated
        :class:`~kallos_models.modelling.zoo.space.Constraint` of the model.
    """
    spec = get_spec(model_name)
    if not isinstance(params, Mapping):
        raise ModelError(f"model {model_name!r}: params must be a mapping, got {type(params)}")
    _check_installed(spec)
    accepted = _accepted_params(spec.darts_class, spec.estimator)
    unknown = sorted(str(name) for name in params if name not in accepted)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        verb = "is" if len(unknown) == 1 else "are"
        noun = "parameter" if len(unknown) == 1 else "parameters"
        raise ModelError(
            f"{noun} {names} {verb} not accepted by model {model_name!r} "
            f"(darts {spec.darts_class_name}); valid parameters: {', '.join(sorted(accepted))}"
        )

    if quantiles is not None:
        quantiles = check_quantiles(quantiles)
        if "likelihood" in params:
            raise ModelError(
                f"model {model_name!r}: give quantiles either as --quantiles or as a "
                "likelihood parameter, not both"
            )
    if spec.kind == "regression":
        return _regression_kwargs(spec, params, random_state, quantiles)
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
    if quantiles is not None:
        from darts.utils.likelihood_models import QuantileRegression

        merged["likelihood"] = QuantileRegression(quantiles=list(quantiles))
    return merged


def _regression_kwargs(
    spec: ModelSpec,
    params: Mapping[str, Any],
    random_state: int | None,
    quantiles: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A regression model's kwargs: defaults, ``params``, the seed and the fixed kwargs, with
    ``input_chunk_length`` turned into ``lags`` and ``lags_past_covariates`` (the same
    lookback of the target and of every covariate, as a torch model reads)."""
    merged: dict[str, Any] = {**spec.defaults, **params}
    if random_state is not None:
        merged["random_state"] = random_state
    _apply_fixed(merged, spec.fixed_kwargs, spec.name)
    _check_values(spec, merged)
    lookback = int(merged.pop("input_chunk_length"))
    merged["lags"] = lookback
    merged["lags_past_covariates"] = lookback
    if quantiles is not None:
        merged["likelihood"] = "quantile"
        merged["quantiles"] = list(quantiles)
    return merged


def create_model(
    model_name: str,
    params: Mapping[str, Any],
    *,
    trainer_kwargs: Mapping[str, Any] | None = None,
    random_state: int | None = None,
    n_epochs: int | None = None,
    quantiles: Sequence[float] | None = None,
) -> TorchForecastingModel | Any:
    """Build an untrained Darts model from the model zoo.

    Parameters
    ----------
    model_name : str
        Model name, see :func:`model_names`.
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
    quantiles : sequence of float or None, default None
        Quantiles the model learns to output (see :func:`validate_params`); None: a point
        model.

    Returns
    -------
    darts.models.forecasting.torch_forecasting_model.TorchForecastingModel

    Raises
    ------
    ModelError
        Everything :func:`validate_params` raises, and a ``ValueError`` raised by the Darts
        constructor (re-raised as ``ModelError`` naming the model).

    A regression model (``kind="regression"``) takes no trainer and no epochs: both
    arguments are ignored for it.
    """
    spec = get_spec(model_name)
    kwargs = validate_params(
        model_name,
        params,
        trainer_kwargs=trainer_kwargs,
        random_state=random_state,
        n_epochs=n_epochs,
        quantiles=quantiles,
    )
    darts_cls = _import_darts_class(spec.darts_class)
    try:
        return darts_cls(**kwargs)
    except ValueError as exc:
        raise ModelError(
            f"model {model_name!r} (darts {spec.darts_class_name}) rejected its parameters: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Describing the model zoo
# --------------------------------------------------------------------------------------------


def _describe_space(spec: ModelSpec, timeframe: str) -> dict[str, str]:
    if isinstance(spec.search_space, SearchSpace):
        return spec.search_space.describe(timeframe)
    return {}


def list_models(timeframe: str = "1d") -> list[dict[str, Any]]:
    """Every model of the zoo as plain data (for ``kallos-run models --json``).

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
        (e.g. ``["kernel_size < input_chunk_length"]``), ``deep`` (a torch model trained
        with Lightning, or a regression model), ``extra`` (the package extra it needs, or
        None), ``installed`` (whether that extra's package can be imported here) and
        ``probabilistic`` (it can forecast quantiles: ``train --quantiles``).

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
            "deep": spec.deep,
            # every model of the zoo can learn quantiles (train --quantiles) and be wrapped
            # in conformal prediction (train --conformal)
            "probabilistic": True,
            "extra": spec.extra,
            "installed": _installed(spec),
        }
        for spec in (MODEL_ZOO[name] for name in model_names())
    ]


def max_input_chunk_length(model_name: str, timeframe: str) -> int:
    """Largest ``input_chunk_length`` the model's search space can sample on ``timeframe``.

    Used to size walk-forward folds. For a search space that is not a :class:`SearchSpace`,
    or one without ``input_chunk_length``, the upper bound of :func:`lookback_range`.

    Parameters
    ----------
    model_name : str
        Model name, see :func:`model_names`.
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
