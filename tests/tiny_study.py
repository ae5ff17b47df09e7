"""What the tuner tests share: the study spec (the tiny shape on the CPU over a small
space: workers, bands, chunks and windows all have several valid values, with the
sections that differ between tests passed in as TOML lines) and a poll for a tuner
process's progress."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float, what: str):
    """predicate()'s first truthy value, polled every 0.2 s; fails after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tiny_spec_text(*, contexts=(64,), search: str = "seed = 1", confirmation: str = "top_k = 0",
                   objective: str = "") -> str:
    return f"""
[model]
shape = "tiny"
device = "cpu"
backends = ["queued"]
[workload]
contexts = {list(contexts)}
repeats = 3
[space]
workers = [1, 2, 4]
heads_per_band = [1, 2, 4]
chunk_size = [16, 32, 64]
T_inner = [8, 16]
[objective]
{objective}
[search]
{search}
[confirmation]
{confirmation}
"""
