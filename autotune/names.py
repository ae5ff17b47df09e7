"""The names every layer agrees on: scheduling knobs, kernel knobs, backends, dtypes,
strategies.

Torch-free, so that reading a spec or a store never imports torch. The schedulers
implement exactly these (tests/test_records.py holds them equal to
`schedulers.KNOB_NAMES` and `schedulers.BACKENDS`; tests/test_kernel_knobs.py holds
KERNEL_KNOBS equal to the parameters kernels.registry declares).
"""

from __future__ import annotations

# torch is imported inside torch_dtype, the one function that needs it.

KNOBS = ("workers", "heads_per_band", "chunk_size", "T_inner")
# Kernel parameters a study may search ([space.kernel]); a BenchRequest carries them in `kernel`.
KERNEL_KNOBS = ("sub_chunk", "output_warps", "rows_max_k", "step_tile")
BACKENDS = ("sequential", "queued", "ray")
DTYPES = ("float32", "bfloat16")
# autotune.strategies builds exactly these (tests/test_strategies.py holds them equal)
STRATEGIES = ("portfolio", "random", "genetic", "bandit", "boltzmann", "regression", "local", "parzen")


def torch_dtype(name: str):
    """The torch dtype of one of DTYPES."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)
