"""Where a result was measured: device, OS/driver, torch, project version, git commit.

The tuner keys its studies on (device_name, torch, project_version), so these must be
stable for one machine and installation.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import torch

import autotune

_REPO_ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    try:
        return version("xlstm-autotune")
    except Exception:
        return autotune.__version__


def git_commit() -> str | None:
    """HEAD of the checkout this code runs from, or None outside a git checkout."""
    if not (_REPO_ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "cpu"


def _nvidia_driver() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ..."
    for token in text.split():
        if token.count(".") >= 1 and token.replace(".", "").isdigit():
            return token
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({_cpu_name()})"
    return _cpu_name()


def driver(device: torch.device) -> str | None:
    if device.type == "cuda":
        parts = []
        if torch.version.cuda:
            parts.append(f"CUDA {torch.version.cuda}")
        if getattr(torch.version, "hip", None):
            parts.append(f"HIP {torch.version.hip}")
        nv = _nvidia_driver()
        if nv:
            parts.append(f"driver {nv}")
        return ", ".join(parts) or None
    if device.type == "mps":
        return f"macOS {platform.mac_ver()[0]}" if platform.mac_ver()[0] else None
    return None


def collect(device: torch.device | None) -> dict:
    """The env block of a result; device None when the device was never resolved."""
    return {
        "device_name": device_name(device) if device is not None else None,
        "device": str(device) if device is not None else None,
        "os": platform.platform(),
        "driver": driver(device) if device is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "project_version": project_version(),
        "git_commit": git_commit(),
    }
