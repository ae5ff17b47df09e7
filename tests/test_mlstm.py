"""mLSTM parity: step, sequence and chunkwise block against an independent float64
reference; chunked runs against whole runs, final states included.

Tolerances. The reference runs in float64 on exactly the values the kernels see (fp32
inputs upcast, bf16 inputs upcast), so only the kernels' fp32 arithmetic is measured,
with relative tolerance 1e-5 (bf16 h, rounded to bf16 on return: 1e-2).
"Relative" is taken against the magnitude the result is computed from, not the result
itself: C and n are sums of signed terms, and h = num / max(|den|, exp(-m)) divides by a
sum that can cancel to near zero, where fp32 rounding of the summands is amplified by
(sum of |terms|) / |sum| — any exact fp32 evaluation shows that error. So the reference
also carries the same sums over absolute values (C_abs, n_abs, and for h
|h| + (num_abs + |h| den_abs) / den), and every check is
    |got - ref| <= rtol * magnitude,
which equals 1e-5 * |ref| where nothing cancels. m is compared with
|got - ref| <= 1e-5 * (|ref| + 1).
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import mlstm_block, mlstm_sequence, mlstm_step

RTOL = 1e-5
EPS = 1e-6  # the official value, stated here rather than imported so a wrong constant fails
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- reference


def reference_mlstm(q, k, v, i, f, state=None):
    """float64, unstabilised: true memories C~ = C e^m, n~ = n e^m, with m tracked only
    for the eps term: h = q̂ᵀC~ / (max(|q̂·n~|, 1) + eps e^m).

    Returns (h, (C, n, m), (h_mag, C_mag, n_mag)): the magnitudes the tolerances scale with.
    """
    q, k, v, i, f = (x.double() for x in (q, k, v, i, f))
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    if state is None:
        C = torch.zeros(B, NH, DHQK, DHV, dtype=torch.float64)
        n = torch.zeros(B, NH, DHQK, dtype=torch.float64)
        m = torch.zeros(B, NH, dtype=torch.float64)
    else:
        C0, n0, m0 = (s.double() for s in state)
        m = m0[..., 0]
        C = C0 * torch.exp(m)[..., None, None]
        n = n0 * torch.exp(m)[..., None]
    C_abs, n_abs = C.abs(), n.abs()
    hs, h_mags = [], []
    for t in range(S):
        forget = torch.sigmoid(f[:, :, t])[..., None]
        inp = torch.exp(i[:, :, t])[..., None]
        kt, vt = k[:, :, t], v[:, :, t]
        C = forget[..., None] * C + inp[..., None] * kt[..., :, None] * vt[..., None, :]
        n = forget * n + inp * kt
        C_abs = forget[..., None] * C_abs + inp[..., None] * (kt.abs()[..., :, None] * vt.abs()[..., None, :])
        n_abs = forget * n_abs + inp * kt.abs()
        m = torch.maximum(torch.nn.functional.logsigmoid(f[:, :, t]) + m, i[:, :, t])
        q_hat = q[:, :, t] / math.sqrt(DHQK)
        num = torch.einsum("bhd,bhde->bhe", q_hat, C)
        den = (torch.clamp((q_hat * n).sum(-1).abs(), min=1.0) + EPS * torch.exp(m))[..., None]
        h = num / den
        num_abs = torch.einsum("bhd,bhde->bhe", q_hat.abs(), C_abs)
        den_abs = (q_hat.abs() * n_abs).sum(-1, keepdim=True)
        hs.append(h)
        h_mags.append(h.abs() + (num_abs + h.abs() * den_abs) / den)
    scale = torch.exp(-m)
    state = (C * scale[..., None, None], n * scale[..., None], m[..., None])
    mags = (torch.stack(h_mags, dim=2), C_abs * scale[..., None, None], n_abs * scale[..., None])
    return torch.stack(hs, dim=2), state, mags


# ----------------------------------------------------------------------------- helpers


def make_inputs(seed, B, NH, S, DHQK, DHV, dtype, regime):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, S, DHQK, generator=g)
    k = torch.randn(B, NH, S, DHQK, generator=g)
    v = torch.randn(B, NH, S, DHV, generator=g)
    if regime == "trained":  # forget gates open, input gates moderate (official init region)
        i = torch.randn(B, NH, S, generator=g) * 2.0
        f = torch.randn(B, NH, S, generator=g) + 3.0
    else:  # wide: gates that swing the stabiliser hard in both directions
        i = torch.rand(B, NH, S, generator=g) * 20.0 - 10.0
        f = torch.rand(B, NH, S, generator=g) * 16.0 - 8.0
    return q.to(dtype), k.to(dtype), v.to(dtype), i, f


def make_state(seed, B, NH, DHQK, DHV):
    g = torch.Generator().manual_seed(seed + 7919)
    C = torch.randn(B, NH, DHQK, DHV, generator=g)
    n = torch.randn(B, NH, DHQK, generator=g)
    m = torch.rand(B, NH, 1, generator=g) * 10.0 - 5.0
    return C, n, m


def assert_close(got, ref, magnitude, rtol, what):
    got = got.double()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got - ref).abs()
    worst = (err / (rtol * magnitude + 1e-300)).max().item()
    assert worst <= 1.0, f"{what}: error {worst:.2f}x the tolerance (max abs err {err.max().item():.3e})"


def assert_state_close(got, ref, mags, what):
    C, n, m = got
    Cr, nr, mr = ref
    assert C.dtype == n.dtype == m.dtype == torch.float32, f"{what}: state must be fp32"
    assert_close(C, Cr, mags[1], RTOL, f"{what} C")
    assert_close(n, nr, mags[2], RTOL, f"{what} n")
    err = (m.double() - mr).abs()
    assert (err <= RTOL * (mr.abs() + 1.0)).all(), f"{what} m: max err {err.max().item():.3e}"


def h_rtol(dtype):
    return RTOL if dtype == torch.float32 else 1e-2


dims = st.fixed_dictionaries(
    {
        "B": st.integers(1, 2),
        "NH": st.integers(1, 3),
        "DHQK": st.sampled_from([4, 8, 16]),
        "DHV": st.sampled_from([4, 8, 16]),
        "dtype": st.sampled_from([torch.float32, torch.bfloat16]),
        "regime": st.sampled_from(["trained", "wide"]),
        "with_state": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


# ----------------------------------------------------------------------------- tests


@SETTINGS
@given(d=dims)
def test_step_matches_reference(d):
    q, k, v, i, f = make_inputs(d["seed"], d["B"], d["NH"], 1, d["DHQK"], d["DHV"], d["dtype"], d["regime"])
    state = make_state(d["seed"], d["B"], d["NH"], d["DHQK"], d["DHV"]) if d["with_state"] else None
    h_ref, s_ref, mags = reference_mlstm(q, k, v, i, f, state)
    h, s = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    assert h.dtype == d["dtype"]
    assert_close(h, h_ref[:, :, 0], mags[0][:, :, 0], h_rtol(d["dtype"]), "step h")
    assert_state_close(s, s_ref, mags, "step")


@SETTINGS
@given(d=dims, S=st.integers(1, 64))
def test_sequence_and_block_match_reference(d, S):
    q, k, v, i, f = make_inputs(d["seed"], d["B"], d["NH"], S, d["DHQK"], d["DHV"], d["dtype"], d["regime"])
    state = make_state(d["seed"], d["B"], d["NH"], d["DHQK"], d["DHV"]) if d["with_state"] else None
    h_ref, s_ref, mags = reference_mlstm(q, k, v, i, f, state)
    for fn in (mlstm_sequence, mlstm_block):
        h, s = fn(q, k, v, i, f, state)
        assert h.dtype == d["dtype"], fn.__name__
        assert_close(h, h_ref, mags[0], h_rtol(d["dtype"]), f"{fn.__name__} h")
        assert_state_close(s, s_ref, mags, fn.__name__)


@SETTINGS
@given(d=dims, S=st.integers(2, 64), data=st.data())
def test_chunked_equals_whole(d, S, data):
    """Blocks of arbitrary sizes (single steps mixed in) continue each other exactly."""
    q, k, v, i, f = make_inputs(d["seed"], d["B"], d["NH"], S, d["DHQK"], d["DHV"], d["dtype"], d["regime"])
    cuts = sorted(data.draw(st.sets(st.integers(1, S - 1), min_size=1, max_size=6)))
    bounds = list(zip([0, *cuts], [*cuts, S]))
    state = make_state(d["seed"], d["B"], d["NH"], d["DHQK"], d["DHV"]) if d["with_state"] else None
    h_ref, s_ref, mags = reference_mlstm(q, k, v, i, f, state)
    h_whole, s_whole = mlstm_block(q, k, v, i, f, state)

    hs, s = [], state
    for a, b in bounds:
        if b - a == 1:
            h, s = mlstm_step(q[:, :, a], k[:, :, a], v[:, :, a], i[:, :, a], f[:, :, a], s)
            h = h.unsqueeze(2)
        else:
            h, s = mlstm_block(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], i[:, :, a:b], f[:, :, a:b], s)
        hs.append(h)
    h_chunked = torch.cat(hs, dim=2)

    assert_close(h_chunked, h_ref, mags[0], h_rtol(d["dtype"]), f"chunked {bounds} h")
    assert_state_close(s, s_ref, mags, f"chunked {bounds}")
    # Chunked and whole agree with each other within the sum of their distances to the reference.
    assert_close(h_chunked, h_whole.double(), mags[0], 2 * h_rtol(d["dtype"]), "chunked vs whole h")
    two_x = (mags[0], 2 * mags[1], 2 * mags[2])
    assert_state_close(s, tuple(x.double() for x in s_whole), two_x, "chunked vs whole")


def test_block_stabiliser_is_the_recurrent_one():
    """The m a block returns is the m the recurrence would have: not just an equivalent
    representation, so block and step runs can be interleaved freely."""
    q, k, v, i, f = make_inputs(3, 2, 2, 33, 8, 8, torch.float32, "wide")
    _, (_, _, m_seq) = mlstm_sequence(q, k, v, i, f)
    _, (_, _, m_blk) = mlstm_block(q, k, v, i, f)
    assert torch.allclose(m_blk, m_seq, rtol=1e-6, atol=1e-5)
    # and it really moves with the gates (a constant m would pass trivially)
    assert m_seq.std() > 0.1


def test_default_state_is_zero_state():
    q, k, v, i, f = make_inputs(5, 1, 2, 9, 4, 8, torch.float32, "trained")
    zeros = (torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4), torch.zeros(1, 2, 1))
    for fn in (mlstm_sequence, mlstm_block):
        h0, s0 = fn(q, k, v, i, f)
        h1, s1 = fn(q, k, v, i, f, zeros)
        assert torch.equal(h0, h1)
        assert all(torch.equal(a, b) for a, b in zip(s0, s1))


def test_bf16_inputs_keep_fp32_state_and_bf16_output():
    q, k, v, i, f = make_inputs(11, 1, 2, 12, 8, 8, torch.bfloat16, "trained")
    for fn in (mlstm_sequence, mlstm_block):
        h, (C, n, m) = fn(q, k, v, i, f)
        assert h.dtype == torch.bfloat16
        assert C.dtype == n.dtype == m.dtype == torch.float32
    h, (C, n, m) = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0])
    assert h.dtype == torch.bfloat16 and C.dtype == torch.float32


def test_long_block_stays_within_tolerance():
    """A 256-step block with strongly negative forget gates: the cumulative log forget
    gate reaches several hundred, where differences of prefix sums would lose precision."""
    q, k, v, i, f = make_inputs(13, 1, 2, 256, 16, 16, torch.float32, "wide")
    f = f - 2.0
    h_ref, s_ref, mags = reference_mlstm(q, k, v, i, f)
    h, s = mlstm_block(q, k, v, i, f)
    assert_close(h, h_ref, mags[0], RTOL, "long block h")
    assert_state_close(s, s_ref, mags, "long block")


def test_denominator_floor_and_eps():
    """Two keys that cancel in n make |q̂·n| ~ 0, so the denominator is exp(-m) + eps with
    m = 12: h = q̂ᵀC / (exp(-12) + 1e-6), where eps is 14% of the denominator."""
    q = torch.tensor([2.0**0.5, 0.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)  # q̂ = [1, 0]
    k = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    i = torch.full((1, 1, 2), 12.0)
    f = torch.full((1, 1, 2), 20.0)  # logsigmoid(20) ~ -2e-9: no forgetting
    expected = torch.tensor([1.0, -1.0], dtype=torch.float64) / (math.exp(-12.0) + 1e-6)
    for fn in (mlstm_sequence, mlstm_block):
        h, (_, _, m) = fn(q, k, v, i, f)
        assert abs(m.item() - 12.0) < 1e-5
        assert torch.allclose(h[0, 0, 1].double(), expected, rtol=1e-5, atol=0), fn.__name__
