"""What every backend shares: knobs, plans, counters, input checks, lifecycle.

A Scheduler is a model cell runner:
    scheduler(layer_index, q, k, v, i, f, state) -> (h, new_state)
with q, k (B, NH, S, DHQK), v (B, NH, S, DHV), i, f (B, NH, S) and `state` what this
scheduler returned last time for that layer (None at first). Backends implement _run.
"""

from __future__ import annotations

import abc
import threading
from typing import ClassVar

import torch

import kernels
from schedulers.cell import ChunkRunner, Kernel, state_dtype
from schedulers.counters import CounterBook, Counters, TaskRecord, call_counters
from schedulers.errors import SchedulerError
from schedulers.plan import Knobs, Plan, check_knobs, make_plan

DEFAULT_WATCHDOG_S = 300.0


def as_device(device: torch.device | str) -> torch.device:
    """A torch.device; names go through kernels.resolve_device (strict, 'auto' allowed)."""
    return kernels.resolve_device(device)


def same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = a.index if a.index is not None else torch.cuda.current_device()
        ib = b.index if b.index is not None else torch.cuda.current_device()
        return ia == ib
    return True


class Scheduler(abc.ABC):
    backend: ClassVar[str]

    def __init__(self, knobs: Knobs, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, compile: bool = False,
                 kernel: Kernel | None = None, watchdog_s: float = DEFAULT_WATCHDOG_S) -> None:
        if not isinstance(knobs, Knobs):
            raise TypeError(f"knobs must be a schedulers.Knobs, got {type(knobs).__name__}")
        check_knobs(knobs)
        if not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0 seconds, got {watchdog_s!r}")
        self.knobs = knobs
        self.device = as_device(device)
        self.dtype = dtype
        self.compile = compile
        self.watchdog_s = float(watchdog_s)
        self._kernel = kernel
        self._book = CounterBook()
        self._plans: dict[tuple[int, int], Plan] = {}
        self._call_lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None

    # -- counters and plans -------------------------------------------------------------
    @property
    def counters(self) -> Counters:
        """Counters summed over every cell call since creation or reset_counters()."""
        return self._book.snapshot()

    def reset_counters(self) -> None:
        self._book.reset()

    def plan_for(self, num_heads: int, seq_len: int) -> Plan:
        key = (num_heads, seq_len)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = make_plan(num_heads, seq_len, self.knobs)
        return plan

    def max_concurrency(self, plan: Plan) -> int:
        """The most tasks this backend can run at once for `plan`."""
        return plan.useful_concurrency

    def expected_counters(self, num_heads: int, seq_len: int, *, calls: int = 1) -> Counters:
        """What `calls` cell calls over (num_heads, seq_len) must add to the counters
        (peak_concurrency is the reachable upper bound)."""
        plan = self.plan_for(num_heads, seq_len)
        return plan.expected_counters(concurrency=self.max_concurrency(plan), calls=calls)

    def _chunk_runner(self) -> ChunkRunner:
        return ChunkRunner(self.knobs.T_inner, device=self.device, dtype=self.dtype,
                           compile=self.compile, kernel=self._kernel)

    # -- the cell runner ----------------------------------------------------------------
    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 i: torch.Tensor, f: torch.Tensor, state=None):
        self._check_usable()
        self._check_inputs(q, k, v, i, f)
        B, NH, S, _ = q.shape
        plan = self.plan_for(NH, S)
        with self._call_lock:
            self._check_usable()
            h, new_state, records = self._run(layer_index, plan, q, k, v, i, f, state)
        self._book.add(call_counters(records))
        return h, new_state

    @abc.abstractmethod
    def _run(self, layer: int, plan: Plan, q, k, v, i, f, state) -> tuple[torch.Tensor, object, list[TaskRecord]]:
        """Execute `plan`; return h (B, NH, S, DHV) in v's dtype, the new state, the task records."""

    def materialize(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (C, n, m) tensors of a state this scheduler returned, on self.device."""
        C, n, m = self._check_state_tuple(state)
        return C.to(self.device), n.to(self.device), m.to(self.device)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free threads, actors and (when this scheduler started it) Ray. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.knobs}, device={self.device})"

    # -- checks -------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise SchedulerError(f"{self.backend} scheduler is closed; make a new one with make_scheduler()")
        if self._broken is not None:
            raise SchedulerError(
                f"{self.backend} scheduler is unusable after an earlier failure ({self._broken}); "
                "close it and make a new one"
            )

    def _check_inputs(self, q, k, v, i, f) -> None:
        for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
            if not same_device(t.device, self.device):
                raise ValueError(
                    f"{name} is on {t.device} but this scheduler runs on {self.device}; "
                    "make the scheduler with the model's device"
                )
        if q.dim() != 4:
            raise ValueError(f"q must be (B, NH, S, DHQK), got shape {tuple(q.shape)}")
        B, NH, S, _ = q.shape
        if k.shape != q.shape:
            raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
        if v.dim() != 4 or tuple(v.shape[:3]) != (B, NH, S):
            raise ValueError(f"v must be ({B}, {NH}, {S}, DHV), got {tuple(v.shape)}")
        for name, t in (("i", i), ("f", f)):
            if tuple(t.shape) != (B, NH, S):
                raise ValueError(f"{name} must be ({B}, {NH}, {S}), got {tuple(t.shape)}")
        if S < 1:
            raise ValueError("the sequence is empty (S = 0); give at least one timestep")

    @staticmethod
    def _check_state_tuple(state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not (isinstance(state, (tuple, list)) and len(state) == 3
                and all(isinstance(t, torch.Tensor) for t in state)):
            raise TypeError(
                f"expected an mLSTM state (C, n, m) of tensors or a state this scheduler returned, "
                f"got {type(state).__name__}"
            )
        return state[0], state[1], state[2]

    def _check_state_shapes(self, state, q, v) -> None:
        C, n, m = self._check_state_tuple(state)
        B, NH, _, DHQK = q.shape
        DHV = v.shape[-1]
        want = ((B, NH, DHQK, DHV), (B, NH, DHQK), (B, NH, 1))
        got = (tuple(C.shape), tuple(n.shape), tuple(m.shape))
        if got != want:
            raise ValueError(f"state shapes {got} do not match the inputs: expected (C, n, m) shapes {want}")


def band_state(state, heads: slice):
    """The band's slice of a full (C, n, m) state, or None."""
    if state is None:
        return None
    return tuple(t[:, heads] for t in state)


def empty_state_like(q: torch.Tensor, v: torch.Tensor):
    """Uninitialised full (C, n, m) output buffers in the kernels' state dtype."""
    B, NH, _, DHQK = q.shape
    DHV = v.shape[-1]
    dt = state_dtype(v)
    return (torch.empty(B, NH, DHQK, DHV, device=q.device, dtype=dt),
            torch.empty(B, NH, DHQK, device=q.device, dtype=dt),
            torch.empty(B, NH, 1, device=q.device, dtype=dt))
