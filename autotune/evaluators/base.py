"""The Evaluator seam: whatever turns a benchmark request into a measured outcome.

A search loop asks an evaluator to measure one request at a time; it never knows
whether a fresh process, a warm worker or a recorded surface answers. Every evaluator
returns a TrialOutcome (never raises for a failing measurement) and honours the same
callbacks: on_tick about every tick_s seconds while it measures (trial heartbeats),
cancel polled about twice a second (True: stop now, the outcome is interrupted),
on_start with the pid of the process that measures.
"""

from __future__ import annotations

from typing import Callable, Protocol

from autotune.bench.config import BenchRequest
from autotune.trials import TrialOutcome


class Evaluator(Protocol):
    def measure(self, request: BenchRequest, *, timeout_s: float,
                on_tick: Callable[[], None] | None = None, tick_s: float = 10.0,
                cancel: Callable[[], bool] | None = None,
                on_start: Callable[[int], None] | None = None) -> TrialOutcome: ...

    def close(self) -> None: ...
