"""Evaluate runs, and downloading a registered model version's bundle."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kallos_models.config import Settings
from kallos_models.errors import ArtifactError
from kallos_models.files import sha256_file
from kallos_models.mlops.tracking.client import (
    HOLDOUT,
    TAG_KIND,
    TAG_MANIFEST,
    _ends_failed_on_error,
    _experiment_id,
    _finite,
    _log,
    _param_value,
    enabled,
    session,
)
from kallos_models.modelling.metrics import asset_records, headline

logger = logging.getLogger(__name__)

__all__ = ["download_model_version", "log_evaluation"]

#: Evaluation record keys that describe the window, not the forecast quality.
_CONTEXT_KEYS = ("horizon", "input_chunk_length", "output_chunk_length", "n_filled")


def _flatten(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if prefix == HOLDOUT and key in _CONTEXT_KEYS:
            continue
        if key == "config":  # the backtest rules: text and settings, not results
            continue
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif (number := _finite(value)) is not None:
            out[f"{prefix}{key}"] = number
    return out


def _partial_basket(manifest_path: Path, per_asset: Mapping[str, Any]) -> tuple[str, ...]:
    """A global model's basket when ``per_asset`` covers only part of it, else ``()``."""
    if not per_asset:
        return ()
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    basket = tuple((manifest.get("basket") or {}).get("assets") or ())
    return basket if set(basket) - set(per_asset) else ()


def log_evaluation(
    settings: Settings,
    manifest_path: Path,
    record: Mapping[str, Any],
    metrics_path: Path,
    plot_path: Path,
) -> dict[str, Any] | None:
    """Log an evaluation to the run of the model version trained as this bundle.

    The version is found by the sha256 of the bundle's manifest (its ``manifest_sha256``
    tag). Its run gets the ``holdout.*`` metrics and the files under ``evaluation/``; the
    version gets the headline numbers and the window as ``holdout.*`` tags (a global model's
    pooled ones, each asset's as ``holdout.asset.{ASSET}.*`` and the list as
    ``holdout.assets``; an evaluation of part of a basket is logged to the run only, with a
    warning, so the version's numbers always describe its whole basket). A bundle that no
    version holds is logged in a new ``evaluate`` run, with a warning.

    Parameters
    ----------
    settings : Settings
        Nothing happens unless ``tracking_uri`` is set.
    manifest_path : Path
        The evaluated bundle's manifest.
    record : Mapping
        The metrics written to ``metrics_path``.
    metrics_path, plot_path : Path
        The files written by the evaluation.

    Returns
    -------
    dict or None
        ``registered_model`` and ``version`` (None when no version holds the bundle) and
        ``run_id``; None when tracking is off.
    """
    if not enabled(settings):
        return None
    manifest_sha = sha256_file(manifest_path)
    with session(settings) as client:
        found = sorted(
            client.search_model_versions(f"tags.{TAG_MANIFEST} = '{manifest_sha}'"),
            key=lambda v: int(v.version),
        )
        version = found[-1] if found else None
        if version is not None and version.run_id:
            run_id = version.run_id
        else:
            logger.warning(
                "the evaluated bundle %s is not a registered model version (train it with "
                "--tracking-uri to register it); logging a separate evaluate run",
                manifest_path,
            )
            run = client.create_run(
                _experiment_id(client, settings),
                run_name=f"evaluate {record.get('model_name')}_"
                f"{record.get('basket') or record.get('asset_id')}",
                tags={TAG_KIND: "evaluate", TAG_MANIFEST: manifest_sha},
            )
            run_id = run.info.run_id
        window = {
            f"{HOLDOUT}test_start": record.get("test_start"),
            f"{HOLDOUT}test_end": record.get("test_end"),
            f"{HOLDOUT}horizon": record.get("horizon"),
            f"{HOLDOUT}evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        own_run = version is None
        with _ends_failed_on_error(client, run_id) if own_run else contextlib.nullcontext():
            _log(client, run_id, metrics=_flatten(record, HOLDOUT), tags=window)
            client.log_artifact(run_id, str(metrics_path), "evaluation")
            client.log_artifact(run_id, str(plot_path), "evaluation")
        per_asset = asset_records(record)  # a global model: each asset's, for the gates
        partial = _partial_basket(manifest_path, per_asset)
        if version is not None and partial:
            logger.warning(
                "%s version %s: this evaluation covers %s of its basket %s, so the version's "
                "hold-out numbers (what registry promote checks) are left as they were; "
                "evaluate the whole basket to record them",
                version.name,
                version.version,
                ", ".join(per_asset),
                ", ".join(partial),
            )
        if version is not None and not partial:
            numbers: dict[str, Any] = {f"{HOLDOUT}{k}": v for k, v in headline(record).items()}
            if per_asset:
                numbers[f"{HOLDOUT}assets"] = ",".join(per_asset)
            for asset, own in per_asset.items():
                numbers.update({f"{HOLDOUT}asset.{asset}.{k}": v for k, v in headline(own).items()})
            for key, value in {**numbers, **window}.items():
                text = "" if value is None else _param_value(value)
                client.set_model_version_tag(version.name, version.version, key, text)
        else:
            client.set_terminated(run_id)
    tracked = {
        "registered_model": None if version is None else version.name,
        "version": None if version is None else int(version.version),
        "run_id": run_id,
    }
    if version is not None:
        logger.info(
            "evaluation logged to %s version %s (run %s)", version.name, version.version, run_id
        )
    return tracked


def download_model_version(client: Any, name: str, version: str, destination: Path) -> Path:
    """Download a model version's bundle; return the path of its ``.pt`` model file.

    Parameters
    ----------
    client : mlflow.MlflowClient
        From :func:`session` (whose URI the download uses).
    name, version : str
        The registered model and version.
    destination : Path
        An empty directory to download into.

    Returns
    -------
    Path
        The bundle's model file; the checkpoint, scaler and manifest are beside it, to be
        verified by :func:`kallos_models.modelling.bundles.load_bundle`.

    Raises
    ------
    ArtifactError
        The version holds no bundle, or its manifest is not the one registered (its sha256
        differs from the version's ``manifest_sha256`` tag).
    """
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(destination),
            tracking_uri=mlflow.get_tracking_uri(),
            registry_uri=mlflow.get_registry_uri(),
        )
    )
    bundle_dir = local / "artifacts"
    manifests = sorted(bundle_dir.glob("*_manifest.json"))
    if len(manifests) != 1:
        raise ArtifactError(
            f"version {version} of {name} holds no kallos bundle (found {len(manifests)} "
            "manifests); register bundles with `kallos-run train --tracking-uri ...`"
        )
    manifest_file = manifests[0]
    expected = client.get_model_version(name, version).tags.get(TAG_MANIFEST)
    if expected and sha256_file(manifest_file) != expected:
        raise ArtifactError(
            f"the manifest of version {version} of {name} does not match the checksum "
            "registered with it: the artifacts were modified after training"
        )
    try:
        model_name = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]["model"]["name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"the manifest of version {version} of {name} is not valid") from exc
    if not isinstance(model_name, str) or Path(model_name).name != model_name:
        raise ArtifactError(f"the manifest of version {version} of {name} names no model file")
    return bundle_dir / model_name
