"""torch.compile wrappers around the mLSTM kernels, with an explicit cache.

compiled_block(T_inner, device=..., dtype=..., compile=...) returns a callable with
mlstm_block's signature; one call advances the state by at most T_inner steps (the
scheduler splits chunks into T_inner calls; a shorter tail call is allowed). A window of
at least 2 x kernels.chunkwise.SUB_CHUNK steps runs the sub-chunked form
(kernels.chunkwise.mlstm_chunkwise), shorter ones mlstm_block. Each
distinct (kernel, input shapes, state given or not, dtype, device, T_inner, compile)
gets one cache entry, built on first use: a torch.compile'd function (static shapes,
full graph) or, with compile=False, the eager function, counted the same way so that
counters do not depend on the compile flag.

Strict device mode: a wrapper is bound to one device and dtype; inputs elsewhere are an
error, never a silent move. A failure while compiling raises CompileError naming the
config; past torch.compile's recompile limit torch would silently run eagerly, so that
limit is raised and hitting it is made an error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from kernels.device import resolve_device
from kernels.chunkwise import compiled_chunkwise, mlstm_chunkwise, uses_sub_chunks
from kernels.mlstm import mlstm_block, mlstm_step
from kernels.registry import current_run

# Enough specialisations for every (shape, T_inner) a tuning run visits in one process.
RECOMPILE_LIMIT = 256


class CompileError(RuntimeError):
    """torch.compile failed for one kernel config; the message names the config."""


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int


_cache: dict[tuple, object] = {}
_hits = 0
_misses = 0
_lock = threading.Lock()


def cache_info() -> CacheInfo:
    with _lock:
        return CacheInfo(_hits, _misses, len(_cache))


def clear_cache() -> None:
    global _hits, _misses
    with _lock:
        _cache.clear()
        _hits = 0
        _misses = 0


def _configure_dynamo() -> None:
    import torch._dynamo.config as dynamo_config  # loads all of torch._dynamo: only once something compiles

    for name, value in (
        ("recompile_limit", RECOMPILE_LIMIT),
        ("cache_size_limit", RECOMPILE_LIMIT),
        ("accumulated_recompile_limit", max(RECOMPILE_LIMIT, 256)),
        ("fail_on_recompile_limit_hit", True),
    ):
        if hasattr(dynamo_config, name):
            current = getattr(dynamo_config, name)
            if isinstance(value, bool) or current < value:
                setattr(dynamo_config, name, value)


def _lookup(key: tuple, kernel, compile: bool):
    """The cached function for `key` and whether this call created it."""
    global _hits, _misses
    with _lock:
        fn = _cache.get(key)
        if fn is not None:
            _hits += 1
            return fn, False
        _misses += 1
        if compile and kernel is mlstm_chunkwise:
            _configure_dynamo()
            fn = compiled_chunkwise()  # its scan loop stays eager
        elif compile:
            _configure_dynamo()
            fn = torch.compile(kernel, dynamic=False, fullgraph=True)
        else:
            fn = kernel
        _cache[key] = fn
        return fn, True


class _Wrapper:
    kernel = None
    kind = ""

    def __init__(self, T_inner: int, device: torch.device | str, dtype: torch.dtype, compile: bool):
        if T_inner < 1:
            raise ValueError(f"T_inner must be >= 1, got {T_inner}")
        self.T_inner = T_inner
        self.device = resolve_device(device)  # strict: an unavailable device is an error here
        self.dtype = dtype
        self.compile = compile

    def describe(self, q, v) -> str:
        return (
            f"{self.kind} T_inner={self.T_inner} q{tuple(q.shape)} v{tuple(v.shape)} "
            f"dtype={str(self.dtype).removeprefix('torch.')} device={self.device} compile={self.compile}"
        )

    def _check(self, q, v, S):
        if q.device.type != self.device.type or (
            self.device.index is not None and q.device.index != self.device.index
        ):
            raise ValueError(
                f"{self.kind} was built for device {self.device} but got inputs on {q.device}; "
                "build the wrapper for the device the tensors live on"
            )
        if q.dtype != self.dtype or v.dtype != self.dtype:
            raise ValueError(f"{self.kind} was built for {self.dtype} but got q {q.dtype}, v {v.dtype}")
        if S > self.T_inner:
            raise ValueError(
                f"{self.kind} advances at most T_inner={self.T_inner} steps per call, got {S}; "
                "split the chunk into T_inner-sized calls"
            )

    def kernel_for(self, S: int):
        """(kernel, kind) that runs a window of S steps."""
        return type(self).kernel, self.kind

    def __call__(self, q, k, v, i, f, state=None):
        S = 1 if self.kind == "mlstm_step" else q.shape[2]
        self._check(q, v, S)
        kernel, kind = self.kernel_for(S)
        if kind == "mlstm_block":
            current_run().record("prefill_cell", "block")
        key = (kind, tuple(q.shape), tuple(v.shape), state is None, self.dtype, str(self.device),
               self.T_inner, self.compile)  # fmt: skip
        fn, created = _lookup(key, kernel, self.compile)
        if not (created and self.compile):
            return fn(q, k, v, i, f, state)
        # The first call of a compiled entry is where torch.compile does its work.
        try:
            return fn(q, k, v, i, f, state)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            with _lock:
                _cache.pop(key, None)
            raise CompileError(f"torch.compile failed for {self.describe(q, v)}: {type(exc).__name__}: {exc}") from exc


class CompiledBlock(_Wrapper):
    kernel = staticmethod(mlstm_block)
    kind = "mlstm_block"

    def kernel_for(self, S: int):
        # Long windows (a large T_inner) take the sub-chunked form: mlstm_block is O(S²).
        if uses_sub_chunks(S):
            return mlstm_chunkwise, "mlstm_chunkwise"
        return mlstm_block, self.kind


class CompiledStep(_Wrapper):
    kernel = staticmethod(mlstm_step)
    kind = "mlstm_step"


def compiled_block(T_inner: int, *, device, dtype: torch.dtype, compile: bool) -> CompiledBlock:
    """A callable with mlstm_block's signature that advances at most T_inner steps."""
    return CompiledBlock(T_inner, device, dtype, compile)


def compiled_step(*, device, dtype: torch.dtype, compile: bool) -> CompiledStep:
    """A callable with mlstm_step's signature (one decode step), cached like compiled_block."""
    return CompiledStep(1, device, dtype, compile)
