"""The evaluation plot: forecasts against actual prices, errors, and the backtest equity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kallos_models.errors import DataError
from kallos_models.files import atomic_write


def _fmt_price(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _plot_equity(axis: Any, curves: pd.DataFrame, backtest: Mapping[str, Any] | None) -> None:
    """Equity of the strategy and of buy-and-hold, both from 1.0 one bar before the first."""
    missing = [c for c in ("position", "strategy_equity", "buy_and_hold_equity") if c not in curves]
    if missing:
        raise DataError(f"curves lack columns {missing}; pass the output of backtest_curves")
    index = pd.DatetimeIndex(curves.index)
    step = index[1] - index[0] if len(index) > 1 else pd.Timedelta(0)
    times = pd.DatetimeIndex([index[0] - step]).append(index).to_pydatetime()
    config = (backtest or {}).get("config") or {}
    summary = {key: (backtest or {}).get(key) or {} for key in ("strategy", "buy_and_hold")}
    mode = str(config.get("mode", "strategy")).replace("_", "/")
    fee = config.get("fee_bps")
    name = f"strategy ({mode}{'' if fee is None else f', {fee:g} bps'})"
    for column, label, color, stats in (
        ("buy_and_hold_equity", "buy & hold", "grey", summary["buy_and_hold"]),
        ("strategy_equity", name, "tab:green", summary["strategy"]),
    ):
        equity = np.concatenate([[1.0], curves[column].to_numpy(dtype="float64")])
        text = f"{label}: {equity[-1] - 1.0:+.1%}"
        if stats.get("annualised_sharpe") is not None:
            text += f", Sharpe {stats['annualised_sharpe']:.2f}"
        if stats.get("max_drawdown") is not None:
            text += f", max DD {stats['max_drawdown']:.1%}"
        axis.plot(times, equity, color=color, linewidth=1.3, label=text)
    axis.axhline(1.0, color="black", linewidth=0.8, alpha=0.6)
    position = curves["position"].to_numpy(dtype="float64")
    # bars in the market shaded, green long and red short (a bar spans its origin to its close)
    for sign, color, label in ((1.0, "tab:green", "long"), (-1.0, "tab:red", "short")):
        held = np.concatenate([[False], np.sign(position) == sign])
        if held.any():
            axis.fill_between(
                times,
                0,
                1,
                where=held,
                step="pre",
                transform=axis.get_xaxis_transform(),
                color=color,
                alpha=0.08,
                linewidth=0,
                label=f"strategy {label}",
            )
    axis.set_ylabel("equity (start = 1)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper left", frameon=True, fontsize=9)


def _shade_intervals(
    axis: Any, results: pd.DataFrame, record: Mapping[str, Any] | None
) -> list[str]:
    """Shade each interval of ``record`` (widest lightest) from the frame's quantile columns;
    return the legend labels drawn (with each interval's empirical coverage)."""
    from kallos_models.modelling.intervals import interval_levels, quantile_column

    if not record or not record.get("quantiles"):
        return []
    coverage = {entry["level"]: entry.get("coverage") for entry in record.get("levels") or []}
    times = pd.DatetimeIndex(results.index).to_pydatetime()
    labels = []
    levels = interval_levels(record["quantiles"])
    for rank, (level, lo, hi) in enumerate(reversed(levels)):
        lower, upper = results.get(quantile_column(lo)), results.get(quantile_column(hi))
        if lower is None or upper is None or lower.isna().all():
            continue  # none forecast (a log-return target beyond step 1)
        label = f"{level:.0%} interval (coverage {_fmt(coverage.get(level), '.1%')})"
        axis.fill_between(
            times,
            lower.to_numpy(dtype="float64"),
            upper.to_numpy(dtype="float64"),
            color="tab:blue",
            alpha=0.12 + 0.12 * rank,
            linewidth=0,
            zorder=0,
            label=label,
        )
        labels.append(label)
    return labels


def plot_evaluation(
    results: pd.DataFrame,
    metrics: Mapping[str, Any],
    *,
    title: str,
    path: str | Path,
    curves: pd.DataFrame | None = None,
) -> Path:
    """Plot forecasts against actual prices, the residuals and the backtest, to a PNG.

    Top panel: actual, forecast and naive prices, and, for a model with intervals (the
    metrics' ``intervals`` record and the frame's quantile columns), each interval shaded
    with its empirical coverage in the legend; middle panel (same time axis): residuals
    ``actual - forecast`` and a zero line; with ``curves``, a bottom panel of the backtest's
    equity (strategy against buy-and-hold, from 1.0 at the first origin close). The title is
    ``title`` and, on a second line, the headline metrics: RMSE, naive RMSE, their ratio and
    the directional accuracy.

    Parameters
    ----------
    results
        Output of :func:`rolling_forecasts` (``actual``, ``forecast``, ``naive`` columns).
    metrics
        Output of :func:`compute_metrics`; a ``backtest`` key (from
        :func:`kallos_models.modelling.backtest.run_backtest`) adds the Sharpe ratios to the legend.
    title
        First title line, e.g. ``"BTC 1d - gru - 2024-07-01 to 2025-06-30 - horizon 1"``.
    path
        PNG file to write (through a temporary file and a rename); its directory is created.
    curves
        Output of :func:`kallos_models.modelling.backtest.backtest_curves` for the same bars;
        default
        None draws no backtest panel.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    DataError
        ``results`` is empty or lacks a column.
    """
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    missing = [c for c in ("actual", "forecast", "naive") if c not in results.columns]
    if missing:
        raise DataError(f"results lack columns {missing}; pass the output of rolling_forecasts")
    if results.empty:
        raise DataError("no forecasts to plot; the evaluation window is empty")

    naive = metrics.get("naive") or {}
    headline = (
        f"RMSE {_fmt_price(metrics.get('rmse'))}  |  naive RMSE {_fmt_price(naive.get('rmse'))}"
        f"  |  ratio {_fmt(metrics.get('rmse_ratio'), '.3f')}"
        f"  |  directional accuracy {_fmt(metrics.get('directional_accuracy'), '.1%')}"
        f"  |  n = {metrics.get('n', len(results))}"
    )
    times = pd.DatetimeIndex(results.index).to_pydatetime()
    residual = results["actual"].to_numpy(dtype="float64") - results["forecast"].to_numpy(
        dtype="float64"
    )
    if curves is None:
        fig = Figure(figsize=(12, 7), dpi=110)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
        fig.subplots_adjust(left=0.07, right=0.985, top=0.89, bottom=0.07, hspace=0.08)
        axes = [top, bottom]
    else:
        fig = Figure(figsize=(12, 9.5), dpi=110)
        axes = list(fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3, 1.8]}))
        # fixed margins: a constrained layout would draw the figure twice (a third of the time)
        fig.subplots_adjust(left=0.07, right=0.985, top=0.915, bottom=0.05, hspace=0.08)
        top, bottom = axes[0], axes[1]
    # naive underneath, actual over it, the forecast on top: the two forecasts often overlap
    top.plot(
        times,
        results["naive"],
        color="tab:orange",
        linewidth=1.0,
        linestyle="--",
        zorder=1,
        label="naive (last close)",
    )
    top.plot(times, results["actual"], color="black", linewidth=1.4, zorder=2, label="actual")
    top.plot(
        times, results["forecast"], color="tab:blue", linewidth=1.2, zorder=3, label="forecast"
    )
    shaded = _shade_intervals(top, results, metrics.get("intervals"))
    top.set_ylabel("price")
    top.grid(True, alpha=0.3)
    handles, labels = top.get_legend_handles_labels()
    order = [labels.index(name) for name in ("actual", "forecast", "naive (last close)", *shaded)]
    top.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left")
    bottom.axhline(0.0, color="grey", linewidth=1.0)
    bottom.plot(times, residual, color="tab:red", linewidth=1.0, label="actual - forecast")
    bottom.fill_between(times, residual, 0.0, color="tab:red", alpha=0.15)
    bottom.set_ylabel("residual")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", frameon=True)
    if curves is not None:
        _plot_equity(axes[2], curves, metrics.get("backtest"))
    locator = mdates.AutoDateLocator(minticks=5, maxticks=12)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle(f"{title}\n{headline}", fontsize=11)

    target = Path(path)
    atomic_write(target, lambda handle: fig.savefig(handle, format="png", dpi=110))
    return target
