"""`sequential`: the reference. Runs the plan in order on the calling thread."""

from __future__ import annotations

import time

import torch

from schedulers.base import Scheduler, band_state, empty_state_like
from schedulers.counters import TaskRecord
from schedulers.errors import task_error
from schedulers.plan import Plan


class SequentialScheduler(Scheduler):
    backend = "sequential"

    def __init__(self, knobs, **kwargs) -> None:
        super().__init__(knobs, **kwargs)
        self._runner = self._chunk_runner()

    def max_concurrency(self, plan: Plan) -> int:
        return 1

    def _run(self, layer, plan, q, k, v, i, f, state):
        if state is not None:
            self._check_state_shapes(state, q, v)
        h = torch.empty_like(v)
        out_state = empty_state_like(q, v)
        records = []
        for band in range(plan.bands):
            heads = plan.band_heads(band)
            st = band_state(state, heads)
            for chunk in plan.chunks:
                t = slice(chunk.start, chunk.stop)
                start = time.perf_counter()
                try:
                    st, calls = self._runner(q[:, heads, t], k[:, heads, t], v[:, heads, t],
                                             i[:, heads, t], f[:, heads, t], st, h[:, heads, t])
                except Exception as exc:
                    err = task_error(f"failed: {type(exc).__name__}: {exc}", layer=layer, band=band,
                                     chunk=chunk.index, backend=self.backend)
                    raise err from exc
                records.append(TaskRecord(band, chunk.index, calls, start, time.perf_counter(), True))
            for dst, src in zip(out_state, st):
                dst[:, heads].copy_(src)
        return h, out_state, records
