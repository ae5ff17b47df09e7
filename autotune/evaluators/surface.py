"""A recorded surface as an evaluator: configs are answered from earlier runs.

- SurfaceEvaluator: each config holds the results its recorded runs gave (a sweep's
  surface file keeps them per config); measuring a config again returns its next
  recorded run, in turn, the way a live re-measurement gives another sample. A config
  without runs fails as 'missing'. This lets the search loop run without a device.
- SurfaceDraws: replay's evaluator (autotune.replay.search). A request is a config's
  index on a replayed surface; measuring it returns one of the config's recorded samples
  drawn at random from a seeded stream, so the noise is real and a seed repeats it.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from autotune.bench.config import BenchRequest
from autotune.bench.result import BenchResult
from autotune.names import KNOBS
from autotune.trials import TrialOutcome


def config_key(config: Mapping[str, Any]) -> tuple:
    """A config's identity: its backend and knob values."""
    return (config.get("backend"), *(config[k] for k in KNOBS))


class SurfaceEvaluator:
    def __init__(self, runs: Mapping[tuple, Iterable[Mapping[str, Any]]], *, wall_s: float = 0.0):
        """runs: config_key -> the raw results (JSON objects) of that config's runs."""
        self._runs = {key: itertools.cycle([dict(r) for r in results]) for key, results in runs.items() if results}
        self.wall_s = wall_s
        self.measured: list[tuple] = []  # the keys asked, in order

    @classmethod
    def from_surface(cls, doc: Mapping[str, Any], backend: str) -> "SurfaceEvaluator":
        """From a surface file written by `autotune sweep` (its entries' runs)."""
        runs = {}
        for entry in doc["entries"]:
            config = {"backend": backend, **entry["config"]}
            runs[config_key(config)] = [
                {"status": r.get("status"), "error": r.get("error"), "metrics": r.get("metrics"),
                 "counters": r.get("counters"), "timings": r.get("timings")} for r in entry.get("runs", [])]
        return cls(runs)

    def measure(self, request: BenchRequest, *, timeout_s: float, on_tick=None, tick_s: float = 10.0,
                cancel=None, on_start=None) -> TrialOutcome:
        key = config_key(request.to_dict())
        self.measured.append(key)
        if cancel is not None and cancel():
            return TrialOutcome(BenchResult.failure("interrupted", "cancelled"), "", 0.0, -2, interrupted=True)
        runs = self._runs.get(key)
        raw = next(runs) if runs is not None else None
        result = BenchResult.from_dict(raw) if raw else None
        if result is None:
            result = BenchResult.failure("missing", f"the surface holds no run of {dict(zip(('backend', *KNOBS), key))}")
        if result.ok:
            result = BenchResult.from_dict({**result.raw, "config": request.to_dict()})
        return TrialOutcome(result, "", self.wall_s, 0 if result.ok else 1)

    def close(self) -> None:
        pass


class SurfaceDraws:
    def __init__(self, samples: Sequence[np.ndarray], rng: np.random.Generator, objective: str):
        """samples: per config index, its recorded samples (none: the config failed when run);
        a measured value is the result's metric `objective`."""
        self.samples, self.rng, self.objective = samples, rng, objective

    def measure(self, request: int, *, timeout_s: float = 0.0, on_tick=None, tick_s: float = 10.0,
                cancel=None, on_start=None) -> TrialOutcome:
        """One draw: instant, so there is nothing to tick, cancel or start."""
        samples = self.samples[request]
        if not len(samples):
            failed = BenchResult.failure("failed", f"config {request} failed when it was recorded")
            return TrialOutcome(failed, "", 0.0, 1)
        value = float(samples[self.rng.integers(len(samples))])
        return TrialOutcome(BenchResult("ok", metrics={self.objective: value}), "", 0.0, 0)

    def close(self) -> None:
        pass
