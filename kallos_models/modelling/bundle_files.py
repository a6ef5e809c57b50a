"""The files of a bundle on disk: staging, publishing, leftovers, and the manifest's digest.

:mod:`kallos_models.modelling.bundles` is the API (``save_bundle``, ``load_bundle``); this
module does the file work beneath it:

- **Staging.** A bundle is written into a hidden folder beside it,
  ``.{stem}.partial-{pid}-{token}``, every file under its final name and fsynced, the folder
  fsynced too, before anything appears under the bundle's own names.
- **Publishing.** :func:`publish` moves the old bundle's files (manifest first) into the
  staging folder, then the new files into place (manifest last), with ``os.replace`` inside
  one directory. A bundle *is* its manifest: files without one are the debris of an
  interrupted save, which loading refuses and the next save replaces without
  ``--overwrite``. On an error the new files are taken out again and the old ones put back.
- **Leftovers.** :func:`remove_leftovers` deletes the staging folders of processes that are no
  longer running and the ``.{name}.{hex}.tmp`` files of older versions.
- **Names.** :class:`BundlePaths` and :func:`bundle_paths`: the files of a bundle (three for
  a regression model of the zoo, which has no checkpoint), re-exported by ``bundles``.
- **Tamper evidence.** :func:`seal_manifest` adds ``manifest_digest``, the sha256 of the
  canonical JSON of every other field (:func:`manifest_digest`); :func:`read_manifest`
  verifies it, and :func:`check_manifest_agrees` compares the guarded facts with the
  checksummed model and preprocessor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.config import timeframe_to_timedelta
from kallos_models.errors import ArtifactError, KallosError
from kallos_models.files import DEFAULT_TIMEFRAME, json_default, run_stem
from kallos_models.modelling import zoo
from kallos_models.modelling.ensemble import ENSEMBLE

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "FILE_ROLES",
    "BundlePaths",
    "bundle_paths",
    "MANIFEST_DIGEST_KEY",
    "UNSEALED_FORMAT",
    "canonical_json",
    "check_manifest_agrees",
    "fsync_dir",
    "fsync_file",
    "manifest_digest",
    "manifest_indicators",
    "publish",
    "read_manifest",
    "remove_leftovers",
    "seal_manifest",
    "staging_dir",
    "verify_manifest",
]

#: Version of the bundle layout, written to the manifest as ``bundle_format``. 2: the
#: manifest carries ``manifest_digest``.
BUNDLE_FORMAT = 2

#: The last format whose manifests carry no digest; they load, with a warning.
UNSEALED_FORMAT = 1

#: The manifest key holding ``"sha256:<hex>"`` of the canonical JSON of all other keys.
MANIFEST_DIGEST_KEY = "manifest_digest"

#: File roles checked by sha256 on load.
FILE_ROLES: tuple[str, ...] = ("model", "checkpoint", "scaler")

_PARTIAL = ".partial-"


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """The one serialisation the digest is taken over: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of :func:`canonical_json` of ``manifest`` without its digest key.

    Parameters
    ----------
    manifest : Mapping[str, Any]
        A manifest as read back from JSON. No default.

    Returns
    -------
    str
        ``"sha256:"`` and 64 lowercase hex digits.
    """
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST_KEY}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` made JSON (dates, paths, numpy values converted) plus its digest.

    The digest is taken over the JSON as it will be read back, so loading recomputes the
    same bytes.
    """
    text = json.dumps(
        {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST_KEY},
        default=json_default,
        allow_nan=False,
    )
    data: dict[str, Any] = json.loads(text)
    data[MANIFEST_DIGEST_KEY] = manifest_digest(data)
    return data


def _edited(path: Path, detail: str) -> ArtifactError:
    return ArtifactError(
        f"manifest of bundle {path} was edited: {detail}; retrain or restore it "
        "(`kallos-run train --overwrite`)"
    )


def _check_digest(data: dict[str, Any], path: Path) -> None:
    fmt = data.get("bundle_format")
    if fmt is None:
        raise _edited(path, "its bundle_format is missing (save_bundle always writes one)")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < UNSEALED_FORMAT:
        raise _edited(path, f"its bundle_format {fmt!r} is not a format kallos-models wrote")
    if fmt > BUNDLE_FORMAT:
        raise ArtifactError(
            f"bundle {path} has bundle_format {fmt}, newer than this kallos-models reads "
            f"({BUNDLE_FORMAT}); upgrade kallos-models or retrain the bundle"
        )
    claimed = data.get(MANIFEST_DIGEST_KEY)
    if claimed is None and fmt == UNSEALED_FORMAT:
        logger.warning(
            "bundle %s has format %d: its manifest carries no digest, so an edit of it is "
            "not detected (the model, checkpoint and scaler checksums still are); retrain to "
            "make it tamper-evident",
            path,
            fmt,
        )
        return
    if not isinstance(claimed, str):
        raise _edited(path, f"its {MANIFEST_DIGEST_KEY} is missing or not a string")
    if not hmac.compare_digest(claimed, manifest_digest(data)):
        raise _edited(path, f"its contents no longer match its {MANIFEST_DIGEST_KEY}")


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest and check its shape: a JSON object with the three files' checksums.
    Its digest is checked by :func:`verify_manifest`, after the files' checksums.

    Raises
    ------
    ArtifactError
        Missing, not JSON, not an object, or no checksums.
    """
    if not path.is_file():
        raise ArtifactError(
            f"manifest {path} does not exist, so there is no complete bundle there (a save "
            "was interrupted, or the files were copied without it): re-run `kallos-run train` "
            "(files without a manifest are replaced, no --overwrite needed), or pass the "
            "manifest's path"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"manifest {path} is not valid JSON ({exc}); retrain or restore the bundle"
        ) from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"manifest {path} is not a JSON object; retrain or restore the bundle")
    files = data.get("files")
    # a regression model's or an ensemble's bundle has no checkpoint of its own; the digest
    # guards model_kind
    kind = data.get("model_kind")
    roles = [r for r in FILE_ROLES if r != "checkpoint" or kind not in ("regression", "ensemble")]
    if not isinstance(files, dict) or not all(
        isinstance(files.get(role), dict) and isinstance(files[role].get("sha256"), str)
        for role in roles
    ):
        raise ArtifactError(
            f"manifest {path} has no checksums for the model, checkpoint and scaler files; "
            "it was not written by save_bundle: retrain with `kallos-run train`"
        )
    return data


def verify_manifest(data: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose digest is missing or does not match its contents.

    A format-1 manifest (written before digests) has none: it is accepted with a warning.

    Raises
    ------
    ArtifactError
        ``manifest of bundle X was edited: ...``; or a format newer than :data:`BUNDLE_FORMAT`.
    """
    _check_digest(data, path)


def _as_utc_naive(value: Any) -> Any:
    stamp = pd.Timestamp(value)
    return stamp.tz_convert(None) if stamp.tzinfo is not None else stamp


def check_manifest_agrees(
    manifest: Mapping[str, Any], preprocessor: Any, model: Any, path: Path
) -> None:
    """Compare the manifest's guarded facts with the checksummed files that also hold them.

    ``train_end``, ``feature_columns``, ``feature_groups`` and ``target_col`` against the
    pickled preprocessor, ``timeframe`` against the bar spacing of the model's own training
    series. A key the manifest lacks, or a fact a file does not carry, is skipped. This
    catches an edit of these fields even in a format-1 manifest (no digest), or one whose
    digest was recomputed.

    Raises
    ------
    ArtifactError
        A fact differs: ``manifest of bundle X was edited: ...``.
    """
    recorded_end = getattr(preprocessor, "train_end", None)
    if manifest.get("train_end") is not None and recorded_end is not None:
        try:
            same = _as_utc_naive(manifest["train_end"]) == _as_utc_naive(recorded_end)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise _edited(
                path,
                f"its train_end {manifest['train_end']!r} is not the last training bar "
                f"({recorded_end}) in the checksummed scaler file",
            )
    for key, fact in (
        ("feature_columns", getattr(preprocessor, "feature_columns", None)),
        ("target_col", getattr(preprocessor, "target_col", None)),
        ("feature_groups", getattr(preprocessor, "feature_groups", None)),
    ):
        if key not in manifest or fact is None:
            continue
        expected = json.loads(json.dumps(fact, default=json_default))
        if manifest[key] != expected:
            raise _edited(
                path, f"its {key} {manifest[key]!r} is not the checksummed scaler's {expected!r}"
            )
    series = getattr(model, "training_series", None)
    index = getattr(series, "time_index", None)
    spacing = index[1] - index[0] if index is not None and len(index) >= 2 else None
    if manifest.get("timeframe") is not None and isinstance(spacing, timedelta):
        try:
            claimed = timeframe_to_timedelta(str(manifest["timeframe"]))
        except KallosError:
            claimed = None
        if claimed != spacing:
            raise _edited(
                path,
                f"its timeframe {manifest['timeframe']!r} is not the bar size the model was "
                f"trained on ({spacing})",
            )


# -- staging and publishing ------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new names) to the disk; a no-op on Windows."""
    if os.name == "nt":  # pragma: no cover - no directory handles there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(directory: Path, stem: str) -> Path:
    """A new, empty staging folder ``.{stem}.partial-{pid}-{token}`` in ``directory``."""
    path = directory / f".{stem}{_PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder with our pid and another token is an earlier process's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - e.g. Windows: assume alive, leave it
        return True
    return True


def remove_leftovers(directory: Path, stem: str, names: Sequence[str]) -> list[Path]:
    """Delete what interrupted saves of bundle ``stem`` left in ``directory``.

    That is: staging folders ``.{stem}.partial-{pid}-{token}`` whose process is not running
    on this machine, and the ``.{name}.{8 hex}.tmp`` files (``.tmp.ckpt`` too) that versions
    before bundle format 2 wrote beside the bundle, for each of the bundle's file ``names``.

    Returns
    -------
    list of Path
        What was removed.
    """
    partial = re.compile(re.escape(f".{stem}{_PARTIAL}") + r"(\d+)-[0-9a-f]{8}")
    old_temp = re.compile(
        r"\.(?:" + "|".join(re.escape(n) for n in names) + r")\.[0-9a-f]{8}\.tmp(?:\.ckpt)?"
    )
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = partial.fullmatch(entry.name)
        try:
            if match and entry.is_dir() and not entry.is_symlink():
                if _running(int(match.group(1))):
                    logger.info("%s belongs to a running process; left alone", entry)
                    continue
                shutil.rmtree(entry)
                removed.append(entry)
            elif old_temp.fullmatch(entry.name) and entry.is_file():
                entry.unlink()
                removed.append(entry)
        except OSError as exc:  # pragma: no cover - best effort
            logger.warning("could not remove the leftover %s: %s", entry, exc)
    if removed:
        logger.warning(
            "removed what an interrupted save left behind: %s",
            ", ".join(p.name for p in removed),
        )
    return removed


def publish(
    staged: Sequence[tuple[Path, Path]], staging: Path, *, manifest: tuple[Path, Path]
) -> None:
    """Move the staged files to their final names, the manifest last.

    Parameters
    ----------
    staged : sequence of (staged path, final path)
        The data files (model, checkpoint, scaler), in the order they are moved in.
    staging : Path
        The staging folder; the old bundle's files are moved into ``staging/previous``.
    manifest : (staged path, final path)
        The manifest, moved in last.

    Notes
    -----
    The old bundle's files are moved aside first, its manifest first: from that rename on
    the old bundle is no longer at the path, and until the new manifest lands no bundle is
    (files there without a manifest are refused by loading). On an exception the new files
    are removed and the old ones moved back, manifest last.
    """
    order = [*staged, manifest]
    finals = [final for _, final in order]
    old = [manifest[1], *(final for _, final in staged)]  # manifest first
    previous = staging / "previous"
    aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for final in old:
            if final.exists() or final.is_symlink():
                previous.mkdir(exist_ok=True)
                target = previous / final.name
                os.replace(final, target)
                aside.append((final, target))
        for source, final in order:
            os.replace(source, final)
            placed.append(final)
    except BaseException:
        for final in reversed(placed):  # the manifest, when placed, goes first
            try:
                final.unlink()
            except OSError as exc:  # pragma: no cover - best effort
                logger.warning("could not take back %s: %s", final, exc)
        for final, target in reversed(aside):  # the old manifest comes back last
            try:
                os.replace(target, final)
            except OSError as exc:  # pragma: no cover - best effort
                logger.error("could not restore %s from %s: %s", final, target, exc)
        raise
    try:
        fsync_dir(finals[-1].parent)
    except OSError as exc:  # pragma: no cover - the renames are done; only durability waits
        logger.warning("could not fsync %s: %s", finals[-1].parent, exc)


def manifest_indicators(manifest: Mapping[str, Any], columns: list[str]) -> dict[str, Any]:
    """The indicator spec the bundle was trained with, for the columns it needs.

    Bundles from before indicators became data carry none: their columns are the default
    spec's, which reproduces what was stored then.
    """
    from kallos_models.data.features import DEFAULT_INDICATORS

    recorded = manifest.get("indicators")
    if recorded is None:
        return {c: DEFAULT_INDICATORS[c] for c in columns if c in DEFAULT_INDICATORS}
    return dict(recorded)


# --------------------------------------------------------------------------------------------
# The bundle's file names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundlePaths:
    """The files of a bundle; ``checkpoint`` is None for a regression model's and an
    ensemble's; ``members`` are an ensemble's deep members' files (Darts' model file and
    checkpoint of each, ``{stem}.pt.{Class}_{i}.pt[.ckpt]``), empty for any other bundle."""

    model: Path
    checkpoint: Path | None
    scaler: Path
    manifest: Path
    members: tuple[Path, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """``{"model": ..., "checkpoint": ..., "scaler": ..., "manifest": ...}`` as strings
        (``checkpoint`` None when the bundle has none), and ``members`` (a list) when the
        bundle has member files."""
        out: dict[str, Any] = {
            "model": str(self.model),
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "scaler": str(self.scaler),
            "manifest": str(self.manifest),
        }
        if self.members:
            out["members"] = [str(path) for path in self.members]
        return out

    def files(self) -> tuple[Path, ...]:
        """The bundle's paths, manifest last."""
        return (*(path for _, path in self.data_files()), self.manifest)

    def data_files(self) -> list[tuple[str, Path]]:
        """``(role, path)`` of the files the manifest checksums, in publishing order; an
        ensemble's member files have the roles ``member_0``, ``member_1`` ..."""
        roles = (("model", self.model), ("checkpoint", self.checkpoint), ("scaler", self.scaler))
        members = [(f"member_{i}", path) for i, path in enumerate(self.members)]
        return [(role, path) for role, path in (*roles, *members) if path is not None]

    def moved_to(self, folder: Path) -> BundlePaths:
        """The same file names in ``folder`` (a staging folder)."""
        return BundlePaths(
            model=folder / self.model.name,
            checkpoint=None if self.checkpoint is None else folder / self.checkpoint.name,
            scaler=folder / self.scaler.name,
            manifest=folder / self.manifest.name,
            members=tuple(folder / path.name for path in self.members),
        )


def bundle_paths(
    output_dir: str | Path, model_name: str, asset_id: str, timeframe: str = DEFAULT_TIMEFRAME
) -> BundlePaths:
    """The paths of the bundle of ``model_name`` for ``asset_id`` in ``output_dir``.

    Parameters
    ----------
    output_dir : str or Path
        Directory of the bundle. No default.
    model_name : str
        Registry key, e.g. ``"gru"``. No default.
    asset_id : str
        Asset, e.g. ``"BTC"``; made file-name-safe with :func:`safe_file_stem`. No default.
    timeframe : str, default "1d"
        Bar size; in the names unless it is the default (:func:`kallos_models.files.run_stem`).

    Returns
    -------
    BundlePaths
        ``{stem}.pt``, ``{stem}.pt.ckpt``, ``{stem}_scaler.pkl`` and ``{stem}_manifest.json``
        in ``output_dir``, ``{stem}`` from :func:`kallos_models.files.run_stem`; no
        checkpoint for a regression model of the zoo.
    """
    base = Path(output_dir)
    stem = run_stem(model_name, asset_id, timeframe=timeframe)
    spec = zoo.MODEL_ZOO.get(model_name)
    return BundlePaths(
        model=base / f"{stem}.pt",
        checkpoint=(
            base / f"{stem}.pt.ckpt"
            if model_name != ENSEMBLE and (spec is None or spec.deep)
            else None
        ),
        scaler=base / f"{stem}_scaler.pkl",
        manifest=base / f"{stem}_manifest.json",
    )
