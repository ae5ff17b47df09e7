"""Kernels by name, each with its declared parameters, and the record of what ran.

After mlstm_kernels' get_mlstm_kernel(name): every family has one signature, and a kernel
is chosen by name. Families:

    prefill_cell   chunkwise--triton, chunkwise--split, chunkwise--fp32, block
                   (kernels.chunkwise.mlstm_chunkwise's signature; block is mlstm_block)
    ops            torch, triton (kernels.fused_ops' op set)
    decode         graph, eager (how schedulers.graphs runs a decode step)

Each kernel declares its parameters (name, valid values, default) and a constraint on a
workload shape, so a search can enumerate the valid settings before it measures any.

KernelRun is what one run knows about its kernels: which ones failed here (a Triton
build or launch error) and so are skipped from then on, which ran with which
parameters, and every fallback with its reason. The kernels record into the run in
force (use_run); what_ran() is the section a benchmark result carries.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple
    default: object


@dataclass(frozen=True)
class KernelSpec:
    family: str
    name: str
    params: tuple[Param, ...] = ()
    # (params, shape) -> why this setting cannot run on this shape, or None
    constraint: Callable[[dict, dict], str | None] | None = None
    doc: str = ""

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def why_invalid(self, params: dict, shape: dict) -> str | None:
        declared = {p.name: p for p in self.params}
        for key, value in params.items():
            if key not in declared:
                return f"{self.name} has no parameter {key!r} (it has: {', '.join(declared) or 'none'})"
            if value not in declared[key].values:
                return f"{self.name}: {key} must be one of {list(declared[key].values)}, got {value!r}"
        if self.constraint is not None:
            return self.constraint({**self.defaults(), **params}, shape)
        return None

    def valid_settings(self, shape: dict) -> list[dict]:
        """Every combination of the declared values that the constraint admits on `shape`."""
        names = [p.name for p in self.params]
        combos = (dict(zip(names, values)) for values in itertools.product(*(p.values for p in self.params)))
        return [c for c in combos if self.why_invalid(c, shape) is None]


SUB_CHUNKS = (32, 64, 128, 256)  # powers of two >= 16: the Triton kernels need them
DEFAULT_SUB_CHUNK = 128
# Windows shorter than this many sub-chunks run through mlstm_block (one O(S²) matmul
# form is cheaper than a scan of one or two steps).
MIN_SUB_CHUNKS = 2
OUTPUT_WARPS = (4, 8, 16)  # warps of the sub-chunk output kernel
DEFAULT_OUTPUT_WARPS = 8
STEP_TILES = (2048, 4096, 8192, 16384)
DEFAULT_STEP_TILE = 8192
ROWS_MAX_KS = (4096, 8192, 16384)
DEFAULT_ROWS_MAX_K = 4096


def _sub_chunk_fits(params: dict, shape: dict) -> str | None:
    seq = shape.get("seq_len")
    least = MIN_SUB_CHUNKS * params["sub_chunk"]
    if seq is not None and seq < least:
        return f"sub_chunk {params['sub_chunk']} needs a window of at least {least} steps, got {seq}"
    return None


def _step_tile_fits(params: dict, shape: dict) -> str | None:
    dhqk = shape.get("dhqk", 0)
    if dhqk and params["step_tile"] < 16 * dhqk:  # the step kernel's tile is at least 16 columns wide
        return f"step_tile {params['step_tile']} is under 16 columns of a {dhqk}-row head"
    return None


_SPECS = (
    KernelSpec("prefill_cell", "chunkwise--triton",
               (Param("sub_chunk", SUB_CHUNKS, DEFAULT_SUB_CHUNK), Param("output_warps", OUTPUT_WARPS, DEFAULT_OUTPUT_WARPS)),
               _sub_chunk_fits,
               "fused Triton sub-chunk kernels (bf16 q, k, v on CUDA; power-of-two sub_chunk >= 16)"),
    KernelSpec("prefill_cell", "chunkwise--split", (Param("sub_chunk", SUB_CHUNKS, DEFAULT_SUB_CHUNK),), _sub_chunk_fits,
               "torch, three-term bf16 tensor-core matmuls"),
    KernelSpec("prefill_cell", "chunkwise--fp32", (Param("sub_chunk", SUB_CHUNKS, DEFAULT_SUB_CHUNK),), _sub_chunk_fits,
               "torch, fp32 matmuls"),
    KernelSpec("prefill_cell", "block", (), None, "mlstm_block: one O(S^2) matmul form per window"),
    KernelSpec("ops", "torch", (), None, "plain torch elementwise stages, cuBLAS matmuls"),
    KernelSpec("ops", "triton", (Param("rows_max_k", ROWS_MAX_KS, DEFAULT_ROWS_MAX_K), Param("step_tile", STEP_TILES, DEFAULT_STEP_TILE)),
               _step_tile_fits, "one Triton kernel per stage; decode GEMVs with the stage fused in"),
    KernelSpec("decode", "graph", (), None, "the whole step as one CUDA graph"),
    KernelSpec("decode", "eager", (), None, "the step through the scheduler, eagerly"),
)
REGISTRY: dict[tuple[str, str], KernelSpec] = {(s.family, s.name): s for s in _SPECS}
FAMILIES = tuple(dict.fromkeys(s.family for s in _SPECS))


def kernel_names(family: str) -> list[str]:
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; families: {', '.join(FAMILIES)}")
    return [name for fam, name in REGISTRY if fam == family]


def get_kernel(family: str, name: str) -> KernelSpec:
    try:
        return REGISTRY[(family, name)]
    except KeyError:
        raise ValueError(f"unknown {family} kernel {name!r}; valid: {', '.join(kernel_names(family))}") from None


@functools.cache  # read once per config while a space is enumerated; do not mutate
def kernel_params() -> dict[str, Param]:
    """Every declared kernel parameter by name (a name means the same values in every
    kernel that declares it): the kernel knobs a study may search."""
    found: dict[str, Param] = {}
    for spec in _SPECS:
        for p in spec.params:
            if found.setdefault(p.name, p) != p:
                raise AssertionError(f"kernel parameter {p.name} is declared with two value lists")
    return found


def why_params_invalid(params: dict, shape: dict) -> str | None:
    """Why a setting of kernel parameters can never run on `shape` (dhqk; seq_len, the
    longest window), or None. Checked per parameter against every kernel declaring it:
    a value is impossible when no kernel that takes it can run it."""
    declared = kernel_params()
    for key, value in params.items():
        if key not in declared:
            return f"unknown kernel parameter {key!r}; kernel parameters: {', '.join(declared)}"
        if value not in declared[key].values:
            return f"kernel parameter {key} must be one of {list(declared[key].values)}, got {value!r}"
    for key, value in params.items():
        owners = [s for s in _SPECS if any(p.name == key for p in s.params)]
        reasons = [s.why_invalid({k: v for k, v in params.items() if k in {p.name for p in s.params}}, shape)
                   for s in owners]
        if all(reasons):
            return reasons[0]
    return None


# Parameters of the sub-chunked prefill: they change nothing where a window takes mlstm_block.
SUB_CHUNK_PARAMS = ("sub_chunk", "output_warps")


def why_no_effect(params: dict, window: int) -> str | None:
    """Why the sub-chunk parameters in `params` (those not at their defaults) cannot change
    the work of kernel calls of `window` steps, or None: a window under MIN_SUB_CHUNKS
    sub-chunks runs through mlstm_block whatever they are."""
    declared = kernel_params()
    sub_chunk = params.get("sub_chunk", declared["sub_chunk"].default)
    moved = [k for k in SUB_CHUNK_PARAMS if k in params and params[k] != declared[k].default]
    if moved and window < MIN_SUB_CHUNKS * sub_chunk:
        return (f"windows of {window} steps run through the block kernel (under {MIN_SUB_CHUNKS} sub-chunks of "
                f"{sub_chunk}): {', '.join(f'{k}={params[k]}' for k in moved)} would change nothing")
    return None


@dataclass
class KernelRun:
    """The kernels of one run: the parameters asked for (declared defaults otherwise),
    failures (skipped from then on), what ran, fallbacks."""

    params: dict[str, object] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    ran: dict[str, dict] = field(default_factory=dict)
    fallbacks: list[dict] = field(default_factory=list)

    def param(self, name: str):
        """The value this run uses for kernel parameter `name`: asked for, else declared default."""
        if name in self.params:
            return self.params[name]
        return kernel_params()[name].default

    def usable(self, name: str) -> bool:
        return name not in self.failed

    def fail(self, family: str, name: str, exc: BaseException | str, fallback: str | Callable[[], str]) -> str:
        """Record that `name` cannot run here (an exception, or why not) and `fallback` (a
        name, or a function naming the kernel chosen once `name` is ruled out) runs in its
        place; returns why. Recorded once per kernel."""
        if isinstance(exc, BaseException):
            text = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        else:
            why = exc
        if name in self.failed:
            return self.failed[name]
        self.failed[name] = why
        if callable(fallback):
            fallback = fallback()
        self.fallbacks.append({"family": family, "kernel": name, "instead": fallback, "why": why})
        return why

    def record(self, family: str, name: str, params: dict | None = None) -> None:
        """`name` ran for `family` (the last kernel of each family and each it used)."""
        entry = self.ran.setdefault(family, {"kernels": {}})
        entry["kernels"][name] = dict(params or {})
        entry["last"] = name

    def what_ran(self) -> dict:
        """{family: {"kernels": {name: params}, "last": name}, ..., "params": {the run's kernel
        parameters}, "fallback": "<why>" | None, "fallbacks": [...]}: the section a benchmark result carries."""
        out = {family: {"kernels": dict(v["kernels"]), "last": v["last"]} for family, v in self.ran.items()}
        out["params"] = {name: self.param(name) for name in kernel_params()}
        out["fallbacks"] = list(self.fallbacks)
        out["fallback"] = "; ".join(f"{f['kernel']} -> {f['instead']}: {f['why']}" for f in self.fallbacks) or None
        return out


_current = KernelRun()


def current_run() -> KernelRun:
    """The run the kernels record into (a fresh one per process until use_run replaces it)."""
    return _current


@contextmanager
def use_run(run: KernelRun) -> Iterator[KernelRun]:
    """Make `run` the one kernels record into, for the duration of the block."""
    global _current
    previous, _current = _current, run
    try:
        yield run
    finally:
        _current = previous


def what_ran(run: KernelRun | None = None) -> dict:
    """What ran in `run` (default: the current run): kernels, parameters, fallbacks."""
    return (run or _current).what_ran()
