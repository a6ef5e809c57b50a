"""Files: the one naming rule, atomic writes, JSON encoding, checksums.

Every file kallos-models writes (params, bundle, metrics, plot) is named by :func:`run_stem`
and written by :func:`atomic_write`: a crash leaves the old file or the new one, never half.

Names: an id (asset, model, timeframe) made only of ASCII letters, digits, ``.``, ``_`` and
``-`` (not starting with ``.``) is used as is. Any other id has each other character replaced
by ``_`` (leading dots too) and gets ``-`` plus the first 8 hex digits of the id's sha256
appended, so ``BTC/USDT`` becomes ``BTC_USDT-<hash>``: never a path separator, never ``..``,
and two different ids never share a file name. Runs at a timeframe other than
:data:`DEFAULT_TIMEFRAME` carry it in their names (``gru_BTC_4h.pt``), so runs of one model
and asset at two timeframes never overwrite each other; the default timeframe keeps the
seed's names (``gru_BTC.pt``, ``gru_BTC_best_params.json``, ``BTC_evaluation_metrics.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from kallos_models.errors import ArtifactError

#: The timeframe whose file names carry no timeframe (the seed's names).
DEFAULT_TIMEFRAME = "1d"

_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_stem(text: str) -> str:
    """A file-name-safe form of ``text`` (an asset id, model name or timeframe).

    Parameters
    ----------
    text : str
        The id. No default.

    Returns
    -------
    str
        ``text`` itself when it is made of ASCII letters, digits, ``.``, ``_`` and ``-`` and
        does not start with ``.``; otherwise every other character (and each leading ``.``)
        replaced by ``_``, then ``-`` and the first 8 hex digits of ``sha256(text)``.

    Raises
    ------
    ArtifactError
        ``text`` is empty.
    """
    text = str(text)
    if not text:
        raise ArtifactError("an empty asset id or model name cannot name a file; pass one")
    if _SAFE.fullmatch(text) and not text.startswith("."):
        return text
    replaced = _UNSAFE_CHAR.sub("_", text)
    stripped = replaced.lstrip(".")
    replaced = "_" * (len(replaced) - len(stripped)) + stripped
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{replaced}-{digest}"


def run_stem(*ids: str, timeframe: str) -> str:
    """The stem of every file of one run: the safe ids joined by ``_``, then the timeframe.

    Parameters
    ----------
    *ids : str
        What the file is about, in order: ``("gru", "BTC")`` for a model's files, ``("BTC",)``
        for an evaluation's.
    timeframe : str
        The bar size; left out of the name when it is :data:`DEFAULT_TIMEFRAME`.

    Returns
    -------
    str
        ``gru_BTC`` at ``1d``, ``gru_BTC_4h`` at ``4h``.
    """
    parts = [safe_file_stem(part) for part in ids]
    if str(timeframe) != DEFAULT_TIMEFRAME:
        parts.append(safe_file_stem(timeframe))
    return "_".join(parts)


def basket_name(assets: Sequence[str], run_name: str | None = None) -> str:
    """The short name of a basket of assets, used in its files and study names.

    Parameters
    ----------
    assets : sequence of str
        The basket, two or more assets (the manifest keeps the full list). No default.
    run_name : str or None, default None
        The user's choice (``--run-name``); returned as is when given.

    Returns
    -------
    str
        ``run_name``; else the assets joined by ``-`` (``BTC-ETH-SOL``) for up to four
        assets of at most 40 characters in all; else the first three, the count of the rest
        and 8 hex digits of the whole list's sha256 (``BTC-ETH-SOL-17more-3fa2c1d0``), so
        that two long baskets never share a name.
    """
    if run_name:
        return str(run_name)
    joined = "-".join(assets)
    if len(assets) <= 4 and len(joined) <= 40:
        return joined
    digest = hashlib.sha256("\n".join(assets).encode("utf-8")).hexdigest()[:8]
    return f"{'-'.join(assets[:3])}-{len(assets) - 3}more-{digest}"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through a temporary file in the same directory, then ``os.replace``.

    A crash leaves the old file or the new one, never half of one; the temporary file is
    removed on any error. ``write`` receives the open binary handle.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of a bytes payload."""
    return atomic_write(path, lambda handle: handle.write(data))


def json_float(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for dates, paths, numpy and pandas values and sets."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):  # pandas.Timestamp
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        item = value.item()
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item
    if hasattr(value, "tolist"):  # numpy array
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-able")


def dumps(data: Any) -> str:
    """Indented JSON text (with a final newline) through :func:`json_default`; no NaN."""
    return json.dumps(data, indent=2, default=json_default, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, dumps(data).encode("utf-8"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks.

    Parameters
    ----------
    path : Path
        File to hash. No default.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
