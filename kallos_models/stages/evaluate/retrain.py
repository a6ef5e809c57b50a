"""The retraining backtest: refit every N bars through the hold-out window, as live would.

:func:`retrain_backtest` is what ``kallos-run evaluate --retrain-every N`` runs. It takes a
bundle's recipe (model, hyperparameters, epochs, seed, trainer, features, preprocessing
choices; or the hyperparameters of a ``--params-file``) and walks through the window: at each
refit point it fits the preprocessing and the model on every row before that point, from the
bundle's first training bar on, and forecasts the next ``N`` bars with that fit exactly as
:func:`kallos_models.modelling.forecasting.rolling_forecasts` does (one forecast per bar, at
the horizon). The forecasts of all refits are scored, backtested, recorded and plotted like a
plain evaluation (:mod:`kallos_models.stages.evaluate.holdout`'s pieces), with the refits
added to the record.

Refit ``k`` forecasts the bars ``first_k .. first_k + N - 1`` of the window. Each forecast is
made at its origin ``T - horizon``; the refit trains on the bars up to ``first_k - gap - 1``
(``--gap``, default the horizon: the bar before the block's first origin, and never past that
origin), so no forecast is made from a bar the fit has seen. The preprocessing of each refit
is fit on those training rows alone (no leakage).

Darts' ``historical_forecasts(retrain=N)`` does the same walk for a model alone, but it cannot
refit this package's preprocessing (group scalers, a log-return target turned back into
prices) and predicts one origin at a time; here each refit forecasts its block in one
``historical_forecasts(retrain=False)`` call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.config import Settings, parse_date
from kallos_models.errors import ArtifactError, ConfigError, DataError
from kallos_models.modelling import fitting, series, zoo
from kallos_models.modelling.forecasting import check_horizon, lookback_bars, rolling_forecasts
from kallos_models.modelling.hyperparams import read_params_file, training_params
from kallos_models.stage_settings import EvaluateSettings, evaluate_settings
from kallos_models.stages.evaluate.holdout import (
    CheckedBundle,
    EvaluationResult,
    backtest_config,
    load_window,
    open_bundle,
    refuse_registry_uri,
    required_gap,
    score_and_write,
)

logger = logging.getLogger(__name__)

__all__ = ["RefitRecipe", "refit_recipe", "retrain_backtest"]


@dataclass(frozen=True)
class RefitRecipe:
    """How every refit is trained: what the bundle was trained with.

    Attributes
    ----------
    params
        The full hyperparameters, ``n_epochs`` included (what ``train`` records).
    input_chunk_length, output_chunk_length
        Of the model these parameters build.
    seed
        The bundle's seed (Python, NumPy, torch, Lightning and the model's ``random_state``).
    trainer_kwargs
        Lightning kwargs built as ``train`` builds them, from the bundle's trainer facts.
    params_source
        ``"bundle"``, or the params file the hyperparameters came from.
    """

    params: dict[str, Any]
    input_chunk_length: int
    output_chunk_length: int
    seed: int
    trainer_kwargs: dict[str, Any]
    params_source: str


def _trainer_kwargs(manifest: dict[str, Any], show_progress: bool) -> dict[str, Any]:
    """The bundle's trainer settings; an accelerator this machine lacks becomes ``auto``."""
    requested = str(manifest.get("requested_accelerator") or "auto")
    devices: str | int = manifest.get("devices") or "auto"
    precision = manifest.get("precision")
    try:
        fitting.check_accelerator(requested)
    except ConfigError:
        logger.warning(
            "the bundle was trained with accelerator %r, which this machine lacks; the refits "
            "run with accelerator 'auto'",
            requested,
        )
        requested, devices, precision = "auto", "auto", None
    if str(precision) in ("32-true", "32", "None"):
        precision = None  # what Darts picks for float32 series, as when train left it unset
    return fitting.build_trainer_kwargs(
        accelerator=requested,
        devices=devices,
        precision=None if precision is None else str(precision),
        show_progress=show_progress,
    )


def refit_recipe(
    checked: CheckedBundle, params_file: Path | None = None, *, show_progress: bool = False
) -> RefitRecipe:
    """The bundle's training recipe, with a params file's hyperparameters if one is given.

    Parameters
    ----------
    checked
        The bundle, from :func:`~kallos_models.stages.evaluate.holdout.open_bundle`.
    params_file
        Hyperparameters in ``train --params-file``'s format; default None: the bundle's. The
        epochs are the bundle's either way (a file's ``n_epochs`` is ignored, and logged).
    show_progress
        Lightning's progress bar and model summary; default False.

    Raises
    ------
    ArtifactError
        The manifest records no parameters.
    ConfigError, ModelError
        A bad params file, or a parameter the model does not accept.
    """
    manifest = checked.manifest
    recorded = manifest.get("params")
    if not isinstance(recorded, dict):
        raise ArtifactError(
            f"the manifest {checked.bundle.paths.manifest} records no params; the bundle is "
            "incomplete: retrain it with `kallos-run train`"
        )
    seed = int(manifest.get("seed", 42))
    values: dict[str, Any] = dict(recorded)
    source = "bundle"
    if params_file is not None:
        from_file, file_epochs = read_params_file(params_file)
        epochs = recorded.get("n_epochs")
        if file_epochs is not None and epochs is not None and file_epochs != epochs:
            logger.info(
                "params file n_epochs %s ignored: the refits train for the bundle's %s epochs",
                file_epochs,
                epochs,
            )
        values = dict(from_file)
        if epochs is not None or file_epochs is not None:
            values["n_epochs"] = epochs if epochs is not None else file_epochs
        source = str(params_file)
    used, kwargs = training_params(checked.model_name, values, max_epochs=None, seed=seed)
    icl, ocl = zoo.chunk_lengths(kwargs)
    return RefitRecipe(
        params=used,
        input_chunk_length=icl,
        output_chunk_length=ocl,
        seed=seed,
        trainer_kwargs=_trainer_kwargs(manifest, show_progress),
        params_source=source,
    )


def _history_start(checked: CheckedBundle) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Where ``train`` started reading (its ``--start-date``) and its first training bar."""
    manifest = checked.manifest
    return (
        parse_date(manifest.get("start_date"), "start_date"),
        parse_date(manifest.get("train_start"), "train_start"),
    )


def retrain_backtest(
    settings: Settings | EvaluateSettings,
    *,
    model_path: str | Path,
    scaler_path: str | Path | None = None,
    horizon: int | None = None,
    source: str | None = None,
    show_progress: bool = False,
) -> EvaluationResult:
    """Walk through the hold-out window refitting every ``retrain_every`` bars; score it all.

    Steps: check the settings and the bundle as :func:`~kallos_models.stages.evaluate.
    api.evaluate_model` does (checksums, model, asset, no overlap with training); build
    the refit recipe (:func:`refit_recipe`; a bad params file fails here, before any data);
    load the asset's rows from the bundle's first training bar to the window's end; then for
    each block of ``retrain_every`` bars of the window: fit the preprocessing and the model on
    the rows up to the block's first origin, forecast the block; finally score, backtest and
    write ``{stem}_evaluation_metrics.json`` and ``{stem}_evaluation_plot.png`` as a plain
    evaluation does. Nothing is written before every refit is done.

    Parameters
    ----------
    settings
        The stage's settings with ``retrain_every`` set
        (:func:`kallos_models.stage_settings.evaluate_settings` ``(settings,
        retrain_every=30)``) and optionally ``params_file``.
    model_path
        The bundle's model file (``{stem}.pt``), a local path.
    scaler_path
        The bundle's scaler file; default None takes it from the manifest.
    horizon
        Forecast step scored, in bars; default None uses the settings' ``horizon``. At most
        the refit model's ``output_chunk_length``.
    source
        What the record calls the model (``model_path`` key); default None: ``model_path``.
    show_progress
        Lightning's progress bars during the refits; default False.

    Returns
    -------
    EvaluationResult
        The record holds the plain evaluation's keys plus ``retrain_every``, ``n_refits``,
        ``params_source``, ``refit_params`` (the hyperparameters every refit used, epochs
        included) and ``refits`` (per refit: ``train_end``, the last bar it trained on;
        ``first_forecast``; ``n_forecasts``; ``fit_seconds``).

    Raises
    ------
    ConfigError
        No ``retrain_every``; and the errors of ``evaluate_model`` and :func:`refit_recipe`.
    ArtifactError, DataError
        As ``evaluate_model``; DataError also when the rows before the window are too few to
        train the first refit.
    KeyboardInterrupt
        Ctrl-C or SIGTERM during a refit or a forecast; nothing has been written then.
    """
    refuse_registry_uri(model_path)
    source = str(Path(model_path)) if source is None else source
    s = settings if isinstance(settings, EvaluateSettings) else evaluate_settings(settings)
    every = s.retrain_every
    if every is None:
        raise ConfigError(
            "retrain_backtest needs retrain_every: build the settings with "
            "evaluate_settings(settings, retrain_every=30), or pass --retrain-every 30"
        )
    config = backtest_config(s)
    checked = open_bundle(s, model_path, scaler_path)
    if checked.manifest.get("intervals"):
        raise ConfigError(
            f"{Path(model_path).name} forecasts intervals "
            f"({checked.manifest['intervals'].get('method')}); the retraining backtest refits "
            "point models only: evaluate it without --retrain-every, or retrain it without "
            "--quantiles/--conformal"
        )
    if checked.manifest.get("ensemble"):
        raise ConfigError(
            f"{Path(model_path).name} is an ensemble; the retraining backtest refits one zoo "
            "model: evaluate it without --retrain-every, or run the retraining backtest of "
            "each member's own bundle"
        )
    recipe = refit_recipe(checked, s.params_file, show_progress=show_progress)
    icl, ocl = recipe.input_chunk_length, recipe.output_chunk_length
    steps = check_horizon(s.horizon if horizon is None else horizon, ocl)
    gap = required_gap(s, steps)
    bundled = checked.bundle.preprocessor
    transform = bundled.target_transform
    lookback = lookback_bars(icl, steps, transform)
    # the first refit trains on the rows up to `gap` bars before the window (the default gap,
    # the horizon, ends them right before the first origin)
    min_train = icl + ocl + 1
    read_from, first_bar = _history_start(checked)
    frame, pos = load_window(
        s,
        checked,
        needed=max(lookback, min_train + gap),
        why=f"the first refit trains on at least {min_train} bars (input_chunk_length {icl} "
        f"+ output_chunk_length {ocl} + 1) ending {gap + 1} bar(s) before it",
        start_date=read_from,
    )
    if first_bar is not None and first_bar > frame.index[0]:
        # train dropped warm-up rows of indicators this bundle does not use: start where it did
        cut = int(frame.index.searchsorted(first_bar, side="left"))
        frame, pos = frame.iloc[cut:], pos - cut
        if pos < min_train + gap:
            raise DataError(
                f"only {pos} bars lie between the bundle's first training bar {first_bar} and "
                f"the test window; the first refit needs {min_train + gap}: set "
                "--test-start-date later"
            )

    firsts = list(range(pos, len(frame), every))
    blocks: list[pd.DataFrame] = []
    refits: list[dict[str, Any]] = []
    for k, first in enumerate(firsts, start=1):
        stop = min(first + every, len(frame))
        train_rows = frame.iloc[: first - gap]
        logger.info(
            "refit %d/%d: training on %s bars up to %s, forecasting %d bar(s) from %s",
            k,
            len(firsts),
            f"{len(train_rows):,}",
            train_rows.index[-1],
            stop - first,
            frame.index[first],
        )
        prepared = series.prepare_darts_timeseries(
            train_rows,
            feature_groups=bundled.feature_groups,
            target_col=bundled.target_col,
            target_transform=transform,
            group_scalers=bundled.group_scalers,
            optional_features=(),
        )
        fit = fitting.fit_forecaster(
            checked.model_name,
            recipe.params,
            prepared,
            seed=recipe.seed,
            trainer_kwargs=dict(recipe.trainer_kwargs),
        )
        with fitting.surface_interrupts():
            block = rolling_forecasts(
                fit.model,
                prepared.preprocessor,
                frame.iloc[max(first - lookback, 0) : stop],
                start=frame.index[first],
                horizon=steps,
            )
        blocks.append(block)
        refits.append(
            {
                "train_end": train_rows.index[-1].isoformat(),
                "first_forecast": block.index[0].isoformat(),
                "n_forecasts": len(block),
                "fit_seconds": round(fit.seconds, 3),
            }
        )
    results = pd.concat(blocks)
    extra = {
        "retrain_every": every,
        "n_refits": len(refits),
        "params_source": recipe.params_source,
        "refit_params": recipe.params,
        "refits": refits,
    }
    return score_and_write(
        s,
        checked,
        results,
        frame,
        pos,
        horizon=steps,
        chunks=(icl, ocl),
        config=config,
        source=source,
        extra=extra,
        title_note=f"  -  refit every {every} bars ({len(refits)} fits)",
    )
