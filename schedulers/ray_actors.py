"""`ray`: a pool of `workers` Ray actors runs the (band, chunk) tasks.

Band b belongs to actor b % workers for the scheduler's whole life. The actor keeps the
band's (C, n, m) resident between chunks and across cell calls (prefill, then every
decoded token), so only the q/k/v/gate slices of a task go to the actor and only that
task's h comes back. The state a call returns to the model is a RayState handle;
materialize() fetches the tensors. A handle's actor-side state is freed once the handle
is garbage-collected (the release rides along with the next call).

Per band, chunks run in order because an actor runs its tasks one at a time in the
order this driver submitted them; the actor checks that order and reports it in the
counters. The driver keeps a bounded window of 2 x min(workers, bands) tasks in flight,
submitted chunk by chunk across bands, so every actor has its next task queued.

Ray lifecycle: with no address and no Ray running in this process, a local instance is
started (num_cpus = workers, no dashboard, worker logs not forwarded) and shut down by
close() once the last scheduler using it closes, leaving no raylet, GCS or worker
process behind. With address=..., the driver joins that cluster and close() only
disconnects. If Ray is already initialised in this process, the scheduler uses that
connection and leaves it up. On a cluster each actor asks for 1 CPU (on the local
instance none: one node, nothing to place), and on CUDA for 1/workers of a GPU (Ray
then picks the GPU, so a `cuda:N` index applies to the driver only). On MPS
each actor process opens its own Metal device; Ray does not account for it.

Errors: an exception inside an actor reaches the caller as SchedulerError naming layer,
band and chunk; a task past watchdog_s, or an actor that died, makes the scheduler kill
its actors and become unusable.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque

import torch

from schedulers.base import Scheduler
from schedulers.cell import ChunkRunner
from schedulers.counters import TaskRecord
from schedulers.errors import SchedulerError, task_error

# Actors start by importing torch in a fresh process: allow for that on a loaded machine
# even when the task watchdog is short.
ACTOR_START_TIMEOUT_S = 120.0

# Ray instances this module started, shared by every RayScheduler of the process.
_session_lock = threading.Lock()
_session = {"users": 0, "owned": False}


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy that owns its storage: pickling a view would ship the whole base."""
    return t.detach().clone(memory_format=torch.contiguous_format)


class BandActor:
    """Runs the tasks of the bands assigned to it and owns their states."""

    def __init__(self, T_inner: int, device_type: str, dtype: torch.dtype, compile: bool,
                 kernel, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        self.device = torch.device("cuda", 0) if device_type == "cuda" else torch.device(device_type)
        self.runner = ChunkRunner(T_inner, device=self.device, dtype=dtype, compile=compile, kernel=kernel)
        self.states: dict[tuple[int, int], tuple] = {}  # (state_id, band) -> (C, n, m) on device
        self.progress: dict[tuple[int, int], int] = {}  # (state_id, band) -> chunks done

    def ready(self) -> int:
        return os.getpid()

    def run_chunk(self, state_id: int, source, band: int, chunk: int, last: bool, q, k, v, i, f):
        """Advance `band` by one chunk; `source` (first chunk only) is None for zeros, an
        int state id held here, or (C, n, m) tensors. Returns (h, TaskRecord)."""
        start = time.time()
        key = (state_id, band)
        in_order = self.progress.get(key, 0) == chunk
        if chunk == 0:
            state = self._source_state(source, band)
        else:
            if key not in self.states:
                raise RuntimeError(f"no state for band {band} before chunk {chunk}: earlier chunk missing")
            state = self.states[key]
        dev = self.device
        q, k, v, i, f = (t.to(dev) for t in (q, k, v, i, f))
        h = torch.empty_like(v)
        state, calls = self.runner(q, k, v, i, f, state, h)
        self.states[key] = state
        if last:
            self.progress.pop(key, None)
        else:
            self.progress[key] = chunk + 1
        h = h.cpu()
        return h, TaskRecord(band, chunk, calls, start, time.time(), in_order)

    def _source_state(self, source, band: int):
        if source is None:
            return None
        if isinstance(source, int):
            try:
                return self.states[(source, band)]
            except KeyError:
                raise RuntimeError(
                    f"state {source} of band {band} is not held here (released, or made by "
                    "another scheduler)"
                ) from None
        return tuple(t.to(self.device) for t in source)

    def fetch(self, state_id: int, band: int):
        return tuple(t.cpu() for t in self.states[(state_id, band)])

    def held(self) -> list[int]:
        return sorted({state_id for state_id, _ in self.states})

    def release(self, state_ids: list[int]) -> int:
        drop = set(state_ids)
        for key in [key for key in self.states if key[0] in drop]:
            del self.states[key]
        for key in [key for key in self.progress if key[0] in drop]:
            del self.progress[key]
        return len(self.states)


class RayState:
    """Handle to an mLSTM state resident in the actors of the RayScheduler that made it."""

    __slots__ = ("state_id", "owner", "num_heads", "shapes", "__weakref__")

    def __init__(self, state_id: int, owner: str, num_heads: int, shapes: tuple) -> None:
        self.state_id = state_id
        self.owner = owner
        self.num_heads = num_heads
        self.shapes = shapes  # (C, n, m) shapes of the full state

    def __repr__(self) -> str:
        return f"RayState(id={self.state_id}, shapes={self.shapes})"


class RayScheduler(Scheduler):
    backend = "ray"

    def __init__(self, knobs, *, address: str | None = None, **kwargs) -> None:
        super().__init__(knobs, **kwargs)
        import ray  # an optional extra: imported only when a ray scheduler is made

        self._ray = ray
        self._uid = uuid.uuid4().hex
        self._state_ids = itertools.count(1)
        self._pending_release: deque[int] = deque()  # appended by handle finalizers, any thread
        self._actors: list = []
        self._session_user = False
        self._address = address
        try:
            self._connect(address)
            self._start_actors()
        except BaseException:
            self._close()
            self._closed = True
            raise

    # -- lifecycle ----------------------------------------------------------------------
    def _connect(self, address: str | None) -> None:
        ray = self._ray
        with _session_lock:
            if ray.is_initialized():
                if _session["owned"]:  # started or joined by an earlier scheduler: share it
                    _session["users"] += 1
                    self._session_user = True
                return  # else initialised by the application: use it, leave it up
            try:
                if address is not None:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(num_cpus=self.knobs.workers, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING)
            except Exception as exc:
                where = f"join the Ray cluster at {address!r}" if address else "start a local Ray instance"
                fix = ("check the address (host:port of the head node's GCS, or 'auto')" if address
                       else "run `ray stop --force` to clear a stale instance, then retry")
                raise SchedulerError(f"ray: could not {where}: {exc}; {fix}") from exc
            _session["users"] = 1
            _session["owned"] = True
            self._session_user = True

    def _start_actors(self) -> None:
        ray = self._ray
        workers = self.knobs.workers
        # On the single-node instance this module started, CPU accounting serves no
        # purpose (and would stop a second scheduler sharing it); on a cluster, 1 CPU per
        # actor spreads the actors over the nodes.
        cpus = 0 if self._session_user and self._address is None else 1
        options = dict(num_cpus=cpus, max_restarts=0, max_concurrency=1)
        if self.device.type == "cuda":
            options["num_gpus"] = 1.0 / workers
        self._check_cluster_size(cpus * workers, 1.0 if self.device.type == "cuda" else 0.0)
        threads = max(1, (os.cpu_count() or 1) // workers) if self.device.type == "cpu" else 1
        actor_cls = ray.remote(BandActor)
        self._actors = [
            actor_cls.options(**options).remote(self.knobs.T_inner, self.device.type, self.dtype,
                                                self.compile, self._kernel, threads)
            for _ in range(workers)
        ]
        timeout = max(self.watchdog_s, ACTOR_START_TIMEOUT_S)
        try:
            ray.get([a.ready.remote() for a in self._actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            need = "1 CPU" + (f" and 1/{workers} GPU" if self.device.type == "cuda" else "")
            raise SchedulerError(
                f"ray: {workers} actors did not start within {timeout:g} s; each needs {need} "
                f"and the cluster has {ray.available_resources()} free; lower workers or add resources"
            ) from None
        except ray.exceptions.RayError as exc:
            raise SchedulerError(f"ray: an actor failed to start: {exc}") from exc

    def _check_cluster_size(self, cpus: float, gpus: float) -> None:
        total = self._ray.cluster_resources()
        for name, need in (("CPU", cpus), ("GPU", gpus)):
            if need > total.get(name, 0.0) + 1e-9:
                raise SchedulerError(
                    f"ray: workers={self.knobs.workers} actors need {need:g} {name} in total but the "
                    f"Ray cluster has {total.get(name, 0.0):g}; lower workers or add nodes"
                )

    def _kill_actors(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already dead, or Ray already down
                pass
        self._actors = []

    def _close(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            self._kill_actors()
        with _session_lock:
            if self._session_user:
                self._session_user = False
                _session["users"] -= 1
                if _session["users"] == 0:
                    _session["owned"] = False
                    # A local instance stops with its processes; a joined cluster is only
                    # disconnected from and keeps running.
                    ray.shutdown()

    def actor_pids(self) -> list[int]:
        """Process ids of this scheduler's actors (for checks that they go away)."""
        return self._ray.get([a.ready.remote() for a in self._actors], timeout=self.watchdog_s)

    def resident_state_ids(self) -> set[int]:
        """Ids of the states the actors hold now (releases of dropped handles are sent
        with the next call)."""
        held = self._ray.get([a.held.remote() for a in self._actors], timeout=self.watchdog_s)
        return {state_id for ids in held for state_id in ids}

    # -- running ------------------------------------------------------------------------
    def _actor(self, band: int):
        return self._actors[band % len(self._actors)]

    def _flush_releases(self) -> None:
        ids = []
        while self._pending_release:  # popleft is atomic against a finalizer's append
            ids.append(self._pending_release.popleft())
        if not ids:
            return
        for actor in self._actors:
            actor.release.remote(ids)

    def _source(self, state, q, v):
        """What the first chunk of each band starts from: None, a state id, or per-band tensors."""
        if state is None:
            return lambda band: None
        if isinstance(state, RayState):
            self._check_handle(state)
            B, NH, _, DHQK = q.shape
            want = ((B, NH, DHQK, v.shape[-1]), (B, NH, DHQK), (B, NH, 1))
            if state.shapes != want:
                raise ValueError(f"state shapes {state.shapes} do not match the inputs: expected {want}")
            return lambda band: state.state_id
        self._check_state_shapes(state, q, v)
        cpu_state = tuple(t.detach().to("cpu") for t in state)
        plan_heads = self.knobs.heads_per_band
        return lambda band: tuple(_compact(t[:, band * plan_heads:(band + 1) * plan_heads]) for t in cpu_state)

    def _check_handle(self, state: RayState) -> None:
        if state.owner != self._uid:
            raise ValueError("this RayState was made by another ray scheduler; pass it to the scheduler "
                             "that returned it (or materialize() it there and pass the tensors)")

    def _run(self, layer, plan, q, k, v, i, f, state):
        ray = self._ray
        source = self._source(state, q, v)
        self._flush_releases()
        state_id = next(self._state_ids)
        cpu = [t.detach().to("cpu") for t in (q, k, v, i, f)]
        h = torch.empty(v.shape, dtype=v.dtype)
        todo = deque((band, chunk) for chunk in plan.chunks for band in range(plan.bands))
        last = plan.chunks_per_band - 1
        inflight: dict = {}  # ObjectRef -> (band, chunk, watchdog deadline)
        records: list[TaskRecord] = []
        failure = None
        window = 2 * plan.useful_concurrency
        while True:
            while failure is None and todo and len(inflight) < window:
                band, chunk = todo.popleft()
                heads, t = plan.band_heads(band), slice(chunk.start, chunk.stop)
                ref = self._actor(band).run_chunk.remote(
                    state_id, source(band) if chunk.index == 0 else None, band, chunk.index,
                    chunk.index == last, *(_compact(x[:, heads, t]) for x in cpu))
                inflight[ref] = (band, chunk.index, time.monotonic() + self.watchdog_s)
            if not inflight:
                break
            soonest = min(inflight.values(), key=lambda item: item[2])
            ready, _ = ray.wait(list(inflight), num_returns=1,
                                timeout=max(0.0, soonest[2] - time.monotonic()))
            if not ready:
                self._broken = f"layer {layer} band {soonest[0]} chunk {soonest[1]} hit the watchdog"
                self._kill_actors()
                raise task_error(f"did not finish within the {self.watchdog_s:g} s watchdog", layer=layer,
                                 band=soonest[0], chunk=soonest[1], backend=self.backend)
            for ref in ready:
                band, chunk_index, _ = inflight.pop(ref)
                try:
                    h_part, record = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    failure = failure or (band, chunk_index, cause)
                    continue
                except ray.exceptions.RayError as exc:  # the actor died
                    self._broken = f"the actor of band {band} died"
                    failure = failure or (band, chunk_index, exc)
                    continue
                chunk = plan.chunks[chunk_index]
                h[:, plan.band_heads(band), chunk.start:chunk.stop] = h_part
                records.append(record)
        if failure is not None:
            self._pending_release.append(state_id)
            if self._broken is not None:
                self._kill_actors()
            band, chunk_index, exc = failure
            raise task_error(f"failed: {type(exc).__name__}: {exc}", layer=layer, band=band,
                             chunk=chunk_index, backend=self.backend) from exc
        B, NH, _, DHQK = q.shape
        handle = RayState(state_id, self._uid, NH,
                          ((B, NH, DHQK, v.shape[-1]), (B, NH, DHQK), (B, NH, 1)))
        weakref.finalize(handle, self._pending_release.append, state_id)
        return h.to(self.device), handle, records

    def materialize(self, state):
        if not isinstance(state, RayState):
            return super().materialize(state)
        self._check_handle(state)
        self._check_usable()
        bands = state.num_heads // self.knobs.heads_per_band
        refs = [self._actor(b).fetch.remote(state.state_id, b) for b in range(bands)]
        try:
            parts = self._ray.get(refs, timeout=self.watchdog_s)
        except self._ray.exceptions.RayError as exc:
            raise SchedulerError(f"ray: could not fetch state {state.state_id}: {exc}") from exc
        return tuple(torch.cat([p[j] for p in parts], dim=1).to(self.device) for j in range(3))
