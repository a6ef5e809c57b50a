"""Hyperparameters for a final fit: a params file read, merged over the zoo's defaults, checked.

Shared by :mod:`kallos_models.stages.train` (the bundle's one fit) and
:mod:`kallos_models.stages.evaluate.retrain` (the refits of a retraining backtest), so that a
refit is built from exactly the parameters ``train`` would use. Nothing here imports Darts
until :func:`training_params` checks the parameters against the model's class.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kallos_models.errors import ConfigError
from kallos_models.modelling import fitting, zoo

logger = logging.getLogger(__name__)

__all__ = [
    "full_params",
    "read_params_file",
    "resolve_params",
    "search_record",
    "training_params",
]

#: The trial states of a tuner file's ``trial_counts`` that count as configurations tried.
_TRIED_STATES = ("COMPLETE", "PRUNED")


def _check_n_epochs(value: Any, path: Path) -> int:
    number = (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    )
    if number is None or not math.isfinite(number) or not number.is_integer() or number < 1:
        raise ConfigError(
            f"params file {path}: n_epochs must be an integer >= 1, got {value!r}; fix or remove it"
        )
    return int(number)


def _read_object(file: Path) -> dict[str, Any]:
    """The JSON object of a params file (ConfigError: missing, not JSON, not an object)."""
    if not file.is_file():
        raise ConfigError(
            f"params file {file} does not exist; pass the file written by `kallos-run tune` "
            "({model}_{asset}_best_params.json) or a JSON object of hyperparameters"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"params file {file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"params file {file} holds a JSON {type(data).__name__}, not an object; write it "
            'as {"hidden_dim": 64, "input_chunk_length": 45, ...}'
        )
    return data


def read_params_file(path: str | Path) -> tuple[dict[str, Any], int | None]:
    """Read hyperparameters from a JSON file.

    Two shapes are accepted:

    - a plain object of hyperparameters, as ``study.best_params`` holds them, e.g.
      ``{"hidden_dim": 64, "input_chunk_length": 45, "learning_rate": 0.001}``; it may carry
      ``n_epochs``;
    - the tuner's output file: an object with a ``"params"`` object plus ``"n_epochs"`` (the
      mean best epoch across folds) and other keys (``value``, ``metric``, ``study_name``, ...),
      which are ignored.

    Parameters
    ----------
    path : str or Path
        The JSON file. No default.

    Returns
    -------
    tuple of (dict, int or None)
        The hyperparameters without ``n_epochs``, and ``n_epochs`` (top-level ``n_epochs`` of a
        tuner file, else ``n_epochs`` inside the parameters) or None when absent.

    Raises
    ------
    ConfigError
        The file is missing, is not valid JSON, is not a JSON object (or its ``"params"`` is
        not one), or ``n_epochs`` is not an integer >= 1.
    """
    file = Path(path)
    data = _read_object(file)
    n_epochs: int | None = None
    if "params" in data:
        inner = data["params"]
        if not isinstance(inner, dict):
            raise ConfigError(
                f'params file {file}: "params" must be a JSON object of hyperparameters, got '
                f"{type(inner).__name__}"
            )
        params = dict(inner)
        if data.get("n_epochs") is not None:
            n_epochs = _check_n_epochs(data["n_epochs"], file)
            params.pop("n_epochs", None)
    else:
        params = dict(data)
    if n_epochs is None and params.get("n_epochs") is not None:
        n_epochs = _check_n_epochs(params["n_epochs"], file)
    params.pop("n_epochs", None)
    return params, n_epochs


def resolve_params(params: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A mapping of hyperparameters as given, or a params file's (with its ``n_epochs``).

    Raises
    ------
    ConfigError
        Neither a mapping nor a path, or a bad file (see :func:`read_params_file`).
    """
    if isinstance(params, (str, Path)):
        values, n_epochs = read_params_file(params)
        if n_epochs is not None:
            values["n_epochs"] = n_epochs
        return values
    if not isinstance(params, Mapping):
        raise ConfigError(
            f"params must be a mapping of hyperparameters or a JSON file path, got "
            f"{type(params).__name__}"
        )
    return dict(params)


def full_params(
    defaults: Mapping[str, Any], values: Mapping[str, Any], n_epochs: int
) -> dict[str, Any]:
    """The registry defaults with ``values`` over them and the resolved ``n_epochs``.

    Mirrors :func:`kallos_models.modelling.zoo.validate_params`: a default ``learning_rate``
    is left out when ``values`` sets ``optimizer_kwargs["lr"]`` instead.
    """
    full = dict(defaults)
    optimizer_kwargs = values.get("optimizer_kwargs") or {}
    if "learning_rate" not in values and "lr" in optimizer_kwargs:
        full.pop("learning_rate", None)
    full.update(values)
    full["n_epochs"] = n_epochs
    return full


def training_params(
    model_name: str,
    params: Mapping[str, Any] | str | Path,
    *,
    max_epochs: int | None,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters a final fit of ``model_name`` uses, checked before any data is read.

    Parameters
    ----------
    model_name : str
        Registry key, e.g. ``"gru"``. No default.
    params : Mapping or str or Path
        Hyperparameters, or a params file (:func:`read_params_file`). No default.
    max_epochs : int or None
        Cap on the epochs: ``min(n_epochs, max_epochs)`` when the parameters carry
        ``n_epochs``, else ``max_epochs``; None: the parameters' ``n_epochs`` (else the
        registry default).
    seed : int
        The model's ``random_state``, used by the check only.

    Returns
    -------
    tuple of (dict, dict)
        The parameters to fit with (registry defaults, ``params`` over them, the resolved
        ``n_epochs``; what a bundle's manifest records as ``params``), and the Darts
        constructor kwargs they check out as. A regression model has no epochs: ``n_epochs``
        in ``params`` and ``max_epochs`` are ignored (logged), and the parameters carry none.

    Raises
    ------
    ConfigError
        A bad params file.
    ModelError
        Unknown model, or a parameter the model does not accept.
    """
    spec = zoo.get_spec(model_name)
    values = resolve_params(params)
    if not spec.deep:
        if values.pop("n_epochs", None) is not None or max_epochs is not None:
            logger.info(
                "%s is not trained in epochs: n_epochs and max_epochs are ignored", model_name
            )
        used = {**spec.defaults, **values}
        return used, zoo.validate_params(model_name, used, random_state=seed)
    n_epochs = fitting.resolve_n_epochs(values, max_epochs, model_name)
    used = full_params(spec.defaults, values, n_epochs)
    checked = zoo.validate_params(model_name, used, random_state=seed)
    return used, checked


def search_record(*sources: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """How hard the search tried that chose the parameters of ``sources`` (params files).

    A tuner file (``kallos-run tune``'s ``*_best_params.json``) names its study and counts its
    trials; each finished trial (complete or pruned) is a configuration tried, and so is each
    trial of a study it was warm-started from. Mappings and plain parameter files record no
    search and are skipped.

    Returns
    -------
    dict or None
        ``n_trials`` (summed over the sources) and ``studies`` (``study_name``, ``n_trials``,
        ``metric``, ``value``, ``params_file``, ``warm_start_trials``); None when no source is
        a tuner file. A bundle's manifest keeps it as ``search``, and ``evaluate`` deflates the
        hold-out Sharpe ratio by its ``n_trials``.
    """
    studies = []
    for source in sources:
        if not isinstance(source, (str, Path)):
            continue
        data = _read_object(Path(source))
        counts = data.get("trial_counts")
        if not isinstance(counts, Mapping) or "study_name" not in data:
            continue
        own = sum(int(counts.get(state) or 0) for state in _TRIED_STATES)
        warm = data.get("warm_start")
        warm_trials = int(warm.get("n_trials") or 0) if isinstance(warm, Mapping) else 0
        studies.append(
            {
                "study_name": data.get("study_name"),
                "n_trials": own + warm_trials,
                "metric": data.get("metric"),
                "value": data.get("value"),
                "params_file": str(source),
                "warm_start_trials": warm_trials,
            }
        )
    if not studies:
        return None
    return {"n_trials": sum(study["n_trials"] for study in studies), "studies": studies}
