"""Final training: all data up to the end date, one fit, one bundle.

:func:`train_model` is what ``kallos-run train`` runs: read the hyperparameters (a tuner output
file or a plain JSON object), check them against the model, load the asset's rows up to
``train_end_date``, fit the preprocessing and the model on all of them (no validation split,
no early stopping) and save the bundle with :func:`kallos_models.modelling.bundles.save_bundle`,
which stages it in a hidden folder and publishes it by renames, manifest last: a killed run
leaves no bundle (and nothing that blocks the re-run), never half of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.config import Settings
from kallos_models.data import datasets
from kallos_models.data.features import resolve_indicators
from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling import basket, bundles, ensemble, fitting, series, zoo
from kallos_models.modelling.bundles import BundlePaths
from kallos_models.modelling.ensemble import EnsembleSpec
from kallos_models.modelling.hyperparams import read_params_file, search_record, training_params
from kallos_models.modelling.intervals import IntervalSpec
from kallos_models.stage_settings import DEFAULT_OUTPUT_DIRS, TrainSettings, train_settings

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_OUTPUT_PATH", "TrainResult", "read_params_file", "train_model"]

#: Where bundles go when ``output_path`` is not set (``stage_settings.DEFAULT_OUTPUT_DIRS``).
DEFAULT_OUTPUT_PATH = f"./{DEFAULT_OUTPUT_DIRS['train']}"


@dataclass(frozen=True)
class TrainResult:
    """The bundle written by :func:`train_model` and its manifest.

    ``tracking`` is what the pipeline's tracking registered (model name, version, run id), or
    None when tracking is off or the stage ran alone (:func:`kallos_models.pipeline.train`).
    """

    paths: BundlePaths
    manifest: dict[str, Any]
    tracking: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON for stdout: the headline fields and the bundle paths.

        Returns
        -------
        dict
            ``model_name``, ``asset_id``, ``timeframe``, ``train_start``, ``train_end``,
            ``train_rows``, ``n_epochs``, ``accelerator``, ``training_seconds``, ``intervals``
            (the manifest's interval record, None for a point model), for an ensemble
            ``ensemble`` (``method``, ``members``, ``weights``), and ``paths`` (``model``,
            ``checkpoint``, ``scaler``, ``manifest``, an ensemble's ``members``); plus
            ``tracking`` when the bundle was registered.
        """
        m = self.manifest
        tracked = {"tracking": self.tracking} if self.tracking is not None else {}
        return {
            "model_name": m.get("model_name"),
            "asset_id": m.get("asset_id"),
            "timeframe": m.get("timeframe"),
            "train_start": m.get("train_start"),
            "train_end": m.get("train_end"),
            "train_rows": m.get("train_rows"),
            "n_epochs": (m.get("params") or {}).get("n_epochs"),
            "accelerator": m.get("accelerator"),
            "training_seconds": m.get("training_seconds"),
            "intervals": m.get("intervals"),
            **_ensemble_summary(m.get("ensemble")),
            "paths": self.paths.as_dict(),
            **tracked,
        }


def _ensemble_summary(record: Any) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        return {}
    names = [m.get("model_name") for m in record.get("members") or [] if isinstance(m, Mapping)]
    return {
        "ensemble": {
            "method": record.get("method"),
            "members": names,
            "weights": record.get("weights"),
        }
    }


def _trainer_facts(model: Any) -> dict[str, Any]:
    """Accelerator, device count and precision the Lightning trainer actually used."""
    trainer = getattr(model, "trainer", None)
    if trainer is None:
        return {"accelerator": None, "devices": None, "precision": None}
    name = type(trainer.accelerator).__name__
    accelerator = name[: -len("Accelerator")].lower() if name.endswith("Accelerator") else name
    return {
        "accelerator": accelerator,
        "devices": int(trainer.num_devices),
        "precision": str(trainer.precision),
    }


def _check_members(
    model_name: str, members: EnsembleSpec | None, intervals: IntervalSpec | None
) -> None:
    """An ensemble has members and no quantile regression; no other model has members."""
    if ensemble.is_ensemble(model_name):
        if members is None:
            raise ConfigError(
                "--model-name ensemble needs --members, e.g. --members gru,lightgbm,linear"
            )
        if intervals is not None and intervals.quantile_regression:
            raise ConfigError(
                "an ensemble combines point forecasts, so it does not learn quantiles: drop "
                "--quantiles and pass --conformal for its intervals"
            )
    elif members is not None:
        raise ConfigError(
            f"--members is for --model-name ensemble, but the model is {model_name!r}: pass "
            "--model-name ensemble, or drop --members"
        )


def _load_rows(
    s: TrainSettings, asset: str, indicators: Any, *, chunks: tuple[int, int], held_out: int
) -> pd.DataFrame:
    """The asset's rows up to the end date, checked to be enough to train on."""
    frame = datasets.load_features_from_db(
        asset,
        s.end,
        s.database.url,
        start_date=s.start,
        timeframe=s.timeframe,
        max_gap_bars=s.max_gap_bars,
        indicators=indicators,
    )
    needed = sum(chunks) + 1 + held_out
    if len(frame) < needed:
        raise DataError(
            f"asset {asset!r} ({s.timeframe}) has {len(frame)} usable rows up to {s.end}, but "
            f"training {s.model_name!r} needs at least {needed} (input_chunk_length "
            f"{chunks[0]} + output_chunk_length {chunks[1]} + 1"
            + (f" + {held_out} calibration bars" if held_out else "")
            + "); use an earlier --start-date, a later --end-date, or a smaller "
            "input_chunk_length" + (" or --calibration-bars" if held_out else "")
        )
    return frame


def _check_basket(
    s: TrainSettings, members: EnsembleSpec | None, intervals: IntervalSpec | None
) -> None:
    """A global model is one zoo model; conformal intervals would need a calibration window
    per asset, which is not built yet."""
    if len(s.assets) < 2:
        return
    if members is not None:
        raise ConfigError(
            "an ensemble is trained on one asset; train one global zoo model over the basket "
            f"({', '.join(s.assets)}) with --model-name, or an ensemble per asset"
        )
    if intervals is not None and intervals.conformal:
        raise ConfigError(
            "--conformal is not available for a global model over a basket yet; use "
            "--quantiles for its intervals, or train one model per asset with --conformal"
        )


def train_model(
    settings: Settings | TrainSettings,
    params: Mapping[str, Any] | str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = False,
    intervals: IntervalSpec | None = None,
    members: EnsembleSpec | None = None,
) -> TrainResult:
    """Train the model on all rows of the asset up to the end date and save its bundle.

    Parameters
    ----------
    settings : TrainSettings or Settings
        The stage's settings (:func:`kallos_models.stage_settings.train_settings` builds them
        from resolved :class:`Settings`, which are accepted too): model, asset, timeframe,
        database, ``start``/``end`` (the end is required), ``max_gap_bars``, the feature
        choices (indicators, feature groups, target), the trainer choices (seed,
        ``max_epochs`` as a cap on ``n_epochs``, accelerator, devices, precision) and
        ``output_dir`` (default ``./trained_models``). No default.
    params : Mapping[str, Any] or str or Path
        Hyperparameters, or a JSON file read with :func:`read_params_file`. No default.
        Epochs: ``min(n_epochs, max_epochs)`` when the parameters carry ``n_epochs``, else
        ``max_epochs``.
    overwrite : bool, default False
        Replace an existing bundle; without it an existing bundle (its manifest) is refused
        before any data is read. Bundle files without a manifest (an interrupted save) are
        not a bundle: they are replaced without ``overwrite``.
    show_progress : bool, default False
        Show Lightning's progress bar and model summary (on stderr).
    intervals : IntervalSpec or None, default None
        Prediction intervals (:mod:`kallos_models.modelling.intervals`): with
        ``quantile_regression`` the model learns the quantiles; with ``conformal`` the last
        ``calibration_bars`` rows are held out of the fit (preprocessing and model) as the
        calibration window, and the manifest's ``intervals`` records how to wrap the model.
        None: a point model.
    members : EnsembleSpec or None, default None
        For ``model_name`` ``ensemble`` (required there, refused otherwise): the members,
        their parameters and how they are combined (:mod:`kallos_models.modelling.ensemble`);
        ``params`` is not read. An ensemble takes ``--conformal`` intervals, not quantiles.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        No end date or asset (:class:`~kallos_models.stage_settings.MissingSettingError`); a
        bad params file or indicator spec.
    ModelError
        Unknown model, or a parameter the model does not accept (checked before the data is
        read).
    ArtifactError
        The bundle's manifest exists and ``overwrite`` is False; a folder stands where a
        bundle file goes.
    DataError
        No rows, a long gap, or fewer rows than ``input_chunk_length + output_chunk_length + 1``.
    DatabaseError
        The database cannot be reached.
    """
    s = settings if isinstance(settings, TrainSettings) else train_settings(settings)
    model_name = s.model_name
    _check_members(model_name, members, intervals)
    _check_basket(s, members, intervals)
    used_params: dict[str, Any]
    if members is not None:
        resolved = members.resolved_params(max_epochs=s.trainer.max_epochs, seed=s.trainer.seed)
        used_params = {name: used for name, (used, _) in resolved.items()}
        input_chunk_length, output_chunk_length = ensemble.chunk_lengths(resolved)
        darts_class, deep = members.darts_class, any(zoo.get_spec(m).deep for m in members.members)
    else:
        spec = zoo.get_spec(model_name)
        used_params, checked = training_params(
            model_name, params, max_epochs=s.trainer.max_epochs, seed=s.trainer.seed
        )
        input_chunk_length, output_chunk_length = zoo.chunk_lengths(checked)
        darts_class, deep = spec.darts_class, spec.deep
    fitting.check_accelerator(s.trainer.accelerator)  # before any data is read

    paths = bundles.bundle_paths(s.output_dir, model_name, s.asset_id, s.timeframe)
    bundles.check_overwrite(paths, overwrite=overwrite)

    indicators = resolve_indicators(s.features.indicators)  # a bad entry fails before any data
    spec_iv = intervals if intervals is not None and intervals.active else None
    held_out = spec_iv.calibration_bars if spec_iv is not None and spec_iv.conformal else 0
    chunks = (input_chunk_length, output_chunk_length)
    frames = {
        asset: _load_rows(s, asset, indicators, chunks=chunks, held_out=held_out)
        for asset in (s.assets or (s.asset_id,))
    }
    # a conformal model's calibration window is held out of every fit, preprocessing included
    fit_frames = {a: f.iloc[: len(f) - held_out] if held_out else f for a, f in frames.items()}
    prepared: Any
    if len(frames) > 1:  # one global model over the basket, each asset scaled on its own rows
        prepared = basket.prepare_basket(
            {asset: (frame, None) for asset, frame in fit_frames.items()},
            s.features,
            static_covariates=zoo.supports_static_covariates(model_name),
        )
    else:
        prepared = series.prepare_from_settings(s.features, next(iter(fit_frames.values())))
    trainer_kwargs = fitting.build_trainer_kwargs(
        accelerator=s.trainer.accelerator,
        devices=s.trainer.devices,
        precision=s.trainer.precision,
        show_progress=show_progress,
    )
    if members is not None:
        fit = ensemble.fit_ensemble(
            members, resolved, prepared, seed=s.trainer.seed, trainer_kwargs=trainer_kwargs
        )
    else:
        fit = fitting.fit_forecaster(
            model_name,
            used_params,
            prepared,
            seed=s.trainer.seed,
            trainer_kwargs=trainer_kwargs,
            quantiles=(
                spec_iv.quantiles if spec_iv is not None and spec_iv.quantile_regression else None
            ),
        )
    preprocessor = prepared.preprocessor
    # a regression model is fit by its estimator on the CPU, without a Lightning trainer; an
    # ensemble's deep members share one trainer configuration
    torch_model = next(
        (m for m in ensemble.members_of(fit.model) if getattr(m, "trainer", None) is not None),
        None,
    )
    facts = (
        _trainer_facts(torch_model)
        if deep and torch_model is not None
        else {"accelerator": "cpu", "devices": None, "precision": None}
    )
    manifest: dict[str, Any] = {
        "model_name": model_name,
        "darts_class": darts_class,
        "asset_id": s.asset_id,
        "timeframe": s.timeframe,
        "params": used_params,
        "input_chunk_length": input_chunk_length,
        "output_chunk_length": output_chunk_length,
        "feature_groups": {g: list(c) for g, c in preprocessor.feature_groups.items()},
        "feature_columns": list(preprocessor.feature_columns),
        # the indicator columns the model's features need, as computed at load
        "indicators": {
            name: entry
            for name, entry in indicators.items()
            if name in preprocessor.feature_columns
        },
        "target_col": preprocessor.target_col,
        "target_transform": preprocessor.target_transform,
        "group_scalers": dict(preprocessor.group_scalers),
        "preprocessing": preprocessor.describe(),
        "train_start": min(f.index[0] for f in fit_frames.values()).isoformat(),
        "train_end": max(f.index[-1] for f in fit_frames.values()).isoformat(),
        "train_rows": sum(len(f) for f in fit_frames.values()),
        "filled_rows": sum(
            int(f["filled"].sum()) if "filled" in f.columns else 0 for f in fit_frames.values()
        ),
        "start_date": None if s.start is None else s.start.isoformat(),
        "train_end_date": s.end.isoformat(),
        "seed": s.trainer.seed,
        "accelerator": facts["accelerator"],
        "devices": facts["devices"],
        "precision": facts["precision"],
        "requested_accelerator": s.trainer.accelerator,
        "epochs_run": fit.epochs_run if deep and members is None else None,
        "training_seconds": round(fit.seconds, 3),
        # the study (or studies) that chose the parameters: evaluate deflates by its trials
        "search": search_record(
            *(members.member_params.values() if members is not None else (params,))
        ),
    }
    if members is not None:
        manifest["ensemble"] = members.record(resolved, fit.model)
    if len(frames) > 1:
        manifest["basket"] = basket.basket_record(s.asset_id, fit_frames, preprocessor)
    if spec_iv is not None:
        calibration = (
            {
                "calibration_start": frames[s.asset_id].index[-held_out].isoformat(),
                "calibration_end": frames[s.asset_id].index[-1].isoformat(),
            }
            if held_out
            else None
        )
        manifest["intervals"] = spec_iv.record(calibration)
    paths = bundles.save_bundle(
        paths.model.parent,
        model_name,
        s.asset_id,
        fit.model,
        preprocessor,
        manifest,
        overwrite=overwrite,
    )
    written = json.loads(paths.manifest.read_text(encoding="utf-8"))
    logger.info(
        "trained %s on %s: %d rows %s .. %s, %sin %.1fs; bundle %s",
        model_name,
        ", ".join(frames),
        manifest["train_rows"],
        manifest["train_start"],
        manifest["train_end"],
        f"{fit.epochs_run} epoch(s) " if deep and members is None else "",
        fit.seconds,
        paths.model,
    )
    return TrainResult(paths=paths, manifest=written)
