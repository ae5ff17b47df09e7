"""Who measures: this tuner's identity on its trials, whether a recorded worker is
certainly gone, and the benchmark slots of `--gpus` (one child per GPU at a time).

A trial records its worker (user attr 'worker': host, pid, pid namespace). On the
same host and pid namespace a worker whose pid no longer exists is gone for sure, so a
restarted tuner takes over its trials at once; anywhere else only the heartbeat lease
(autotune.store.recovery) tells, since a pid on another host says nothing here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from autotune.errors import UserError

# torch is imported only where CUDA GPUs are counted: replay and the store's recovery
# import this module and never need torch.


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def identity() -> dict[str, Any]:
    """This process as a trial's worker."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace()}


def is_gone(worker: Any) -> bool:
    """True when `worker` (a trial's 'worker' attr) ran on this host, in this pid
    namespace, and its process no longer exists. False when it is alive or unknown
    (another host, or a pid since reused by another process: the lease decides then)."""
    if not isinstance(worker, dict) or not isinstance(worker.get("pid"), int):
        return False
    if worker.get("host") != socket.gethostname() or worker.get("pidns") != _pid_namespace():
        return False
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


# ----------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class Slot:
    """Where one benchmark child runs: a GPU (its index as --gpus gave it) or, without
    --gpus, wherever the spec's device says."""

    gpu: int | None = None
    visible: str | None = None  # the child's CUDA_VISIBLE_DEVICES

    def env(self) -> dict[str, str] | None:
        """The child's environment (None: inherit this process's unchanged)."""
        if self.visible is None:
            return None
        return {**os.environ, "CUDA_VISIBLE_DEVICES": self.visible}

    @property
    def label(self) -> str:
        return "" if self.gpu is None else f"gpu {self.gpu}"


def parse_gpus(text: str) -> tuple[int, ...]:
    """`--gpus 0,1` -> (0, 1): distinct non-negative indices."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected GPU indices separated by commas, e.g. 0,1; got {text!r}")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"a GPU is listed twice in {text!r}")
    return gpus


def _visible_ids(count: int) -> list[str]:
    """The physical ids behind this process's CUDA device indices 0..count-1: a child's
    CUDA_VISIBLE_DEVICES is read against all GPUs, not against ours."""
    ours = os.environ.get("CUDA_VISIBLE_DEVICES")
    if ours is None:
        return [str(i) for i in range(count)]
    return [p.strip() for p in ours.split(",") if p.strip()][:count]


def gpu_slots(gpus: Sequence[int], device, requested: str) -> tuple[list[Slot], str | None]:
    """The benchmark slots for `--gpus` on `device` (the spec's device `requested`,
    resolved), and the
    GPU model to fingerprint the study with (None: keep the device's own name).

    On CUDA every listed GPU must exist and all must be one model: measurements of
    different models in one study would not be comparable. On a CPU device the
    children still get CUDA_VISIBLE_DEVICES (and the trials their 'gpu'), but they
    share the CPU and disturb each other's timings.
    """
    if not gpus:
        return [Slot()], None
    if device.type == "cuda":
        import torch

        if ":" in requested:
            raise UserError(
                f"--gpus picks the GPUs itself; set [model] device = 'cuda' (not {requested!r}) in the spec"
            )
        count = torch.cuda.device_count()
        missing = [g for g in gpus if g >= count]
        if missing:
            raise UserError(f"--gpus lists GPU {missing[0]}, but this host has {count} (0..{count - 1}); "
                            "list existing ones, e.g. --gpus 0,1")
        names = {g: torch.cuda.get_device_name(g) for g in gpus}
        if len(set(names.values())) > 1:
            listing = ", ".join(f"{g}: {n}" for g, n in names.items())
            raise UserError(f"--gpus mixes GPU models ({listing}); their timings are not comparable in one "
                            "study: run one tuner per model, each with --gpus listing GPUs of that model")
        ids = _visible_ids(count)
        return [Slot(g, ids[g]) for g in gpus], names[gpus[0]]
    if device.type == "cpu":
        return [Slot(g, str(g)) for g in gpus], None
    raise UserError(f"--gpus needs a CUDA device; the spec's device is {device.type!r}. Leave --gpus out")
