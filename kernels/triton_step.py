"""One mLSTM decode step for a band of heads as one Triton kernel (TritonOps.mlstm_step_into).

The same function as kernels.torch_ops.TorchOps.mlstm_step_into: gates soft-capped
inside, C updated in place, n and m written to separate outputs, h to its buffer.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.mlstm import EPS
from kernels.registry import current_run
from kernels.triton_elementwise import tanh


@triton.jit
def _mlstm_step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr,
    C_ptr, n_in_ptr, m_in_ptr, n_out_ptr, m_out_ptr, h_ptr,
    nh,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ib, s_ih, s_fb, s_fh,
    s_Cb, s_Ch, s_Ck, s_nib, s_nih, s_mib, s_mih, s_nob, s_noh, s_mob, s_moh, s_hb, s_hh,
    DHQK, DHV, scale, cap, eps,
    BLOCK_QK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # One program: one (batch, head) and BLOCK_V columns of its C. The gate and n/m
    # arithmetic is repeated in every program of the head (cheap); the column-0 program
    # writes n and m to the separate outputs, so no program reads a value another wrote.
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = pid // nh
    hd = pid % nh
    kk = tl.arange(0, BLOCK_QK)
    mk = kk < DHQK
    vv = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mv = vv < DHV

    q = tl.load(q_ptr + b * s_qb + hd * s_qh + kk, mask=mk, other=0.0).to(tl.float32) * scale
    k = tl.load(k_ptr + b * s_kb + hd * s_kh + kk, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * s_vb + hd * s_vh + vv, mask=mv, other=0.0).to(tl.float32)
    i_g = cap * tanh(tl.load(i_ptr + b * s_ib + hd * s_ih).to(tl.float32) / cap)
    f_g = cap * tanh(tl.load(f_ptr + b * s_fb + hd * s_fh).to(tl.float32) / cap)
    f_log = tl.minimum(f_g, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_g)))  # logsigmoid
    m_old = tl.load(m_in_ptr + b * s_mib + hd * s_mih)
    m_new = tl.maximum(f_log + m_old, i_g)
    f_act = tl.exp(f_log + m_old - m_new)
    i_act = tl.exp(i_g - m_new)

    n_old = tl.load(n_in_ptr + b * s_nib + hd * s_nih + kk, mask=mk, other=0.0)
    n_new = f_act * n_old + i_act * k
    qn = tl.sum(q * n_new, axis=0)

    c_ptrs = C_ptr + b * s_Cb + hd * s_Ch + kk[:, None] * s_Ck + vv[None, :]
    cmask = mk[:, None] & mv[None, :]
    C = tl.load(c_ptrs, mask=cmask, other=0.0)
    C = f_act * C + (i_act * k)[:, None] * v[None, :]
    tl.store(c_ptrs, C, mask=cmask)

    num = tl.sum(q[:, None] * C, axis=0)
    den = tl.maximum(tl.abs(qn), tl.exp(-m_new)) + eps
    tl.store(h_ptr + b * s_hb + hd * s_hh + vv, (num / den).to(h_ptr.dtype.element_ty), mask=mv)
    if pid_v == 0:
        tl.store(n_out_ptr + b * s_nob + hd * s_noh + kk, n_new, mask=mk)
        tl.store(m_out_ptr + b * s_mob + hd * s_moh, m_new)


# Elements of C one program updates (BLOCK_QK x BLOCK_V) are the run's step_tile
# (kernels.registry, default DEFAULT_STEP_TILE): smaller tiles give more programs per head.
def mlstm_step_into(q, k, v, i_pre, f_pre, cap, C, n_in, m_in, n_out, m_out, h_out):
    B, nh, DHQK = q.shape
    DHV = v.shape[-1]
    for name, t in (("q", q), ("k", k), ("v", v), ("C", C), ("n_in", n_in), ("n_out", n_out), ("h_out", h_out)):
        if t.stride(-1) != 1:
            raise ValueError(f"mlstm_step_into needs a unit last stride for {name}")
    block_qk = triton.next_power_of_2(DHQK)
    block_v = min(triton.next_power_of_2(DHV), max(16, current_run().param("step_tile") // block_qk))
    grid = (B * nh, triton.cdiv(DHV, block_v))
    _mlstm_step_kernel[grid](
        q, k, v, i_pre, f_pre, C, n_in, m_in, n_out, m_out, h_out, nh,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        i_pre.stride(0), i_pre.stride(1), f_pre.stride(0), f_pre.stride(1),
        C.stride(0), C.stride(1), C.stride(2), n_in.stride(0), n_in.stride(1),
        m_in.stride(0), m_in.stride(1), n_out.stride(0), n_out.stride(1),
        m_out.stride(0), m_out.stride(1), h_out.stride(0), h_out.stride(1),
        DHQK, DHV, DHQK**-0.5, float(cap), EPS,
        BLOCK_QK=block_qk, BLOCK_V=block_v, num_warps=4)
