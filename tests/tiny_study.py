"""The study spec the tuner tests share: the tiny shape on the CPU over a small space
(workers, bands, chunks and windows all have several valid values), with the sections
that differ between tests passed in as TOML lines."""

from __future__ import annotations


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
