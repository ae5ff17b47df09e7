"""Triton kernels for the sub-chunked mLSTM form (kernels.chunkwise, mode 'triton'), and
the one-pass split of fp32 values into three bf16 terms that its 'split' mode uses.

Two kernels per call (kernels.chunkwise runs them), for bf16 q, k, v on CUDA:

- chunk_states: every boundary state. One program owns a (DK block x DV tile) of one
  head's state and walks the K sub-chunks in order: it adds each sub-chunk's inputs
  (sum_s w_s k_s v_sᵀ, the weights w_s already scaled to the boundary stabiliser) to the
  state decayed by g_k and stores the result as the next boundary state. The
  contributions are never written to memory and the scan is one launch.
- chunk_outputs: every output. One program owns one sub-chunk of one head and a DV tile:
  the q·k products, the in-chunk log weights (segment sums of the log forget gates,
  as in kernels.mlstm.mlstm_block), the stabiliser per step, the intra-chunk sum and the
  incoming state's part, the normaliser, h.

Precision: q, k, v are exact in bf16, and products of bf16 values are exact in fp32. The
fp32 operands (weighted keys, intra-chunk weights, states) enter the tensor-core dots as
three bf16 terms hi + lo + lo2 (together within ~2^-25 of the value: fp32's own
resolution); all sums are fp32. The results agree with the fp32 reference to fp32
rounding (checked against a float64 loop on the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.registry import current_run


@triton.jit
def _split3(x, HALF: tl.constexpr):
    hi = x.to(HALF)
    rest = x - hi.to(tl.float32)
    lo = rest.to(HALF)
    lo2 = (rest - lo.to(tl.float32)).to(HALF)
    return hi, lo, lo2


@triton.jit
def _chunk_states_kernel(k_ptr, v_ptr, w_ptr, g_ptr, slots_ptr, K, BNH, DK, DV, DVA,
                         C: tl.constexpr, BDK: tl.constexpr, BV: tl.constexpr, HALF: tl.constexpr):
    bh = tl.program_id(0)
    dk = tl.program_id(1) * BDK + tl.arange(0, BDK)
    pid_v = tl.program_id(2)
    vv = pid_v * BV + tl.arange(0, BV)
    mdk = dk < DK
    mv = vv < DV
    s = tl.arange(0, C)
    tile = dk[:, None] * DVA + vv[None, :]
    tmask = mdk[:, None] & mv[None, :]
    slot_size = DK * DVA
    state = tl.load(slots_ptr + bh * slot_size + tile, mask=tmask, other=0.0)
    n_state = tl.load(slots_ptr + bh * slot_size + dk * DVA + DV, mask=mdk, other=0.0)
    for kk in range(0, K):
        row = kk * BNH + bh  # this head's sub-chunk kk in the sub-chunk-major inputs
        kb = tl.load(k_ptr + row * C * DK + s[:, None] * DK + dk[None, :], mask=mdk[None, :], other=0.0)
        vb = tl.load(v_ptr + row * C * DV + s[:, None] * DV + vv[None, :], mask=mv[None, :], other=0.0)
        w = tl.load(w_ptr + row * C + s)
        g = tl.load(g_ptr + row)
        kw = kb.to(tl.float32) * w[:, None]
        hi, lo, lo2 = _split3(kw, HALF)
        acc = tl.dot(tl.trans(hi), vb)
        acc = tl.dot(tl.trans(lo), vb, acc)
        acc = tl.dot(tl.trans(lo2), vb, acc)
        state = g * state + acc
        out = slots_ptr + (row + BNH) * slot_size  # boundary state kk + 1
        tl.store(out + tile, state, mask=tmask)
        if pid_v == 0:  # n rides along: the same sum with v -> 1, exact in fp32
            n_state = g * n_state + tl.sum(kw, axis=0)
            tl.store(out + dk * DVA + DV, n_state, mask=mdk)


@triton.jit
def _chunk_outputs_kernel(q_ptr, k_ptr, v_ptr, flog_ptr, i_ptr, b_ptr, mstart_ptr, slots_ptr, h_ptr,
                          BNH, NH, DK, DV, DVA, s_hb, s_hh, s_ht, scale, eps,
                          C: tl.constexpr, BDK: tl.constexpr, BV: tl.constexpr, HALF: tl.constexpr):
    pid = tl.program_id(0)  # sub-chunk-major row: kk * BNH + bh
    pid_v = tl.program_id(1)
    kk = pid // BNH
    bh = pid % BNH
    t = tl.arange(0, C)
    slot = slots_ptr + pid * DK * DVA  # the state entering sub-chunk kk
    # pass 1: q·k for the intra-chunk weights, q·n for the incoming normaliser
    qk = tl.zeros([C, C], dtype=tl.float32)
    qn = tl.zeros([C], dtype=tl.float32)
    for d0 in range(0, DK, BDK):
        dk = d0 + tl.arange(0, BDK)
        mdk = dk < DK
        qb = tl.load(q_ptr + pid * C * DK + t[:, None] * DK + dk[None, :], mask=mdk[None, :], other=0.0)
        kb = tl.load(k_ptr + pid * C * DK + t[:, None] * DK + dk[None, :], mask=mdk[None, :], other=0.0)
        qk = tl.dot(qb, tl.trans(kb), qk)
        nb = tl.load(slot + dk * DVA + DV, mask=mdk, other=0.0)
        qn += tl.sum(qb.to(tl.float32) * nb[None, :], axis=1)
    # log weights D[t, s] = sum_{s < r <= t} f_log_r + i_s (segment sums: no cancellation)
    fl = tl.load(flog_ptr + pid * C + t)
    iv = tl.load(i_ptr + pid * C + t)
    bv = tl.load(b_ptr + pid * C + t)
    m_in = tl.load(mstart_ptr + pid)
    seg = tl.cumsum(tl.where(t[:, None] > t[None, :], fl[:, None], 0.0), axis=0)
    D = tl.where(t[:, None] >= t[None, :], seg + iv[None, :], float("-inf"))
    a = m_in + bv
    m_t = tl.maximum(a, tl.max(D, axis=1))
    W = qk * tl.exp(D - m_t[:, None]) * scale
    inter = tl.exp(a - m_t) * scale
    den = tl.sum(W, axis=1) + inter * qn
    # intra-chunk numerator on this DV tile
    vv = pid_v * BV + tl.arange(0, BV)
    mv = vv < DV
    vb = tl.load(v_ptr + pid * C * DV + t[:, None] * DV + vv[None, :], mask=mv[None, :], other=0.0)
    w_hi, w_lo, w_lo2 = _split3(W, HALF)
    num = tl.dot(w_hi, vb)
    num = tl.dot(w_lo, vb, num)
    num = tl.dot(w_lo2, vb, num)
    # pass 2: the incoming state's part
    for d0 in range(0, DK, BDK):
        dk = d0 + tl.arange(0, BDK)
        mdk = dk < DK
        qb = tl.load(q_ptr + pid * C * DK + t[:, None] * DK + dk[None, :], mask=mdk[None, :], other=0.0)
        sb = tl.load(slot + dk[:, None] * DVA + vv[None, :], mask=mdk[:, None] & mv[None, :], other=0.0)
        s_hi, s_lo, s_lo2 = _split3(sb, HALF)
        part = tl.dot(qb, s_hi)
        part = tl.dot(qb, s_lo, part)
        part = tl.dot(qb, s_lo2, part)
        num += inter[:, None] * part
    h = num / (tl.maximum(tl.abs(den), tl.exp(-m_t)) + eps)[:, None]
    b = bh // NH
    head = bh % NH
    rows = kk * C + t
    tl.store(h_ptr + b * s_hb + head * s_hh + rows[:, None] * s_ht + vv[None, :],
             h.to(h_ptr.dtype.element_ty), mask=mv[None, :])


_HALF = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
TILE_CAP = 64  # largest DK and DV tile of both kernels
STATES_WARPS = 4  # warps of the boundary-state kernel
STAGES = 2  # software-pipelining stages of both kernels
# Warps of the output kernel: the run's output_warps (kernels.registry). Its (sub-chunk x
# sub-chunk) tiles fill the registers: at sub-chunk 128, 8 warps use 255 registers a
# thread and spill; 16 warps use 128.


def _tile(dim: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(dim)))


def chunk_states(k_m, v_m, w, g, slots) -> None:
    """Boundary states 1..K into slots (K+1, B, NH, DK, DVA) fp32; slot 0 holds the
    incoming state. k_m, v_m (K, B, NH, c, ·) bf16 (fp16 works the same way; the
    interpreter tests use it); w (K, B, NH, c), g (K, B, NH) fp32."""
    K, B, NH, C, DK = k_m.shape
    DV = v_m.shape[-1]
    DVA = slots.shape[-1]
    bdk, bv = _tile(DK, TILE_CAP), _tile(DV, TILE_CAP)
    grid = (B * NH, triton.cdiv(DK, bdk), triton.cdiv(DV, bv))
    _chunk_states_kernel[grid](k_m, v_m, w, g, slots, K, B * NH, DK, DV, DVA,
                               C=C, BDK=bdk, BV=bv, HALF=_HALF[k_m.dtype], num_warps=STATES_WARPS, num_stages=STAGES)


def chunk_outputs(q_m, k_m, v_m, f_log, i_m, b, m_start, slots, h, eps: float) -> None:
    """Every h into h (B, NH, K*c (+ tail), DV), from slots 0..K-1 (the incoming states)."""
    K, B, NH, C, DK = q_m.shape
    DV = v_m.shape[-1]
    DVA = slots.shape[-1]
    bdk, bv = _tile(DK, TILE_CAP), _tile(DV, TILE_CAP)
    grid = (K * B * NH, triton.cdiv(DV, bv))
    _chunk_outputs_kernel[grid](q_m, k_m, v_m, f_log, i_m, b, m_start, slots, h, B * NH, NH, DK, DV, DVA,
                                h.stride(0), h.stride(1), h.stride(2), DK**-0.5, eps,
                                C=C, BDK=bdk, BV=bv, HALF=_HALF[q_m.dtype], num_warps=current_run().param("output_warps"), num_stages=STAGES)


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sub_chunk: int) -> bool:
    """Whether these kernels take the call: bf16 on CUDA, a power-of-two sub-chunk >= 16."""
    return (q.device.type == "cuda" and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and sub_chunk >= 16 and sub_chunk == triton.next_power_of_2(sub_chunk))


@triton.jit
def _split3_kernel(x_ptr, out_ptr, inner, total, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    hi, lo, lo2 = _split3(tl.load(x_ptr + offs, mask=mask, other=0.0), tl.bfloat16)
    base = (offs // inner) * (3 * inner) + offs % inner
    tl.store(out_ptr + base, hi, mask=mask)
    tl.store(out_ptr + base + inner, lo, mask=mask)
    tl.store(out_ptr + base + 2 * inner, lo2, mask=mask)


def split3_into(x: torch.Tensor, out: torch.Tensor, axis: int) -> None:
    """kernels.split_matmul.split3 in one pass: x (fp32, contiguous) -> out (bf16, contiguous,
    x's shape with 3 inserted before dimension `axis`)."""
    inner = 1
    for size in x.shape[axis:]:
        inner *= size
    total = x.numel()
    block = 1024
    _split3_kernel[(triton.cdiv(total, block),)](x, out, inner, total, BLOCK=block, num_warps=4)
