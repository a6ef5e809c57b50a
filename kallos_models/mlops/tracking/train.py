"""Train runs: the bundle as an MLflow pyfunc model, registered as a new model version."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kallos_models.config import Settings
from kallos_models.data import db
from kallos_models.files import sha256_file
from kallos_models.mlops.tracking.client import (
    TAG_KIND,
    TAG_MANIFEST,
    _ends_failed_on_error,
    _experiment_id,
    _log,
    _tracking_uri,
    enabled,
    registered_model_name,
    session,
)
from kallos_models.modelling.basket import basket_assets

if TYPE_CHECKING:
    from kallos_models.stages.train import TrainResult

logger = logging.getLogger(__name__)

__all__ = ["MODEL_ARTIFACT", "log_training", "pyfunc_model"]

#: Name of the pyfunc model inside a train run.
MODEL_ARTIFACT = "model"
#: The models-from-code file of the pyfunc model (MLflow 3's way, no pickled class).
_PYFUNC_CODE = '''"""kallos-models forecaster for mlflow.pyfunc (needs kallos-models installed)."""
import mlflow

from kallos_models.mlops.tracking import pyfunc_model

mlflow.models.set_model(pyfunc_model())
'''


def pyfunc_model() -> Any:
    """The ``mlflow.pyfunc`` model of a bundle (used by the models-from-code file).

    ``load_context`` loads the bundle from the model's artifacts with
    :func:`kallos_models.modelling.bundles.load_bundle` (checksums verified). ``predict`` takes rows
    as :func:`kallos_models.data.datasets.load_features_from_db` returns them (a DatetimeIndex, or
    an ``open_time`` column; the target and feature columns) and returns one-step rolling
    forecasts in prices (``actual``, ``forecast``, ``naive``, ``origin_close``) for every bar
    after the model's lookback.
    """
    import mlflow.pyfunc

    # predict takes a whole frame, not rows: no type-hint schema (MLflow's validation would
    # want list[...] hints and, without them, warns on every log_model)
    base: Any = mlflow.pyfunc.PythonModel

    class KallosForecaster(base):
        _skip_type_hint_validation = True

        def load_context(self, context):
            from kallos_models.modelling import bundles

            self.bundle = bundles.load_bundle(
                context.artifacts["model"],
                context.artifacts["scaler"],
                manifest_path=context.artifacts["manifest"],
            )

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from kallos_models.modelling import forecasting

            frame = model_input
            if not isinstance(frame.index, pd.DatetimeIndex) and "open_time" in frame.columns:
                frame = frame.set_index(pd.DatetimeIndex(frame["open_time"], name="open_time"))
            model, preprocessor = self.bundle.model, self.bundle.preprocessor
            history = self.bundle.history(1)
            needed = (
                forecasting.lookback_bars(
                    forecasting.model_chunk_lengths(model)[0], 1, preprocessor.target_transform
                )
                + history
            )
            if len(frame) <= needed:
                from kallos_models.errors import DataError

                raise DataError(f"predict needs more than {needed} rows, got {len(frame)}")
            return forecasting.rolling_forecasts(
                model,
                preprocessor,
                frame,
                start=frame.index[needed],
                horizon=1,
                quantiles=self.bundle.quantiles,
                history=history,
            )

    return KallosForecaster()


def _requirements() -> list[str]:
    from importlib import metadata

    from kallos_models.modelling.bundles import library_versions

    pins = [f"{name}=={v}" for name, v in library_versions().items() if name != "python" and v]
    try:
        pins.append(f"kallos-models=={metadata.version('kallos-models')}")
    except metadata.PackageNotFoundError:
        pins.append("kallos-models")
    return pins


def _training_params(manifest: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "model_name",
        "asset_id",
        "timeframe",
        "train_start",
        "train_end",
        "train_rows",
        "start_date",
        "train_end_date",
        "seed",
        "target_col",
        "target_transform",
        "input_chunk_length",
        "output_chunk_length",
        "feature_columns",
        "accelerator",
        "precision",
    )
    params = {key: manifest.get(key) for key in keys}
    if basket := basket_assets(manifest):
        params["basket"] = ",".join(basket)
    for key, value in (manifest.get("params") or {}).items():
        params.setdefault(key, value)
    return params


def _log_bundle(
    client: Any, experiment_id: str, run_id: str, manifest: Mapping[str, Any], paths: Any
) -> Any:
    """Params, metrics and manifest of a train run, and the bundle as a pyfunc model."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    _log(
        client,
        run_id,
        params=_training_params(manifest),
        metrics={
            "training_seconds": manifest.get("training_seconds"),
            "epochs_run": manifest.get("epochs_run"),
            "train_rows": manifest.get("train_rows"),
        },
    )
    client.log_dict(run_id, dict(manifest), "manifest.json")
    # The logged model is created for this run by id, so no fluent "active run" (a notebook's
    # own run, its set_experiment) is touched; then it is linked as the run's output.
    logged = client.create_logged_model(
        experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id, model_type="kallos-bundle"
    )
    with tempfile.TemporaryDirectory(prefix="kallos-pyfunc-") as tmp:
        code = Path(tmp) / "kallos_pyfunc.py"
        code.write_text(_PYFUNC_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(code),
            artifacts={
                **{role: str(path) for role, path in paths.data_files()},
                "manifest": str(paths.manifest),
            },
            pip_requirements=_requirements(),
            model_id=logged.model_id,
        )
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return info


def log_training(settings: Settings, result: TrainResult) -> dict[str, Any] | None:
    """Log a train run with the bundle and register it as a new model version.

    Parameters
    ----------
    settings : Settings
        Nothing happens unless ``tracking_uri`` is set.
    result : TrainResult
        The bundle just saved by :func:`kallos_models.stages.train.train_model`.

    Returns
    -------
    dict or None
        ``registered_model``, ``version``, ``run_id``, ``model_uri``
        (``models:/{name}/{version}``) and ``tracking_uri`` (password masked); None when
        tracking is off.

    Raises
    ------
    TrackingError
        MLflow refused a request (the bundle on disk is kept either way).
    """
    if not enabled(settings):
        return None
    manifest = result.manifest
    paths = result.paths
    name = registered_model_name(
        str(manifest["model_name"]), str(manifest["asset_id"]), str(manifest["timeframe"])
    )
    manifest_sha = sha256_file(paths.manifest)
    with session(settings) as client:
        experiment_id = _experiment_id(client, settings)
        run = client.create_run(
            experiment_id,
            run_name=f"train {name}",
            tags={TAG_KIND: "train", "kallos.registered_model": name, TAG_MANIFEST: manifest_sha},
        )
        run_id = run.info.run_id
        with _ends_failed_on_error(client, run_id):
            model_info = _log_bundle(client, experiment_id, run_id, manifest, paths)
        client.set_terminated(run_id)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name,
            source=model_info.model_uri,
            run_id=run_id,
            model_id=model_info.model_id,
            tags={
                TAG_MANIFEST: manifest_sha,
                "model_name": manifest.get("model_name"),
                "asset_id": manifest.get("asset_id"),
                "timeframe": manifest.get("timeframe"),
                "train_start": manifest.get("train_start"),
                "train_end": manifest.get("train_end"),
                # a global model's assets: evaluate and predict take any of them
                **({"basket": ",".join(basket)} if (basket := basket_assets(manifest)) else {}),
            },
        )
    tracked = {
        "registered_model": name,
        "version": int(version.version),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "tracking_uri": db.mask_url(_tracking_uri(settings)),
    }
    logger.info("registered %s version %s (run %s)", name, version.version, run_id)
    return tracked


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="kallos-models bundles: {model}_{asset}_{timeframe}"
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
