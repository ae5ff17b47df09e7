"""Ctrl-C during a tuning run: the first stops after the running trial, the second kills
its benchmark, a third interrupts the tuner itself."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopControl:
    """Counts Ctrl-C presses. The handler only counts (printing from a signal handler
    can hit a half-written stream); `notices` says what the presses mean."""

    def __init__(self) -> None:
        self.presses = 0
        self._reported = 0
        self._previous: Any = None

    def __enter__(self) -> "StopControl":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.presses += 1
        if self.presses >= 3:
            raise KeyboardInterrupt

    @property
    def stop_requested(self) -> bool:
        return self.presses >= 1

    def kill_requested(self) -> bool:
        return self.presses >= 2

    def notices(self) -> list[str]:
        out = []
        while self._reported < min(self.presses, 2):
            self._reported += 1
            out.append(
                "Ctrl-C: stopping after the running trial, then confirming; Ctrl-C again kills it"
                if self._reported == 1
                else "Ctrl-C again: killing the running benchmark (its config is queued for the next run)"
            )
        return out
