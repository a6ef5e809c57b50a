"""Model bundles: save and load a trained forecaster with its preprocessing and a manifest.

A bundle is four files in one directory, named from the model, the asset and (unless it is
the default ``1d``) the timeframe (:func:`kallos_models.files.run_stem`)::

    {stem}.pt              the Darts model object (its ``save``)
    {stem}.pt.ckpt         its Lightning checkpoint (weights), written by Darts beside it
    {stem}_scaler.pkl      the fitted FeaturePreprocessor (a BasketPreprocessor: global)
    {stem}_manifest.json   parameters, data range, versions, sha256 of the others, its digest

A regression model of the zoo (``linear``, ``lightgbm``) has no checkpoint: its ``.pt`` holds
the whole fitted model, and its bundle is the three other files (the manifest's
``model_kind`` is ``"regression"`` and its ``files`` has no ``checkpoint``).

with ``{stem}`` = ``{model}_{asset}`` at 1d (``gru_BTC``) and ``{model}_{asset}_{timeframe}``
otherwise (``gru_BTC_4h``).

A bundle *is* its manifest: files under a bundle's names without a manifest are the debris of
an interrupted save (or of an older version), which :func:`load_bundle` refuses and the next
:func:`save_bundle` replaces without ``overwrite``. Saving writes and fsyncs every file in a
hidden staging folder beside the bundle (``.{stem}.partial-{pid}-{token}``), seals the manifest
with a digest, then publishes with ``os.replace`` in one directory: the old bundle's manifest
is moved aside first, the new manifest moved in last
(:func:`kallos_models.modelling.bundle_files.publish`). A kill at any moment leaves the old
bundle, the new one, or no manifest (no bundle); never a manifest beside another save's
files. Leftover staging folders of dead processes are removed by the next save.

Loading verifies the three files' sha256 and the manifest's digest before anything is
unpickled, then that the manifest's train end, columns and timeframe agree with the
checksummed preprocessor and model. File names follow :mod:`kallos_models.files`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kallos_models.errors import ArtifactError
from kallos_models.files import (
    DEFAULT_TIMEFRAME,
    dumps,
    safe_file_stem,
    sha256_file,
)
from kallos_models.modelling import bundle_files, intervals
from kallos_models.modelling.basket import PREPROCESSOR_TYPES, Preprocessor
from kallos_models.modelling.bundle_files import BUNDLE_FORMAT, BundlePaths, bundle_paths
from kallos_models.modelling.ensemble import ENSEMBLE, member_files, remove_stale_members
from kallos_models.modelling.fitting import cuda_available

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "LIBRARY_DISTRIBUTIONS",
    "BundlePaths",
    "LoadedBundle",
    "bundle_paths",
    "check_overwrite",
    "is_registry_uri",
    "library_versions",
    "load_bundle",
    "safe_file_stem",
    "save_bundle",
    "sha256_file",
]

#: Distributions whose versions the manifest records (plus ``python``).
LIBRARY_DISTRIBUTIONS: tuple[str, ...] = (
    "darts",
    "torch",
    "pytorch-lightning",
    "pandas",
    "numpy",
    "scikit-learn",
    "optuna",
)


def is_registry_uri(path: str | Path | None) -> bool:
    """Whether ``path`` names a registered model version (``models:/name@alias`` or
    ``models:/name/version``) rather than a bundle file."""
    return path is not None and str(path).startswith("models:/")


def check_overwrite(paths: BundlePaths, *, overwrite: bool = False) -> None:
    """Refuse to replace an existing bundle unless ``overwrite``.

    A bundle exists when its manifest does. Model, checkpoint or scaler files without a
    manifest are not a bundle (an interrupted save, or an older version's leftovers):
    :func:`save_bundle` replaces them, with a warning, without ``overwrite``.

    Parameters
    ----------
    paths : BundlePaths
        The bundle about to be written. No default.
    overwrite : bool, default False
        Allow replacing an existing bundle.

    Raises
    ------
    ArtifactError
        The manifest exists and ``overwrite`` is False (the message names the first file
        of the bundle that exists and ``--overwrite``); or a folder stands where a bundle
        file goes.
    """
    for path in paths.files():
        if path.is_dir():
            raise ArtifactError(
                f"{path} is a folder, where a bundle file goes; move it away or choose "
                "another --output-path"
            )
    if overwrite or not (paths.manifest.exists() or paths.manifest.is_symlink()):
        return
    first = next(path for path in paths.files() if path.exists() or path.is_symlink())
    raise ArtifactError(
        f"bundle file {first} already exists; pass --overwrite (overwrite=True in "
        "Python) to replace the bundle, or choose another --output-path"
    )


def library_versions() -> dict[str, str | None]:
    """Versions of Python and of :data:`LIBRARY_DISTRIBUTIONS` (None when not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARY_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _save_model(model: Any, path: Path) -> None:
    """``model.save(path)`` with creation-time callbacks left out of the pickle.

    Lightning callbacks passed through ``pl_trainer_kwargs`` are training-time objects; Darts
    pickles them with the model's creation parameters, and a callback class defined in a
    function (or one Darts' restricted unpickler does not know) would make the file
    unloadable. They are removed for the save and put back afterwards.
    """
    saved: list[tuple[dict[str, Any], Any]] = []
    # an ensemble pickles its members' creation parameters too
    for part in (model, *(getattr(model, "forecasting_models", None) or ())):
        model_params = getattr(part, "_model_params", None)
        pl_kwargs = (
            model_params.get("pl_trainer_kwargs") if isinstance(model_params, dict) else None
        )
        if isinstance(pl_kwargs, dict) and pl_kwargs.get("callbacks"):
            saved.append((pl_kwargs, pl_kwargs["callbacks"]))
            pl_kwargs["callbacks"] = []
    try:
        model.save(str(path))
    finally:
        for pl_kwargs, callbacks in saved:
            pl_kwargs["callbacks"] = callbacks


def save_bundle(
    output_dir: str | Path,
    model_name: str,
    asset_id: str,
    model: Any,
    preprocessor: Preprocessor,
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> BundlePaths:
    """Write a bundle atomically: staged and fsynced in a hidden folder, then published.

    Parameters
    ----------
    output_dir : str or Path
        Directory of the bundle; created when missing. No default.
    model_name : str
        Registry key, used in the file names. No default.
    asset_id : str
        Asset, used in the file names (see :func:`safe_file_stem`); the manifest's
        ``timeframe`` is in them too unless it is the default. No default.
    model : darts TorchForecastingModel
        A fitted model. No default.
    preprocessor : FeaturePreprocessor or BasketPreprocessor
        The preprocessing fit on the model's training rows. No default.
    manifest : Mapping[str, Any]
        What to record (parameters, data range, ...); JSON-able, with timestamps, paths and
        numpy scalars converted. No default.
    overwrite : bool, default False
        Replace an existing bundle.

    Returns
    -------
    BundlePaths

    Notes
    -----
    The manifest written is ``manifest`` plus ``bundle_format``, ``kallos_version``,
    ``created_at`` (UTC, ISO), ``versions`` (python, darts, torch, pytorch-lightning, pandas,
    numpy, scikit-learn, optuna) and ``files``: ``{role: {"name": file name, "sha256": hex}}``
    for the roles ``model``, ``checkpoint`` and ``scaler``, then ``manifest_digest``
    (:func:`kallos_models.modelling.bundle_files.seal_manifest`).

    Everything is written and fsynced in ``.{stem}.partial-{pid}-{token}`` in
    ``output_dir``, then published by renames in that directory, the old manifest moved
    aside first and the new one in last (:func:`kallos_models.modelling.bundle_files.publish`).
    Before that, staging folders left by dead processes and older versions' ``.tmp`` files
    are removed, and files under the bundle's names without a manifest are replaced (with a
    warning). On an error the staging folder is removed, the old bundle put back, and the
    error re-raised.

    Raises
    ------
    ArtifactError
        The bundle's manifest exists and ``overwrite`` is False; a folder stands where a
        bundle file goes; the preprocessor is not fitted; the model has no trained weights
        (Darts wrote no checkpoint).
    """
    from kallos_models import __version__

    paths = bundle_paths(
        output_dir, model_name, asset_id, str(manifest.get("timeframe") or DEFAULT_TIMEFRAME)
    )
    check_overwrite(paths, overwrite=overwrite)
    if not isinstance(preprocessor, PREPROCESSOR_TYPES) or not preprocessor.fitted:
        raise ArtifactError(
            "the preprocessor is not a fitted FeaturePreprocessor; save the one returned by "
            "prepare_darts_timeseries"
        )
    directory = paths.model.parent
    directory.mkdir(parents=True, exist_ok=True)
    stem = paths.model.name[: -len(".pt")]
    bundle_files.remove_leftovers(directory, stem, [path.name for path in paths.files()])
    if not paths.manifest.exists():
        debris = [path.name for path in paths.files() if path.exists() or path.is_symlink()]
        if debris:
            logger.warning(
                "%s: %s without a manifest are not a bundle (an interrupted save, or an older "
                "version's); replacing them",
                directory,
                ", ".join(debris),
            )

    staging = bundle_files.staging_dir(directory, stem)
    staged = paths.moved_to(staging)
    published = False
    try:
        _save_model(model, staged.model)  # a torch model: Darts writes ".ckpt" beside it
        if model_name == ENSEMBLE:  # and its deep members' files beside it
            found = tuple(member_files(staged.model))
            staged = dataclasses.replace(staged, members=found)
            paths = dataclasses.replace(paths, members=tuple(directory / p.name for p in found))
        if staged.checkpoint is not None and not staged.checkpoint.exists():
            raise ArtifactError(
                "the model has no trained weights (Darts wrote no checkpoint); fit it before "
                "saving the bundle"
            )
        with open(staged.scaler, "wb") as handle:
            pickle.dump(preprocessor, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        for _, path in staged.data_files():
            bundle_files.fsync_file(path)
        files = {
            role: {"name": path.name, "sha256": sha256_file(path)}
            for role, path in staged.data_files()
        }
        sealed = bundle_files.seal_manifest(
            {
                **dict(manifest),
                "bundle_format": BUNDLE_FORMAT,
                "kallos_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": library_versions(),
                "model_kind": (
                    "ensemble"
                    if model_name == ENSEMBLE
                    else "torch"
                    if paths.checkpoint is not None
                    else "regression"
                ),
                "files": files,
            }
        )
        with open(staged.manifest, "w", encoding="utf-8") as handle:
            handle.write(dumps(sealed))
            handle.flush()
            os.fsync(handle.fileno())
        bundle_files.fsync_dir(staging)
        bundle_files.publish(
            [
                (new, final)
                for (_, new), (_, final) in zip(
                    staged.data_files(), paths.data_files(), strict=True
                )
            ],
            staging,
            manifest=(staged.manifest, paths.manifest),
        )
        published = True
        remove_stale_members(paths.model, paths.members)
    finally:
        kept = staging / "previous"
        if not published and kept.is_dir() and any(kept.iterdir()):
            logger.error("the previous bundle's files could not be put back; they are in %s", kept)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved bundle %s", paths.manifest)
    return paths


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle read back by :func:`load_bundle`.

    ``model`` is the model as forecasting uses it: a conformal bundle's base model comes in
    its Darts conformal wrapper (:func:`kallos_models.modelling.intervals.wrap_model`).
    """

    model: Any
    preprocessor: Preprocessor
    manifest: dict[str, Any]
    paths: BundlePaths

    @property
    def quantiles(self) -> tuple[float, ...] | None:
        """The quantiles the model forecasts, or None for a point model."""
        return intervals.record_quantiles(self.manifest.get("intervals"))

    def history(self, horizon: int) -> int:
        """Bars a forecast needs beyond the base model's lookback (conformal calibration)."""
        return intervals.calibration_history(self.manifest.get("intervals"), horizon)


def _manifest_beside(model_path: Path) -> Path:
    name = model_path.name
    stem = name[: -len(".pt")] if name.endswith(".pt") else model_path.stem
    return model_path.with_name(f"{stem}_manifest.json")


def _verify(path: Path, expected: str, role: str) -> None:
    if not path.is_file():
        raise ArtifactError(
            f"{role} file {path} does not exist; the bundle is incomplete: retrain or restore it"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"checksum mismatch for {path} ({role}): the bundle was modified after training; "
            "retrain or restore it"
        )


def _member_files(
    files: Mapping[str, Any], model_file: Path, manifest_file: Path
) -> list[tuple[str, Path]]:
    """``(role, path)`` of an ensemble's member files, beside the model file (where Darts
    reads them), in role order."""
    roles = sorted((r for r in files if r.startswith("member_")), key=lambda r: int(r[7:]))
    out = []
    for role in roles:
        name = files[role].get("name") if isinstance(files[role], Mapping) else None
        if (
            not isinstance(name, str)
            or Path(name).name != name
            or not name.startswith(f"{model_file.name}.")
        ):
            raise ArtifactError(
                f"manifest {manifest_file} names no valid file for {role} of the ensemble "
                f"(got {name!r}); retrain or restore the bundle"
            )
        out.append((role, model_file.with_name(name)))
    return out


def _fit_trainer_to_machine(model: Any, cuda: bool) -> None:
    """Without CUDA, make a model trained on a GPU predict on the CPU."""
    if cuda:
        return
    params = getattr(model, "trainer_params", None)
    if not isinstance(params, dict):
        return
    accelerator = params.get("accelerator")
    if accelerator not in (None, "auto", "cpu"):
        logger.info(
            "no CUDA device: the model trained with accelerator=%r runs on the CPU", accelerator
        )
    model.to_cpu()  # accelerator "cpu", drops "devices"
    if str(model.trainer_params.get("precision")) in ("16-mixed", "16"):
        # mixed precision keeps float32 weights; Lightning has no 16-mixed on the CPU
        model.trainer_params["precision"] = "32-true"


def load_bundle(
    model_path: str | Path,
    scaler_path: str | Path | None = None,
    *,
    manifest_path: str | Path | None = None,
) -> LoadedBundle:
    """Verify a bundle's checksums and manifest digest, then load it.

    Parameters
    ----------
    model_path : str or Path
        The ``{stem}.pt`` file; its checkpoint is ``model_path + ".ckpt"``. No
        default.
    scaler_path : str or Path or None, default None
        The preprocessor pickle; None uses the file the manifest names, in the manifest's
        directory. Its sha256 must match the manifest either way.
    manifest_path : str or Path or None, default None
        The manifest; None uses ``{stem}_manifest.json`` beside ``model_path``.

    Returns
    -------
    LoadedBundle
        The model is loaded with ``map_location="cpu"`` when CUDA is not available, and its
        trainer set to the CPU (a bundle trained on a GPU predicts on a CPU-only machine). A
        conformal bundle's model is wrapped as its manifest's ``intervals`` record says.

    Raises
    ------
    ArtifactError
        ``model_path`` is a folder; the model file, checkpoint, scaler or manifest is
        missing; the manifest is not valid; a checksum does not match, or the manifest was
        edited (its digest does not match; both checked before anything is unpickled); the
        scaler file does not hold a FeaturePreprocessor; the manifest's ``train_end``,
        columns or ``timeframe`` differ from those of the checksummed preprocessor and model.
        A format-1 manifest (no digest) loads with a logged warning.
    """
    model_file = Path(model_path)
    if model_file.is_dir():
        found = sorted(p.name for p in model_file.glob("*.pt") if _manifest_beside(p).is_file())
        raise ArtifactError(
            f"{model_file} is a folder, not a bundle's model file; pass the {{stem}}.pt file "
            f"of a bundle in it (with a manifest there: {', '.join(found) or 'none'})"
        )
    manifest_file = (
        Path(manifest_path) if manifest_path is not None else _manifest_beside(model_file)
    )
    if not model_file.is_file():
        either = (
            f", and its manifest {manifest_file} does not exist either"
            if not manifest_file.exists()
            else ""
        )
        raise ArtifactError(
            f"model file {model_file} does not exist{either}; train one with `kallos-run "
            "train` or check --model-path"
        )
    manifest = bundle_files.read_manifest(manifest_file)
    files = manifest["files"]
    checkpoint_file = Path(f"{model_file}.ckpt") if "checkpoint" in files else None
    if scaler_path is not None:
        scaler_file = Path(scaler_path)
    else:
        name = files["scaler"].get("name")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ArtifactError(
                f"manifest {manifest_file} names no valid scaler file; pass --scaler-path"
            )
        scaler_file = manifest_file.with_name(name)

    _verify(model_file, files["model"]["sha256"], "model")
    if checkpoint_file is not None:
        _verify(checkpoint_file, files["checkpoint"]["sha256"], "checkpoint")
    _verify(scaler_file, files["scaler"]["sha256"], "scaler")
    members = _member_files(files, model_file, manifest_file)
    for role, path in members:
        _verify(path, files[role]["sha256"], f"ensemble {role}")
    bundle_files.verify_manifest(manifest, manifest_file)

    with open(scaler_file, "rb") as handle:
        preprocessor = pickle.load(handle)
    if not isinstance(preprocessor, PREPROCESSOR_TYPES):
        raise ArtifactError(
            f"scaler file {scaler_file} holds a {type(preprocessor).__name__}, not a "
            "FeaturePreprocessor; pass the bundle's _scaler.pkl"
        )

    cuda = cuda_available()
    load_kwargs: dict[str, Any] = {} if cuda else {"map_location": "cpu"}
    if manifest.get("model_kind") == "ensemble":  # Darts reads the members' files beside it
        from darts.models.forecasting.ensemble_model import EnsembleModel

        model = EnsembleModel.load(str(model_file), **load_kwargs)
    elif checkpoint_file is None:  # a regression model: the .pt is the whole fitted model
        from darts.models.forecasting.forecasting_model import ForecastingModel

        model = ForecastingModel.load(str(model_file))
    else:
        from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel

        model = TorchForecastingModel.load(str(model_file), **load_kwargs)
    bundle_files.check_manifest_agrees(manifest, preprocessor, model, manifest_file)
    for part in getattr(model, "forecasting_models", None) or (model,):
        _fit_trainer_to_machine(part, cuda)
    model = intervals.wrap_model(model, manifest.get("intervals"))
    logger.info("loaded bundle %s", manifest_file)
    return LoadedBundle(
        model=model,
        preprocessor=preprocessor,
        manifest=manifest,
        paths=BundlePaths(
            model=model_file,
            checkpoint=checkpoint_file,
            scaler=scaler_file,
            manifest=manifest_file,
            members=tuple(path for _, path in members),
        ),
    )
