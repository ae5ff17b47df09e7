"""mLSTM cell: the stabilised equations of the official xLSTM, in three forms.

Shapes follow the mlstm_kernels convention:
    q, k  (B, NH, S, DHQK)    v (B, NH, S, DHV)    i, f (B, NH, S)   gate pre-activations
    state C (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH, 1)

One timestep, with q̂ = q * DHQK**-0.5 and logsigmoid forget gate:
    f_log = logsigmoid(f)
    m'    = max(f_log + m, i)                     running stabiliser
    C'    = exp(f_log + m - m') C + exp(i - m') k vᵀ
    n'    = exp(f_log + m - m') n + exp(i - m') k
    h     = (q̂ᵀ C') / (max(|q̂·n'|, exp(-m')) + eps)

C and n are stored scaled by exp(-m); the true memory is C·exp(m).

- mlstm_step: one timestep (decode).
- mlstm_sequence: the reference loop of mlstm_step over S timesteps.
- mlstm_block: the same S timesteps in the chunkwise-parallel (matmul) form; the unit a
  compiled T_inner call runs. Equal to mlstm_sequence to fp32 rounding, final state
  (and its stabiliser m) included, so block-by-block runs continue exactly.

Inputs may be bf16/fp16/fp32; the math runs in fp32 and the state is fp32. float64
inputs run in float64 (used by references). h comes back in v's dtype.
mlstm_step and mlstm_block contain no host syncs or data-dependent Python branches, so
they can be compiled and captured in CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # fp32 for every low-precision input; float64 stays float64 (references).
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def zero_state(
    batch: int,
    num_heads: int,
    qk_dim: int,
    v_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> MLSTMState:
    """The initial state: C = 0, n = 0, m = 0."""
    C = torch.zeros(batch, num_heads, qk_dim, v_dim, device=device, dtype=dtype)
    n = torch.zeros(batch, num_heads, qk_dim, device=device, dtype=dtype)
    m = torch.zeros(batch, num_heads, 1, device=device, dtype=dtype)
    return C, n, m


def _state_or_zeros(state, B, NH, DHQK, DHV, device, ct) -> MLSTMState:
    if state is None:
        return zero_state(B, NH, DHQK, DHV, device=device, dtype=ct)
    C, n, m = state
    return C.to(ct), n.to(ct), m.to(ct)


def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """One timestep. q, k (B, NH, DHQK); v (B, NH, DHV); i, f (B, NH) -> h (B, NH, DHV)."""
    B, NH, DHQK = q.shape
    DHV = v.shape[-1]
    ct = _compute_dtype(v)
    C, n, m = _state_or_zeros(state, B, NH, DHQK, DHV, q.device, ct)

    q_hat = q.to(ct) * (DHQK**-0.5)
    k_ = k.to(ct)
    v_ = v.to(ct)
    i_ = i.to(ct).unsqueeze(-1)  # (B, NH, 1)
    f_log = F.logsigmoid(f.to(ct)).unsqueeze(-1)  # (B, NH, 1)

    m_new = torch.maximum(f_log + m, i_)
    f_act = torch.exp(f_log + m - m_new)  # (B, NH, 1)
    i_act = torch.exp(i_ - m_new)  # (B, NH, 1)

    C_new = f_act.unsqueeze(-1) * C + (i_act * k_).unsqueeze(-1) * v_.unsqueeze(-2)
    n_new = f_act * n + i_act * k_

    num = torch.matmul(q_hat.unsqueeze(-2), C_new).squeeze(-2)  # (B, NH, DHV)
    qn = (q_hat * n_new).sum(-1, keepdim=True)  # (B, NH, 1)
    den = torch.maximum(qn.abs(), torch.exp(-m_new)) + EPS
    h = num / den
    return h.to(v.dtype), (C_new, n_new, m_new)


def mlstm_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Reference: mlstm_step applied S times. Shapes as in the module docstring."""
    S = q.shape[2]
    hs = []
    for t in range(S):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state)
        hs.append(h)
    if S == 0:
        B, NH, _, DHQK = q.shape
        ct = _compute_dtype(v)
        state = _state_or_zeros(state, B, NH, DHQK, v.shape[-1], q.device, ct)
        return v.new_empty(v.shape), state
    return torch.stack(hs, dim=2), state


def mlstm_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Advance the state by the S timesteps given, in the chunkwise-parallel form.

    With b_t = sum_{r<=t} logsigmoid(f_r) (cumulative log forget gate, b_0 = 0) and the
    incoming state (C0, n0, m0), unrolling the recurrence gives for step t:
        log-weight of the incoming state   a_t   = m0 + b_t
        log-weight of the input at s <= t  D_ts  = b_t - b_s + i_s
        stabiliser                         m_t   = max(a_t, max_{s<=t} D_ts)
    which is exactly the recurrent m_t. Then
        num_t = exp(a_t - m_t) q̂_tᵀ C0 + sum_s exp(D_ts - m_t) (q̂_t·k_s) v_s
        den_t = exp(a_t - m_t) q̂_t·n0  + sum_s exp(D_ts - m_t) (q̂_t·k_s)
        h_t   = num_t / (max(|den_t|, exp(-m_t)) + eps)
    and the new state is row t = S of the same weights applied to k_s v_sᵀ and k_s.
    Memory is O(S²) per head: meant for T_inner-sized blocks.
    """
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    ct = _compute_dtype(v)
    C0, n0, m0 = _state_or_zeros(state, B, NH, DHQK, DHV, q.device, ct)

    q_hat = q.to(ct) * (DHQK**-0.5)
    k_ = k.to(ct)
    v_ = v.to(ct)
    i_ = i.to(ct)
    f_log = F.logsigmoid(f.to(ct))  # (B, NH, S)
    b = torch.cumsum(f_log, dim=-1)  # (B, NH, S)

    # b_t - b_s as a segment sum (cumsum of the masked repeated gates) rather than a
    # difference of prefix sums: no cancellation when |b| grows large over the block.
    ones = torch.ones(S, S, dtype=torch.bool, device=q.device)
    causal = ones.tril()
    strictly_lower = ones.tril(diagonal=-1)
    seg = f_log.unsqueeze(-1).expand(B, NH, S, S).masked_fill(~strictly_lower, 0.0)
    seg = torch.cumsum(seg, dim=-2)  # seg[t, s] = sum_{s < r <= t} f_log_r
    D = (seg + i_.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    a = m0 + b  # (B, NH, S)
    m_t = torch.maximum(a, D.amax(dim=-1))  # (B, NH, S); finite because a is finite

    decay = torch.exp(D - m_t.unsqueeze(-1))  # (B, NH, S, S), zero above the diagonal
    inter = torch.exp(a - m_t)  # (B, NH, S)

    weights = torch.matmul(q_hat, k_.transpose(-1, -2)) * decay  # (B, NH, S, S)
    num = torch.matmul(weights, v_) + inter.unsqueeze(-1) * torch.matmul(q_hat, C0)
    den = weights.sum(-1) + inter * torch.matmul(q_hat, n0.unsqueeze(-1)).squeeze(-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_t)) + EPS).unsqueeze(-1)

    # New state: the last row's weights (t = S) applied to the outer products.
    m_S = m_t[..., -1:]  # (B, NH, 1)
    w_in = decay[..., -1, :].unsqueeze(-1)  # (B, NH, S, 1) = exp(b_S - b_s + i_s - m_S)
    g0 = inter[..., -1:]  # (B, NH, 1) = exp(m0 + b_S - m_S)
    k_w = k_ * w_in  # (B, NH, S, DHQK)
    C_S = g0.unsqueeze(-1) * C0 + torch.matmul(k_w.transpose(-1, -2), v_)
    n_S = g0 * n0 + k_w.sum(dim=-2)
    return h.to(v.dtype), (C_S, n_S, m_S)
