"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, exit."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves and stops at the end of the current step."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.armed = False   # set once the loop can save; before that a signal stops at once

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def graceful_signals(stop: StopRequest) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: finish the step, save last.pt, exit. Second Ctrl-C: exit at once
    (checkpoints are written atomically, so nothing on disk can be half-written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if not stop.armed:
            # Still preparing (encoding a large corpus can take minutes) and nothing to save yet:
            # stop now, as Python would; the run directory is only made once set-up is done.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        if stop.signum is not None and signum == signal.SIGINT:
            os._exit(130)
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
