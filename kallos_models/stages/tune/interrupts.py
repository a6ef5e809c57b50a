"""Signals during a tune: the clean-up after an interrupt guarded against a second Ctrl-C
(:func:`finish_before_stopping`). SIGTERM is made a Ctrl-C by
:func:`kallos_models.signals.sigterm_as_interrupt`, which the CLI installs around every command.

Ctrl-C inside a Lightning fit or predict is made a KeyboardInterrupt again by
:func:`kallos_models.modelling.fitting.surface_interrupts`; the tune's interrupt path then marks
the running trials FAIL and writes the best params so far. Signal handlers can only be set in
the main thread; elsewhere this context manager changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

from kallos_models.signals import in_main_thread, restore_handler

logger = logging.getLogger(__name__)

__all__ = ["finish_before_stopping"]


@contextlib.contextmanager
def finish_before_stopping(what: str) -> Iterator[None]:
    """Within: a Ctrl-C or SIGTERM only logs that ``what`` is still being done; a second one
    stops at once (:class:`KeyboardInterrupt`).

    Parameters
    ----------
    what : str
        What the clean-up does, for the log line (``"marking the running trial FAIL"``).
    """
    if not in_main_thread():
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
            restore_handler(signum, old)
