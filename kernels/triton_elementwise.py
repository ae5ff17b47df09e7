"""The model's elementwise stages as Triton kernels, one launch each (TritonOps' rms_norm,
head_norm_gate, silu_mul, soft_cap).

Each computes what kernels.torch_ops.TorchOps computes, with the same roundings to the
weight dtype at the same points. `tanh` is shared with the decode step and the GEMV.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tanh(x):
    # tanh through exp of a non-positive argument: no overflow, no cancellation near 0
    # beyond fp32 rounding.
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    y = (x * r).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (y * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _head_norm_gate_kernel(h_ptr, o_ptr, w_ptr, out_ptr, S, s_hb, s_hs, s_hh, s_ob, s_os, s_outb, s_outs,
                           DH, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # b * S + s
    head = tl.program_id(1)
    b = row // S
    s = row % S
    cols = tl.arange(0, BLOCK)
    mask = cols < DH
    x = tl.load(h_ptr + b * s_hb + s * s_hs + head * s_hh + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / DH
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / DH
    dt = out_ptr.dtype.element_ty
    y = (xc * (1.0 / tl.sqrt(var + eps))).to(dt).to(tl.float32)
    w = tl.load(w_ptr + head * DH + cols, mask=mask, other=0.0).to(tl.float32)
    y = (y * w).to(dt).to(tl.float32)
    o = tl.load(o_ptr + b * s_ob + s * s_os + head * DH + cols, mask=mask, other=0.0).to(tl.float32)
    gate = (1.0 / (1.0 + tl.exp(-o))).to(dt).to(tl.float32)
    tl.store(out_ptr + b * s_outb + s * s_outs + head * DH + cols, (gate * y).to(dt), mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_out, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    dt = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + hidden + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * u).to(dt), mask=mask)


@triton.jit
def _soft_cap_kernel(x_ptr, out_ptr, N, cap, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cap * tanh(x / cap), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, last) with a unit last stride (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def rms_norm(x, weight, eps):
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    D = x2.shape[1]
    block = triton.next_power_of_2(D)
    _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, x2.stride(0), out.stride(0), D, eps,
                                     BLOCK=block, num_warps=_warps(block))
    return out.view(x.shape)


def head_norm_gate(h, o_pre, weight, eps):
    B, S, NH, DH = h.shape
    if h.stride(-1) != 1:
        h = h.contiguous()
    if o_pre.stride(-1) != 1:
        o_pre = o_pre.contiguous()
    out = torch.empty(B, S, NH * DH, dtype=o_pre.dtype, device=o_pre.device)
    block = triton.next_power_of_2(DH)
    _head_norm_gate_kernel[(B * S, NH)](
        h, o_pre, weight, out, S, h.stride(0), h.stride(1), h.stride(2),
        o_pre.stride(0), o_pre.stride(1), out.stride(0), out.stride(1), DH, eps,
        BLOCK=block, num_warps=_warps(block))
    return out


def silu_mul(gate_up, hidden):
    g2 = _rows(gate_up)
    out = torch.empty(g2.shape[0], hidden, dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(hidden))
    grid = (g2.shape[0], triton.cdiv(hidden, block))
    _silu_mul_kernel[grid](g2, out, g2.stride(0), out.stride(0), hidden, BLOCK=block, num_warps=4)
    return out.view(*gate_up.shape[:-1], hidden)


def soft_cap(x, cap):
    xc = x.contiguous()
    out = torch.empty(xc.shape, dtype=torch.float32, device=x.device)
    N = xc.numel()
    block = 1024
    _soft_cap_kernel[(triton.cdiv(N, block),)](xc, out, N, float(cap), BLOCK=block, num_warps=4)
    return out
