"""The model's elementwise stages as single fused operations, for the fast forward.

Each op computes exactly what the corresponding stretch of kernels.model computes, with
the same roundings to the weight dtype at the same points; TorchOps is the reference
(plain torch, any device), TritonOps runs each op as one Triton kernel on CUDA.

    rms_norm(x, w, eps)                    RMSNorm: fp32 statistics, weight dtype out
    head_norm_gate(h, o_pre, w, eps)       per-head layer norm of h, times w, times sigmoid(o_pre)
    silu_mul(gate_up, hidden)              silu(gate) * up from one [gate | up] projection
    soft_cap(x, cap)                       cap * tanh(x / cap) in fp32 (gates and logits)
    rms_linear, rms_linear_soft_cap,       a stage fused with the matmul after it (and the
    head_norm_gate_linear_add,             residual or soft cap after that): TritonOps runs a
    silu_linear_add                        single-row input (decode) as one GEMV kernel
    mlstm_step_into(...)                   one mLSTM decode step for a band of heads, the gates
                                           soft-capped inside, C updated in place, n and m
                                           written to separate outputs (readers of the old n,
                                           m may still run), h written to an output buffer

TorchOps lives in kernels.torch_ops, TritonOps in kernels.triton_ops (which builds on
TorchOps); ops_for(device) picks TritonOps on CUDA when Triton imports, else TorchOps.
"""

from __future__ import annotations

import torch

from kernels.registry import current_run
from kernels.torch_ops import TorchOps

__all__ = ["TorchOps", "ops_for", "triton_available"]


def triton_available() -> str | None:
    """None when the Triton ops can run here, else why not."""
    if not torch.cuda.is_available():
        return "Triton kernels need a CUDA device"
    try:
        import triton  # noqa: F401  (optional: the probe is the import)
    except ImportError as exc:
        return f"Triton is not importable ({exc})"
    return None


def ops_for(device: torch.device | str, *, prefer: str = "auto"):
    """The op set for `device`: 'auto' (Triton on CUDA when available), 'triton' or 'torch'."""
    device = torch.device(device)
    if prefer not in ("auto", "triton", "torch"):
        raise ValueError(f"prefer must be 'auto', 'triton' or 'torch', got {prefer!r}")
    if prefer == "torch" or device.type != "cuda":
        if prefer == "triton":
            raise ValueError(f"Triton ops need a CUDA device, got {device}; use prefer='torch'")
        return TorchOps
    reason = triton_available()
    if reason is not None:
        if prefer == "triton":
            raise ValueError(f"Triton ops unavailable: {reason}")
        current_run().fail("ops", "triton", reason, fallback="torch")  # on CUDA: a fallback, on record
        return TorchOps
    from kernels.triton_ops import TritonOps  # imports Triton: only where it is available

    return TritonOps
