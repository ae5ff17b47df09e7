"""sLSTM parity against an independent float64 reference (unstabilised: sigmoid forget
gate and exp input gate applied to the true c and n), with a non-zero recurrent matrix.

Tolerance: relative 1e-5 against the magnitude each value is computed from (sums of
absolute terms for c and n; y = o c / n is compared elementwise relative to
|o| * (|c| + |y| * n) / n); m: |got - ref| <= 1e-5 * (|ref| + 1). bf16 y: 1e-2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import slstm_sequence, slstm_step

RTOL = 1e-5
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def reference_slstm(wx, R, bias, state=None):
    """float64. Returns (y, (y, c, n, m), (y_mag, c_mag))."""
    wx, R, bias = wx.double(), R.double(), bias.double()
    B, S, _, NH, DH = wx.shape
    if state is None:
        y = c = n = m = torch.zeros(B, NH, DH, dtype=torch.float64)
    else:
        y, c, n, m = (s.double() for s in state)
    c, n = c * torch.exp(m), n * torch.exp(m)  # the true, unscaled memories
    c_abs = c.abs()
    ys, y_mags = [], []
    for t in range(S):
        raw = wx[:, t] + torch.einsum("bhd,ghde->bghe", y, R) + bias
        i_raw, f_raw, z_raw, o_raw = raw.unbind(1)
        forget, inp = torch.sigmoid(f_raw), torch.exp(i_raw)
        m = torch.where(n == 0, i_raw, torch.maximum(i_raw, m + F.logsigmoid(f_raw)))
        z = torch.tanh(z_raw)
        c = forget * c + inp * z
        c_abs = forget * c_abs + inp * z.abs()
        n = forget * n + inp
        o = torch.sigmoid(o_raw)
        y = o * c / n
        ys.append(y)
        y_mags.append(o * (c_abs + (c / n).abs() * n) / n)
    scale = torch.exp(-m)
    return torch.stack(ys, 1), (y, c * scale, n * scale, m), (torch.stack(y_mags, 1), c_abs * scale)


def make_inputs(seed, B, S, NH, DH, dtype, recurrent_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, S, 4, NH, DH, generator=g) * 2.0
    R = torch.randn(4, NH, DH, DH, generator=g) * (recurrent_scale / DH**0.5)
    bias = torch.randn(4, NH, DH, generator=g)
    bias[1] += 2.0  # forget gates mostly open, as after training
    return wx.to(dtype), R, bias


def check(got, ref, magnitude, rtol, what):
    got = got.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got - ref).abs()
    worst = (err / (rtol * magnitude + 1e-300)).max().item()
    assert worst <= 1.0, f"{what}: error {worst:.2f}x the tolerance"


@SETTINGS
@given(
    B=st.integers(1, 2),
    S=st.integers(1, 40),
    NH=st.integers(1, 3),
    DH=st.sampled_from([2, 4, 8]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_sequence_matches_reference(B, S, NH, DH, dtype, seed):
    wx, R, bias = make_inputs(seed, B, S, NH, DH, dtype)
    y_ref, (_, c_ref, n_ref, m_ref), (y_mag, c_mag) = reference_slstm(wx, R, bias)
    y, (y_last, c, n, m) = slstm_sequence(wx, R, bias)
    assert y.shape == (B, S, NH, DH) and y.dtype == dtype
    assert c.dtype == n.dtype == m.dtype == y_last.dtype == torch.float32
    check(y, y_ref, y_mag, RTOL if dtype == torch.float32 else 1e-2, "y")
    check(c, c_ref, c_mag, RTOL, "c")
    check(n, n_ref, n_ref.abs(), RTOL, "n")  # a sum of positive terms: no cancellation
    assert ((m.double() - m_ref).abs() <= RTOL * (m_ref.abs() + 1)).all()


@SETTINGS
@given(S=st.integers(2, 30), cut=st.integers(1, 29), seed=st.integers(0, 2**16))
def test_split_sequence_continues_exactly(S, cut, seed):
    cut = min(cut, S - 1)
    wx, R, bias = make_inputs(seed, 2, S, 2, 4, torch.float32)
    y_whole, s_whole = slstm_sequence(wx, R, bias)
    y_a, s = slstm_sequence(wx[:, :cut], R, bias)
    ys = [y_a]
    for t in range(cut, S):  # the rest one step at a time, as decode does
        y, s = slstm_step(wx[:, t], R, bias, s)
        ys.append(y.unsqueeze(1))
    assert torch.allclose(torch.cat(ys, 1), y_whole, rtol=1e-6, atol=1e-7)
    for a, b in zip(s, s_whole):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_recurrent_matrix_is_used_and_block_diagonal():
    """The recurrence changes the output, and head h only ever sees head h of y."""
    wx, R, bias = make_inputs(1, 2, 12, 3, 4, torch.float32)
    y, _ = slstm_sequence(wx, R, bias)
    y_no_r, _ = slstm_sequence(wx, torch.zeros_like(R), bias)
    assert (y - y_no_r).abs().max() > 1e-2

    R_changed = R.clone()
    R_changed[:, 1] += 0.5  # every gate of head 1
    y_changed, _ = slstm_sequence(wx, R_changed, bias)
    diff = (y_changed - y).abs().amax(dim=(0, 1, 3))  # per head
    assert diff[1] > 1e-3
    assert diff[0] == 0 and diff[2] == 0


def test_very_negative_first_input_gate_stays_finite():
    """From the empty state the stabiliser starts at the first input gate, so even
    exp(-200) input gates give a finite, exact first output."""
    wx, R, bias = make_inputs(2, 1, 3, 1, 4, torch.float32)
    wx[:, :, 0] = -200.0  # input gate pre-activations
    y, (_, c, n, m) = slstm_sequence(wx, R, bias)
    assert torch.isfinite(y).all() and torch.isfinite(c).all() and (n > 0).all()
    # The first step is exact: y = sigmoid(o) * tanh(z) regardless of the input gate.
    raw = wx[:, 0] + bias
    expected = torch.sigmoid(raw[:, 3]) * torch.tanh(raw[:, 2])
    assert torch.allclose(y[:, 0], expected, rtol=1e-6, atol=1e-7)
