"""The stages of the sub-chunked mLSTM form (kernels.chunkwise), in torch.

A window of S steps is cut into K sub-chunks of c steps:

1. per sub-chunk, independently of the incoming state: its total log forget gate B_k and
   its own stabiliser l_k (the largest log weight of an input at the sub-chunk's end);
2. the stabiliser at every sub-chunk boundary, vectorised over K (segment sums, as in
   mlstm_block):   m_k = max(m_{k-1} + B_k, l_k);
   then each sub-chunk's inputs summed into a state contribution already scaled to m_k
   (one batched matmul over all K):  dC_k = sum_s exp(B_k - b_s + i_s - m_k) k_s v_sᵀ;
3. the states at the boundaries by a scan over the K sub-chunks, one fused op each:
       C_k = exp(m_{k-1} + B_k - m_k) C_{k-1} + dC_k    (every weight <= 1);
4. every output from its sub-chunk's incoming state: mlstm_block's intra-chunk matmul form,
   batched over all K sub-chunks at once.

C and n travel together as one (DHQK, DHV + 1) matrix (n is C with v replaced by 1, the
denominators likewise ride along the numerators), so each scan step is one kernel and
each output term one matmul. Tensors are laid out sub-chunk-major, so every batched
matmul reads and writes its operands in place. In mode 'split' the matmuls take the
three-term bf16 form of kernels.split_matmul; `gates` prepares the same quantities for
the fused Triton kernels (kernels.triton_chunkwise) without any c x c tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.mlstm import EPS
from kernels.split_matmul import add_mm32, mm32, repeat3, split3


def segment_sums(x: torch.Tensor) -> torch.Tensor:
    """seg[..., t, s] = sum_{s < r <= t} x[..., r] for s <= t (0 on the diagonal), -inf above.

    A cumsum of the masked repeated values, not a difference of prefix sums: no
    cancellation when the prefix sums grow large.
    """
    n = x.shape[-1]
    ones = torch.ones(n, n, dtype=torch.bool, device=x.device)
    strictly_lower = ones.tril(diagonal=-1)
    seg = x.unsqueeze(-1).expand(*x.shape, n).masked_fill(~strictly_lower, 0.0)
    seg = torch.cumsum(seg, dim=-2)
    return seg.masked_fill(~ones.tril(), float("-inf"))


def boundary_stabilisers(m0: torch.Tensor, B_tot: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Stage 2: m after each sub-chunk, m_k = max(m_{k-1} + B_k, l_k), for all k at once.

    m0 (..., 1); B_tot, ell (..., K) -> m_end (..., K), unrolled as
    m_k = max(m0 + sum_{j<=k} B_j, max_{j<=k} (l_j + sum_{j<r<=k} B_r)).
    """
    seg = segment_sums(B_tot)  # (..., K, K)
    from_inputs = (seg + ell.unsqueeze(-2)).amax(dim=-1)
    return torch.maximum(m0 + torch.cumsum(B_tot, dim=-1), from_inputs)


def k_major(x: torch.Tensor, K: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, NH, S, ...) (any strides) -> contiguous (K, B, NH, c, ...) in dtype: one pass.

    Sub-chunk-major, so that every batched matmul below sees one uniform batch stride
    and the boundary states of consecutive sub-chunks are contiguous slices.
    """
    B, NH = x.shape[:2]
    tail = tuple(x.shape[3:])
    view = x[:, :, : K * c].reshape(B, NH, K, c, *tail).movedim(2, 0)
    out = torch.empty((K, B, NH, c) + tail, dtype=dtype, device=x.device)
    out.copy_(view)
    return out


def gates(i, f, m0, K: int, c: int, ct: torch.dtype):
    """The per-step gate quantities the fused kernels need, sub-chunk-major, without any
    c x c tensor: f_log, i, b (local cumulative log forget gates), m_start/m_end, g and
    the weights w of each input into the boundary state after its sub-chunk."""
    f_log = F.logsigmoid(k_major(f, K, c, ct))  # (K, B, NH, c)
    i_m = k_major(i, K, c, ct)
    b = torch.cumsum(f_log, dim=-1)
    from_right = torch.flip(torch.cumsum(torch.flip(f_log, [-1]), dim=-1), [-1])  # sum_{r >= s}
    after = torch.cat([from_right[..., 1:], torch.zeros_like(from_right[..., :1])], dim=-1)  # sum_{r > s}
    last_row = after + i_m  # log weight of input s at the sub-chunk's end
    B_tot = b[..., -1]
    m_end = boundary_stabilisers(m0, B_tot.movedim(0, -1), last_row.amax(dim=-1).movedim(0, -1)).movedim(-1, 0)
    m_start = torch.cat([m0.movedim(-1, 0), m_end[:-1]], dim=0).contiguous()
    g = torch.exp(m_start + B_tot - m_end)
    w = torch.exp(last_row - m_end.unsqueeze(-1))
    return f_log, i_m, b, m_start, m_end, g, w


def prepare(q, k, v, i, f, C0, n0, m0, sub_chunk: int, mode: str):
    """Stages 1-2 and the boundary-state contributions (no loops). Shapes: see mlstm_chunkwise.

    Returns, sub-chunk-major (K, B, NH, ...): the q, k copies the matmuls use, v_aug =
    [v | 1 | 0 padding] (three stacked copies, (..., 3c, DHVA), in 'split' mode), D (log
    weights inside each sub-chunk), b (local cumulative log forget gates),
    m_start/m_end (stabilisers entering/leaving each sub-chunk), g (the decay of the
    incoming state over each sub-chunk) and dCn (each sub-chunk's inputs summed into a
    boundary state, already scaled to m_end; fp32).
    """
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    ct = C0.dtype
    c = sub_chunk
    K = S // c
    split = mode == "split"

    f_log = F.logsigmoid(k_major(f, K, c, ct))  # (K, B, NH, c)
    b = torch.cumsum(f_log, dim=-1)
    D = segment_sums(f_log) + k_major(i, K, c, ct).unsqueeze(-2)  # D[t, s] = b_t - b_s + i_s
    ell = D[..., -1, :].amax(dim=-1)  # (K, B, NH): each sub-chunk's own largest input weight
    B_tot = b[..., -1]
    m_end = boundary_stabilisers(m0, B_tot.movedim(0, -1), ell.movedim(0, -1)).movedim(-1, 0)
    m_start = torch.cat([m0.movedim(-1, 0), m_end[:-1]], dim=0)
    g = torch.exp(m_start + B_tot - m_end)  # <= 1
    w = torch.exp(D[..., -1, :] - m_end.unsqueeze(-1))  # (K, B, NH, c), <= 1

    mm_dtype = torch.bfloat16 if split else ct
    q_m = k_major(q, K, c, mm_dtype)
    k_m = k_major(k, K, c, mm_dtype)
    dhva = aug_width(DHV)
    v_aug = torch.zeros((K, B, NH, c, dhva), dtype=mm_dtype, device=q.device)  # n rides along as a column
    v_aug[..., :DHV].copy_(v[:, :, : K * c].reshape(B, NH, K, c, DHV).movedim(2, 0))
    v_aug[..., DHV] = 1.0
    kw = k_m * w.unsqueeze(-1)  # fp32
    if split:
        v_aug = repeat3(v_aug, -2).flatten(-3, -2)  # (..., 3c, DHVA)
        kw3 = split3(kw, -2).flatten(-3, -2)  # (..., 3c, DHQK)
        dCn = mm32(kw3.transpose(-1, -2), v_aug)
    else:
        dCn = torch.matmul(kw.transpose(-1, -2), v_aug)  # (K, B, NH, DHQK, DHVA)
    return q_m, k_m, v_aug, D, b, m_start, m_end, g, dCn


def aug_width(dhv: int) -> int:
    """Columns of [v | 1], padded to a multiple of 8 so the matmuls see aligned rows."""
    return -(-(dhv + 1) // 8) * 8


def scan_states(Cn0: torch.Tensor, dCn: torch.Tensor, g: torch.Tensor) -> None:
    """Stage 3, in place: dCn[j] becomes the state after sub-chunk j,
    g_j * (state before it) + dCn[j]. Cn0 (B, NH, DHQK, DHVA); dCn (K, B, NH, ...); g (K, B, NH)."""
    g4 = g[..., None, None]
    dCn[0].addcmul_(Cn0, g4[0])
    for j in range(1, dCn.shape[0]):  # sequential: each boundary state needs the one before
        dCn[j].addcmul_(dCn[j - 1], g4[j])


def finish(q_m, k_m, v_aug, D, b, m_start, m_end, Cn0, states, mode: str, out_dtype: torch.dtype,
           dhqk: int, dhv: int):
    """Stage 4: every output from its sub-chunk's incoming state, all sub-chunks batched.

    h_t = (q̂_t C_in inter_t + sum_s w_ts v_s) / (max(|q̂_t n_in inter_t + sum_s w_ts|, exp(-m_t)) + eps)
    with w_ts = (q̂_t·k_s) exp(D_ts - m_t): one matmul per term on [v | 1] and [C | n].
    Returns h (B, NH, K*c, DHV) in out_dtype.
    """
    K, B, NH, c = D.shape[:4]
    dhva = Cn0.shape[-1]
    scale = dhqk**-0.5
    split = mode == "split"
    a = m_start.unsqueeze(-1) + b  # log weight of the incoming state at step t
    m_t = torch.maximum(a, D.amax(dim=-1))
    decay = torch.exp(D - m_t.unsqueeze(-1) + math.log(scale))  # q's scale folded in; 0 above the diagonal
    inter = torch.exp(a - m_t) * scale  # weight of the incoming state, q's scale folded in
    if split:
        weights = mm32(q_m, k_m.transpose(-1, -2)).mul_(decay)
        # the incoming state's part: q (exact in bf16) against the three terms of each
        # state, then weighted per step
        starts = torch.empty((K, B, NH, 3, dhqk, dhva), dtype=torch.bfloat16, device=D.device)
        split3(Cn0, -2, out=starts[0])
        if K > 1:
            split3(states[:-1], -2, out=starts[1:])
        out = mm32(repeat3(q_m, -1).flatten(-2, -1), starts.flatten(-3, -2)).mul_(inter.unsqueeze(-1))
        out = add_mm32(out, split3(weights, -1).flatten(-2, -1), v_aug)
    else:
        weights = torch.matmul(q_m, k_m.transpose(-1, -2)).mul_(decay)
        q_in = q_m * inter.unsqueeze(-1)
        out = torch.empty((K, B, NH, c, dhva), dtype=q_in.dtype, device=D.device)  # [numerator | denominator]
        torch.matmul(q_in[0], Cn0, out=out[0])
        if K > 1:
            torch.matmul(q_in[1:], states[:-1], out=out[1:])
        out.view(-1, c, dhva).baddbmm_(weights.view(-1, c, c), v_aug.view(-1, c, dhva))
    denom = torch.maximum(out[..., dhv].abs(), torch.exp(-m_t)) + EPS
    h = torch.empty((B, NH, K * c, dhv), dtype=out_dtype, device=D.device)
    torch.div(out[..., :dhv], denom.unsqueeze(-1), out=h.view(B, NH, K, c, dhv).movedim(2, 0))
    return h
