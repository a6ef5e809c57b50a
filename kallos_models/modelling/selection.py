"""Selection bias: what a figure is worth once you know how many were tried to find it.

A study that tries 40 configurations and keeps the best shows a better hold-out Sharpe ratio
than its model has, because the search itself picked the luckiest. Two corrections:

- :func:`deflated_sharpe`, the Deflated Sharpe Ratio of Bailey and Lopez de Prado (2014): the
  probability that the strategy's true Sharpe ratio is above the highest one expected from
  ``n_trials`` unskilled trials, given the sample's length, skewness and kurtosis;
- :func:`holm_adjust`, Holm's step-down adjustment of p-values for the number of models
  compared (``compare``'s Diebold-Mariano tests).

See ``documentation/evaluation.md`` for the formulas and the choices made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from kallos_models.files import json_float

__all__ = ["EULER_GAMMA", "deflated_sharpe", "expected_max_sharpe", "holm_adjust"]

#: The Euler-Mascheroni constant, in the expected maximum of ``n`` Gaussian draws.
EULER_GAMMA = 0.5772156649015329

_NORMAL = NormalDist()


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """The expected highest of ``n_trials`` Sharpe ratios whose true value is 0.

    ``sqrt(variance) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))``, ``Z`` the standard
    normal quantile and ``g`` :data:`EULER_GAMMA` (Bailey and Lopez de Prado 2014, eq. 2);
    0 for one trial, whose best is itself.

    Parameters
    ----------
    n_trials : int
        Independent trials searched, >= 1.
    variance : float
        Variance of the trials' Sharpe estimates (per bar), >= 0.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    quantile = _NORMAL.inv_cdf
    return math.sqrt(variance) * (
        (1.0 - EULER_GAMMA) * quantile(1.0 - 1.0 / n_trials)
        + EULER_GAMMA * quantile(1.0 - 1.0 / (n_trials * math.e))
    )


def deflated_sharpe(
    returns: Any, *, n_trials: int, bars_per_year: float, trials_source: str
) -> dict[str, Any]:
    """The Deflated Sharpe Ratio of a backtest's per-bar returns.

    The benchmark is the Sharpe ratio the best of ``n_trials`` unskilled configurations would
    show by luck (:func:`expected_max_sharpe`). The trials' own Sharpe ratios are not known (a
    study scores forecasts, not trades), so their variance is the one an estimated Sharpe ratio
    has under that null, ``1 / (T - 1)`` per bar for ``T`` bars. The probability is
    ``Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))``, all per
    bar (eq. 9 of the paper): near 1, the Sharpe ratio survives the search; 0.5 or below, the
    search alone could explain it.

    Parameters
    ----------
    returns : array-like
        Per-bar net simple returns of the strategy (finite).
    n_trials : int
        How many configurations were tried to choose the model, >= 1 (1: no search, the
        Probabilistic Sharpe Ratio against zero).
    bars_per_year : float
        Annualises the Sharpe ratios reported (not the probability).
    trials_source : str
        Where ``n_trials`` came from, recorded as given.

    Returns
    -------
    dict
        JSON-able: ``probability`` (None, with a ``note``, when there are fewer than 3 bars or
        the returns do not vary), ``n_trials``, ``trials_source``, ``sharpe`` and
        ``expected_max_sharpe`` (annualised), ``n_bars``, ``skewness``, ``kurtosis``
        (non-excess: 3 for a normal distribution).
    """
    values = np.asarray(returns, dtype="float64")
    values = values[np.isfinite(values)]
    n = len(values)
    out: dict[str, Any] = {
        "probability": None,
        "n_trials": int(n_trials),
        "trials_source": trials_source,
        "sharpe": None,
        "expected_max_sharpe": None,
        "n_bars": n,
        "skewness": None,
        "kurtosis": None,
    }
    std = float(np.std(values, ddof=1)) if n > 2 else 0.0
    if std <= 0.0:
        out["note"] = "undefined: it needs at least 3 bars whose returns vary"
        return out
    centred = values - values.mean()
    sd0 = float(np.sqrt(np.mean(centred**2)))
    skewness = float(np.mean(centred**3)) / sd0**3
    kurtosis = float(np.mean(centred**4)) / sd0**4
    sharpe = float(values.mean()) / std
    benchmark = expected_max_sharpe(n_trials, 1.0 / (n - 1))
    scale = math.sqrt(bars_per_year)
    out.update(
        sharpe=json_float(sharpe * scale),
        expected_max_sharpe=json_float(benchmark * scale),
        skewness=json_float(skewness),
        kurtosis=json_float(kurtosis),
    )
    spread = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if spread <= 0.0:
        out["note"] = "undefined: the returns' skewness leaves the Sharpe ratio no variance"
        return out
    z = (sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(spread)
    out["probability"] = json_float(_NORMAL.cdf(z))
    return out


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``p_values`` for testing them together.

    The ``k``-th smallest of the ``m`` known p-values becomes ``max over j <= k of
    min(1, (m - j + 1) * p_(j))``; rejecting those below ``alpha`` keeps the chance of any
    false rejection at most ``alpha``. None stays None and does not count in ``m``.
    """
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(known)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * float(p)))
        adjusted[i] = running
    return adjusted
