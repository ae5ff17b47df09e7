"""Recorded surfaces: every valid config of a space with its raw measured samples.

Two documents become the same `Surface` (reading files: autotune.replay.loading):

- this project's surface file (written by `autotune sweep`; format in
  docs/strategies.md, "Surface files"): `{"format": "autotune-surface", "schema_version": 1, "objective":
  {"name", "direction"}, "knobs": {knob: [values]}, "configs": [{"config", "samples",
  "error"}], ...}`;
- Kernel Tuner cache files: `tune_params_keys`, `tune_params` and `cache`, each cache
  entry holding the parameter values and a `time` (or the cache's `objective` key) to
  minimise, optionally the raw `times`; a failure string instead of a number marks a
  config that fails when run ("CompilationFailedConfig", "RuntimeFailedConfig"), while
  "InvalidConfig" and configs absent from the cache are invalid (outside the space).

A config's true value is the median of its samples (Kernel Tuner: the cache's value);
a replayed first visit returns one sample drawn at random, so the noise is real.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.space import DiscreteSpace

SURFACE_FORMAT = "autotune-surface"
SURFACE_SCHEMA_VERSION = 1
DIRECTIONS = ("minimize", "maximize")
KT_INVALID = "InvalidConfig"
# Objectives in Kernel Tuner caches where higher is better (the default, time, is lower)
_HIGHER_IS_BETTER_HINTS = ("/s", "flops", "throughput", "bandwidth")


class SurfaceError(ValueError):
    """A file that is neither a valid surface nor a usable Kernel Tuner cache."""


@dataclass
class Surface:
    name: str
    knobs: dict[str, list[Any]]
    objective: str
    direction: str  # 'minimize' | 'maximize'
    configs: list[dict[str, Any]]
    samples: list[np.ndarray]  # raw samples per config (empty for a failed config)
    source: str  # 'autotune' | 'kernel_tuner'
    meta: dict[str, Any] = field(default_factory=dict)
    true_values: np.ndarray | None = None  # per config; NaN for a failed config

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise SurfaceError(f"objective direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if len(self.samples) != len(self.configs):
            raise SurfaceError("a surface needs one sample list per config")
        if self.true_values is None:
            self.true_values = np.array([float(np.median(s)) if len(s) else np.nan for s in self.samples])
        self.failed = np.isnan(self.true_values)
        if self.failed.all():
            raise SurfaceError(f"surface {self.name!r} has no successfully measured config")
        self.space = DiscreteSpace(self.knobs, self.configs)
        if len(self.space) != len(self.configs):
            raise SurfaceError(f"surface {self.name!r} lists a config twice")

    # -- the objective, with "better" made explicit ----------------------------------
    @property
    def sign(self) -> float:
        """+1 if higher is better, -1 if lower is better."""
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def best_of(self, values: np.ndarray) -> float:
        return float(np.max(values) if self.maximize else np.min(values))

    @property
    def optimum(self) -> float:
        return self.best_of(self.true_values[~self.failed])

    @property
    def worst(self) -> float:
        ok = self.true_values[~self.failed]
        return float(np.min(ok) if self.maximize else np.max(ok))

    @property
    def median(self) -> float:
        """Median over the configs, a failure counting as the worst value."""
        return float(np.median(self.filled_values()))

    def filled_values(self) -> np.ndarray:
        """True values with each failed config given the worst measured value: a failed
        evaluation is spent and finds nothing better than the worst config."""
        return np.where(self.failed, self.worst, self.true_values)

    def __len__(self) -> int:
        return len(self.configs)

    def ranking(self) -> list[dict[str, Any]]:
        """The configs that ran, best first (a warm start's source)."""
        ok = np.flatnonzero(~self.failed)
        order = ok[np.argsort(-self.sign * self.true_values[ok], kind="stable")]
        return [dict(self.configs[i]) for i in order]

    def describe(self) -> str:
        partial = self.meta.get("partial")
        count = f"{len(self)} of {partial['configs']} valid configs measured so far" if partial else f"{len(self)} valid configs"
        return (f"{self.name}: {count} ({int(self.failed.sum())} failing), "
                f"{self.objective} ({self.direction}), optimum {self.optimum:.6g}")


def surface_from_dict(doc: dict[str, Any], name: str = "surface") -> Surface:
    version = doc.get("schema_version")
    if version != SURFACE_SCHEMA_VERSION:
        raise SurfaceError(f"surface {name}: schema_version {version!r} is not {SURFACE_SCHEMA_VERSION}")
    try:
        objective = doc["objective"]
        knobs = {k: list(v) for k, v in doc["knobs"].items()}
        entries = doc["configs"]
        configs = [dict(e["config"]) for e in entries]
        samples = [np.asarray([float(x) for x in (e.get("samples") or []) if _finite(x)], dtype=np.float64)
                   for e in entries]
        return Surface(
            name=doc.get("name") or name,
            knobs=knobs,
            objective=str(objective["name"]),
            direction=str(objective["direction"]),
            configs=configs,
            samples=samples,
            source="autotune",
            meta={k: v for k, v in doc.items() if k not in ("configs",)},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise SurfaceError(f"surface {name}: malformed ({exc!r}); expected objective, knobs and configs") from None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def surface_from_kernel_tuner(doc: dict[str, Any], name: str = "cache",
                              objective: str | None = None, direction: str | None = None) -> Surface:
    """A Surface from a parsed Kernel Tuner cache (see the module docstring)."""
    tune_params = doc.get("tune_params")
    keys = doc.get("tune_params_keys") or (list(tune_params) if isinstance(tune_params, dict) else None)
    if not isinstance(tune_params, dict) or not keys or not isinstance(doc.get("cache"), dict):
        raise SurfaceError(f"Kernel Tuner cache {name}: needs tune_params_keys, tune_params and cache")
    objective = objective or doc.get("objective") or "time"
    if direction is None:
        higher = doc.get("objective_higher_is_better")
        if isinstance(higher, bool):
            direction = "maximize" if higher else "minimize"
        else:
            hint = objective.lower()
            direction = "maximize" if any(h in hint for h in _HIGHER_IS_BETTER_HINTS) else "minimize"
    knobs = {k: list(tune_params[k]) for k in keys}
    configs, samples, values = [], [], []
    for entry_key, entry in doc["cache"].items():
        if not isinstance(entry, dict):
            raise SurfaceError(f"Kernel Tuner cache {name}: entry {entry_key!r} is not an object")
        try:
            config = {k: entry[k] for k in keys}
        except KeyError as exc:
            raise SurfaceError(f"Kernel Tuner cache {name}: entry {entry_key!r} lacks parameter {exc}") from None
        value = entry.get(objective)
        if isinstance(value, str) and value == KT_INVALID:
            continue  # invalid: outside the search space, costs nothing
        if any(config[k] not in knobs[k] for k in keys):
            continue  # a value outside tune_params cannot be proposed
        configs.append(config)
        if _finite(value):
            raw = entry.get("times") if objective == "time" else None
            raw = [float(x) for x in raw if _finite(x)] if isinstance(raw, list) else []
            samples.append(np.asarray(raw or [float(value)], dtype=np.float64))
            values.append(float(value))
        else:
            samples.append(np.zeros(0))  # a failure string (compile or runtime failure)
            values.append(math.nan)
    if not configs:
        raise SurfaceError(f"Kernel Tuner cache {name}: no valid config in the cache")
    meta = {k: doc[k] for k in ("device_name", "kernel_name", "problem_size") if k in doc}
    return Surface(name=name, knobs=knobs, objective=objective, direction=direction, configs=configs,
                   samples=samples, source="kernel_tuner", meta=meta, true_values=np.asarray(values))


# -- writing (used by `autotune sweep`) -------------------------------------------------
def surface_document(*, name: str, knobs: dict[str, list[Any]], objective: dict[str, Any],
                     entries: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """The JSON document of a surface file; `entries` are {"config", "samples", ...}."""
    doc: dict[str, Any] = {"format": SURFACE_FORMAT, "schema_version": SURFACE_SCHEMA_VERSION, "name": name}
    doc.update(meta)
    doc["objective"] = objective
    doc["knobs"] = knobs
    doc["configs"] = entries
    surface_from_dict(json.loads(json.dumps(doc)), name)  # refuse to write what cannot be read back
    return doc
