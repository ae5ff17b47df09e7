"""Counters: what a scheduler observably did, summed over cell calls until reset.

Every figure is observed while the work runs (never copied from the plan), so a test
can compare it with what the plan implies:

- kernel_calls: kernel invocations (each advances one band by <= T_inner steps);
- bands: bands run, summed over cell calls (one layer call adds its band count);
- chunks: per-band chain length, summed over cell calls (one layer call adds the number
  of chunks each band went through);
- tasks: (band, chunk) tasks executed, summed over cell calls;
- peak_concurrency: the most tasks ever running at the same moment (max over calls);
- ordering_violations: tasks that started before their band's previous chunk had
  finished or out of chunk order (must be 0).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import asdict, dataclass


@dataclass
class Counters:
    kernel_calls: int = 0
    bands: int = 0
    chunks: int = 0
    tasks: int = 0
    peak_concurrency: int = 0
    ordering_violations: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            kernel_calls=self.kernel_calls + other.kernel_calls,
            bands=self.bands + other.bands,
            chunks=self.chunks + other.chunks,
            tasks=self.tasks + other.tasks,
            peak_concurrency=max(self.peak_concurrency, other.peak_concurrency),
            ordering_violations=self.ordering_violations + other.ordering_violations,
        )


@dataclass(frozen=True)
class TaskRecord:
    """What one executed (band, chunk) task reports.

    start/end come from one clock shared by all executors of a run (perf_counter for
    threads, time.time for Ray actors in other processes). in_order is the executor's
    own check that the band's previous chunk had completed when this one started.
    """

    band: int
    chunk: int
    kernel_calls: int
    start: float
    end: float
    in_order: bool


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals covering one instant."""
    events = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def call_counters(records: list[TaskRecord]) -> Counters:
    """Counters of one cell call from the records of its tasks."""
    per_band: dict[int, int] = defaultdict(int)
    for r in records:
        per_band[r.band] += 1
    return Counters(
        kernel_calls=sum(r.kernel_calls for r in records),
        bands=len(per_band),
        chunks=max(per_band.values(), default=0),
        tasks=len(records),
        peak_concurrency=peak_overlap([(r.start, r.end) for r in records]),
        ordering_violations=sum(not r.in_order for r in records),
    )


class CounterBook:
    """Thread-safe running total of Counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Counters()

    def add(self, counters: Counters) -> None:
        with self._lock:
            self._total = self._total + counters

    def snapshot(self) -> Counters:
        with self._lock:
            return Counters(**self._total.as_dict())

    def reset(self) -> None:
        with self._lock:
            self._total = Counters()
