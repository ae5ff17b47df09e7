"""make_scheduler: a backend by name."""

from __future__ import annotations

import importlib.util

import torch

from schedulers.base import DEFAULT_WATCHDOG_S, Scheduler
from schedulers.cell import Kernel
from schedulers.plan import Knobs
from schedulers.queued import QueuedScheduler
from schedulers.ray_actors import RayScheduler
from schedulers.sequential import SequentialScheduler

BACKENDS = ("sequential", "queued", "ray")
RAY_EXTRA = "pip install 'xlstm-autotune[ray]'"


def ray_missing() -> str | None:
    """Why the ray backend cannot run here (Ray is an optional extra), or None."""
    if importlib.util.find_spec("ray") is None:
        return f"the ray backend needs Ray, which is not installed; install it with: {RAY_EXTRA}"
    return None


def make_scheduler(backend: str, knobs: Knobs, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, compile: bool = False,
                   address: str | None = None, watchdog_s: float = DEFAULT_WATCHDOG_S,
                   kernel: Kernel | None = None) -> Scheduler:
    """A scheduler for `backend` ('sequential' | 'queued' | 'ray').

    dtype is the dtype of q, k, v (the model's weight dtype). address (ray only) joins
    an existing Ray cluster; without it a local Ray instance is started and shut down by
    close(). watchdog_s bounds one task (queued, ray). kernel replaces the mLSTM kernel
    (mlstm_block's signature) for fault injection and instrumentation.
    """
    common = dict(device=device, dtype=dtype, compile=compile, kernel=kernel, watchdog_s=watchdog_s)
    if backend != "ray" and address is not None:
        raise ValueError(f"address is a Ray option; backend {backend!r} takes none")
    if backend == "sequential":
        return SequentialScheduler(knobs, **common)
    if backend == "queued":
        return QueuedScheduler(knobs, **common)
    if backend == "ray":
        problem = ray_missing()
        if problem:
            raise ValueError(problem)
        return RayScheduler(knobs, address=address, **common)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
