"""Strict device selection: what was asked for is what runs, or a clear error.

Nothing here falls back silently: asking for 'cuda' on a machine without a usable CUDA
device raises DeviceUnavailableError instead of running on the CPU.
"""

from __future__ import annotations

import platform

import torch

VALID_DEVICE_NAMES = "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"


class DeviceUnavailableError(ValueError):
    """The requested device exists as a name but is not usable on this machine."""


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device) -> torch.device:
    """Map 'cpu' | 'cuda' | 'cuda:N' | 'mps' | 'auto' to a usable torch.device.

    'auto' picks cuda, else mps, else cpu. An unavailable cuda/mps raises
    DeviceUnavailableError; an unknown name raises ValueError listing the valid ones.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"device must be a string ({VALID_DEVICE_NAMES}), got {name!r}")
    text = name.strip().lower()

    if text == "auto":
        if _cuda_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(
                "device 'mps' was requested but Apple MPS is not available on this machine "
                "(it needs Apple Silicon and a torch build with MPS); use device 'cpu' or 'auto'"
            )
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text[len("cuda:") :] if ":" in text else None
        if index_text is not None and not index_text.isdigit():
            raise ValueError(f"unknown device {name!r}: use {VALID_DEVICE_NAMES}")
        if not _cuda_available():
            raise DeviceUnavailableError(
                f"device {name!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); install "
                "a CUDA build of torch on a machine with an NVIDIA GPU, or use device 'cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        index = int(index_text) if index_text is not None else torch.cuda.current_device()
        if index >= count:
            raise DeviceUnavailableError(
                f"device {name!r} was requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1}); pick one of those"
            )
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {name!r}: use {VALID_DEVICE_NAMES}")


def device_name(device: torch.device) -> str:
    """A human-readable name of the hardware behind `device` (for fingerprints)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (timed regions must end with this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
