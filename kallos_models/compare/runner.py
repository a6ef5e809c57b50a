"""Evaluate several bundles on one hold-out window and rank them: :func:`compare_models`.

This is orchestration above the evaluate stage (a stage never imports another, and ranking
several evaluations is no single stage's job): each bundle is loaded and verified once, then
judged by :func:`kallos_models.stages.evaluate.holdout.evaluate_loaded` exactly as
``kallos-run evaluate`` judges it, with the same settings but the bundle's own model name; a
``models:/`` URI is resolved by :func:`kallos_models.mlops.registry.downloaded_bundle`, as
:func:`kallos_models.pipeline.evaluate` resolves it. The rows are built by
:mod:`kallos_models.compare.board`.

Everything is written under a hidden staging folder in the output folder and moved into place
only once every model is scored, so a refused or failed comparison leaves no file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kallos_models.compare.board import ScoredModel, leaderboard_rows
from kallos_models.compare.plot import plot_leaderboard
from kallos_models.config import Settings, asset_list, parse_date
from kallos_models.errors import ConfigError, DataError, KallosError
from kallos_models.files import basket_name, run_stem, safe_file_stem, write_json
from kallos_models.modelling.basket import asset_view, basket_assets
from kallos_models.modelling.bundles import is_registry_uri
from kallos_models.modelling.metrics import headline
from kallos_models.stage_settings import EvaluateSettings, evaluate_settings, require

if TYPE_CHECKING:
    from kallos_models.stages.evaluate import EvaluationResult

logger = logging.getLogger(__name__)

#: What the summary copies from the evaluation records (the same for every model).
_WINDOW_KEYS = ("test_start", "test_end", "first_forecast", "last_forecast", "n", "horizon")

__all__ = ["CompareResult", "compare_models", "distinct_sources"]


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare_models` ranked and wrote.

    Attributes
    ----------
    summary
        The leaderboard and its context, exactly as written to ``json_path``.
    json_path
        ``{output_path}/{stem}_leaderboard.json``, ``{stem}`` the asset plus the timeframe
        unless it is ``1d`` (:func:`kallos_models.files.run_stem`).
    plot_path
        ``{output_path}/{stem}_leaderboard.png``.
    evaluations
        Each bundle's :class:`~kallos_models.stages.evaluate.EvaluationResult`, in the order
        the bundles were given; its files are in ``{output_path}/{model}/``.
    """

    summary: dict[str, Any]
    json_path: Path
    plot_path: Path
    evaluations: tuple[EvaluationResult, ...]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The leaderboard rows, best first."""
        return list(self.summary["leaderboard"])


@dataclass(frozen=True)
class _Bundle:
    """A bundle to compare: where it came from, its local model file and manifest facts."""

    source: str
    local: Path
    model_name: str
    asset_id: str
    timeframe: str
    train_end: pd.Timestamp | None
    label: str = ""
    #: A global model's basket; empty for a single-asset model.
    assets: tuple[str, ...] = ()
    #: The verified bundle, loaded once and evaluated as it is.
    loaded: Any = None

    @property
    def held(self) -> tuple[str, ...]:
        """The assets this bundle forecasts."""
        return self.assets or (self.asset_id,)


def distinct_sources(model_paths: Sequence[str | Path]) -> list[str]:
    """The bundles to compare, each once, in the order given.

    A local path given twice (also as another spelling of the same file) is scored once, with
    a warning.

    Raises
    ------
    ConfigError
        Fewer than two different bundles.
    """
    seen: dict[str, str] = {}
    for path in model_paths:
        key = str(path) if is_registry_uri(path) else str(Path(path).resolve())
        if key in seen:
            logger.warning(
                "--model-path %s names the same bundle as %s: scored once", path, seen[key]
            )
            continue
        seen[key] = str(path)
    if len(seen) < 2:
        given = ", ".join(seen.values()) or "none"
        raise ConfigError(
            f"compare ranks at least two different bundles, got {len(seen)} ({given}): pass "
            "--model-path once per bundle (--model-path A.pt --model-path B.pt); to judge one "
            "bundle use `kallos-run evaluate`"
        )
    return list(seen.values())


def _naming(exc: KallosError, source: str) -> None:
    """Make ``exc``'s message start with the bundle it is about (its type kept)."""
    exc.args = (f"{source}: {exc}",)


def _open(stack: contextlib.ExitStack, settings: Settings, source: str) -> _Bundle:
    """The local bundle of ``source`` (a registry URI downloaded and verified for the life of
    ``stack``), verified by ``load_bundle``, and its manifest's facts."""
    from kallos_models.modelling.bundles import load_bundle

    local = Path(source)
    try:
        if is_registry_uri(source):
            from kallos_models.mlops import registry

            local, _, _ = stack.enter_context(registry.downloaded_bundle(settings, source))
        loaded = load_bundle(local)  # checksums and digest before unpickling
        manifest = loaded.manifest
    except KallosError as exc:
        _naming(exc, source)
        raise
    return _Bundle(
        source=source,
        local=local,
        model_name=str(manifest.get("model_name")),
        asset_id=str(manifest.get("asset_id")),
        timeframe=str(manifest.get("timeframe")),
        train_end=parse_date(manifest.get("train_end"), "train_end"),
        assets=basket_assets(manifest) or (),
        loaded=loaded,
    )


def _labelled(bundles: list[_Bundle]) -> list[_Bundle]:
    """Each bundle named by its model, ``-2``, ``-3`` ... after the first of the same model."""
    counts: dict[str, int] = {}
    named = []
    for bundle in bundles:
        name = safe_file_stem(bundle.model_name)
        counts[name] = counts.get(name, 0) + 1
        label = name if counts[name] == 1 else f"{name}-{counts[name]}"
        named.append(dataclasses.replace(bundle, label=label))
    return named


def _holds(bundle: _Bundle) -> str:
    what = (
        f"a global {bundle.model_name} model of {', '.join(bundle.assets)}"
        if bundle.assets
        else f"a {bundle.model_name} model of {bundle.asset_id}"
    )
    return f"{bundle.source} holds {what} {bundle.timeframe}"


def _markets(bundles: list[_Bundle], asset_id: str | None) -> tuple[tuple[str, ...], str]:
    """The assets every bundle is ranked on (``asset_id``'s, else those all bundles hold;
    a global model holds its basket) and the one timeframe."""
    first = bundles[0]
    wanted = asset_list(asset_id)
    if len(wanted) == 1 and all(b.assets and b.asset_id == wanted[0] for b in bundles):
        wanted = first.assets  # a global model's short name: its whole basket
    for bundle in bundles:
        if bundle.timeframe != first.timeframe or (
            not wanted and not set(bundle.held) & set(first.held)
        ):
            raise ConfigError(
                f"{_holds(bundle)}, but {_holds(first)}: a leaderboard scores every model on "
                "the same bars, so compare bundles of one asset and timeframe"
            )
        missing = [asset for asset in wanted if asset not in bundle.held]
        if missing:
            raise ConfigError(
                f"--asset-id is {asset_id} but {_holds(bundle)}: compare bundles of "
                f"{asset_id}, or drop --asset-id (the assets every bundle holds are used)"
            )
    if not wanted:
        wanted = tuple(a for a in first.held if all(a in b.held for b in bundles))
    return wanted, first.timeframe


def _refuse_overlap(test_start: pd.Timestamp, bundles: list[_Bundle]) -> None:
    """DataError when the window starts inside any bundle's training rows (before any is
    evaluated; evaluate checks it again per bundle)."""
    ends = [bundle.train_end for bundle in bundles if bundle.train_end is not None]
    for bundle in bundles:
        if bundle.train_end is not None and test_start <= bundle.train_end:
            raise DataError(
                f"test window starts at {test_start}, on or before the end of the training "
                f"data of {bundle.source} ({bundle.train_end}): scoring it there would be "
                f"leakage (the model saw those bars); set --test-start-date after "
                f"{max(ends).date()}, the latest training end of the bundles compared"
            )


def _evaluate(
    stage: EvaluateSettings, bundle: _Bundle, folder: Path, horizon: int | None
) -> EvaluationResult:
    """The loaded bundle evaluated as ``evaluate`` does (a global model's as if it were the
    stage's asset's model) into ``folder``; its errors name the bundle."""
    from kallos_models.stages.evaluate.holdout import evaluate_loaded

    own = dataclasses.replace(stage, model_name=bundle.model_name, output_dir=folder)
    try:
        view = asset_view(bundle.loaded, str(stage.asset_id)) if bundle.assets else bundle.loaded
        return evaluate_loaded(own, view, horizon=horizon, source=bundle.source)
    except KallosError as exc:
        _naming(exc, bundle.source)
        raise


def _publish(result: EvaluationResult, staged: Path, final: Path) -> EvaluationResult:
    """Move a model's evaluation files from its staging folder into ``final``."""
    final.mkdir(parents=True, exist_ok=True)
    for path in sorted(staged.iterdir()):
        os.replace(path, final / path.name)
    return dataclasses.replace(
        result,
        metrics_path=final / result.metrics_path.name,
        plot_path=final / result.plot_path.name,
    )


def _rank(
    stage: EvaluateSettings,
    bundles: list[_Bundle],
    timeframe: str,
    horizon: int | None,
    staging: Path,
) -> tuple[dict[str, Any], list[EvaluationResult]]:
    """One asset's leaderboard, written in ``staging`` (each model's files in its label's
    folder, the JSON and the plot beside them); the summary names the final paths."""
    asset_id = str(stage.asset_id)
    out_dir = stage.output_dir
    stem = run_stem(asset_id, timeframe=timeframe)
    results = []
    for number, bundle in enumerate(bundles, start=1):
        logger.info(
            "evaluating %d/%d on %s: %s (%s)",
            number,
            len(bundles),
            asset_id,
            bundle.label,
            bundle.source,
        )
        results.append(_evaluate(stage, bundle, staging / bundle.label, horizon))
    scored = [
        ScoredModel(
            model=bundle.label,
            source=bundle.source,
            metrics=result.metrics,
            forecasts=result.forecasts,
            metrics_path=str(out_dir / bundle.label / result.metrics_path.name),
        )
        for bundle, result in zip(bundles, results, strict=True)
    ]
    record = results[0].metrics
    rows = leaderboard_rows(scored, horizon=int(record["horizon"]))  # same bars checked
    json_path = out_dir / f"{stem}_leaderboard.json"
    plot_path = out_dir / f"{stem}_leaderboard.png"
    title = (
        f"{asset_id} {timeframe}  -  {len(rows)} models against naive  -  hold-out "
        f"{record['first_forecast'][:10]} to {record['last_forecast'][:10]}  -  horizon "
        f"{record['horizon']}"
    )
    plot_leaderboard(scored, rows, title=title, path=staging / plot_path.name)
    summary: dict[str, Any] = {
        "asset_id": asset_id,
        "timeframe": timeframe,
        **{key: record[key] for key in _WINDOW_KEYS},
        "naive_rmse": headline(record)["naive_rmse"],
        "backtest_config": (record.get("backtest") or {}).get("config"),
        "sorted_by": "rmse_ratio",
        "leaderboard": rows,
        "plot_path": str(plot_path),
        "json_path": str(json_path),
    }
    write_json(staging / json_path.name, summary)
    return summary, results


def _pooled_board(
    boards: dict[str, tuple[dict[str, Any], list[EvaluationResult]]],
    bundles: list[_Bundle],
    timeframe: str,
    out_dir: Path,
) -> dict[str, Any]:
    """The models ranked over several assets by their mean RMSE ratio to naive (scale-free),
    with each asset's leaderboard."""
    per_asset = {asset: summary for asset, (summary, _) in boards.items()}
    ratios: dict[str, list[float | None]] = {b.label: [] for b in bundles}
    for summary in per_asset.values():
        for row in summary["leaderboard"]:
            ratios[row["model"]].append(row.get("rmse_ratio"))
    rows = []
    for bundle in bundles:
        values = ratios[bundle.label]
        known = [float(v) for v in values if v is not None]
        rows.append(
            {
                "model": bundle.label,
                "source": bundle.source,
                "mean_rmse_ratio": sum(known) / len(known) if len(known) == len(values) else None,
                "rmse_ratio": dict(zip(per_asset, values, strict=True)),
                "assets_beating_naive": sum(1 for v in known if v < 1.0),
            }
        )
    rows.sort(key=lambda r: (r["mean_rmse_ratio"] is None, r["mean_rmse_ratio"] or 0.0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    stem = run_stem(basket_name(list(per_asset)), timeframe=timeframe)
    first = next(iter(per_asset.values()))
    return {
        "assets": list(per_asset),
        "timeframe": timeframe,
        **{key: first[key] for key in ("test_start", "test_end", "horizon")},
        "sorted_by": "mean_rmse_ratio",
        "leaderboard": rows,
        "per_asset": per_asset,
        "plot_path": str(first["plot_path"]),
        "json_path": str(out_dir / f"{stem}_leaderboard.json"),
    }


def compare_models(
    settings: Settings, model_paths: Sequence[str | Path], *, horizon: int | None = None
) -> CompareResult:
    """Evaluate several bundles on one hold-out window and rank them by RMSE ratio to naive.

    Steps: at least two different bundles (:func:`distinct_sources`) and both window dates;
    every bundle opened and verified (a ``models:/`` URI downloaded first), all of one asset
    and timeframe, the window after every bundle's training rows; then each bundle evaluated
    by the evaluate stage (``evaluate_loaded``, what ``evaluate_model`` runs once a bundle is
    loaded) with the same settings (window,
    horizon, database, gap rule, backtest rules) and its own model name; every model's
    forecasts checked to cover exactly the same bars; the rows ranked
    (:func:`kallos_models.compare.board.leaderboard_rows`: Diebold-Mariano against naive and
    against the leader); the plot of each model's cumulative squared error minus naive's.

    Parameters
    ----------
    settings : Settings
        Resolved settings: ``test_start_date``, ``test_end_date`` (required), ``asset_id``
        (None: the bundles'; set, every bundle must hold it), ``db_url``/``db_kwargs``,
        ``horizon``, ``max_gap_bars``, ``backtest_mode``, ``backtest_threshold``,
        ``fee_bps``, ``output_path`` (None: ``./evaluation_results``), ``tracking_uri`` (for
        ``models:/`` URIs only: nothing is logged). ``model_name`` is not read. No default.
    model_paths : sequence of str or Path
        Two or more bundles' ``.pt`` files or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``
        URIs. No default.
    horizon : int or None, default None
        Forecast step scored, at most every model's ``output_chunk_length``; None:
        ``settings.horizon``.

    Returns
    -------
    CompareResult
        Written: ``{output_path}/{stem}_leaderboard.json`` (the summary),
        ``{stem}_leaderboard.png`` and each model's evaluation files in
        ``{output_path}/{model}/`` (``{model}-2`` for a second bundle of the same model).

    Raises
    ------
    ConfigError
        Fewer than two bundles, bundles of different assets or timeframes (or not of
        ``asset_id``), and evaluate's own refusals (a horizon above a model's
        ``output_chunk_length``, backtest settings out of range).
    MissingSettingError
        A window date is missing (the CLI reports it as a usage error).
    ArtifactError
        A bundle missing or tampered with.
    DataError
        The window overlaps a bundle's training rows (leakage), the data does not cover it,
        or the models were not scored on the same bars.
    TrackingError
        A ``models:/`` URI names no registered version.

    Every error raised while a bundle is opened or evaluated starts with that bundle's path.
    """
    sources = distinct_sources(model_paths)
    require(settings, "test_start_date")
    require(settings, "test_end_date")
    if any(is_registry_uri(source) for source in sources):
        from kallos_models.mlops import tracking

        tracking.require_mlflow(settings)
    with contextlib.ExitStack() as stack:
        bundles = _labelled([_open(stack, settings, source) for source in sources])
        assets, timeframe = _markets(bundles, settings.asset_id)
        stage = evaluate_settings(dataclasses.replace(settings, asset_id=assets[0]))
        _refuse_overlap(stage.test_start, bundles)
        out_dir = stage.output_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".leaderboard.", dir=out_dir))
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        boards = {
            asset: _rank(
                dataclasses.replace(stage, asset_id=asset), bundles, timeframe, horizon, staging
            )
            for asset in assets
        }
        if len(boards) == 1:
            summary, results = next(iter(boards.values()))
        else:  # several assets: each its leaderboard, and the models ranked over all of them
            summary = _pooled_board(boards, bundles, timeframe, out_dir)
            results = [r for _, asset_results in boards.values() for r in asset_results]
            write_json(staging / Path(summary["json_path"]).name, summary)
        json_path, plot_path = Path(summary["json_path"]), Path(summary["plot_path"])
        # published last, the JSON after what it names: nothing appears unless all is done
        labels = [bundle.label for bundle in bundles] * len(boards)
        published = tuple(
            _publish(result, staging / label, out_dir / label)
            for label, result in zip(labels, results, strict=True)
        )
        for path in sorted(staging.glob("*_leaderboard.png")):
            os.replace(path, out_dir / path.name)
        for path in sorted(staging.glob("*_leaderboard.json"), key=lambda p: p == json_path):
            os.replace(path, out_dir / path.name)
    logger.info("leaderboard: %s; plot: %s", json_path, plot_path)
    return CompareResult(
        summary=summary, json_path=json_path, plot_path=plot_path, evaluations=published
    )
