"""Peak memory of a measurement, per device kind (its `source` names how it was read)."""

from __future__ import annotations

import resource
import sys

import torch


class PeakMemory:
    """Peak device memory of the timed repeats: reset before them, read after."""

    def __init__(self, device: torch.device):
        self.device = device
        self._mps_peak = 0
        if device.type == "cuda":
            self.source = "cuda_max_memory_allocated"
        elif device.type == "mps":
            self.source = "mps_driver_allocated_sampled"
        elif _reset_rss_peak():
            # Resident high-water mark of the timed repeats (the model included): the same
            # figure in a fresh process and in a warm worker that measured other configs.
            self.source = "vm_hwm"
        else:
            # Process-wide high-water mark since start (model, warm-up and Python included).
            self.source = "ru_maxrss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.source == "vm_hwm":
            _reset_rss_peak()

    def sample(self) -> None:
        if self.device.type == "mps":
            self._mps_peak = max(self._mps_peak, int(torch.mps.driver_allocated_memory()))

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.device.type == "mps":
            return self._mps_peak
        if self.source == "vm_hwm":
            return _status_kib("VmHWM") * 1024
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _reset_rss_peak() -> bool:
    """Linux: restart the process's resident high-water mark (VmHWM) at its current size."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")
