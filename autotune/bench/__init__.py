"""The benchmark process: one config in, one JSON result line out (docs/benchmark.md)."""

from autotune.bench.config import BenchConfig
from autotune.bench.errors import ERROR_KINDS, EXIT_CODES, InvalidConfig, NumericalError
from autotune.bench.main import SCHEMA_VERSION, main, run_text

__all__ = [
    "BenchConfig",
    "ERROR_KINDS",
    "EXIT_CODES",
    "InvalidConfig",
    "NumericalError",
    "SCHEMA_VERSION",
    "main",
    "run_text",
]
