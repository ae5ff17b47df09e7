"""Evaluators: what measures a benchmark request (autotune.evaluators.base).

- FreshProcess: one `python -m autotune.bench` process per measurement.
- WarmWorker: one long-lived worker per slot, replaced after any failure (the default).
- SurfaceEvaluator: a recorded surface answers (tests).
- SurfaceDraws: a replayed surface's samples answer, drawn at random (replay).
"""

from autotune.evaluators.base import Evaluator
from autotune.evaluators.fresh import FreshProcess
from autotune.evaluators.surface import SurfaceDraws, SurfaceEvaluator
from autotune.evaluators.warm import WarmWorker
from autotune.spec import PROCESSES


def make_evaluator(process: str, *, command=None, env=None) -> Evaluator:
    """The evaluator of one slot for `[trials] process` / `--process`."""
    if process == "warm":
        return WarmWorker(command, env)
    if process == "fresh":
        return FreshProcess(command, env)
    raise ValueError(f"process must be one of {', '.join(PROCESSES)}, got {process!r}")


__all__ = ["Evaluator", "FreshProcess", "SurfaceDraws", "SurfaceEvaluator", "WarmWorker", "make_evaluator"]
