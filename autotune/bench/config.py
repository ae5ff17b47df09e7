"""The benchmark's input: one flat JSON object, validated into a BenchRequest.

The tuner builds a BenchRequest and sends its JSON; the benchmark parses the same
class, so both sides share one set of fields and defaults. Every field but `shape` has
a default, the spec's own where the spec has the setting (a benchmark run by hand
measures what a trial of a default spec measures). Every error names the field and
what would fix it; an unknown field is an error (a typo must not silently fall back to
a default). The knob constraints are the scheduler's plan (`schedulers.make_plan`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from autotune.bench.errors import InvalidConfig
from autotune.names import BACKENDS, DTYPES, KNOBS
from autotune.spec import ModelSpec, WorkloadSpec

# kernels and schedulers (torch) are imported inside the checks that need them: the tuner
# builds requests from this module and must not load torch for it.

_DEVICE_RE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")

DEFAULT_CHUNK_SIZE = 64


@dataclass(frozen=True)
class BenchRequest:
    shape: str
    dtype: str = ModelSpec.dtype
    device: str = ModelSpec.device
    backend: str = ModelSpec.backends[0]
    workers: int = 1
    heads_per_band: int | None = None  # None: all heads in one band
    chunk_size: int = DEFAULT_CHUNK_SIZE
    T_inner: int | None = None  # None: chunk_size (one kernel call per chunk)
    context: int = 2048
    new_tokens: int = WorkloadSpec.new_tokens
    batch: int = WorkloadSpec.batch
    repeats: int = WorkloadSpec.repeats
    seed: int = WorkloadSpec.seed
    time_limit_s: float = 600.0
    compile: bool = ModelSpec.compile  # torch.compile the T_inner kernel (compile time is warm-up)
    # kernel parameters (kernels.registry, e.g. {"sub_chunk": 64}); absent ones take their defaults
    kernel: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Any) -> "BenchRequest":
        """Validate a decoded JSON object; defaults filled in, knobs resolved for the shape."""
        if not isinstance(data, dict):
            raise InvalidConfig(None, f"the config must be a JSON object, got {type(data).__name__}")
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidConfig(
                unknown[0], f"unknown field; valid fields are {', '.join(names)}"
            )
        if "shape" not in data:
            raise InvalidConfig("shape", "missing; give a model shape name, e.g. \"tiny\" or \"125m\"")

        values = {name: data[name] for name in names if name in data and data[name] is not None}
        shape = _choice(values, "shape", _shape_names())
        dtype = _choice(values, "dtype", DTYPES, cls.dtype)
        backend = _choice(values, "backend", BACKENDS, cls.backend)
        if backend == "ray":
            from schedulers.factory import ray_missing

            problem = ray_missing()
            if problem:
                raise InvalidConfig("backend", problem)
        device = _string(values, "device", cls.device)
        if not _DEVICE_RE.match(device):
            raise InvalidConfig("device", f"{device!r} is not a device; use cpu, cuda, cuda:N, mps or auto")

        num_heads = _num_heads(shape)
        workers = _int(values, "workers", cls.workers, minimum=1)
        heads_per_band = _int(values, "heads_per_band", num_heads, minimum=1)
        chunk_size = _int(values, "chunk_size", cls.chunk_size, minimum=1)
        T_inner = _int(values, "T_inner", chunk_size, minimum=1)
        context = _int(values, "context", cls.context, minimum=1)
        _check_plan(num_heads, context, dict(workers=workers, heads_per_band=heads_per_band,
                                             chunk_size=chunk_size, T_inner=T_inner))
        time_limit_s = _number(values, "time_limit_s", cls.time_limit_s)
        if not time_limit_s > 0:
            raise InvalidConfig("time_limit_s", f"must be > 0 seconds, got {time_limit_s}")
        compile_ = values.get("compile", cls.compile)
        if not isinstance(compile_, bool):
            raise InvalidConfig("compile", f"must be true or false, got {compile_!r}")
        kernel = _kernel_params(values.get("kernel", {}), shape)
        if kernel and backend == "ray":  # the actors' kernels run in other processes
            raise InvalidConfig("kernel", "kernel parameters do not reach the Ray actors' kernels; "
                                          "use backend queued or sequential, or leave kernel out")

        return cls(
            shape=shape,
            dtype=dtype,
            device=device,
            backend=backend,
            workers=workers,
            heads_per_band=heads_per_band,
            chunk_size=chunk_size,
            T_inner=T_inner,
            context=context,
            new_tokens=_int(values, "new_tokens", cls.new_tokens, minimum=1),
            batch=_int(values, "batch", cls.batch, minimum=1),
            repeats=_int(values, "repeats", cls.repeats, minimum=1),
            seed=_int(values, "seed", cls.seed, minimum=0),
            time_limit_s=float(time_limit_s),
            compile=compile_,
            kernel=kernel,
        )

    @classmethod
    def from_json(cls, text: str) -> "BenchRequest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidConfig(None, f"malformed JSON ({exc}); pass one JSON object, e.g. '{{\"shape\": \"tiny\"}}'") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def with_changes(self, **changes: Any) -> "BenchRequest":
        return dataclasses.replace(self, **changes)

    def knobs(self):
        from schedulers import Knobs

        return Knobs(
            workers=self.workers,
            heads_per_band=self.heads_per_band,
            chunk_size=self.chunk_size,
            T_inner=self.T_inner,
        )


def _shape_names() -> tuple[str, ...]:
    from kernels.model import SHAPES

    return tuple(SHAPES)


def _num_heads(shape: str) -> int:
    from kernels.model import get_config

    return int(get_config(shape).num_heads)


def _kernel_params(value: Any, shape: str) -> dict[str, Any]:
    """The kernel parameters, checked against the registry's declared values and the
    constraints that hold whatever the window (the model's head size)."""
    from kernels.model import get_config
    from kernels.registry import why_params_invalid

    if not isinstance(value, dict):
        raise InvalidConfig("kernel", f"must be an object of kernel parameters, e.g. {{\"sub_chunk\": 64}}, got {value!r}")
    params = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in value.items()}
    config = get_config(shape)
    problem = why_params_invalid(params, {"dhqk": config.qk_dim // config.num_heads})
    if problem:
        raise InvalidConfig("kernel", problem)
    return params


def _check_plan(num_heads: int, context: int, knobs: dict[str, int]) -> None:
    """The scheduler's own constraints: the knobs must make a plan at this length."""
    from schedulers import Knobs, PlanError, make_plan

    try:
        make_plan(num_heads, context, Knobs(**knobs))
    except PlanError as exc:
        message = str(exc)
        raise InvalidConfig(next((k for k in KNOBS if f"{k}=" in message.split(" must ")[0]), "knobs"),
                            message) from None


def _choice(values: dict, name: str, choices, default=None):
    value = values.get(name, default)
    if not isinstance(value, str) or value not in choices:
        raise InvalidConfig(name, f"{value!r} is not valid; use one of {', '.join(choices)}")
    return value


def _string(values: dict, name: str, default: str) -> str:
    value = values.get(name, default)
    if not isinstance(value, str):
        raise InvalidConfig(name, f"must be a string, got {value!r}")
    return value


def _int(values: dict, name: str, default: int, *, minimum: int) -> int:
    value = values.get(name, default)
    # bool is an int subclass; 64.0 from a JSON writer is accepted as 64.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidConfig(name, f"must be >= {minimum}, got {value}")
    return value


def _number(values: dict, name: str, default: float) -> float:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidConfig(name, f"must be a finite number, got {value!r}")
    return value
