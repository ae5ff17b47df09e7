"""sLSTM cell: scalar memory, exponential gating with a stabiliser, and a block-diagonal
(per-head) recurrent matrix, as in the xLSTM paper.

Shapes:
    wx    (B, 4, NH, DH)  gate pre-activations from the input, gates in order i, f, z, o
    R     (4, NH, DH, DH) recurrent weights: head h of gate g sees only head h of y
    bias  (4, NH, DH)
    state y, c, n, m      each (B, NH, DH)

One timestep:
    [ĩ, f̃, z̃, õ] = wx + y R + bias
    m' = max(ĩ, m + logsigmoid(f̃))          (m' = ĩ where n == 0: the empty initial state)
    i  = exp(ĩ - m'),  f = exp(m + logsigmoid(f̃) - m')
    c' = f c + i tanh(z̃),   n' = f n + i,   y' = sigmoid(õ) c' / n'

c and n are stored scaled by exp(-m); their ratio, and so y, does not depend on m.
Math in fp32 (float64 inputs stay float64); the state is fp32; y comes back in wx's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

NUM_GATES = 4


def slstm_zero_state(
    batch: int,
    num_heads: int,
    head_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SLSTMState:
    """The initial state: y = c = n = m = 0."""
    return tuple(
        torch.zeros(batch, num_heads, head_dim, device=device, dtype=dtype) for _ in range(4)
    )  # type: ignore[return-value]


def slstm_step(
    wx: torch.Tensor,
    R: torch.Tensor,
    bias: torch.Tensor,
    state: SLSTMState | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """One timestep. wx (B, 4, NH, DH) -> y (B, NH, DH) and the new state (y, c, n, m)."""
    B, G, NH, DH = wx.shape
    if G != NUM_GATES:
        raise ValueError(f"wx must have {NUM_GATES} gates (i, f, z, o) in dim 1, got shape {tuple(wx.shape)}")
    ct = torch.float64 if wx.dtype == torch.float64 else torch.float32
    if state is None:
        state = slstm_zero_state(B, NH, DH, device=wx.device, dtype=ct)
    y, c, n, m = (s.to(ct) for s in state)

    recurrent = torch.einsum("bhd,ghde->bghe", y, R.to(ct))  # (B, 4, NH, DH)
    raw = wx.to(ct) + recurrent + bias.to(ct)
    i_raw, f_raw, z_raw, o_raw = raw.unbind(dim=1)

    log_f_plus_m = m + F.logsigmoid(f_raw)
    empty = n == 0  # only the initial state; elementwise so there is no host sync
    m_new = torch.where(empty, i_raw, torch.maximum(i_raw, log_f_plus_m))
    i_gate = torch.exp(i_raw - m_new)
    # The empty state contributes nothing; masking also avoids 0 * inf when ĩ << m.
    f_gate = torch.where(empty, torch.zeros_like(m_new), torch.exp(log_f_plus_m - m_new))

    c_new = f_gate * c + i_gate * torch.tanh(z_raw)
    n_new = f_gate * n + i_gate
    y_new = torch.sigmoid(o_raw) * c_new / n_new
    return y_new.to(wx.dtype), (y_new, c_new, n_new, m_new)


def slstm_sequence(
    wx: torch.Tensor,
    R: torch.Tensor,
    bias: torch.Tensor,
    state: SLSTMState | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """S timesteps. wx (B, S, 4, NH, DH) -> y (B, S, NH, DH) and the final state."""
    B, S, G, NH, DH = wx.shape
    if S == 0:
        ct = torch.float64 if wx.dtype == torch.float64 else torch.float32
        if state is None:
            state = slstm_zero_state(B, NH, DH, device=wx.device, dtype=ct)
        return wx.new_empty(B, 0, NH, DH), state
    ys = []
    for t in range(S):
        y, state = slstm_step(wx[:, t], R, bias, state)
        ys.append(y)
    return torch.stack(ys, dim=1), state
