"""What a tune writes: the best-params payload and file, and the tuning report plots."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kallos_models.files import atomic_write_bytes, run_stem, write_json
from kallos_models.modelling import zoo
from kallos_models.stage_settings import TuneSettings
from kallos_models.stages.tune.storage import StorageSpec
from kallos_models.stages.tune.workers import count_states

logger = logging.getLogger(__name__)


def _stem(settings: TuneSettings) -> str:
    return run_stem(settings.model_name, str(settings.asset_id), timeframe=settings.timeframe)


def _best_payload(
    study: Any, settings: TuneSettings, spec: StorageSpec, counts: Mapping[str, int]
) -> dict[str, Any] | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    params = dict(best.user_attrs.get("params") or best.params)
    params.pop("n_epochs", None)
    n_epochs = best.user_attrs.get("n_epochs")
    if not zoo.get_spec(settings.model_name).deep:
        n_epochs = None  # a regression model is not trained in epochs
    elif not isinstance(n_epochs, int) or n_epochs < 1:
        n_epochs = max(1, int(n_epochs or 1))
    return {
        "model_name": settings.model_name,
        "asset_id": settings.asset_id,
        "timeframe": settings.timeframe,
        "params": params,
        "n_epochs": n_epochs,
        "value": float(best.value),
        "metric": settings.metric,
        "trial_counts": dict(counts),
        "study_name": study.study_name,
        "storage": spec.masked,
        "optuna_schema": spec.schema,
        "best_trial": best.number,
        "fold_scores": best.user_attrs.get("fold_scores"),
        # a basket's assets and the best trial's mean score on each
        "assets": list(settings.assets or (settings.asset_id,)),
        "asset_scores": best.user_attrs.get("asset_scores"),
        # the study this one was warm-started from: its trials count as tried too
        "warm_start": study.user_attrs.get("warm_start"),
        "end_date": str(settings.end),
        "start_date": None if settings.start is None else str(settings.start),
    }


def _save_plot(path: Path, draw: Callable[[], Any]) -> Path:
    """Draw an Optuna matplotlib plot and write it as PNG.

    Optuna's plots call ``plt.style.use("ggplot")``; the ``rc_context`` undoes that on exit, so
    the style does not leak into later figures (the evaluation plot, a notebook's own).
    """
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        result = draw()
        figure = result.figure if hasattr(result, "figure") else result[0].figure
        try:
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            return atomic_write_bytes(path, buffer.getvalue())
        finally:
            plt.close(figure)


def _write_reports(study: Any, settings: TuneSettings, out_dir: Path) -> list[Path]:
    import optuna
    from optuna.trial import TrialState

    stem = _stem(settings)
    paths: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return paths
    plots = optuna.visualization.matplotlib
    try:
        paths.append(
            _save_plot(
                out_dir / f"{stem}_optimization_history.png",
                lambda: plots.plot_optimization_history(study),
            )
        )
    except (ValueError, RuntimeError, ImportError) as exc:
        logger.info("optimization history plot skipped: %s", exc)
    varying = [
        name
        for name in {n for t in complete for n in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    ]
    if len(complete) < 2 or not varying:
        logger.info(
            "parameter importance plot skipped: it needs at least 2 completed trials with "
            "different parameters (have %d completed)",
            len(complete),
        )
        return paths
    try:
        paths.append(
            _save_plot(
                out_dir / f"{stem}_param_importances.png",
                lambda: plots.plot_param_importances(study),
            )
        )
    except (ValueError, RuntimeError, ZeroDivisionError, ImportError) as exc:
        logger.info("parameter importance plot skipped: %s", exc)
    return paths


def write_outputs(
    study: Any, settings: TuneSettings, spec: StorageSpec
) -> tuple[Path | None, list[Path], dict[str, Any] | None]:
    """Write the best trial's ``{stem}_best_params.json`` and the report plots.

    Parameters
    ----------
    study : optuna.Study
        The tuned study. No default.
    settings : TuneSettings
        Names the file (model, asset, timeframe) and its folder (``output_path``, default the
        working directory). No default.
    spec : StorageSpec
        The study's storage, recorded (password masked) in the file. No default.

    Returns
    -------
    tuple
        The params file path, the plot paths and the payload written; ``(None, [], None)``
        when no trial completed yet (nothing is written then).
    """
    counts = count_states(study)
    payload = _best_payload(study, settings, spec, counts)
    if payload is None:
        logger.warning("no trial completed yet: no params file written")
        return None, [], None
    out_dir = settings.output_dir
    path = out_dir / f"{_stem(settings)}_best_params.json"
    write_json(path, payload)
    logger.info("best params of trial %d written to %s", payload["best_trial"], path)
    reports = _write_reports(study, settings, out_dir)
    return path, reports, payload
