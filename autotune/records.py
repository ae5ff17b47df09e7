"""What the tuner keeps in the Optuna store, by name: one constant per user-attribute
key, and one reader (TrialRecord) for a trial's attributes.

The names are the store's format: studies written by earlier versions read the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from autotune.strategies.base import STRATEGY_ATTR

# ---- trial user attributes
BASELINE = "baseline"  # true on the baseline's trials
STRATEGY = STRATEGY_ATTR  # which strategy proposed the trial ("baseline", "queued" otherwise)
STALE = "stale"  # failed because its tuner stopped; its config was queued again
REQUEUED_FROM = "requeued_from"  # the stale trial whose config this one measures again
WORKER = "worker"  # the tuner that measured it (host, pid, pid namespace)
GPU = "gpu"  # the --gpus index it ran on
HEARTBEAT = "heartbeat"  # unix time of the last sign of life of its tuner
BENCH_PID = "bench_pid"  # the benchmark (or warm worker) process that measured it
PROCESS = "process"  # "warm" | "fresh": what measured it
CONFIG = "config"  # the benchmark request as the benchmark understood it
STDERR_TAIL = "stderr_tail"
WALL_S = "wall_s"  # the measurement's wall time, as the tuner saw it
ENV = "env"
TIMINGS = "timings"
METRICS = "metrics"
COUNTERS = "counters"
KERNELS = "kernels"  # the kernels and parameters that ran, any fallback (kernels.registry)
ERROR_KIND = "error_kind"
ERROR_MESSAGE = "error_message"

# ---- study user attributes
STUDY_BASELINE = "baseline"  # the baseline's speeds (objective.Baseline.as_dict())
STUDY_BASELINE_TRIAL = "baseline_trial"
STUDY_BASELINE_WALL_S = "baseline_wall_s"
STUDY_BASELINE_CONFIG = "baseline_config"
STUDY_BASELINE_SOURCE = "baseline_source"
STUDY_SPACE = "space"
STUDY_CONFIRMATION = "confirmation"  # the verdict (autotune.confirm)


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the tuner reads it back."""

    number: int
    state: TrialState
    value: float | None
    params: dict[str, Any]
    baseline: bool
    stale: bool
    strategy: str | None
    requeued_from: int | None
    worker: Any
    gpu: int | None
    heartbeat: float | None
    metrics: dict[str, Any]
    error_kind: str | None
    error_message: str | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> "TrialRecord":
        a = trial.user_attrs
        requeued = a.get(REQUEUED_FROM)
        beat = a.get(HEARTBEAT)
        return cls(
            number=trial.number,
            state=trial.state,
            value=trial.value,
            params=dict(trial.params),
            baseline=bool(a.get(BASELINE)),
            stale=bool(a.get(STALE)),
            strategy=a.get(STRATEGY),
            requeued_from=requeued if isinstance(requeued, int) else None,
            worker=a.get(WORKER),
            gpu=a.get(GPU) if isinstance(a.get(GPU), int) else None,
            heartbeat=float(beat) if isinstance(beat, (int, float)) else None,
            metrics=a.get(METRICS) if isinstance(a.get(METRICS), dict) else {},
            error_kind=a.get(ERROR_KIND),
            error_message=a.get(ERROR_MESSAGE),
        )

    @property
    def counted(self) -> bool:
        """Counts against the budget: finished, not stale."""
        return self.state.is_finished() and not self.stale

    @property
    def failure(self) -> str:
        return f"{self.error_kind}: {self.error_message}"
