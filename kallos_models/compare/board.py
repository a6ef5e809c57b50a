"""The leaderboard itself: rows from evaluation records, ranked, and a text table of them.

Nothing here reads a database or a bundle: :func:`leaderboard_rows` takes what
:func:`kallos_models.stages.evaluate.evaluate_model` returned for each model (its metrics
record and its forecasts) and builds one JSON-able row per model, sorted by the RMSE ratio to
naive persistence. The metric math is the forecasting core's
(:func:`kallos_models.modelling.metrics.headline`, :func:`~kallos_models.modelling.metrics.
diebold_mariano`); this module only reads the records and tests each model against the leader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.errors import DataError
from kallos_models.modelling.metrics import diebold_mariano, headline
from kallos_models.modelling.selection import holm_adjust

__all__ = ["ScoredModel", "common_bars", "format_table", "interval_columns", "leaderboard_rows"]


@dataclass(frozen=True)
class ScoredModel:
    """One model's evaluation on the compared window: what its leaderboard row is built from.

    Attributes
    ----------
    model
        The row's name: the bundle's model name, with ``-2``, ``-3`` ... when several
        bundles hold the same model.
    source
        The bundle's path or ``models:/`` URI, as given.
    metrics
        The evaluation record (:attr:`~kallos_models.stages.evaluate.EvaluationResult.metrics`).
    forecasts
        One row per bar: ``actual``, ``forecast``, ``naive``
        (:attr:`~kallos_models.stages.evaluate.EvaluationResult.forecasts`).
    metrics_path
        Where the record was written; None when it was not.
    """

    model: str
    source: str
    metrics: Mapping[str, Any]
    forecasts: pd.DataFrame
    metrics_path: str | None = None


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (a missing key, a string, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(record: Any, *path: str) -> Any:
    for key in path:
        record = record.get(key) if isinstance(record, Mapping) else None
    return record


def _level_tag(level: float) -> str:
    """``0.8`` -> ``"80"``, ``0.975`` -> ``"97.5"``: a level as the percent in a key."""
    return f"{round(level * 100, 6):g}"


def interval_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """The prediction-interval numbers of an evaluation record, flat, or ``{}`` without any.

    Reads the record's optional ``intervals`` entry (``{"method", "levels": [{"level",
    "coverage", "winkler_ratio", ...}, ...]}``) defensively: an absent or null entry, a level
    that is not a number in (0, 1) or an entry that is not an object are skipped.

    Parameters
    ----------
    record : Mapping
        An evaluation record. No default.

    Returns
    -------
    dict
        ``interval_method`` (str or None) and, per level ``L`` in percent, ``coverage_L``
        (the share of actual prices inside the interval) and ``interval_score_ratio_L``
        (the interval's Winkler score over naive's, the level's ``winkler_ratio``), in the
        record's order of levels: ``coverage_80``, ``interval_score_ratio_80``, ``coverage_90``
        ... None where a value is missing or not finite.
    """
    intervals = record.get("intervals")
    if not isinstance(intervals, Mapping):
        return {}
    method = intervals.get("method")
    out: dict[str, Any] = {"interval_method": method if isinstance(method, str) else None}
    levels = intervals.get("levels")
    for entry in levels if isinstance(levels, list) else []:
        level = _number(entry.get("level")) if isinstance(entry, Mapping) else None
        if level is None or not 0 < level < 1:
            continue
        tag = _level_tag(level)
        out[f"coverage_{tag}"] = _number(entry.get("coverage"))
        out[f"interval_score_ratio_{tag}"] = _number(entry.get("winkler_ratio"))
    return out


def common_bars(scored: Sequence[ScoredModel]) -> pd.DatetimeIndex:
    """The bars every model was scored on, which must be the same bars for all.

    Raises
    ------
    DataError
        A model's forecasts are not on exactly the first model's bars (another count, start,
        end or a bar missing): comparing them would compare different periods.
    """
    if not scored:
        raise DataError("no model to compare; pass at least two bundles")
    first = scored[0]
    bars = pd.DatetimeIndex(first.forecasts.index)
    for other in scored[1:]:
        theirs = pd.DatetimeIndex(other.forecasts.index)
        if not theirs.equals(bars):
            raise DataError(
                f"{other.model} ({other.source}) was scored on {_span(theirs)} but "
                f"{first.model} ({first.source}) on {_span(bars)}; a leaderboard compares "
                "errors bar by bar, so every model must forecast the same bars: check that "
                "the bundles were trained on the same asset and bars (--max-gap-bars fills "
                "the same gaps for all)"
            )
    return bars


def _span(bars: pd.DatetimeIndex) -> str:
    if len(bars) == 0:
        return "no bars"
    return f"{len(bars)} bars from {bars[0]} to {bars[-1]}"


def _errors(model: ScoredModel, column: str = "forecast") -> np.ndarray:
    frame = model.forecasts
    return (frame["actual"] - frame[column]).to_numpy(dtype="float64")


def _rank_key(item: tuple[int, ScoredModel]) -> tuple[bool, float, float, int]:
    position, model = item
    numbers = headline(model.metrics)
    ratio, rmse = numbers["rmse_ratio"], numbers["rmse"]
    return (ratio is None, ratio or 0.0, math.inf if rmse is None else rmse, position)


def leaderboard_rows(scored: Sequence[ScoredModel], *, horizon: int = 1) -> list[dict[str, Any]]:
    """One row per model, best first: sorted by ``rmse_ratio`` (ties by RMSE, then the order
    given; a model without a ratio, naive being perfect, last).

    Parameters
    ----------
    scored : sequence of ScoredModel
        The models, each evaluated on the same bars (checked: :func:`common_bars`). No
        default.
    horizon : int, default 1
        Forecast step of the errors, for the Diebold-Mariano test against the leader.

    Returns
    -------
    list of dict
        JSON-able rows with ``rank`` (1 is the leader), ``model``, ``source``, ``rmse``,
        ``rmse_ratio``, ``dm_p_value_vs_naive`` (the record's Diebold-Mariano p-value),
        ``dm_p_value_vs_leader`` (the same test of this model's squared errors against the
        leader's; None for the leader, and when the test is undefined, e.g. identical
        forecasts), each with a ``_holm`` twin (Holm-adjusted for the number of models tested
        together, :func:`kallos_models.modelling.selection.holm_adjust`),
        ``directional_accuracy``, the :func:`interval_columns` when any model has intervals
        (None for a model without), ``sharpe``, ``deflated_sharpe`` and ``search_trials``
        (the Deflated Sharpe Ratio given the trials of the study that chose the model's
        parameters), ``max_drawdown`` (the backtest strategy's maximum drawdown, a negative
        fraction; None without a backtest) and ``metrics_path``.

    Raises
    ------
    DataError
        The models were not scored on the same bars.
    """
    common_bars(scored)
    ranked = [model for _, model in sorted(enumerate(scored), key=_rank_key)]
    intervals = [interval_columns(model.metrics) for model in ranked]
    interval_keys = list(dict.fromkeys(key for columns in intervals for key in columns))
    leader = ranked[0]
    leader_errors = _errors(leader)
    rows: list[dict[str, Any]] = []
    for rank, (model, columns) in enumerate(zip(ranked, intervals, strict=True), start=1):
        numbers = headline(model.metrics)
        vs_leader = None
        if model is not leader:
            test = diebold_mariano(_errors(model), leader_errors, horizon=horizon)
            vs_leader = _number(test["p_value"])
        rows.append(
            {
                "rank": rank,
                "model": model.model,
                "source": model.source,
                "rmse": numbers["rmse"],
                "rmse_ratio": numbers["rmse_ratio"],
                "dm_p_value_vs_naive": _number(_get(model.metrics, "diebold_mariano", "p_value")),
                "dm_p_value_vs_leader": vs_leader,
                "directional_accuracy": numbers["directional_accuracy"],
                **{key: columns.get(key) for key in interval_keys},
                "sharpe": numbers["sharpe"],
                "deflated_sharpe": numbers["deflated_sharpe"],
                "search_trials": numbers["search_trials"],
                "max_drawdown": _number(
                    _get(model.metrics, "backtest", "strategy", "max_drawdown")
                ),
                "metrics_path": model.metrics_path,
            }
        )
    # the tests run together: Holm's adjustment for the number of models compared
    for key in ("dm_p_value_vs_naive", "dm_p_value_vs_leader"):
        adjusted = holm_adjust([row[key] for row in rows])
        for row, value in zip(rows, adjusted, strict=True):
            row[f"{key}_holm"] = value
    return rows


def cumulative_loss_gap(model: ScoredModel) -> pd.Series:
    """``cumsum(e_model**2 - e_naive**2)`` over the bars: below zero, the model is ahead of
    naive persistence by that much squared error so far; where it falls, it gains."""
    gap = _errors(model) ** 2 - _errors(model, "naive") ** 2
    return pd.Series(np.cumsum(gap), index=model.forecasts.index, name=model.model)


# --------------------------------------------------------------------------------------------
# The text table
# --------------------------------------------------------------------------------------------

#: Table columns: row key, header, format (``%`` a share, ``g`` a general number).
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rank", "#", "d"),
    ("model", "model", "s"),
    ("rmse_ratio", "ratio", ".4f"),
    ("rmse", "rmse", ".6g"),
    ("dm_p_value_vs_naive", "p(naive)", ".3g"),
    ("dm_p_value_vs_naive_holm", "adj", ".3g"),
    ("dm_p_value_vs_leader", "p(leader)", ".3g"),
    ("dm_p_value_vs_leader_holm", "adj", ".3g"),
    ("directional_accuracy", "dir.acc", ".1%"),
    ("sharpe", "sharpe", ".2f"),
    ("deflated_sharpe", "DSR", ".2f"),
    ("max_drawdown", "max DD", ".1%"),
)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    columns = list(_COLUMNS)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    at = columns.index(("sharpe", "sharpe", ".2f"))
    for key in keys:
        if key.startswith("coverage_"):
            columns.insert(at, (key, f"cov{key[len('coverage_') :]}", ".1%"))
            at += 1
        elif key.startswith("interval_score_ratio_"):
            columns.insert(at, (key, f"IS{key[len('interval_score_ratio_') :]}", ".3f"))
            at += 1
    return columns


def _cell(row: Mapping[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None:
        leader_test = key.startswith("dm_p_value_vs_leader")
        return "-" if leader_test and row.get("rank") == 1 else "n/a"
    return str(value) if spec == "s" else format(value, spec)


def _when(summary: Mapping[str, Any], key: str) -> str:
    """An ISO time of the summary as ``2024-07-01`` at midnight, ``2024-07-01 04:00`` else."""
    text = str(summary.get(key) or "?").replace("T", " ")
    return text.removesuffix(" 00:00:00").removesuffix(":00")


def format_table(summary: Mapping[str, Any]) -> str:
    """The leaderboard as aligned text: a heading line, then one line per model, best first.

    Parameters
    ----------
    summary : Mapping
        What :func:`kallos_models.compare.compare_models` returns as ``summary`` (and writes
        to ``{stem}_leaderboard.json``): ``asset_id``, ``timeframe``, ``first_forecast``,
        ``last_forecast``, ``n``, ``horizon``, ``naive_rmse`` and the ``leaderboard`` rows.
        No default.

    Returns
    -------
    str
        Columns ``#``, ``model``, ``ratio`` (RMSE over naive's), ``rmse``, ``p(naive)`` and
        ``p(leader)`` (Diebold-Mariano p-values; ``-`` for the leader), each followed by
        ``adj`` (Holm-adjusted for the models compared), ``dir.acc``, then
        ``cov80``/``IS80``... (coverage and interval score ratio per level) when a model has
        intervals, ``sharpe``, ``DSR`` (Deflated Sharpe Ratio), ``max DD``; ``n/a`` where a
        value is missing.
    """
    rows = list(summary.get("leaderboard") or [])
    columns = _columns(rows)
    cells = [[header for _, header, _ in columns]]
    cells += [[_cell(row, key, spec) for key, _, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    text = [
        "  ".join(
            cell.ljust(width) if spec == "s" else cell.rjust(width)
            for cell, width, (_, _, spec) in zip(line, widths, columns, strict=True)
        ).rstrip()
        for line in cells
    ]
    naive = summary.get("naive_rmse")
    heading = (
        f"{summary.get('asset_id')} {summary.get('timeframe')}  {_when(summary, 'first_forecast')}"
        f" .. {_when(summary, 'last_forecast')}  {summary.get('n')} bars  horizon "
        f"{summary.get('horizon')}  naive RMSE {'n/a' if naive is None else format(naive, '.6g')}"
    )
    return "\n".join([heading, *text])


def format_boards(summary: Mapping[str, Any]) -> str:
    """:func:`format_table` of a summary; of several assets' (``per_asset``), each asset's
    table, then the models ranked by their mean RMSE ratio over the assets."""
    boards = summary.get("per_asset")
    if not isinstance(boards, Mapping):
        return format_table(summary)
    lines = [format_table(board) + "\n" for board in boards.values()]
    lines.append(f"over {', '.join(boards)}: mean RMSE ratio to naive")
    for row in summary.get("leaderboard") or []:
        ratio = row.get("mean_rmse_ratio")
        lines.append(
            f"{row['rank']:>3}  {row['model']:<16} {'n/a' if ratio is None else f'{ratio:.4f}'}"
            f"  ({row['assets_beating_naive']} of {len(boards)} assets beat naive)"
        )
    return "\n".join(lines)
