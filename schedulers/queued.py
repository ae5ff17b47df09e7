"""`queued`: a pool of `workers` threads runs the (band, chunk) tasks.

The calling thread coordinates: it keeps at most min(workers, bands) tasks in flight
(one per band at most), and submits a band's next chunk only after the previous chunk of
that band has finished, so every chunk starts from the exact state its predecessor left.
Bands waiting for a worker queue up round-robin, so tasks of different bands interleave.

Devices:
- CUDA: each worker launches on its own torch.cuda.Stream. A chunk's stream waits on the
  event its band's previous chunk recorded (the first chunk waits on an event recorded on
  the caller's stream after the inputs were produced); state tensors crossing streams are
  marked with record_stream so the caching allocator never reuses them early; before the
  call returns, the caller's stream waits on every band's last event.
- MPS: torch exposes no user streams; all work goes to the process's one MPS command
  queue, so GPU work of different bands never runs concurrently and the ordering is that
  queue's order. torch's MPS backend is not safe for ops issued from several threads at
  once (it can abort the process inside Metal), so tasks take a process-wide lock around
  their kernel work: workers overlap only the coordination between tasks, and
  peak_concurrency counts tasks held by workers, not kernels running at once. Use the
  `ray` backend (one process per actor) for real concurrency on MPS.
- CPU: the threads run torch ops concurrently (torch releases the GIL inside ops); the
  intra-op thread pool is shared by all workers.

A task that raises is reported (after the other in-flight tasks of the call finished) as a
SchedulerError naming layer, band and chunk. A task running longer than watchdog_s makes
the call fail at once with a SchedulerError; the scheduler is then unusable (the stuck
thread cannot be interrupted) and close() leaves such a thread behind as a daemon.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import warnings
from collections import deque

import torch

from schedulers.base import Scheduler, band_state, empty_state_like
from schedulers.counters import TaskRecord
from schedulers.errors import task_error
from schedulers.plan import Plan

_instance_ids = itertools.count()
# Serialises MPS work across all workers of the process (see the module docstring).
_MPS_LOCK = threading.Lock()
THREAD_PREFIX = "schedulers-queued"


class _Call:
    """The shared state of one cell call while its tasks run on the workers."""

    def __init__(self, runner, plan: Plan, tensors, state, h, out_state, input_event) -> None:
        self.runner = runner
        self.plan = plan
        self.q, self.k, self.v, self.i, self.f = tensors
        self.h = h
        self.out_state = out_state
        # Per band: the state the last finished chunk left, the event after it (CUDA), and
        # how many chunks have finished. Only the band's one in-flight task touches them.
        self.band_state = [band_state(state, plan.band_heads(b)) for b in range(plan.bands)]
        self.band_event = [input_event] * plan.bands
        self.progress = [0] * plan.bands
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        # Autograd modes are per thread: the workers take the caller's (tensors made
        # under inference_mode may only be updated in inference mode).
        self.inference_mode = torch.is_inference_mode_enabled()
        self.grad_enabled = torch.is_grad_enabled()

    def execute(self, band: int, chunk_index: int, stream) -> None:
        with torch.inference_mode(self.inference_mode), torch.set_grad_enabled(self.grad_enabled):
            self._execute(band, chunk_index, stream)

    def _execute(self, band: int, chunk_index: int, stream) -> None:
        start = time.perf_counter()
        try:
            in_order = self.progress[band] == chunk_index
            if self.q.device.type == "mps":
                with _MPS_LOCK:
                    new_state, calls = self._advance(band, chunk_index)
            elif stream is None:
                new_state, calls = self._advance(band, chunk_index)
            else:
                with torch.cuda.stream(stream):
                    stream.wait_event(self.band_event[band])
                    if self.band_state[band] is not None:
                        for t in self.band_state[band]:
                            t.record_stream(stream)  # produced on another stream, read here
                    new_state, calls = self._advance(band, chunk_index)
                    event = torch.cuda.Event()
                    event.record(stream)
                    self.band_event[band] = event
            self.band_state[band] = new_state
            self.progress[band] = chunk_index + 1
            record = TaskRecord(band, chunk_index, calls, start, time.perf_counter(), in_order)
            self.done.put((band, chunk_index, record, None))
        except BaseException as exc:  # reported to the caller, never lost in a thread
            self.done.put((band, chunk_index, None, exc))

    def _advance(self, band: int, chunk_index: int):
        heads = self.plan.band_heads(band)
        chunk = self.plan.chunks[chunk_index]
        t = slice(chunk.start, chunk.stop)
        new_state, calls = self.runner(
            self.q[:, heads, t], self.k[:, heads, t], self.v[:, heads, t],
            self.i[:, heads, t], self.f[:, heads, t], self.band_state[band], self.h[:, heads, t],
        )
        if chunk_index == self.plan.chunks_per_band - 1:
            for dst, src in zip(self.out_state, new_state):
                dst[:, heads].copy_(src)
        return new_state, calls


class QueuedScheduler(Scheduler):
    backend = "queued"

    def __init__(self, knobs, **kwargs) -> None:
        super().__init__(knobs, **kwargs)
        self._runner = self._chunk_runner()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        n = self.knobs.workers
        self._streams = [torch.cuda.Stream(device=self.device) for _ in range(n)] \
            if self.device.type == "cuda" else [None] * n
        instance = next(_instance_ids)
        self._threads = [
            threading.Thread(target=self._worker_loop, args=(w,), daemon=True,
                             name=f"{THREAD_PREFIX}-{instance}-{w}")
            for w in range(n)
        ]
        for t in self._threads:
            t.start()

    def _worker_loop(self, worker: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        stream = self._streams[worker]
        while True:
            item = self._inbox.get()
            if item is None:
                return
            call, band, chunk_index = item
            call.execute(band, chunk_index, stream)

    def _run(self, layer, plan, q, k, v, i, f, state):
        if state is not None:
            self._check_state_shapes(state, q, v)
        h = torch.empty_like(v)
        out_state = empty_state_like(q, v)
        input_event = None
        if self.device.type == "cuda":
            input_event = torch.cuda.Event()
            input_event.record(torch.cuda.current_stream(self.device))
        call = _Call(self._runner, plan, (q, k, v, i, f), state, h, out_state, input_event)

        window = plan.useful_concurrency
        ready = deque(range(plan.bands))  # bands whose next chunk may start, round-robin
        next_chunk = [0] * plan.bands
        inflight: dict[int, tuple[int, float]] = {}  # band -> (chunk, watchdog deadline)
        records: list[TaskRecord] = []
        failure = None
        while True:
            while failure is None and ready and len(inflight) < window:
                band = ready.popleft()
                inflight[band] = (next_chunk[band], time.monotonic() + self.watchdog_s)
                self._inbox.put((call, band, next_chunk[band]))
            if not inflight:
                break
            soonest = min(inflight, key=lambda b: inflight[b][1])
            try:
                band, chunk_index, record, exc = call.done.get(
                    timeout=max(0.0, inflight[soonest][1] - time.monotonic()))
            except queue.Empty:
                stuck_chunk = inflight[soonest][0]
                self._broken = f"layer {layer} band {soonest} chunk {stuck_chunk} hit the watchdog"
                raise task_error(f"did not finish within the {self.watchdog_s:g} s watchdog",
                                 layer=layer, band=soonest, chunk=stuck_chunk,
                                 backend=self.backend) from None
            del inflight[band]
            if exc is not None:
                failure = failure or (band, chunk_index, exc)
                continue
            records.append(record)
            next_chunk[band] += 1
            if next_chunk[band] < plan.chunks_per_band:
                ready.append(band)
        if failure is not None:
            band, chunk_index, exc = failure
            raise task_error(f"failed: {type(exc).__name__}: {exc}", layer=layer, band=band,
                             chunk=chunk_index, backend=self.backend) from exc
        if input_event is not None:
            caller = torch.cuda.current_stream(self.device)
            for event in call.band_event:
                caller.wait_event(event)  # h and the state outputs are complete after this
        return h, out_state, records

    def _close(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        deadline = time.monotonic() + min(self.watchdog_s, 10.0)
        stuck = []
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(t.name)
        if stuck:
            warnings.warn(f"queued scheduler: {len(stuck)} worker thread(s) still inside a kernel "
                          f"after close ({', '.join(stuck)}); left behind as daemon threads",
                          RuntimeWarning, stacklevel=3)

