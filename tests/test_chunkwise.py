"""The sub-chunked long-window form (kernels.chunkwise) against the reference loop.

float64 inputs make both sides run in float64, so any algebra slip shows far above
rounding (1e-9); fp32 runs are checked against the float64 reference relative to the
result's scale. The routing test proves a large T_inner reaches this form.
"""

from __future__ import annotations

import pytest
import torch

from kernels import compiled_block, mlstm_sequence
from kernels.chunkwise import SUB_CHUNK, mlstm_chunkwise, uses_sub_chunks
from kernels.compiled import CompiledBlock
from kernels.split_matmul import split3
from schedulers import Knobs, make_scheduler


def inputs(B, NH, S, DK, DV, *, dtype=torch.float64, seed=0, forget_bias=2.0, gate_scale=3.0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = rnd(B, NH, S, DK), rnd(B, NH, S, DK), rnd(B, NH, S, DV)
    i = (rnd(B, NH, S) * gate_scale).clamp(-15, 15)
    f = (rnd(B, NH, S) * gate_scale + forget_bias).clamp(-15, 15)
    return tuple(t.to(dtype) for t in (q, k, v, i, f))


def random_state(B, NH, DK, DV, *, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, NH, DK, DV, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, NH, DK, generator=g, dtype=torch.float64).to(dtype),
            (torch.randn(B, NH, 1, generator=g, dtype=torch.float64) * 4).to(dtype))


def rel_err(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("S, sub_chunk", [(64, 16), (75, 16), (203, 16), (40, 8), (33, 32), (10, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_float64_equals_reference_loop(S, sub_chunk, with_state):
    B, NH, DK, DV = 2, 3, 8, 12
    x = inputs(B, NH, S, DK, DV, seed=S)
    state = random_state(B, NH, DK, DV) if with_state else None
    h_ref, (C_ref, n_ref, m_ref) = mlstm_sequence(*x, state)
    h, (C, n, m) = mlstm_chunkwise(*x, state, sub_chunk=sub_chunk)
    assert h.shape == h_ref.shape and C.shape == C_ref.shape and n.shape == n_ref.shape and m.shape == m_ref.shape
    assert rel_err(h, h_ref) < 1e-9
    assert rel_err(C, C_ref) < 1e-9
    assert rel_err(n, n_ref) < 1e-9
    assert (m - m_ref).abs().max().item() < 1e-9


def test_float32_within_rounding_of_float64_reference():
    B, NH, S, DK, DV = 1, 2, 300, 16, 32
    x64 = inputs(B, NH, S, DK, DV, seed=7)
    st64 = random_state(B, NH, DK, DV, seed=8)
    h_ref, (C_ref, n_ref, m_ref) = mlstm_sequence(*x64, st64)
    x32 = tuple(t.float() for t in x64)
    st32 = tuple(t.float() for t in st64)
    h, (C, n, m) = mlstm_chunkwise(*x32, st32, sub_chunk=32)
    assert h.dtype == torch.float32 and C.dtype == n.dtype == m.dtype == torch.float32
    assert rel_err(h, h_ref) < 2e-5
    assert rel_err(C, C_ref) < 2e-5
    assert rel_err(n, n_ref) < 2e-5
    assert (m.double() - m_ref).abs().max().item() < 1e-4


def test_bf16_inputs_give_bf16_h_and_fp32_state():
    B, NH, S, DK, DV = 1, 2, 96, 8, 16
    x = inputs(B, NH, S, DK, DV, dtype=torch.bfloat16, seed=3)
    h, (C, n, m) = mlstm_chunkwise(*x, sub_chunk=32)
    h_ref, (C_ref, _, _) = mlstm_sequence(*(t.double() for t in x))
    assert h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32
    assert rel_err(h, h_ref) < 1e-2
    assert rel_err(C, C_ref) < 1e-5


def test_extreme_gates_stay_finite_and_exact():
    # Strong forgetting and capped gates over many sub-chunks: the boundary stabilisers
    # drift far from 0; nothing may overflow.
    B, NH, S, DK, DV = 1, 2, 512, 4, 8
    x = inputs(B, NH, S, DK, DV, seed=11, forget_bias=-6.0, gate_scale=15.0)
    h_ref, (C_ref, n_ref, m_ref) = mlstm_sequence(*x)
    h, (C, n, m) = mlstm_chunkwise(*x, sub_chunk=8)
    assert torch.isfinite(h).all() and torch.isfinite(C).all()
    assert rel_err(h, h_ref) < 1e-9 and rel_err(C, C_ref) < 1e-9 and rel_err(n, n_ref) < 1e-9
    assert (m - m_ref).abs().max().item() < 1e-9


def test_consecutive_windows_continue_exactly():
    B, NH, S, DK, DV = 1, 2, 160, 8, 8
    x = inputs(B, NH, S, DK, DV, seed=5)
    h_all, s_all = mlstm_chunkwise(*x, sub_chunk=16)
    first = tuple(t[:, :, :96] for t in x)
    second = tuple(t[:, :, 96:] for t in x)
    h1, s1 = mlstm_chunkwise(*first, sub_chunk=16)
    h2, s2 = mlstm_chunkwise(*second, s1, sub_chunk=16)
    assert rel_err(torch.cat([h1, h2], dim=2), h_all) < 1e-9
    for a, b in zip(s2, s_all):
        assert rel_err(a, b) < 1e-9


def test_large_t_inner_routes_to_sub_chunked_form():
    block = compiled_block(4 * SUB_CHUNK, device="cpu", dtype=torch.float32, compile=False)
    assert isinstance(block, CompiledBlock)
    assert block.kernel_for(4 * SUB_CHUNK) == (mlstm_chunkwise, "mlstm_chunkwise")
    assert block.kernel_for(SUB_CHUNK)[1] == "mlstm_block"
    assert uses_sub_chunks(2 * SUB_CHUNK) and not uses_sub_chunks(2 * SUB_CHUNK - 1)


def test_scheduler_with_large_t_inner_matches_reference():
    # One band, one chunk, one kernel call over the whole window: the sub-chunked form.
    B, NH, S, DK, DV = 1, 2, 2 * SUB_CHUNK + 5, 4, 8
    x = inputs(B, NH, S, DK, DV, dtype=torch.float32, seed=2)
    knobs = Knobs(workers=1, heads_per_band=2, chunk_size=S, T_inner=S)
    with make_scheduler("sequential", knobs, device="cpu", dtype=torch.float32) as sched:
        h, state = sched(0, *x, None)
        assert sched.counters.kernel_calls == 1
    h_ref, (C_ref, _, _) = mlstm_sequence(*(t.double() for t in x))
    assert rel_err(h, h_ref) < 2e-5
    assert rel_err(sched.materialize(state)[0], C_ref) < 2e-5


def test_split3_represents_fp32_values():
    x = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(4)) * 1e3
    for axis in (-1, -2):
        terms = split3(x, axis)
        assert terms.dtype == torch.bfloat16 and terms.shape[axis - 1 if axis < 0 else axis] == 3
        back = terms.float().sum(dim=axis - 1)
        assert ((back - x).abs() / x.abs()).max().item() < 2**-23


@pytest.mark.parametrize("with_state", [False, True])
def test_split_matmuls_keep_fp32_resolution(with_state):
    # The tensor-core form (three bf16 terms per fp32 operand), emulated on the CPU: the
    # states must stay at fp32 resolution against a float64 loop over the same bf16 inputs.
    B, NH, S, DK, DV = 1, 2, 200, 16, 24
    x = inputs(B, NH, S, DK, DV, seed=9)
    xb = tuple(t.to(torch.bfloat16) for t in x[:3]) + tuple(t.float() for t in x[3:])
    state = tuple(t.float() for t in random_state(B, NH, DK, DV, seed=10)) if with_state else None
    ref_state = tuple(t.double() for t in state) if with_state else None
    h_ref, (C_ref, n_ref, m_ref) = mlstm_sequence(*(t.double() for t in xb), ref_state)
    h, (C, n, m) = mlstm_chunkwise(*xb, state, sub_chunk=32, method="split")
    assert h.dtype == torch.bfloat16 and C.dtype == torch.float32
    assert rel_err(h, h_ref) < 1e-2
    assert rel_err(C, C_ref) < 2e-6 and rel_err(n, n_ref) < 2e-6
    assert (m.double() - m_ref).abs().max().item() < 1e-5
