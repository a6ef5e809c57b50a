"""The leaderboard plot: where each model gains or loses against naive persistence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kallos_models.compare.board import ScoredModel, cumulative_loss_gap
from kallos_models.errors import DataError
from kallos_models.files import atomic_write


def plot_leaderboard(
    scored: Sequence[ScoredModel],
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    path: str | Path,
) -> Path:
    """One line per model of its cumulative squared error minus naive's, to a PNG.

    For each model, ``cumsum((actual - forecast)**2 - (actual - naive)**2)`` over the bars:
    a falling stretch is where the model beats naive persistence, a rising one where it loses
    to it; the end value is ``n * (MSE_model - MSE_naive)``, below the zero line for a model
    whose RMSE ratio is below 1. The legend lists the models in rank order with their ratio
    and Diebold-Mariano p-value against naive.

    Parameters
    ----------
    scored : sequence of ScoredModel
        The models, on the same bars. No default.
    rows : sequence of Mapping
        Their leaderboard rows (:func:`kallos_models.compare.board.leaderboard_rows`): the
        order and the ratios of the legend. No default.
    title : str
        The figure's title. No default.
    path : str or Path
        PNG file to write (through a temporary file and a rename). No default.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    DataError
        A row names no model of ``scored``, or there are no bars.
    """
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    by_name = {model.model: model for model in scored}
    missing = [row["model"] for row in rows if row["model"] not in by_name]
    if missing or not rows:
        raise DataError(f"leaderboard rows without a scored model: {missing or 'no rows'}")
    fig = Figure(figsize=(12, 6.5), dpi=110)
    axis = fig.subplots()
    fig.subplots_adjust(left=0.09, right=0.985, top=0.9, bottom=0.08)
    axis.axhline(0.0, color="black", linewidth=0.9, alpha=0.7, label="naive persistence")
    for row in rows:
        gap = cumulative_loss_gap(by_name[row["model"]])
        if gap.empty:
            raise DataError(f"{row['model']} has no forecasts to plot")
        ratio, p_value = row.get("rmse_ratio"), row.get("dm_p_value_vs_naive")
        numbers = (
            f"RMSE ratio {'n/a' if ratio is None else f'{ratio:.4f}'}, DM p vs naive "
            f"{'n/a' if p_value is None else f'{p_value:.3g}'}"
        )
        axis.plot(
            pd.DatetimeIndex(gap.index).to_pydatetime(),
            gap.to_numpy(),
            linewidth=1.3,
            label=f"{row['rank']}. {row['model']} ({numbers})",
        )
    axis.set_ylabel("cumulative squared error - naive's (price²)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper left", frameon=True, fontsize=9)
    locator = mdates.AutoDateLocator(minticks=5, maxticks=12)
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle(f"{title}\nbelow zero: ahead of naive so far; falling: gaining on it", fontsize=11)
    target = Path(path)
    atomic_write(target, lambda handle: fig.savefig(handle, format="png", dpi=110))
    return target
