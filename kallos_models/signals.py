"""Signals for every command: SIGTERM handled like Ctrl-C.

:func:`sigterm_as_interrupt` makes ``kill`` (a CI job cancelled, a container stopped, a
scheduler's timeout) raise :class:`KeyboardInterrupt` where the code is, as Ctrl-C does, so
that one clean-up path serves both; the CLI installs it around every command and exits 130
after Ctrl-C, 143 after SIGTERM. Signal handlers can only be set in the main thread; elsewhere
it changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Stop", "in_main_thread", "restore_handler", "sigterm_as_interrupt"]


@dataclass
class Stop:
    """Which signal stopped the command: ``signum`` is set by :func:`sigterm_as_interrupt`'s
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


def in_main_thread() -> bool:
    """Whether this is the main thread, the only one that may set signal handlers."""
    return threading.current_thread() is threading.main_thread()


def restore_handler(signum: int, previous: Any) -> None:
    """Put back the handler ``signal.signal`` returned for ``signum``."""
    # None: a handler not set from Python; the default is the closest we can put back
    signal.signal(signum, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Stop]:
    """Within: SIGTERM raises :class:`KeyboardInterrupt` where the code is, as Ctrl-C does.

    A command stopped by ``kill`` then cleans up as after Ctrl-C (a tune: the running trial
    FAIL, none left RUNNING, the params file written). The yielded :class:`Stop` says which
    signal it was.

    Yields
    ------
    Stop
    """
    stop = Stop()
    if not in_main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.signum = signum
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        restore_handler(signal.SIGTERM, previous)
