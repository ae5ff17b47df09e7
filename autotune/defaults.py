"""Runner defaults: the built-in config and the exported table the runner picks from.

`autotune export` writes studies/defaults.json (schema below); the runner (`autotune
generate`, `autotune.runtime.load_runner`) calls `pick` with the prompt's length. A
missing, corrupt or non-matching file never stops inference: it falls back to
`builtin_default` with a `DefaultsWarning`.

    {"schema_version": 1, "entries": [{"shape", "device_kind", "backend", "dtype",
      "table": [{"context": L, "batch": B, "config": {knobs}, "kernel": {kernel parameters},
                 "metrics": {...}, "trial": n, "study": name}, ...]}]}

A row without "batch" is for batch 1; one without "kernel" runs the kernels' defaults.
The runner takes the rows of its batch (the nearest batch the file has, as for contexts),
then the row for its prompt length.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.names import KERNEL_KNOBS, KNOBS  # noqa: F401  (one source; re-exported)

# kernels is imported where a row is checked against the model: it loads torch, which
# reading the defaults file never needs.

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("studies/defaults.json")
# The model's own runner advances 64 steps per kernel call; never exceed it by default.
BUILTIN_MAX_CHUNK = 64


class DefaultsWarning(UserWarning):
    """The defaults file could not be used; the built-in config runs instead."""


@dataclass(frozen=True)
class Choice:
    """A picked config and where it came from (for the runner to print)."""

    config: dict[str, int]
    source: str  # "file" or "builtin"
    context: int | None = None  # the table row's context length (file only)
    trial: int | None = None
    study: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    row_source: str | None = None  # the row's 'source': tuned, baseline or unconfirmed
    kernel: dict[str, int] = field(default_factory=dict)  # kernel parameters; absent ones: defaults
    batch: int | None = None  # the table row's batch (file only)

    def describe(self) -> str:
        knobs = " ".join([*(f"{k}={self.config[k]}" for k in KNOBS), *(f"{k}={v}" for k, v in self.kernel.items())])
        where = f"study {self.study}, trial {self.trial}"
        if self.source != "file":
            return f"{knobs} (built-in default)"
        if self.row_source == "baseline":
            return f"{knobs} (the baseline for context {self.context}: no tuned config beat it beyond noise; {where})"
        if self.row_source == "unconfirmed":
            return f"{knobs} (best search result for context {self.context}, unconfirmed: {where})"
        return f"{knobs} (tuned for context {self.context}: {where})"


def builtin_default(num_heads: int, context: int) -> dict[str, int]:
    """The untuned config: what the model's own runner does, expressed as knobs.

    - workers 1, heads_per_band = num_heads: one kernel call covers all heads, no
      concurrency; the model's direct runner does exactly that.
    - chunk_size: the largest power of two <= context, capped at 64 (the direct
      runner's chunk); a power of two keeps T_inner choices open and never exceeds
      the context, so the config is valid in every search space.
    - T_inner = chunk_size: one fused kernel call per chunk, as the direct runner does
      with mlstm_block. It divides chunk_size by construction.

    This is the baseline every study measures first, so a score of 1.0 means "as
    fast as the untuned runtime".
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if context < 1:
        raise ValueError(f"context must be >= 1 token, got {context}")
    chunk = 1 << (min(context, BUILTIN_MAX_CHUNK).bit_length() - 1)
    return {"workers": 1, "heads_per_band": num_heads, "chunk_size": chunk, "T_inner": chunk}


def why_invalid_knobs(config: Any, num_heads: int | None = None) -> str | None:
    """Why a knob dict cannot drive a scheduler, or None when it can."""
    if not isinstance(config, dict):
        return "config is not an object"
    for name in KNOBS:
        value = config.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"knob {name!r} must be a positive integer, got {value!r}"
    if config["chunk_size"] % config["T_inner"]:
        return f"T_inner {config['T_inner']} does not divide chunk_size {config['chunk_size']}"
    if num_heads is not None and num_heads % config["heads_per_band"]:
        return f"heads_per_band {config['heads_per_band']} does not divide num_heads {num_heads}"
    return None


def load_entries(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The entries of a defaults file; raises ValueError naming what is wrong."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist (write it with `autotune export`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); write it again with `autotune export`") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise ValueError(
            f"{path} has schema_version {found!r}, this version reads {SCHEMA_VERSION}; "
            "write it again with `autotune export`"
        )
    entries = data.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{path} has no list of entries; write it again with `autotune export`")
    return entries


def _matches(entry: dict[str, Any], shape: str, device_kind: str, backend: str, dtype: str | None) -> bool:
    return (
        entry.get("shape") == shape
        and entry.get("device_kind") == device_kind
        and entry.get("backend") == backend
        and (dtype is None or entry.get("dtype") == dtype)
    )


def row_batch(row: dict[str, Any]) -> int:
    """A table row's batch (rows written before batches were a dimension are batch 1)."""
    batch = row.get("batch", 1)
    return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1 else 1


def nearest_row(table: list[dict[str, Any]], prompt_len: int, batch: int = 1) -> dict[str, Any]:
    """Among the rows of the smallest batch >= `batch` (else the largest batch), the row
    for the smallest context >= prompt_len, else the largest context."""
    batches = sorted({row_batch(row) for row in table})
    chosen = next((b for b in batches if b >= batch), batches[-1])
    rows = sorted((row for row in table if row_batch(row) == chosen), key=lambda row: row["context"])
    for row in rows:
        if row["context"] >= prompt_len:
            return row
    return rows[-1]


def why_invalid_kernel(kernel: Any) -> str | None:
    """Why a row's kernel parameters cannot run, or None (absent counts as the defaults)."""
    if kernel is None:
        return None
    if not isinstance(kernel, dict):
        return "kernel is not an object"
    from kernels.registry import why_params_invalid

    return why_params_invalid(kernel, {})


def _num_heads(shape: str) -> int:
    from kernels import get_config

    return get_config(shape).num_heads


def pick_choice(
    shape: str,
    device_kind: str,
    backend: str,
    prompt_len: int,
    path: Path | str | None = None,
    *,
    dtype: str | None = None,
    num_heads: int | None = None,
    batch: int = 1,
) -> Choice:
    """Like `pick`, with the provenance of the config and its kernel parameters."""
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1 token, got {prompt_len}")
    if num_heads is None:
        num_heads = _num_heads(shape)

    def fallback(reason: str) -> Choice:
        warnings.warn(f"{reason}; using the built-in defaults", DefaultsWarning, stacklevel=3)
        return Choice(builtin_default(num_heads, prompt_len), "builtin")

    try:
        entries = load_entries(path)
    except ValueError as exc:
        return fallback(str(exc))
    where = Path(path) if path is not None else DEFAULT_PATH
    matching = [e for e in entries if _matches(e, shape, device_kind, backend, dtype)]
    if not matching:
        have = sorted({f"{e.get('shape')}/{e.get('device_kind')}/{e.get('backend')}" for e in entries})
        want = f"{shape}/{device_kind}/{backend}" + (f" ({dtype})" if dtype else "")
        return fallback(f"{where} has no entry for {want} (it has: {', '.join(have) or 'none'})")
    # Several dtypes for one shape/device/backend: take the first the file lists.
    table = matching[0].get("table")
    rows = [r for r in table if isinstance(r, dict) and isinstance(r.get("context"), int)] if isinstance(table, list) else []
    if not rows:
        return fallback(f"{where}: the entry for {shape}/{device_kind}/{backend} has no table rows")
    row = nearest_row(rows, prompt_len, batch)
    config = row.get("config")
    problem = why_invalid_knobs(config, num_heads) or why_invalid_kernel(row.get("kernel"))
    if problem:
        return fallback(f"{where}: the config for context {row['context']} is invalid ({problem})")
    return Choice(
        config={k: config[k] for k in KNOBS},
        source="file",
        context=row["context"],
        trial=row.get("trial"),
        study=row.get("study"),
        metrics=row.get("metrics") or {},
        row_source=row.get("source"),
        kernel=dict(row.get("kernel") or {}),
        batch=row_batch(row),
    )


def pick(
    shape: str,
    device_kind: str,
    backend: str,
    prompt_len: int,
    path: Path | str | None = None,
    *,
    dtype: str | None = None,
    num_heads: int | None = None,
    batch: int = 1,
) -> dict[str, int]:
    """The knob dict for a prompt of `prompt_len` tokens.

    The entry for (shape, device_kind, backend[, dtype]) in the defaults file at `path`
    (default studies/defaults.json); among the rows of the nearest batch to `batch`, the
    row with the smallest context >= prompt_len, else its largest context. Falls back to `builtin_default` with a DefaultsWarning when
    the file is missing, corrupt, has no such entry, or holds an invalid config.
    """
    return pick_choice(
        shape, device_kind, backend, prompt_len, path, dtype=dtype, num_heads=num_heads, batch=batch
    ).config
