"""What the scheduler tests compare a cell's output with: the fp64 step-by-step recurrence."""

from __future__ import annotations

from kernels import mlstm_sequence

# fp32 against the fp64 recurrence (different summation orders: chunkwise vs recurrent)
LOOSE = dict(rtol=2e-4, atol=2e-4)
# two backends running the same kernels on the same slices
TIGHT = dict(rtol=1e-6, atol=1e-6)


def reference(x, state=None):
    """The fp64 step-by-step recurrence, as fp32."""
    h, st = mlstm_sequence(*(t.double() for t in x), None if state is None else tuple(s.double() for s in state))
    return h.float(), tuple(s.float() for s in st)


def step_slice(x, t0, t1):
    """Steps t0..t1 of every cell input (B, H, S, ...)."""
    return tuple(t[:, :, t0:t1] for t in x)
