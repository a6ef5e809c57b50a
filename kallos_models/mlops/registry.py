"""The model registry as ``kallos-run registry`` sees it: list, promote, roll back, archive.

Every trained bundle logged with a tracking URI is a version of the registered model
``{model}_{asset}_{timeframe}`` (:mod:`kallos_models.mlops.tracking`). A version is promoted by
pointing an alias (``champion`` by default) at it, and only when its latest hold-out
evaluation passes the thresholds given; each promotion is remembered on the registered model
(tag ``kallos.alias_history.<alias>``, a JSON list of versions) so :func:`rollback` can move the
alias back to the previous holder. :func:`archive` tags a version ``retired``: it cannot be
promoted, and a rollback passes over it. A version is loaded from the registry with a
``models:/name@alias`` or ``models:/name/version`` URI (:func:`downloaded_bundle`).

MLflow is reached through :func:`kallos_models.mlops.tracking.session` only; this module imports
nothing of it. See ``documentation/tracking.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kallos_models.config import Settings
from kallos_models.errors import ConfigError, GateRefusal, PromotionError, TrackingError
from kallos_models.mlops import tracking
from kallos_models.mlops.gates import Thresholds, failures
from kallos_models.mlops.tracking import HOLDOUT, TAG_RETIRED
from kallos_models.modelling.metrics import HEADLINE_METRICS
from kallos_models.stage_settings import run_label

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALIAS",
    "PromotionError",
    "Thresholds",
    "archive",
    "downloaded_bundle",
    "list_versions",
    "parse_models_uri",
    "promote",
    "registered_model_for",
    "rollback",
]

#: The alias promote and rollback move when none is named.
DEFAULT_ALIAS = "champion"
#: Registered model tag prefix holding the promotion history of an alias.
HISTORY_TAG = "kallos.alias_history."
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


# --------------------------------------------------------------------------------------------
# Looking things up
# --------------------------------------------------------------------------------------------


def registered_model_for(settings: Settings) -> str:
    """``{model}_{asset}_{timeframe}`` from ``model_name``, ``asset_id`` and ``timeframe``; a
    basket (``BTC,ETH,SOL``) is named by its short name (``--run-name``, else ``BTC-ETH-SOL``).

    Raises
    ------
    ConfigError
        No ``asset_id``.
    """
    if not settings.asset_id:
        raise ConfigError(
            "name the registered model: pass --asset-id (and --model-name, --timeframe); "
            "versions are registered as {model}_{asset}_{timeframe}, e.g. gru_BTC_1d"
        )
    return tracking.registered_model_name(
        settings.model_name, str(run_label(settings)), settings.timeframe
    )


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name@alias`` or ``models:/name/version`` into (name, version, alias).

    Raises
    ------
    ConfigError
        Any other form.
    """
    match = _MODELS_URI.match(str(uri))
    if match is None:
        raise ConfigError(
            f"{uri!r} is not a registry URI; write models:/NAME@ALIAS (e.g. "
            "models:/gru_BTC_1d@champion) or models:/NAME/VERSION (e.g. models:/gru_BTC_1d/2)"
        )
    return match["name"], match["version"], match["alias"]


def _model(client: Any, name: str) -> Any:
    escaped = name.replace("'", "\\'")
    if client.search_registered_models(filter_string=f"name = '{escaped}'"):
        return client.get_registered_model(name)
    names = sorted(m.name for m in client.search_registered_models(max_results=1000))
    known = (
        f"registered models: {', '.join(names)}"
        if names
        else "none is registered yet: train with --tracking-uri to register one"
    )
    raise TrackingError(f"no registered model {name!r}; {known}")


def _versions(client: Any, name: str) -> list[Any]:
    escaped = name.replace("'", "\\'")
    return sorted(client.search_model_versions(f"name = '{escaped}'"), key=lambda v: int(v.version))


def _aliases_of(model: Any) -> dict[str, str]:
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _describe_aliases(aliases: dict[str, str]) -> str:
    if not aliases:
        return "none is set: promote a version with `kallos-run registry promote`"
    return ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items()))


def _version(client: Any, name: str, version: str | int) -> Any:
    versions = _versions(client, name)
    for mv in versions:
        if str(mv.version) == str(version):
            return mv
    listed = ", ".join(str(v.version) for v in versions) or "none"
    raise TrackingError(f"{name} has no version {version}; versions: {listed}")


def _resolve(client: Any, name: str, version: str | None, alias: str | None) -> Any:
    model = _model(client, name)
    if alias is not None:
        aliases = _aliases_of(model)
        if alias not in aliases:
            raise TrackingError(
                f"{name} has no alias {alias!r}; aliases: {_describe_aliases(aliases)}"
            )
        version = aliases[alias]
    return _version(client, name, str(version))


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _row(name: str, mv: Any, aliases: dict[str, str]) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    created = mv.creation_timestamp
    return {
        "name": name,
        "version": int(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
        "retired": tags.get(TAG_RETIRED) == "true",
        "run_id": mv.run_id,
        "created": None
        if created is None
        else datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(timespec="seconds"),
        **{key: _number(tags.get(f"{HOLDOUT}{key}")) for key in HEADLINE_METRICS},
        "basket": tags.get("basket"),
        "per_asset": {
            asset: {k: _number(tags.get(f"{HOLDOUT}asset.{asset}.{k}")) for k in HEADLINE_METRICS}
            for asset in (tags.get(f"{HOLDOUT}assets") or "").split(",")
            if asset
        },
        "test_start": tags.get(f"{HOLDOUT}test_start"),
        "test_end": tags.get(f"{HOLDOUT}test_end"),
        "tags": tags,
    }


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version of the registered model of ``settings`` (all models without an asset).

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` (required), ``model_name``, ``asset_id``, ``timeframe``.

    Returns
    -------
    list of dict
        By model name, then version: ``name``, ``version``, ``aliases``, ``retired``,
        ``run_id``, ``created``, the hold-out ``rmse``, ``naive_rmse``, ``rmse_ratio``,
        ``directional_accuracy`` and ``sharpe`` of its latest evaluation (None before one),
        ``test_start``, ``test_end`` and all its ``tags``.

    Raises
    ------
    TrackingError
        The named registered model does not exist (the message lists those that do).
    """
    with tracking.session(settings) as client:
        if settings.asset_id:
            models = [_model(client, registered_model_for(settings))]
        else:
            models = sorted(client.search_registered_models(), key=lambda m: m.name)
        rows: list[dict[str, Any]] = []
        for model in models:
            full = client.get_registered_model(model.name)
            aliases = _aliases_of(full)
            rows += [_row(model.name, mv, aliases) for mv in _versions(client, model.name)]
    return rows


def _history(model: Any, alias: str) -> list[str]:
    text = (model.tags or {}).get(HISTORY_TAG + alias)
    try:
        data = json.loads(text) if text else []
    except ValueError:
        data = []
    return [str(v) for v in data] if isinstance(data, list) else []


def _check_alias(alias: str) -> str:
    if (
        not alias
        or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias)
        or re.fullmatch(r"[vV]\d+", alias)
    ):
        raise ConfigError(
            f"alias {alias!r} is not usable; use letters, digits, _ and -, starting with a "
            "letter (not v<number>, which MLflow reserves), e.g. champion"
        )
    return alias


def promote(
    settings: Settings,
    version: int | str,
    *,
    alias: str = DEFAULT_ALIAS,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` if its latest hold-out evaluation passes ``thresholds``.

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` (required), ``model_name``, ``asset_id`` (required), ``timeframe``.
    version : int or str
        The version to promote. No default.
    alias : str, default "champion"
        The alias to move.
    thresholds : Thresholds or None, default None
        None checks nothing beyond the existence of an evaluation.

    Returns
    -------
    dict
        ``registered_model``, ``alias``, ``version``, ``previous`` (the former holder or
        None), ``changed`` and the ``metrics`` checked.

    Raises
    ------
    GateRefusal
        The version fails a threshold; the message names each failing threshold and the
        value (a :class:`PromotionError`).
    PromotionError
        The version is retired or has no hold-out evaluation.
    TrackingError
        Unknown registered model or version (the message lists those that exist).
    """
    _check_alias(alias)
    name = registered_model_for(settings)
    with tracking.session(settings) as client:
        model = _model(client, name)
        mv = _version(client, name, version)
        row = _row(name, mv, _aliases_of(model))
        where = f"version {mv.version} of {name}"
        if row["retired"]:
            raise PromotionError(f"{where} is retired (archived); promote another version")
        if row["test_start"] is None:
            raise PromotionError(
                f"{where} has no hold-out evaluation to check; evaluate it first: kallos-run "
                f"evaluate --model-path models:/{name}/{mv.version} --asset-id ... "
                "--test-start-date ... --test-end-date ... --tracking-uri ..."
            )
        metrics = {key: row[key] for key in HEADLINE_METRICS}
        gate = thresholds or Thresholds()
        if gate.scope == "each_asset" and row["per_asset"]:
            failed = [
                f"{asset}: {why}"
                for asset, own in row["per_asset"].items()
                for why in failures(own, gate)
            ]
            metrics = {**metrics, "per_asset": row["per_asset"]}
        else:
            failed = failures(metrics, gate)
        if failed:
            raise GateRefusal(f"{where} was not promoted to {alias!r}: {'; '.join(failed)}")
        previous = _aliases_of(model).get(alias)
        changed = previous != str(mv.version)
        if changed:
            history = _history(model, alias)
            if previous is not None and (not history or history[-1] != previous):
                history.append(previous)  # the alias was set outside kallos-run
            history.append(str(mv.version))
            client.set_registered_model_alias(name, alias, str(mv.version))
            client.set_registered_model_tag(name, HISTORY_TAG + alias, json.dumps(history))
    logger.info("%s: %s -> version %s (was %s)", name, alias, mv.version, previous)
    return {
        "registered_model": name,
        "alias": alias,
        "version": int(mv.version),
        "previous": None if previous is None else int(previous),
        "changed": changed,
        "metrics": metrics,
    }


def rollback(settings: Settings, *, alias: str = DEFAULT_ALIAS) -> dict[str, Any]:
    """Move ``alias`` back to the version that held it before the current one.

    Retired and deleted versions in the history are passed over.

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` (required), ``model_name``, ``asset_id`` (required), ``timeframe``.
    alias : str, default "champion"
        The alias to move back.

    Returns
    -------
    dict
        ``registered_model``, ``alias``, ``version`` (now holding it), ``previous`` (the
        version it was taken from) and ``skipped`` (retired or deleted versions passed over).

    Raises
    ------
    TrackingError
        Unknown registered model, the alias is not set, or no earlier holder is left.
    """
    _check_alias(alias)
    name = registered_model_for(settings)
    with tracking.session(settings) as client:
        model = _model(client, name)
        aliases = _aliases_of(model)
        current = aliases.get(alias)
        if current is None:
            raise TrackingError(
                f"{name} has no alias {alias!r} to roll back; aliases: {_describe_aliases(aliases)}"
            )
        history = _history(model, alias)
        if not history or history[-1] != current:
            history.append(current)
        versions = {str(v.version): v for v in _versions(client, name)}
        history.pop()  # the current holder
        skipped: list[int] = []
        while history:
            candidate = versions.get(history[-1])
            if candidate is not None and (candidate.tags or {}).get(TAG_RETIRED) != "true":
                break
            skipped.append(int(history.pop()))
        if not history:
            raise TrackingError(
                f"{alias!r} of {name} has no earlier holder to roll back to (it is on version "
                f"{current}"
                + (f"; retired or deleted versions passed over: {skipped}" if skipped else "")
                + "); promote a version with `kallos-run registry promote` instead"
            )
        target = history[-1]
        client.set_registered_model_alias(name, alias, target)
        client.set_registered_model_tag(name, HISTORY_TAG + alias, json.dumps(history))
    logger.info("%s: %s rolled back from version %s to %s", name, alias, current, target)
    return {
        "registered_model": name,
        "alias": alias,
        "version": int(target),
        "previous": int(current),
        "skipped": skipped,
    }


def archive(settings: Settings, version: int | str) -> dict[str, Any]:
    """Tag ``version`` retired (``retired=true``, ``retired_at``); it keeps its files.

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` (required), ``model_name``, ``asset_id`` (required), ``timeframe``.
    version : int or str
        The version to retire. No default.

    Returns
    -------
    dict
        ``registered_model``, ``version``, ``retired`` (True) and ``changed``.

    Raises
    ------
    PromotionError
        The version holds an alias: move the alias first (promote or rollback).
    TrackingError
        Unknown registered model or version.
    """
    name = registered_model_for(settings)
    with tracking.session(settings) as client:
        model = _model(client, name)
        mv = _version(client, name, version)
        holding = sorted(a for a, v in _aliases_of(model).items() if v == str(mv.version))
        if holding:
            raise PromotionError(
                f"version {mv.version} of {name} holds alias {', '.join(holding)}; move it "
                "first (kallos-run registry rollback, or promote another version)"
            )
        changed = (mv.tags or {}).get(TAG_RETIRED) != "true"
        if changed:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            client.set_model_version_tag(name, str(mv.version), TAG_RETIRED, "true")
            client.set_model_version_tag(name, str(mv.version), "retired_at", stamp)
    logger.info("%s version %s retired", name, mv.version)
    return {
        "registered_model": name,
        "version": int(mv.version),
        "retired": True,
        "changed": changed,
    }


@contextlib.contextmanager
def downloaded_bundle(settings: Settings, uri: str) -> Iterator[tuple[Path, str, str]]:
    """Download the bundle a ``models:/`` URI names into a temporary directory.

    Parameters
    ----------
    settings : Settings
        ``tracking_uri`` (required).
    uri : str
        ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Yields
    ------
    (Path, str, str)
        The bundle's model file, for :func:`kallos_models.modelling.bundles.load_bundle` (which
        verifies the checksums), the registered model's name and the version resolved; the
        directory is removed afterwards.

    Raises
    ------
    ConfigError
        A malformed URI, or no tracking URI.
    TrackingError
        Unknown registered model, version or alias (the message lists those that exist).
    ArtifactError
        The version holds no bundle, or its manifest differs from the one registered.
    """
    name, version, alias = parse_models_uri(uri)
    with tempfile.TemporaryDirectory(prefix="kallos-registry-") as tmp:
        with tracking.session(settings) as client:
            mv = _resolve(client, name, version, alias)
            if (mv.tags or {}).get(TAG_RETIRED) == "true":
                logger.warning("version %s of %s is retired", mv.version, name)
            model_path = tracking.download_model_version(client, name, str(mv.version), Path(tmp))
        logger.info("loaded %s (version %s of %s) from the registry", uri, mv.version, name)
        yield model_path, name, str(mv.version)
