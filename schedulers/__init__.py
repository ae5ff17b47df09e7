"""How the mLSTM cell work is scheduled: one plan of bands x chunks, three backends.

- sequential: the reference, in order on the calling thread;
- queued: a pool of `workers` threads (one CUDA stream each on CUDA);
- ray: a pool of `workers` Ray actors that keep their bands' states resident.

Every scheduler is a model cell runner: `model.cell_runner = make_scheduler(...)`.
"""

from schedulers.counters import Counters
from schedulers.errors import SchedulerError
from schedulers.factory import BACKENDS, make_scheduler
from schedulers.plan import KNOB_NAMES, Chunk, Knobs, Plan, PlanError, make_plan

__all__ = [
    "BACKENDS",
    "KNOB_NAMES",
    "Chunk",
    "Counters",
    "Knobs",
    "Plan",
    "PlanError",
    "SchedulerError",
    "make_plan",
    "make_scheduler",
]
