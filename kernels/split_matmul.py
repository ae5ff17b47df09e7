"""fp32-resolution matmuls on bf16 tensor cores: the 'split' form of kernels.chunkwise.

q, k, v are exact in bf16. Each fp32 operand (the weighted keys, the intra-chunk weights,
the incoming states) is written as three bf16 terms hi + lo + lo2 (together within
~2^-25 of it: fp32's own resolution) stacked along the contraction, so each product is
ONE tensor-core matmul whose bf16 products are exact in fp32 and whose sums are fp32. On
the CPU the same arithmetic is emulated in fp32 (tests).
"""

from __future__ import annotations

import torch

_FP32_OUT: dict = {}


def cuda_has(op: str, device: torch.device) -> bool:
    """Whether torch.bmm/baddbmm take out_dtype=float32 for bf16 operands here."""
    if op not in _FP32_OUT:
        try:
            a = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
            if op == "bmm":
                ok = torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
            else:
                ok = torch.baddbmm(torch.zeros(1, 2, 2, device=device), a, a,
                                   out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _FP32_OUT[op] = ok
    return _FP32_OUT[op]


def mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of bf16 operands (any batch dims) with fp32 products and sums."""
    if a.device.type != "cuda":  # the same arithmetic, emulated (tests on the CPU)
        return torch.matmul(a.float(), b.float())
    batch = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
    return out.view(*batch, a.shape[-2], b.shape[-1])


def add_mm32(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b (c fp32, a and b bf16), fp32 sums; c is consumed."""
    if a.device.type == "cuda" and cuda_has("baddbmm", a.device):
        out = torch.baddbmm(c.reshape(-1, *c.shape[-2:]), a.reshape(-1, *a.shape[-2:]),
                            b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
        return out.view(c.shape)
    return c.add_(mm32(a, b))


def split3(x: torch.Tensor, axis: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (fp32) as hi + lo + lo2 in bf16, the three terms stacked on a new axis inserted
    before x's dimension `axis` (so x (..., P, Q) with axis=-2 gives (..., 3, P, Q))."""
    axis = axis % x.dim()
    shape = x.shape[:axis] + (3,) + x.shape[axis:]
    if out is None:
        out = torch.empty(shape, dtype=torch.bfloat16, device=x.device)
    if x.device.type == "cuda" and x.is_contiguous() and out.is_contiguous():
        try:  # Triton is optional: the one-pass kernel where it imports, else the torch form
            from kernels.triton_chunkwise import split3_into
        except ImportError:
            split3_into = None
        if split3_into is not None:
            split3_into(x, out, axis)
            return out
    hi = x.to(torch.bfloat16)
    rest = x - hi.float()
    lo = rest.to(torch.bfloat16)
    out.copy_(torch.stack([hi, lo, (rest - lo.float()).to(torch.bfloat16)], dim=axis))
    return out


def repeat3(x: torch.Tensor, axis: int) -> torch.Tensor:
    """x three times along a new axis before dimension `axis`, contiguous."""
    axis = axis % x.dim()
    return x.unsqueeze(axis).expand(*x.shape[:axis], 3, *x.shape[axis:]).contiguous()
