"""Sub-chunked chunkwise-parallel mLSTM: one call over a long window of S steps.

mlstm_block is O(S²) per head (an S x S decay matrix), right for T_inner-sized windows up
to a few hundred steps. A long window (a prefill of thousands of tokens in one T_inner
call) is cut here into K sub-chunks of c steps:

1. per sub-chunk, independently of the incoming state (batched matmuls over all K):
   its total log forget gate B_k, its own stabiliser l_k (the largest log weight of an
   input at the sub-chunk's end) and its state contribution, stabilised by l_k,
       dC_k = sum_s exp(B_k - b_s + i_s - l_k) k_s v_sᵀ    (dn_k the same with v_s -> 1);
2. the stabiliser at every sub-chunk boundary, vectorised over K (segment sums, as in
   mlstm_block):   m_k = max(m_{k-1} + B_k, l_k);
3. the states at the boundaries by a scan over the K sub-chunks, one fused op each:
       C_k = exp(m_{k-1} + B_k - m_k) C_{k-1} + exp(l_k - m_k) dC_k    (every weight <= 1);
4. every output from its sub-chunk's incoming state: mlstm_block's intra-chunk matmul form,
   batched over all K sub-chunks at once.

C and n travel together as one (DHQK, DHV + 1) matrix (n is C with v replaced by 1), so
each scan step is one kernel. A tail of fewer than c steps runs through mlstm_block from
the last boundary state. Exact to fp32 rounding against mlstm_sequence: the same
stabilised sums in another order. Memory: K boundary states plus O(S·c) per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.mlstm import EPS, MLSTMState, _compute_dtype, _state_or_zeros, mlstm_block

SUB_CHUNK = 128
# Windows shorter than this many sub-chunks run through mlstm_block (one O(S²) matmul
# form is cheaper than a scan of one or two steps).
MIN_SUB_CHUNKS = 2


def uses_sub_chunks(seq_len: int, sub_chunk: int = SUB_CHUNK) -> bool:
    """Whether a window of seq_len steps takes the sub-chunked form."""
    return seq_len >= MIN_SUB_CHUNKS * sub_chunk


def _segment_sums(x: torch.Tensor) -> torch.Tensor:
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


def sub_chunk_summaries(k, v_aug, i, f_log):
    """Stage 1, batched over sub-chunks. Inputs (B, NH, K, c, ·) in the compute dtype.

    Returns D (log weights inside each sub-chunk, (B, NH, K, c, c)), b (local cumulative
    log forget gates, (B, NH, K, c)), l (B, NH, K) and the contributions dCn
    (B, NH, K, DHQK, DHV + 1) stabilised by l.
    """
    b = torch.cumsum(f_log, dim=-1)
    D = _segment_sums(f_log) + i.unsqueeze(-2)  # D[t, s] = b_t - b_s + i_s, -inf for s > t
    ell = D[..., -1, :].amax(dim=-1)  # (B, NH, K)
    w_last = torch.exp(D[..., -1, :] - ell.unsqueeze(-1))  # (B, NH, K, c), all <= 1
    dCn = torch.matmul((k * w_last.unsqueeze(-1)).transpose(-1, -2), v_aug)
    return D, b, ell, dCn


def boundary_stabilisers(m0: torch.Tensor, B_tot: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Stage 2: m after each sub-chunk, m_k = max(m_{k-1} + B_k, l_k), for all k at once.

    m0 (B, NH, 1); B_tot, ell (B, NH, K) -> m_end (B, NH, K), unrolled as
    m_k = max(m0 + sum_{j<=k} B_j, max_{j<=k} (l_j + sum_{j<r<=k} B_r)).
    """
    seg = _segment_sums(B_tot)  # (B, NH, K, K)
    from_inputs = (seg + ell.unsqueeze(-2)).amax(dim=-1)
    return torch.maximum(m0 + torch.cumsum(B_tot, dim=-1), from_inputs)


def scan_states(Cn0: torch.Tensor, dCn: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Stage 3: states at every boundary. Cn0 (B, NH, DHQK, DHV+1); dCn (B, NH, K, ...);
    g, s (B, NH, K). Returns (B, NH, K+1, DHQK, DHV+1): index 0 is Cn0, index k the state
    after sub-chunk k-1 ... after the last one. Works in place on a scaled copy of dCn.
    """
    B, NH, K = g.shape
    states = torch.empty((B, NH, K + 1) + tuple(Cn0.shape[2:]), dtype=Cn0.dtype, device=Cn0.device)
    states[:, :, 0] = Cn0
    torch.mul(dCn, s[..., None, None], out=states[:, :, 1:])
    g4 = g[..., None, None]
    for j in range(K):  # sequential: each boundary state needs the one before
        states[:, :, j + 1].addcmul_(states[:, :, j], g4[:, :, j])
    return states


def sub_chunk_outputs(q_hat, k, v, D, b, m_start, Cn_start, dhv: int):
    """Stage 4: h for every step, each sub-chunk from its incoming state, batched.

    q_hat, k (B, NH, K, c, DHQK); v (B, NH, K, c, DHV); D (B, NH, K, c, c); b (B, NH, K, c);
    m_start (B, NH, K) and Cn_start (B, NH, K, DHQK, DHV+1): the state entering each sub-chunk.
    """
    a = m_start.unsqueeze(-1) + b  # log weight of the incoming state at step t
    m_t = torch.maximum(a, D.amax(dim=-1))
    decay = torch.exp(D - m_t.unsqueeze(-1))  # zero above the diagonal
    inter = torch.exp(a - m_t)
    weights = torch.matmul(q_hat, k.transpose(-1, -2)) * decay
    from_state = torch.matmul(q_hat, Cn_start)  # (B, NH, K, c, DHV+1): [q̂ C0 | q̂·n0]
    num = torch.matmul(weights, v) + inter.unsqueeze(-1) * from_state[..., :dhv]
    den = weights.sum(-1) + inter * from_state[..., dhv]
    return num / (torch.maximum(den.abs(), torch.exp(-m_t)) + EPS).unsqueeze(-1)


def _prepare(q, k, v, i, f, C0, n0, m0, sub_chunk: int):
    """Stages 1-2 and the scan's inputs for the first K * sub_chunk steps (no loops)."""
    B, NH, S, DHQK = q.shape
    ct = C0.dtype
    K = S // sub_chunk
    main = K * sub_chunk

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, NH, S, ...) -> (B, NH, K, c, ...)
        return x[:, :, :main].to(ct).reshape(B, NH, K, sub_chunk, *x.shape[3:])

    q_hat = blocks(q) * (DHQK**-0.5)
    k_ = blocks(k)
    v_ = blocks(v)
    f_log = F.logsigmoid(blocks(f))
    v_aug = torch.cat([v_, torch.ones_like(v_[..., :1])], dim=-1)  # n rides along as a column

    D, b, ell, dCn = sub_chunk_summaries(k_, v_aug, blocks(i), f_log)
    B_tot = b[..., -1]
    m_end = boundary_stabilisers(m0, B_tot, ell)  # (B, NH, K)
    m_start = torch.cat([m0, m_end[..., :-1]], dim=-1)
    g = torch.exp(m_start + B_tot - m_end)
    s = torch.exp(ell - m_end)
    Cn0 = torch.cat([C0, n0.unsqueeze(-1)], dim=-1)
    return q_hat, k_, v_, D, b, m_start, m_end, Cn0, dCn, g, s


def _finish(q_hat, k_, v_, D, b, m_start, m_end, states, dtype: torch.dtype):
    """Stage 4 and the final state, from the boundary states (no loops)."""
    B, NH, K, c, DHV = v_.shape
    h = sub_chunk_outputs(q_hat, k_, v_, D, b, m_start, states[:, :, :K], DHV)
    h = h.reshape(B, NH, K * c, DHV).to(dtype)
    last = states[:, :, K]
    return h, (last[..., :DHV].contiguous(), last[..., DHV].contiguous(), m_end[..., -1:].contiguous())


def _run(prepare, finish, q, k, v, i, f, state, sub_chunk: int):
    if sub_chunk < 1:
        raise ValueError(f"sub_chunk must be >= 1, got {sub_chunk}")
    B, NH, S, DHQK = q.shape
    K = S // sub_chunk
    if K == 0:
        return mlstm_block(q, k, v, i, f, state)
    C0, n0, m0 = _state_or_zeros(state, B, NH, DHQK, v.shape[-1], q.device, _compute_dtype(v))
    q_hat, k_, v_, D, b, m_start, m_end, Cn0, dCn, g, s = prepare(q, k, v, i, f, C0, n0, m0, sub_chunk)
    states = scan_states(Cn0, dCn, g, s)
    h, out_state = finish(q_hat, k_, v_, D, b, m_start, m_end, states, v.dtype)
    main = K * sub_chunk
    if main == S:
        return h, out_state
    t = slice(main, S)  # the tail, shorter than one sub-chunk
    h_tail, out_state = mlstm_block(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], out_state)
    return torch.cat([h, h_tail], dim=2), out_state


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
    *,
    sub_chunk: int = SUB_CHUNK,
) -> tuple[torch.Tensor, MLSTMState]:
    """Advance the state by the S steps given, in sub-chunks of `sub_chunk` steps.

    mlstm_block's signature and contract (shapes, fp32 state, h in v's dtype).
    """
    return _run(_prepare, _finish, q, k, v, i, f, state, sub_chunk)


def compiled_chunkwise():
    """mlstm_chunkwise with its loop-free stages torch.compile'd (static shapes, full
    graphs) and the scan left eager: compiling the scan would unroll K steps."""
    prepare = torch.compile(_prepare, dynamic=False, fullgraph=True)
    finish = torch.compile(_finish, dynamic=False, fullgraph=True)

    def run(q, k, v, i, f, state=None, *, sub_chunk: int = SUB_CHUNK):
        return _run(prepare, finish, q, k, v, i, f, state, sub_chunk)

    return run
