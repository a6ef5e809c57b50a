"""Signals during a tune: SIGTERM handled like Ctrl-C (:func:`sigterm_as_interrupt`, which the
CLI installs), and the clean-up after an interrupt guarded against a second Ctrl-C
(:func:`finish_before_stopping`).

Ctrl-C inside a Lightning fit or predict is made a KeyboardInterrupt again by
:func:`kallos_models.modelling.fitting.surface_interrupts`; the tune's interrupt path then marks
the running trials FAIL and writes the best params so far. Signal handlers can only be set in
the main thread; elsewhere both context managers change nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Stop", "finish_before_stopping", "sigterm_as_interrupt"]


@dataclass
class Stop:
    """Which signal stopped the tune: ``signum`` is set by :func:`sigterm_as_interrupt`'s
    handler; None means Ctrl-C (SIGINT)."""

    signum: int | None = None

    @property
    def word(self) -> str:
        """``Terminated`` after SIGTERM, else ``Interrupted``."""
        return "Terminated" if self.signum == signal.SIGTERM else "Interrupted"

    @property
    def exit_status(self) -> int:
        """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
        return 128 + int(self.signum or signal.SIGINT)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _restore(signum: int, previous: Any) -> None:
    # None: a handler not set from Python; the default is the closest we can put back
    signal.signal(signum, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Stop]:
    """Within: SIGTERM raises :class:`KeyboardInterrupt` where the code is, as Ctrl-C does.

    A tune stopped by ``kill`` (a CI job cancelled, a container stopped) then cleans up as after
    Ctrl-C: the running trial FAIL, none left RUNNING, the params file written. The yielded
    :class:`Stop` says which signal it was.

    Yields
    ------
    Stop
    """
    stop = Stop()
    if not _in_main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.signum = signum
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        _restore(signal.SIGTERM, previous)


@contextlib.contextmanager
def finish_before_stopping(what: str) -> Iterator[None]:
    """Within: a Ctrl-C or SIGTERM only logs that ``what`` is still being done; a second one
    stops at once (:class:`KeyboardInterrupt`).

    Parameters
    ----------
    what : str
        What the clean-up does, for the log line (``"marking the running trial FAIL"``).
    """
    if not _in_main_thread():
        yield
        return
    received = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal received
        received += 1
        if received > 1:
            raise KeyboardInterrupt()
        logger.warning("still %s; press Ctrl-C again to stop at once", what)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            _restore(signum, old)
