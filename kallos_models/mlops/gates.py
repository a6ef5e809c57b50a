"""Promotion gates: the thresholds a version's hold-out evaluation must pass to be promoted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Thresholds", "failures"]


@dataclass(frozen=True)
class Thresholds:
    """What a version's latest hold-out evaluation must reach to be promoted.

    Attributes
    ----------
    max_skill_ratio : float or None, default None
        Highest allowed ``rmse_ratio`` (model RMSE / naive RMSE; below 1 beats naive).
    min_directional_accuracy : float or None, default None
        Lowest allowed share of bars whose direction was forecast right, in [0, 1].
    min_sharpe : float or None, default None
        Lowest allowed annualised Sharpe ratio of the backtest strategy.
    min_deflated_sharpe : float or None, default None
        Lowest allowed Deflated Sharpe Ratio of the backtest, in [0, 1]: the probability that
        its Sharpe ratio beats the best of as many unskilled trials as the search that chose
        the parameters ran (:func:`kallos_models.modelling.selection.deflated_sharpe`).
    scope : {"pooled", "each_asset"}, default "pooled"
        For a global model's version: check the pooled figures (mean RMSE ratio, directional
        accuracy over all forecasts, mean Sharpe) or every asset's own. Ignored otherwise.
    """

    max_skill_ratio: float | None = None
    min_directional_accuracy: float | None = None
    min_sharpe: float | None = None
    min_deflated_sharpe: float | None = None
    #: A global model's gate: its pooled figures, or every asset's own (each must pass).
    scope: Literal["pooled", "each_asset"] = "pooled"

    def checks(self) -> list[tuple[str, str, str, float]]:
        """``(metric, flag, "max" or "min", limit)`` for every threshold that is set."""
        rows = [
            ("rmse_ratio", "--max-skill-ratio", "max", self.max_skill_ratio),
            (
                "directional_accuracy",
                "--min-directional-accuracy",
                "min",
                self.min_directional_accuracy,
            ),
            ("sharpe", "--min-sharpe", "min", self.min_sharpe),
            ("deflated_sharpe", "--min-deflated-sharpe", "min", self.min_deflated_sharpe),
        ]
        return [(m, f, k, float(limit)) for m, f, k, limit in rows if limit is not None]


def failures(metrics: dict[str, float | None], thresholds: Thresholds) -> list[str]:
    """What of ``metrics`` (headline name -> value) fails ``thresholds``: one line each,
    naming the metric, its value and the flag; empty when all pass."""
    failed = []
    for metric, flag, kind, limit in thresholds.checks():
        value = metrics.get(metric)
        if value is None:
            why = (
                " (the evaluation ran no backtest; evaluate with --horizon 1)"
                if metric in ("sharpe", "deflated_sharpe")
                else ""
            )
            failed.append(f"{metric} is not available{why}, but {flag} {limit:g} is set")
        elif kind == "max" and value > limit:
            failed.append(f"{metric} {value:.4g} is above {flag} {limit:g}")
        elif kind == "min" and value < limit:
            failed.append(f"{metric} {value:.4g} is below {flag} {limit:g}{_why(metric, metrics)}")
    return failed


def _why(metric: str, metrics: dict[str, float | None]) -> str:
    """What a failed deflated Sharpe ratio deflated: the plain Sharpe ratio and the trials."""
    if metric != "deflated_sharpe":
        return ""
    sharpe, trials = metrics.get("sharpe"), metrics.get("search_trials")
    plain = "n/a" if sharpe is None else f"{sharpe:.4g}"
    searched = "an unknown number of" if trials is None else f"{trials:g}"
    return (
        f": the Sharpe ratio {plain} does not survive a search of {searched} trial(s) "
        "(the probability that it beats their luckiest is too low)"
    )
