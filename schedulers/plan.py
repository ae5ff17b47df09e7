"""The plan: how one mLSTM cell call is cut into bands x chunks x kernel calls.

Every backend executes the same plan, so the plan alone says what a knob setting must
do (the counters a run reports are checked against it):

- bands = num_heads / heads_per_band; a band is the unit of state ownership;
- per band, chunks of `chunk_size` timesteps (the last one shorter when seq_len is not a
  multiple) run strictly in order; a chunk is one scheduled task;
- a chunk of length L is ceil(L / T_inner) kernel calls (T_inner divides chunk_size,
  so only the last chunk can end in a shorter call);
- useful concurrency = min(workers, bands).

Decode is the case seq_len = 1: one chunk of one step per band, one kernel call per band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from schedulers.counters import Counters

KNOB_NAMES = ("workers", "heads_per_band", "chunk_size", "T_inner")


class PlanError(ValueError):
    """A knob setting that cannot be planned; the message names the failed constraint."""


@dataclass(frozen=True)
class Knobs:
    """The four scheduling knobs (docs/schedulers.md, "The plan")."""

    workers: int
    heads_per_band: int
    chunk_size: int
    T_inner: int

    @classmethod
    def from_dict(cls, values: dict) -> Knobs:
        """Knobs from a mapping holding (at least) the four knob names."""
        missing = [name for name in KNOB_NAMES if name not in values]
        if missing:
            raise PlanError(f"missing knob(s) {', '.join(missing)}; give all of {', '.join(KNOB_NAMES)}")
        return cls(**{name: values[name] for name in KNOB_NAMES})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Chunk:
    """One chunk of the time axis: steps [start, start + length), `kernel_calls` calls."""

    index: int
    start: int
    length: int
    kernel_calls: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Plan:
    num_heads: int
    seq_len: int
    knobs: Knobs
    bands: int
    chunks: tuple[Chunk, ...]

    @property
    def heads_per_band(self) -> int:
        return self.knobs.heads_per_band

    @property
    def chunks_per_band(self) -> int:
        return len(self.chunks)

    @property
    def tasks(self) -> int:
        """One task per (band, chunk)."""
        return self.bands * self.chunks_per_band

    @property
    def kernel_calls_per_band(self) -> int:
        return sum(c.kernel_calls for c in self.chunks)

    @property
    def kernel_calls(self) -> int:
        return self.bands * self.kernel_calls_per_band

    @property
    def useful_concurrency(self) -> int:
        return min(self.knobs.workers, self.bands)

    @property
    def is_decode(self) -> bool:
        return self.seq_len == 1

    def band_heads(self, band: int) -> slice:
        """The head range of `band`."""
        if not 0 <= band < self.bands:
            raise IndexError(f"band {band} out of range 0..{self.bands - 1}")
        h = self.knobs.heads_per_band
        return slice(band * h, (band + 1) * h)

    def expected_counters(self, *, concurrency: int | None = None, calls: int = 1) -> Counters:
        """The counters `calls` cell calls of this plan must report.

        `concurrency` is the peak the executor can reach (default: useful concurrency;
        the sequential backend passes 1). It is an upper bound for a real run; tests
        that need equality make the overlap certain with a rendezvous kernel.
        """
        peak = self.useful_concurrency if concurrency is None else min(concurrency, self.bands)
        return Counters(
            kernel_calls=calls * self.kernel_calls,
            bands=calls * self.bands,
            chunks=calls * self.chunks_per_band,
            tasks=calls * self.tasks,
            peak_concurrency=peak if calls > 0 else 0,
            ordering_violations=0,
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_knobs(knobs: Knobs) -> None:
    """The constraints that do not depend on the model: raises PlanError."""
    for name in KNOB_NAMES:
        value = getattr(knobs, name)
        if not _is_int(value) or value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value!r}")
    if knobs.chunk_size % knobs.T_inner:
        raise PlanError(
            f"T_inner={knobs.T_inner} must divide chunk_size={knobs.chunk_size} "
            f"(valid T_inner: {', '.join(map(str, _divisors(knobs.chunk_size)))})"
        )


def make_plan(num_heads: int, seq_len: int, knobs: Knobs) -> Plan:
    """Plan one cell call over `num_heads` heads and `seq_len` timesteps."""
    if not _is_int(num_heads) or num_heads < 1:
        raise PlanError(f"num_heads must be a positive integer, got {num_heads!r}")
    if not _is_int(seq_len) or seq_len < 1:
        raise PlanError(f"seq_len must be a positive integer, got {seq_len!r}")
    check_knobs(knobs)
    if num_heads % knobs.heads_per_band:
        raise PlanError(
            f"heads_per_band={knobs.heads_per_band} must divide num_heads={num_heads} "
            f"(valid heads_per_band: {', '.join(map(str, _divisors(num_heads)))})"
        )
    chunks = []
    for index, start in enumerate(range(0, seq_len, knobs.chunk_size)):
        length = min(knobs.chunk_size, seq_len - start)
        chunks.append(Chunk(index, start, length, math.ceil(length / knobs.T_inner)))
    return Plan(num_heads, seq_len, knobs, num_heads // knobs.heads_per_band, tuple(chunks))
