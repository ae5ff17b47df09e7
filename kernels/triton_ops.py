"""TritonOps: kernels.torch_ops.TorchOps with every op as Triton kernels (CUDA).

Same math and the same roundings to the weight dtype as TorchOps; sums may add in another
order. The kernels of each operation live in their own module (kernels.triton_elementwise,
kernels.triton_step, kernels.triton_gemv); this class is the op set the fast forward
calls, and it takes the composed path (elementwise kernel + cuBLAS) for inputs the fused
GEMV does not serve, or after it failed in this run. Imported only where Triton exists
(kernels.fused_ops.ops_for decides).
"""

from __future__ import annotations

import warnings

import triton

from kernels import triton_elementwise, triton_step
from kernels.registry import current_run
from kernels.torch_ops import TorchOps
from kernels.triton_gemv import PRO_HEAD_NORM, PRO_RMS, PRO_SILU, gemv


def _one_row(*tensors) -> bool:
    """All inputs hold a single contiguous row (the decode case the GEMV serves)."""
    return all(t.numel() == t.shape[-1] and t.is_contiguous() for t in tensors)


GEMV_KERNEL = "triton-gemv"


class TritonOps(TorchOps):
    name = "triton"

    @classmethod
    def _fused(cls, run, fallback):
        # A fused GEMV that failed to build or run here is ruled out for the rest of the run
        # (kernels.registry): later calls take the composed path (elementwise kernel +
        # cuBLAS), which computes the same function; the fallback is on the run's record.
        kernels = current_run()
        if kernels.usable(GEMV_KERNEL):
            try:
                out = run()
            except Exception as exc:  # a Triton build or launch failure on this GPU
                why = kernels.fail("ops", GEMV_KERNEL, exc, fallback="triton (composed: elementwise + cuBLAS)")
                warnings.warn(f"fused GEMV kernels unavailable ({why}); using the composed ops",
                              RuntimeWarning, stacklevel=3)
            else:
                kernels.record("ops", "triton", {"rows_max_k": kernels.param("rows_max_k"),
                                                 "step_tile": kernels.param("step_tile")})
                return out
        return fallback()

    rms_norm = staticmethod(triton_elementwise.rms_norm)
    head_norm_gate = staticmethod(triton_elementwise.head_norm_gate)
    silu_mul = staticmethod(triton_elementwise.silu_mul)
    soft_cap = staticmethod(triton_elementwise.soft_cap)
    mlstm_step_into = staticmethod(triton_step.mlstm_step_into)

    @classmethod
    def rms_linear(cls, x, norm_weight, eps, weight, bias=None):
        def composed():
            return super(TritonOps, cls).rms_linear(x, norm_weight, eps, weight, bias)

        if not _one_row(x):
            return composed()
        return cls._fused(lambda: gemv(x, weight, prologue=PRO_RMS, p1=norm_weight, eps=eps, bias=bias)
                          .view(*x.shape[:-1], weight.shape[0]), composed)

    @classmethod
    def rms_linear_soft_cap(cls, x, norm_weight, eps, weight, cap):
        def composed():
            return super(TritonOps, cls).rms_linear_soft_cap(x, norm_weight, eps, weight, cap)

        if not _one_row(x):
            return composed()
        return cls._fused(lambda: gemv(x, weight, prologue=PRO_RMS, p1=norm_weight, eps=eps, soft_cap=cap)
                          .view(*x.shape[:-1], weight.shape[0]), composed)

    @classmethod
    def head_norm_gate_linear_add(cls, x, h, o_pre, norm_weight, eps, weight):
        def composed():
            return super(TritonOps, cls).head_norm_gate_linear_add(x, h, o_pre, norm_weight, eps, weight)

        DH = h.shape[-1]
        if not (_one_row(x, o_pre) and h.numel() == h.shape[-1] * h.shape[-2] and h.is_contiguous()
                and DH == triton.next_power_of_2(DH)):
            return composed()
        return cls._fused(lambda: gemv(h, weight, prologue=PRO_HEAD_NORM, p1=o_pre, p2=norm_weight, eps=eps,
                                       residual=x, head_dim=DH).view(x.shape), composed)

    @classmethod
    def silu_linear_add(cls, x, gate_up, hidden, weight):
        def composed():
            return super(TritonOps, cls).silu_linear_add(x, gate_up, hidden, weight)

        if not _one_row(x, gate_up):
            return composed()
        return cls._fused(lambda: gemv(gate_up, weight, prologue=PRO_SILU, residual=x).view(x.shape), composed)
