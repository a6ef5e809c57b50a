"""Quiet libraries during a tune: Optuna's per-trial logs, Lightning's and Darts' INFO lines
and their routine warnings; :func:`quiet` is the context manager the trials run in."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

from kallos_models.errors import KallosError

#: Loggers whose INFO lines (device banners, dataset sizes) drown the one line per trial.
_NOISY_LOGGERS = (
    "pytorch_lightning",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric",
    "darts",
)
#: Warnings every fold would repeat; they say nothing about the trial.
_ROUTINE_WARNINGS = (
    ".*pin_memory.*",
    ".*LeafSpec.*",
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*overflow encountered in exp.*",  # a diverged trial; its FAIL line says so
    # a sampled dropout with one recurrent layer: torch ignores it, every fold says so
    ".*dropout option adds dropout after all but last recurrent layer.*",
)


class _TrialFailureLogFilter(logging.Filter):
    """Drop Optuna's own log lines (and traceback) for a trial failure that tune reports itself.

    That is a trial stopped by Ctrl-C, by a :class:`KallosError` (re-raised as one ``Error:``
    line) or by a non-finite score (tune logs the reason); a bug keeps Optuna's traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dropped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        match = re.match(r"Trial (\d+) failed", message)
        if match is None:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if (
            isinstance(exc, (KeyboardInterrupt, KallosError))
            or "KeyboardInterrupt" in message
            or "nan is not acceptable" in message
        ):
            self._dropped.add(match.group(1))
            return False
        return match.group(1) not in self._dropped


@contextlib.contextmanager
def quiet(show_progress: bool) -> Iterator[None]:
    """Silence Optuna's per-trial INFO logs, Lightning's and Darts' INFO lines and their
    routine warnings (unless ``show_progress``); Optuna's experimental warnings always."""
    import optuna
    import pytorch_lightning  # noqa: F401  # sets its logger's level on import: do it first

    previous = optuna.logging.get_verbosity()
    noisy = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    interrupt_filter = _TrialFailureLogFilter()
    optimize_logger = logging.getLogger("optuna.study._optimize")
    optimize_logger.addFilter(interrupt_filter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
            if not show_progress:
                optuna.logging.set_verbosity(logging.WARNING)
                for lg in noisy:
                    lg.setLevel(logging.WARNING)
                for pattern in _ROUTINE_WARNINGS:
                    warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        optimize_logger.removeFilter(interrupt_filter)
        optuna.logging.set_verbosity(previous)
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)
