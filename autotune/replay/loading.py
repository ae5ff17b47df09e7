"""Reading a surface from where it lives: a file, a sweep's journal or a generator.

    surface = load_surface("studies/surfaces/cpu-tiny-queued-L128.json")
    surface = load_surface("RTX_3090.json.gz")        # a Kernel Tuner cache, gzipped as published
    surface = load_surface("synthetic:kernel:100")    # autotune.replay.synthetic

The document formats are those of autotune.replay.surface; a name ending in `.gz` is
read through gzip first.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from autotune.replay.surface import (
    SURFACE_FORMAT,
    Surface,
    SurfaceError,
    surface_from_dict,
    surface_from_kernel_tuner,
)
from autotune.replay.synthetic import kernel_surface, xlstm_surface

# autotune.sweep is imported where a sweep's journal is read: it imports this package
# (through autotune.replay.surface), so at the top the two would import each other.

SYNTHETIC_PREFIX = "synthetic:"


def load_surface(path: str | Path) -> Surface:
    """Load a surface file or a Kernel Tuner cache file (detected from its keys), plain
    or gzipped.

    `synthetic:xlstm:SEED` and `synthetic:kernel:SEED` generate a synthetic surface
    (autotune.replay.synthetic) instead of reading a file. A sweep's journal
    (`*.runs.jsonl`) gives the surface of the configs it has measured so far.
    """
    if str(path).startswith(SYNTHETIC_PREFIX):
        return _synthetic(str(path))
    from autotune.sweep import JOURNAL_SUFFIX, surface_from_journal

    path = Path(path)
    if path.name.endswith(JOURNAL_SUFFIX) and path.exists():
        return surface_from_dict(surface_from_journal(path), name=path.name)
    doc = _parse_json(read_text(path), path)
    if not isinstance(doc, dict):
        raise SurfaceError(f"{path}: expected a JSON object")
    name = surface_name(path)
    if doc.get("format") == SURFACE_FORMAT:
        return surface_from_dict(doc, name=name)
    if "cache" in doc and "tune_params" in doc:
        return surface_from_kernel_tuner(doc, name=name)
    raise SurfaceError(
        f"{path} is neither an autotune surface (\"format\": \"{SURFACE_FORMAT}\") nor a Kernel Tuner "
        "cache (keys tune_params_keys, tune_params, cache); write one with `autotune sweep`"
    )


def surface_name(path: Path) -> str:
    """The file's name without .json / .gz ("RTX_3090.json.gz" -> "RTX_3090")."""
    name = path.name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name


def read_text(path: Path) -> str:
    """The file's text; gunzipped when its name ends in .gz."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SurfaceError(f"{path} does not exist (surfaces live under studies/surfaces/)") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise SurfaceError(f"cannot read {path}: {exc}") from None


def _synthetic(spec: str) -> Surface:
    parts = spec.split(":")
    makers = {"xlstm": xlstm_surface, "kernel": kernel_surface}
    if len(parts) != 3 or parts[1] not in makers or not parts[2].isdigit():
        raise SurfaceError(f"{spec!r}: write synthetic:xlstm:SEED or synthetic:kernel:SEED, e.g. synthetic:kernel:100")
    return makers[parts[1]](int(parts[2]))


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        # Kernel Tuner leaves a cache open (no closing braces) while a run is going on
        repaired = text.rstrip().rstrip(",") + "\n}\n}"
        try:
            return json.loads(repaired)
        except json.JSONDecodeError:
            raise SurfaceError(f"{path} is not valid JSON: {first}") from None
