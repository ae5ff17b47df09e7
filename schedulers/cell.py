"""One task's work: advance one band through one chunk, T_inner steps per kernel call."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from kernels.compiled import compiled_block, compiled_step

Kernel = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def state_dtype(v: torch.Tensor) -> torch.dtype:
    """The dtype kernels keep the state in: fp32, or fp64 for float64 references."""
    return torch.float64 if v.dtype == torch.float64 else torch.float32


class ChunkRunner:
    """Runs a chunk of length L as ceil(L / T_inner) kernel calls, carrying the exact state.

    With kernel=None, windows of more than one step go through kernels' compiled_block
    (the T_inner fusion window) and single steps through compiled_step (mlstm_step). A `kernel`
    with mlstm_block's signature replaces both (fault injection and instrumentation).
    Safe to call from several threads at once.
    """

    def __init__(self, T_inner: int, *, device: torch.device, dtype: torch.dtype,
                 compile: bool = False, kernel: Kernel | None = None) -> None:
        self.T_inner = T_inner
        if kernel is None:
            self._block = compiled_block(T_inner, device=device, dtype=dtype, compile=compile)
            self._step = compiled_step(device=device, dtype=dtype, compile=compile)
        else:
            self._block = kernel
            self._step = None
        # A compiled kernel's first call per input shape compiles; compile from one thread.
        self._serialize_first_calls = compile and kernel is None
        self._seen_shapes: set = set()
        self._first_call_lock = threading.Lock()

    def _window(self, q, k, v, i, f, state):
        if q.shape[2] == 1 and self._step is not None:
            args = (q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
            h, state = self._first_calls_once(self._step, args)
            return h.unsqueeze(2), state
        return self._first_calls_once(self._block, (q, k, v, i, f, state))

    def _first_calls_once(self, fn, args):
        if not self._serialize_first_calls:
            return fn(*args)
        q, v, state = args[0], args[2], args[5]
        key = (fn is self._step, tuple(q.shape), tuple(v.shape), state is None)
        if key in self._seen_shapes:
            return fn(*args)
        with self._first_call_lock:
            out = fn(*args)
            self._seen_shapes.add(key)
            return out

    def __call__(self, q, k, v, i, f, state, out: torch.Tensor):
        """Advance through q..f (B, hb, L, ...) from `state`, writing h into `out`.

        Returns (new_state, kernel_calls)."""
        length = q.shape[2]
        calls = 0
        for w0 in range(0, length, self.T_inner):
            w1 = min(w0 + self.T_inner, length)
            h, state = self._window(q[:, :, w0:w1], k[:, :, w0:w1], v[:, :, w0:w1],
                                    i[:, :, w0:w1], f[:, :, w0:w1], state)
            out[:, :, w0:w1].copy_(h)
            calls += 1
        return state, calls
