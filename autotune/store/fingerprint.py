"""The machine fingerprint of a study or surface: what a measurement depends on beyond
the config (device, torch, project version). A study measured on one machine is never
resumed on another, and a surface never mixes machines."""

from __future__ import annotations

from typing import Any

# torch and autotune.bench.env (torch) are imported where the fingerprint is taken: the
# sweep imports this module before it knows the device.

FIELDS = ("device_name", "torch", "project_version")


def machine_fingerprint(device) -> dict[str, str]:
    """The fingerprint of `device` here; the benchmark's env block reports the same fields,
    read by the same functions."""
    import torch

    from autotune.bench.env import device_name, project_version

    return {"device_name": device_name(device), "torch": torch.__version__, "project_version": project_version()}


def describe_fingerprint(fp: dict[str, Any]) -> str:
    return ", ".join(f"{k} {fp.get(k)!s}" for k in FIELDS)
