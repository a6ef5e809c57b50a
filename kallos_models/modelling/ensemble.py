"""Ensembles: several models of the zoo combined into one forecaster, Darts' own ensembles.

``train --model-name ensemble --members gru,lightgbm,linear`` builds every member from the zoo
(its parameters from ``--member-params NAME=FILE``, a params file as ``tune`` writes it, or
the zoo's defaults) and combines them with one of Darts' ensemble models:

- ``regression`` (:class:`darts.models.RegressionEnsembleModel`): the members are fit on all
  training rows but the last ``train_bars``; their forecasts of those bars
  (``train_using_historical_forecasts``: each from the bars before it, one step ahead when
  every member's ``output_chunk_length`` is 1, as evaluate forecasts) are the features of a
  linear regression (no intercept) onto the actual target, whose coefficients are the learned
  weights; then the members are refit on all training rows. The weights are learned on
  forecasts of bars the members did not fit on (the preprocessing, like every fit of a
  bundle, is fit on all training rows), and every bar involved is a training row: nothing of
  the hold-out is seen.
- ``mean`` (:class:`darts.models.NaiveEnsembleModel`): the members' plain mean, no weights.

The result is one Darts model: evaluate, predict, compare and the conformal wrapper use it
like any model of the zoo. Its lookback is the longest of its members', its
``output_chunk_length`` the shortest. The bundle holds the ensemble's pickle plus, for each
deep member, Darts' model file and checkpoint beside it (:func:`member_files`).

An ensemble is trained, not tuned: tune each member, then pass the params files.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kallos_models.errors import ConfigError
from kallos_models.modelling import fitting, hyperparams, zoo

if TYPE_CHECKING:
    from kallos_models.modelling.series import PreparedSeries

logger = logging.getLogger(__name__)

#: Member name -> ``(params to fit with, checked Darts kwargs)``, as
#: :meth:`EnsembleSpec.resolved_params` returns them.
Resolved = Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]

__all__ = [
    "DEFAULT_TRAIN_BARS",
    "ENSEMBLE",
    "ENSEMBLE_METHODS",
    "EnsembleSpec",
    "chunk_lengths",
    "fit_ensemble",
    "is_ensemble",
    "member_files",
    "members_of",
    "parse_members",
    "remove_stale_members",
    "weights",
]

#: The model name of an ensemble (not in the zoo: it is built from zoo models).
ENSEMBLE = "ensemble"
#: ``regression``: weights learned on out-of-sample forecasts; ``mean``: the plain mean.
ENSEMBLE_METHODS: tuple[str, ...] = ("regression", "mean")
#: The last training bars whose member forecasts the regression ensemble learns its weights on.
DEFAULT_TRAIN_BARS = 200
_DARTS_CLASSES = {
    "regression": "darts.models.RegressionEnsembleModel",
    "mean": "darts.models.NaiveEnsembleModel",
}


def is_ensemble(model_name: str | None) -> bool:
    """Whether ``model_name`` names an ensemble."""
    return model_name == ENSEMBLE


def parse_members(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"gru,lightgbm,linear"`` as checked member names: two or more different zoo models.

    Raises
    ------
    ConfigError
        Fewer than two names, a name given twice, or ``ensemble`` among them.
    ModelError
        A name that is not a model of the zoo (the message lists them).
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if len(names) < 2:
        raise ConfigError(
            f"an ensemble needs at least two members, got {names or 'none'}: e.g. "
            "--members gru,lightgbm,linear"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--members names {', '.join(repeated)} more than once; list each once")
    if ENSEMBLE in names:
        raise ConfigError("an ensemble cannot be a member of an ensemble; list zoo models")
    for name in names:
        zoo.get_spec(name)
    return tuple(names)


def _parse_member_params(entries: Sequence[str], members: Sequence[str]) -> dict[str, str]:
    """``["gru=gru_BTC_best_params.json", ...]`` as ``{member: file}``."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(
                f"--member-params takes NAME=FILE, got {entry!r}: e.g. --member-params "
                "gru=gru_BTC_best_params.json"
            )
        if name not in members:
            raise ConfigError(
                f"--member-params names {name!r}, which is not a member ({', '.join(members)}); "
                "add it to --members or drop the entry"
            )
        if name in out:
            raise ConfigError(f"--member-params gives {name!r} twice; give each member once")
        out[name] = path
    return out


@dataclass(frozen=True)
class EnsembleSpec:
    """What ``train --model-name ensemble`` builds.

    Attributes
    ----------
    members
        Zoo model names, two or more, in order.
    method
        ``regression`` (learned weights) or ``mean``.
    train_bars
        For ``regression``: the last training bars the weights are learned on (>= 10).
    member_params
        Member name -> params mapping or params file; a member not named uses the zoo's
        defaults.
    """

    members: tuple[str, ...]
    method: str = "regression"
    train_bars: int = DEFAULT_TRAIN_BARS
    member_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ENSEMBLE_METHODS:
            raise ConfigError(
                f"ensemble method must be one of {', '.join(ENSEMBLE_METHODS)}, got {self.method!r}"
            )
        bars = self.train_bars
        if isinstance(bars, bool) or not isinstance(bars, int) or bars < 10:
            raise ConfigError(
                f"--ensemble-train-bars must be a whole number of bars >= 10, got {bars!r} "
                f"(the weights are a regression on that many forecasts; {DEFAULT_TRAIN_BARS} "
                "is the default)"
            )

    @classmethod
    def from_flags(
        cls,
        members: str | None,
        method: str | None,
        train_bars: int | None,
        member_params: Sequence[str] = (),
    ) -> EnsembleSpec:
        """The spec of ``train``'s ``--members``, ``--ensemble-method``,
        ``--ensemble-train-bars`` and ``--member-params`` (ConfigError when ``--members`` is
        missing)."""
        if not members:
            raise ConfigError(
                "--model-name ensemble needs --members, e.g. --members gru,lightgbm,linear"
            )
        if method == "mean" and train_bars is not None:
            raise ConfigError(
                "--ensemble-train-bars sets the bars the regression ensemble learns its weights "
                "on; the mean has no weights: drop it, or use --ensemble-method regression"
            )
        names = parse_members(members)
        return cls(
            members=names,
            method=method or "regression",
            train_bars=DEFAULT_TRAIN_BARS if train_bars is None else train_bars,
            member_params=_parse_member_params(member_params, names),
        )

    @property
    def darts_class(self) -> str:
        """The Darts class the ensemble is."""
        return _DARTS_CLASSES[self.method]

    def resolved_params(
        self, *, max_epochs: int | None, seed: int
    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Each member's ``(params to fit with, checked Darts kwargs)``
        (:func:`kallos_models.modelling.hyperparams.training_params`), checked before any
        data is read."""
        return {
            name: hyperparams.training_params(
                name, self.member_params.get(name, {}), max_epochs=max_epochs, seed=seed
            )
            for name in self.members
        }

    def record(self, resolved: Resolved, model: Any | None = None) -> dict[str, Any]:
        """The manifest's ``ensemble`` entry: method, Darts class, members (name, Darts
        class, params, chunk lengths, params file) and, for ``regression``, the learned
        weights of the fitted ``model``."""
        members = []
        for name in self.members:
            used, checked = resolved[name]
            icl, ocl = zoo.chunk_lengths(checked)
            source = self.member_params.get(name)
            members.append(
                {
                    "model_name": name,
                    "darts_class": zoo.get_spec(name).darts_class,
                    "params": dict(used),
                    "input_chunk_length": icl,
                    "output_chunk_length": ocl,
                    "params_file": str(source) if isinstance(source, (str, Path)) else None,
                }
            )
        return {
            "method": self.method,
            "darts_class": self.darts_class,
            "members": members,
            "train_bars": self.train_bars if self.method == "regression" else None,
            "weights": weights(model) if model is not None else None,
        }


def weights(model: Any) -> list[float] | None:
    """The learned weight of each member of a fitted regression ensemble (None for a mean)."""
    combiner = getattr(model, "ensemble_model", None)
    estimator = getattr(combiner, "model", None)
    coef = getattr(estimator, "coef_", None)
    if coef is None:
        return None
    return [float(c) for c in list(getattr(coef, "ravel", lambda: coef)())]


def chunk_lengths(resolved: Resolved) -> tuple[int, int]:
    """The ensemble's lookback (its members' longest) and ``output_chunk_length`` (shortest)."""
    lengths = [zoo.chunk_lengths(checked) for _, checked in resolved.values()]
    return max(icl for icl, _ in lengths), min(ocl for _, ocl in lengths)


def fit_ensemble(
    spec: EnsembleSpec,
    resolved: Resolved,
    prepared: PreparedSeries,
    *,
    seed: int = 42,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> fitting.FitResult:
    """Build the members from the zoo, combine them in Darts' ensemble, fit it on the
    training rows only (the validation rows, when given, are not used).

    Raises
    ------
    DataError
        Fewer training rows than the longest member lookback plus its output length (plus
        ``train_bars`` for the regression ensemble).
    KeyboardInterrupt
        Ctrl-C or SIGTERM during the fit (:func:`kallos_models.modelling.fitting.
        surface_interrupts`).
    """
    from darts.models import NaiveEnsembleModel, RegressionEnsembleModel

    from kallos_models.errors import DataError

    icl, ocl = chunk_lengths(resolved)
    needed = icl + ocl + (spec.train_bars if spec.method == "regression" else 0)
    n_train = len(prepared.train_target)
    if n_train < needed:
        raise DataError(
            f"training series has {n_train} rows, but the ensemble needs at least {needed} "
            f"(longest member lookback {icl} + output_chunk_length {ocl}"
            + (f" + {spec.train_bars} bars to learn the weights on" if needed > icl + ocl else "")
            + "); load more history, or lower --ensemble-train-bars or the members' "
            "input_chunk_length"
        )
    trainer = dict(fitting.build_trainer_kwargs() if trainer_kwargs is None else trainer_kwargs)
    fitting.seed_everything(seed)
    members = []
    for name in spec.members:
        params = resolved[name][0]
        if zoo.get_spec(name).deep:
            member = zoo.create_model(
                name,
                params,
                trainer_kwargs=trainer,
                random_state=seed,
                n_epochs=int(params["n_epochs"]),
            )
        else:
            member = zoo.create_model(name, params, random_state=seed)
        members.append(member)
    if spec.method == "regression":
        model: Any = RegressionEnsembleModel(
            forecasting_models=members,
            regression_train_n_points=spec.train_bars,
            train_using_historical_forecasts=True,
            show_warnings=False,  # "no future covariates": there are none
        )
    else:
        model = NaiveEnsembleModel(forecasting_models=members, show_warnings=False)
    logger.info(
        "fitting a %s ensemble of %s on a %d-point target series",
        spec.method,
        ", ".join(spec.members),
        n_train,
    )
    started = time.perf_counter()
    with fitting.surface_interrupts():
        model.fit(series=prepared.train_target, past_covariates=prepared.train_covariates)
    seconds = time.perf_counter() - started
    logger.info("fit the ensemble in %.1fs; weights %s", seconds, weights(model))
    return fitting.FitResult(
        model=model, best_epoch=None, epochs_run=0, seconds=seconds, val_loss=None
    )


def member_files(model_path: Path) -> list[Path]:
    """The files Darts wrote beside an ensemble's ``model_path`` for its deep members
    (``{name}.{Class}_{i}.pt`` and its ``.ckpt``), sorted."""
    prefix = f"{model_path.name}."
    return sorted(
        p for p in model_path.parent.iterdir() if p.name.startswith(prefix) and p.is_file()
    )


def remove_stale_members(model_path: Path, keep: Sequence[Path]) -> list[Path]:
    """Delete the member files of an earlier ensemble under ``model_path``'s name that the
    bundle just published does not have (its members changed); return what was removed."""
    pattern = re.compile(re.escape(model_path.name) + r"\.[A-Za-z0-9]+_\d+\.pt(?:\.ckpt)?")
    kept = {path.name for path in keep}
    removed = []
    for path in model_path.parent.iterdir():
        if pattern.fullmatch(path.name) and path.name not in kept and path.is_file():
            path.unlink()
            removed.append(path)
    if removed:
        logger.info("removed the old ensemble's files %s", ", ".join(p.name for p in removed))
    return removed


def members_of(model: Any) -> list[Any]:
    """The members of a Darts ensemble, or ``[model]`` for any other model."""
    members = getattr(model, "forecasting_models", None)
    return list(members) if isinstance(members, list) else [model]
