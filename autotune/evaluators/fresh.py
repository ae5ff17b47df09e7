"""One benchmark process per measurement (`python -m autotune.bench`): nothing carries
over from one config to the next, at the price of process start, imports and model
setup on every trial."""

from __future__ import annotations

from typing import Sequence

from autotune.bench.config import BenchRequest
from autotune.trials import TrialOutcome, run_benchmark


class FreshProcess:
    def __init__(self, command: Sequence[str] | None = None, env: dict[str, str] | None = None):
        """command: argv prefix replacing `python -m autotune.bench` (tests use a fake);
        env: the processes' environment (None: this process's)."""
        self.command = tuple(command) if command else None
        self.env = env

    def measure(self, request: BenchRequest, *, timeout_s: float, on_tick=None, tick_s: float = 10.0,
                cancel=None, on_start=None) -> TrialOutcome:
        return run_benchmark(request, timeout_s=timeout_s, command=self.command, env=self.env,
                             on_tick=on_tick, tick_s=tick_s, cancel=cancel, on_start=on_start)

    def close(self) -> None:
        pass
