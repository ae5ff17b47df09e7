"""Failure kinds of a benchmark run, and how an exception maps to one.

The kinds are part of the result schema (docs/benchmark.md); the exit code of the
benchmark process says the same thing to a shell.
"""

from __future__ import annotations

import math

# torch and kernels are imported inside the checks: the tuner imports this module (the
# kinds, the exit codes) and must not load torch for it.

INVALID_CONFIG = "invalid_config"
TIMEOUT = "timeout"
OOM = "oom"
COMPILE_ERROR = "compile_error"
NUMERICAL = "numerical"
CRASH = "crash"

ERROR_KINDS = (INVALID_CONFIG, TIMEOUT, OOM, COMPILE_ERROR, NUMERICAL, CRASH)

# 0 is success; every kind has its own non-zero code.
EXIT_CODES = {
    CRASH: 1,
    INVALID_CONFIG: 2,
    TIMEOUT: 3,
    OOM: 4,
    COMPILE_ERROR: 5,
    NUMERICAL: 6,
}


class BenchError(Exception):
    """A failure whose kind is known where it is raised."""

    kind = CRASH


class InvalidConfig(BenchError, ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""

    kind = INVALID_CONFIG

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NumericalError(BenchError):
    """Model outputs contain NaN or infinity."""

    kind = NUMERICAL


class BenchTimeout(BenchError):
    kind = TIMEOUT


def _chain(exc: BaseException):
    """The exception and its causes/contexts, outermost first (schedulers wrap worker errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def _is_compile_error(exc: BaseException) -> bool:
    try:
        from kernels import CompileError
    except ImportError:
        CompileError = None
    if CompileError is not None and isinstance(exc, CompileError):
        return True
    # torch.compile failures that escaped the kernels' own wrapping.
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _is_invalid_config(exc: BaseException) -> bool:
    if isinstance(exc, InvalidConfig):
        return True
    try:
        from kernels import DeviceUnavailableError
    except ImportError:
        return False
    return isinstance(exc, DeviceUnavailableError)


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for an exception raised anywhere in a benchmark run."""
    chain = list(_chain(exc))
    for predicate, kind in (
        (_is_invalid_config, INVALID_CONFIG),
        (_is_oom, OOM),
        (_is_compile_error, COMPILE_ERROR),
        (lambda e: isinstance(e, NumericalError), NUMERICAL),
        (lambda e: isinstance(e, BenchTimeout), TIMEOUT),
    ):
        if any(predicate(e) for e in chain):
            return kind, _message(exc)
    return CRASH, _message(exc)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, BenchError):
        return text
    # Keep the type: "KeyError: 'x'" says more than "'x'".
    first = text.splitlines()[0] if text else ""
    message = f"{type(exc).__name__}: {first}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in message:
        message += f" (caused by {type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
    return message[:2000]


def check_finite(name: str, tensor) -> None:
    """Raise NumericalError when a tensor holds NaN or infinity."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(f"{name} has {bad} non-finite values (NaN or inf) of {tensor.numel()}")


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN/inf: such numbers travel as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)
