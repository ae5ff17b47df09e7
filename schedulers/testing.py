"""Injectable kernels for checking a scheduler: failures, stalls, forced overlap.

Each is a picklable callable with mlstm_block's signature (so it also runs inside Ray
actors) that wraps the real kernel. Pass one as make_scheduler(..., kernel=...).

A failure or stall is aimed at one (band, chunk) by planting a NaN marker in q at one
head and timestep (plant_marker); the wrapper reacts to any q slice holding a NaN, so
the task that sees the marker is exactly the one owning that head and step, in every
backend. Cross-thread and cross-process coordination goes through files in a directory,
which threads and actor processes on one machine share.
"""

from __future__ import annotations

import os
import time
import uuid

import torch

from kernels.mlstm import mlstm_block


class InjectedFailure(RuntimeError):
    """Raised by FailOnMarker."""


def plant_marker(q: torch.Tensor, head: int, step: int) -> torch.Tensor:
    """A copy of q (B, NH, S, DHQK) with a NaN at (head, step) of every batch row."""
    q = q.clone()
    q[:, head, step, 0] = float("nan")
    return q


def _has_marker(q: torch.Tensor) -> bool:
    return bool(torch.isnan(q).any())


class FailOnMarker:
    """Raises InjectedFailure in the kernel call whose q holds the marker."""

    def __call__(self, q, k, v, i, f, state=None):
        if _has_marker(q):
            raise InjectedFailure(f"injected failure (pid {os.getpid()})")
        return mlstm_block(q, k, v, i, f, state)


class StallOnMarker:
    """The kernel call whose q holds the marker waits until `release_path` exists (or
    max_wait_s passes), then fails; other calls run normally."""

    def __init__(self, release_path: str, max_wait_s: float = 60.0) -> None:
        self.release_path = release_path
        self.max_wait_s = max_wait_s

    def __call__(self, q, k, v, i, f, state=None):
        if _has_marker(q):
            deadline = time.monotonic() + self.max_wait_s
            while not os.path.exists(self.release_path) and time.monotonic() < deadline:
                time.sleep(0.01)
            raise InjectedFailure("stalled kernel released")
        return mlstm_block(q, k, v, i, f, state)


class Rendezvous:
    """The first `parties` kernel calls wait until all `parties` are inside a kernel at
    the same time; later calls pass straight through. This makes the peak concurrency a
    scheduler can reach certain to be observed. A call that waits longer than
    timeout_s raises (the scheduler could not run `parties` tasks at once)."""

    def __init__(self, directory: str, parties: int, timeout_s: float = 60.0) -> None:
        self.directory = directory
        self.parties = parties
        self.timeout_s = timeout_s

    def _arrived(self) -> int:
        return sum(name.startswith("arrived-") for name in os.listdir(self.directory))

    def __call__(self, q, k, v, i, f, state=None):
        open_flag = os.path.join(self.directory, "open")
        if not os.path.exists(open_flag):
            with open(os.path.join(self.directory, f"arrived-{uuid.uuid4().hex}"), "w"):
                pass
            deadline = time.monotonic() + self.timeout_s
            while self._arrived() < self.parties and not os.path.exists(open_flag):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rendezvous: only {self._arrived()} of {self.parties} "
                                       f"kernel calls ran at the same time")
                time.sleep(0.002)
            with open(open_flag, "w"):
                pass
        return mlstm_block(q, k, v, i, f, state)


def random_cell_inputs(batch: int, num_heads: int, seq_len: int, qk_dim: int, v_dim: int, *,
                       seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """Random q, k, v, i, f for one cell call, with gates in the range a model produces
    (input gate around 0, forget gate mostly open)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q = randn(batch, num_heads, seq_len, qk_dim)
    k = randn(batch, num_heads, seq_len, qk_dim)
    v = randn(batch, num_heads, seq_len, v_dim)
    i = 3.0 * randn(batch, num_heads, seq_len)
    f = 2.0 + 2.0 * randn(batch, num_heads, seq_len)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, i, f))


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def descendant_pids(root: int) -> set[int]:
    """Every live process below `root` in the process tree (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return {pid for pid in found if process_alive(pid)}


def wait_until_gone(pids, timeout_s: float = 20.0) -> set[int]:
    """Wait for the processes to end; returns those still alive after timeout_s."""
    deadline = time.monotonic() + timeout_s
    alive = {pid for pid in pids if process_alive(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if process_alive(pid)}
    return alive
