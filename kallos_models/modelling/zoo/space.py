"""Timeframes, lookback ranges and search spaces as data.

:func:`lookback_range` turns a timeframe into the ``input_chunk_length`` bounds a search space
samples; :class:`Tunable`, :class:`SearchSpace` and :class:`Constraint` describe the
hyperparameters of a :class:`~kallos_models.modelling.zoo.specs.ModelSpec` as plain data, so a
search space can be both sampled (Optuna) and described (``kallos-run models``).

Optuna is only named for type checking; a trial is passed in by the caller.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kallos_models.config import timeframe_to_timedelta

if TYPE_CHECKING:
    import optuna

__all__ = [
    "LOOKBACK_DAYS",
    "LOOKBACK_MAX_BARS",
    "LOOKBACK_MIN_BARS",
    "Constraint",
    "SearchSpace",
    "Tunable",
    "bars_per_day",
    "lookback_range",
]

# --------------------------------------------------------------------------------------------
# Timeframes and lookback
# --------------------------------------------------------------------------------------------

#: Lookback searched on daily bars, in days (inclusive bounds).
LOOKBACK_DAYS: tuple[int, int] = (30, 70)
#: Smallest lookback, in bars, on any timeframe.
LOOKBACK_MIN_BARS = 8
#: Largest lookback, in bars, on any timeframe.
LOOKBACK_MAX_BARS = 512


def bars_per_day(timeframe: str) -> float:
    """Number of bars of ``timeframe`` in one day.

    Parameters
    ----------
    timeframe : str
        Bar length as ``<number><unit>``, unit one of ``m`` (minutes), ``h`` (hours),
        ``d`` (days), ``w`` (weeks): ``"15m"``, ``"1h"``, ``"4h"``, ``"1d"``, ``"1w"``.

    Returns
    -------
    float
        ``"1d"`` -> 1.0, ``"4h"`` -> 6.0, ``"2h"`` -> 12.0, ``"1h"`` -> 24.0,
        ``"15m"`` -> 96.0, ``"1w"`` -> 1/7.

    Raises
    ------
    ConfigError
        If ``timeframe`` is not of the accepted form; the message names the accepted forms.
    """
    return 86400.0 / timeframe_to_timedelta(timeframe).total_seconds()


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def lookback_range(timeframe: str) -> tuple[int, int]:
    """Bounds, in bars, of the ``input_chunk_length`` a search space samples.

    On daily bars the range is ``LOOKBACK_DAYS`` = (30, 70) bars. Other timeframes keep the
    same number of *days*: each bound is multiplied by :func:`bars_per_day` and rounded
    (half up), then clamped to ``[LOOKBACK_MIN_BARS, LOOKBACK_MAX_BARS]`` = [8, 512] bars.
    So ``"4h"`` -> (180, 420), ``"2h"`` -> (360, 512), ``"1h"`` -> (512, 512),
    ``"1w"`` -> (8, 10).

    Parameters
    ----------
    timeframe : str
        Bar length, see :func:`bars_per_day`.

    Returns
    -------
    tuple of (int, int)
        Inclusive lower and upper bound, in bars.

    Raises
    ------
    ConfigError
        If ``timeframe`` is not understood.
    """
    per_day = bars_per_day(timeframe)
    low, high = (
        min(max(_round_half_up(days * per_day), LOOKBACK_MIN_BARS), LOOKBACK_MAX_BARS)
        for days in LOOKBACK_DAYS
    )
    return low, high


# --------------------------------------------------------------------------------------------
# Search spaces as data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tunable:
    """One tunable hyperparameter range, used both to sample and to describe it.

    Build with :meth:`integer`, :meth:`real`, :meth:`choice` or :meth:`lookback`.

    Parameters
    ----------
    kind : {"int", "float", "choice", "lookback"}
        ``"lookback"`` is an int range whose bounds come from :func:`lookback_range`.
    low, high : float or None, default None
        Inclusive bounds of ``"int"`` and ``"float"`` ranges.
    log : bool, default False
        Sample on a log scale.
    choices : tuple, default ()
        Values of a ``"choice"``.
    """

    kind: Literal["int", "float", "choice", "lookback"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def integer(cls, low: int, high: int, *, log: bool = False) -> Tunable:
        """Int range ``low..high`` inclusive (log scale if ``log``, default False)."""
        return cls("int", low, high, log)

    @classmethod
    def real(cls, low: float, high: float, *, log: bool = False) -> Tunable:
        """Float range ``low..high`` (log scale if ``log``, default False)."""
        return cls("float", float(low), float(high), log)

    @classmethod
    def choice(cls, *choices: Any) -> Tunable:
        """One of ``choices``."""
        return cls("choice", choices=tuple(choices))

    @classmethod
    def lookback(cls) -> Tunable:
        """Int range given by :func:`lookback_range` of the timeframe."""
        return cls("lookback")

    def bounds(self, timeframe: str) -> tuple[Any, Any]:
        """Smallest and largest value this range can yield on ``timeframe``."""
        if self.kind == "lookback":
            return lookback_range(timeframe)
        if self.kind == "choice":
            return min(self.choices), max(self.choices)
        return self.low, self.high

    def sample(self, trial: optuna.Trial, name: str, timeframe: str) -> Any:
        """Ask ``trial`` for a value of parameter ``name``."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        low, high = self.bounds(timeframe)
        if self.kind == "float":
            return trial.suggest_float(name, low, high, log=self.log)
        return trial.suggest_int(name, int(low), int(high), log=self.log)

    def describe(self, timeframe: str) -> str:
        """Range as text: ``"int 1..4"``, ``"float 1e-05..0.01 log"``, ``"choice [32, 64]"``."""
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        low, high = self.bounds(timeframe)
        kind = "int" if self.kind == "lookback" else self.kind
        return f"{kind} {low}..{high}" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    """A model's search space: parameter name -> :class:`Tunable`.

    Calling it with ``(trial, timeframe)`` samples every parameter, in order, and returns
    ``{name: value}``; it is what
    :attr:`~kallos_models.modelling.zoo.specs.ModelSpec.search_space` holds for every
    built-in model.
    """

    params: Mapping[str, Tunable]

    def __call__(self, trial: optuna.Trial, timeframe: str) -> dict[str, Any]:
        """Sample every parameter from ``trial``; lookback bounds follow ``timeframe``."""
        return {
            name: tunable.sample(trial, name, timeframe) for name, tunable in self.params.items()
        }

    def describe(self, timeframe: str) -> dict[str, str]:
        """``{name: range as text}``, see :meth:`Tunable.describe`."""
        return {name: tunable.describe(timeframe) for name, tunable in self.params.items()}

    def capped(self, caps: Mapping[str, float]) -> SearchSpace:
        """This space with each parameter named in ``caps`` limited to at most its cap.

        An int or float range keeps the values up to the cap (a range entirely above it
        collapses to the cap); a choice keeps its values up to the cap (its smallest if none
        is). The lookback and names not in ``caps`` are unchanged.
        """
        limited: dict[str, Tunable] = {}
        for name, tunable in self.params.items():
            cap = caps.get(name)
            if cap is None or tunable.kind == "lookback":
                limited[name] = tunable
            elif tunable.kind == "choice":
                kept = tuple(c for c in tunable.choices if c <= cap) or (min(tunable.choices),)
                limited[name] = Tunable.choice(*kept)
            else:
                high = min(float(tunable.high or cap), cap)
                low = min(float(tunable.low or 0.0), high)
                if tunable.kind == "int":
                    limited[name] = Tunable.integer(int(low), int(high), log=tunable.log)
                else:
                    limited[name] = Tunable.real(low, high, log=tunable.log)
        return SearchSpace(limited)

    def fit(self, params: Mapping[str, Any], timeframe: str) -> tuple[dict[str, Any], list[str]]:
        """``params`` (found on another space or timeframe) brought inside this space.

        A number outside its range on ``timeframe`` is clipped to the nearest bound (an int
        rounded); a choice this space does not offer, or a name it does not tune, is left out
        (the sampler picks it). Returns the fitted values and a note per change, e.g.
        ``"input_chunk_length 45 -> 180"``.
        """
        fitted: dict[str, Any] = {}
        notes: list[str] = []
        for name, value in params.items():
            tunable = self.params.get(name)
            if tunable is None:
                notes.append(f"{name} not searched here: left out")
            elif tunable.kind == "choice":
                if value in tunable.choices:
                    fitted[name] = value
                else:
                    notes.append(f"{name} {value!r} not among {list(tunable.choices)}: left out")
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                low, high = tunable.bounds(timeframe)
                clipped = min(max(value, low), high)
                clipped = float(clipped) if tunable.kind == "float" else int(round(clipped))
                fitted[name] = clipped
                if clipped != value:
                    notes.append(f"{name} {value!r} -> {clipped!r}")
            else:
                notes.append(f"{name} {value!r} is not a number: left out")
        return fitted, notes


@dataclass(frozen=True)
class Constraint:
    """A relation between two parameters that Darts would otherwise reject late (or never).

    Parameters
    ----------
    kind : {"less_than", "divides"}
        ``"less_than"``: ``left < right``. ``"divides"``: ``right % left == 0``.
    left, right : str
        Parameter names.
    """

    kind: Literal["less_than", "divides"]
    left: str
    right: str

    def describe(self) -> str:
        """The rule as text, e.g. ``"kernel_size < input_chunk_length"``."""
        if self.kind == "less_than":
            return f"{self.left} < {self.right}"
        return f"{self.right} % {self.left} == 0"

    def violated(self, kwargs: Mapping[str, Any]) -> bool:
        """True when both parameters are set and the rule does not hold."""
        left, right = kwargs.get(self.left), kwargs.get(self.right)
        if not isinstance(left, numbers.Real) or not isinstance(right, numbers.Real):
            return False
        if self.kind == "less_than":
            return not left < right
        return left == 0 or right % left != 0
