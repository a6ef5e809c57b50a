"""Settings of the live stages, ``predict`` and ``score``, built from resolved settings.

Like :mod:`kallos_models.stage_settings` (whose database and output-folder rules they share),
each is a small frozen object holding only what its stage reads; the options that choose one
run (``--max-age``, ``--as-of``, ``--last``, ...) come from the arguments only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kallos_models.config import Settings, parse_date
from kallos_models.errors import ConfigError
from kallos_models.stage_settings import DataSource, _output_dir, data_source

__all__ = [
    "PredictSettings",
    "ScoreSettings",
    "parse_duration",
    "predict_settings",
    "score_settings",
]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"m": "min", "min": "min", "h": "h", "d": "D", "w": "W"}


def parse_duration(value: str | pd.Timedelta | None, flag: str) -> pd.Timedelta | None:
    """A duration such as ``90m``, ``36h``, ``3d`` or ``2w`` (None stays None).

    Raises
    ------
    ConfigError
        Not ``<number><m|h|d|w>``, or not positive; the message names ``flag``.
    """
    if value is None or isinstance(value, pd.Timedelta):
        delta = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(
                f"{flag} {value!r} is not a duration; write a number and a unit m, h, d or w, "
                "e.g. 36h or 3d"
            )
        delta = pd.Timedelta(float(match.group(1)), unit=_DURATION_UNITS[match.group(2).lower()])
    if delta is not None and delta <= pd.Timedelta(0):
        raise ConfigError(f"{flag} must be longer than zero, got {value!r}")
    return delta


@dataclass(frozen=True)
class PredictSettings:
    """What ``predict`` reads. ``asset_id`` and ``timeframe`` None: the bundle's; ``max_age``
    None: two bars of the timeframe; ``as_of`` None: now (UTC)."""

    database: DataSource
    asset_id: str | None
    timeframe: str | None
    horizon: int
    max_age: pd.Timedelta | None
    as_of: pd.Timestamp | None
    max_gap_bars: int
    fill_gaps: bool = False
    store: bool = True


def predict_settings(
    settings: Settings,
    *,
    timeframe: str | None = None,
    max_age: str | pd.Timedelta | None = None,
    as_of: str | pd.Timestamp | None = None,
    fill_gaps: bool = False,
    store: bool = True,
) -> PredictSettings:
    """The predict stage's settings; nothing is required beyond the bundle.

    ``timeframe`` is taken from the argument only (the settings' default ``1d`` would not
    say whether the user chose it); the other values as :class:`PredictSettings`.
    """
    return PredictSettings(
        database=data_source(settings),
        asset_id=None if settings.asset_id is None else str(settings.asset_id),
        timeframe=timeframe,
        horizon=settings.horizon,
        max_age=parse_duration(max_age, "--max-age"),
        as_of=parse_date(as_of, "--as-of"),
        max_gap_bars=settings.max_gap_bars,
        fill_gaps=fill_gaps,
        store=store,
    )


@dataclass(frozen=True)
class ScoreSettings:
    """What ``score`` reads: the filters (None: all), the recent window, the rolling window
    of the plot (in scored forecasts), the drift threshold and the plot's folder."""

    database: DataSource
    asset_id: str | None
    timeframe: str | None
    model: str | None
    last: pd.Timedelta
    window: int
    max_ratio: float | None
    output_dir: Path


def score_settings(
    settings: Settings,
    *,
    timeframe: str | None = None,
    model: str | None = None,
    last: str | pd.Timedelta | None = "30d",
    window: int = 30,
    max_ratio: float | None = None,
) -> ScoreSettings:
    """The score stage's settings (``timeframe`` from the argument only, as for predict)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ConfigError(f"--window must be a whole number of forecasts >= 2, got {window!r}")
    if max_ratio is not None and not float(max_ratio) > 0:
        raise ConfigError(f"--max-ratio must be above 0, got {max_ratio!r}")
    recent = parse_duration(last if last is not None else "30d", "--last")
    return ScoreSettings(
        database=data_source(settings),
        asset_id=None if settings.asset_id is None else str(settings.asset_id),
        timeframe=timeframe,
        model=model,
        last=recent if recent is not None else pd.Timedelta(days=30),
        window=window,
        max_ratio=None if max_ratio is None else float(max_ratio),
        output_dir=_output_dir(settings, "score"),
    )
