"""The benchmark's output, typed: one BenchResult per measurement.

The benchmark prints it as one JSON line (docs/benchmark.md); the tuner, the
sweep and confirmation read it only through this class. `raw` keeps the JSON object as
received, for the sweep journal and anything else that stores results whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from autotune.bench.errors import CRASH

SCHEMA_VERSION = 1
STATUSES = ("ok", "error")
# A measurement whose result says a kernel fell back measured other kernels than its
# config names: trials, confirmation and sweeps count it failed with this kind
# (autotune.trials.TrialOutcome), never as that config's speed.
KERNEL_FALLBACK = "kernel_fallback"


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class BenchResult:
    status: str  # "ok" | "error"
    metrics: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] | None = None
    config: dict[str, Any] | None = None  # the request as the benchmark understood it
    error_kind: str | None = None
    error_message: str | None = None
    error_phase: str | None = None
    # the kernels and parameters that ran, any fallback (kernels.registry.what_ran)
    kernels: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def fallback(self) -> str | None:
        """Why a kernel fell back to another in this measurement, or None."""
        return self.kernels.get("fallback") or None

    @classmethod
    def from_dict(cls, raw: Any) -> "BenchResult | None":
        """The result in a decoded JSON object; None when it is not one (no status)."""
        if not isinstance(raw, dict) or raw.get("status") not in STATUSES:
            return None
        error = _mapping(raw.get("error"))
        ok = raw["status"] == "ok"
        return cls(
            status=raw["status"],
            metrics=_mapping(raw.get("metrics")),
            counters=_mapping(raw.get("counters")),
            timings=_mapping(raw.get("timings")),
            env=raw.get("env") if isinstance(raw.get("env"), dict) else None,
            config=raw.get("config") if isinstance(raw.get("config"), dict) else None,
            error_kind=None if ok else str(error.get("kind") or CRASH),
            error_message=None if ok else str(error.get("message") or ""),
            error_phase=None if ok else error.get("phase"),
            kernels=_mapping(raw.get("kernels")),
            raw=raw,
        )

    @classmethod
    def failure(cls, kind: str, message: str) -> "BenchResult":
        """A result for a benchmark that gave none (killed, timed out, crashed)."""
        raw = {"schema_version": SCHEMA_VERSION, "status": "error", "error": {"kind": kind, "message": message}}
        return cls.from_dict(raw)

    @classmethod
    def parse_line(cls, line: str) -> "BenchResult | None":
        try:
            return cls.from_dict(json.loads(line))
        except json.JSONDecodeError:
            return None


def parse_stdout(stdout: str) -> BenchResult | None:
    """The result in a benchmark's stdout: its last non-empty line, if that is a JSON
    object with a status; None otherwise."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return BenchResult.parse_line(lines[-1]) if lines else None
