"""The fused-weight forward (kernels.fastpath) is the model's function, on the CPU ops."""

from __future__ import annotations

import pytest
import torch

from kernels import XLSTM, get_config
from kernels.fastpath import FastModel, ProjectionLayout
from kernels.fused_ops import TorchOps, ops_for
from schedulers import Knobs, make_scheduler


def tiny(dtype=torch.float32, seed=0):
    return XLSTM(get_config("tiny"), dtype=dtype, seed=seed)


def tokens(batch, length, seed=1):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_forward_equals_model_prefill_then_steps():
    model = tiny()
    prompt = tokens(2, 9)
    ref_logits, ref_state = model(prompt)
    ref_next, _ = model(prompt[:, :1], ref_state)
    fast = FastModel(model)
    logits, state = fast(prompt)
    assert fast.ops is TorchOps
    assert logits.shape == ref_logits.shape and logits.dtype == torch.float32
    assert (logits - ref_logits).abs().max().item() < 1e-5
    nxt, _ = fast(prompt[:, :1], state)
    assert (nxt - ref_next).abs().max().item() < 1e-5


def test_cells_go_through_the_given_scheduler():
    model = tiny()
    prompt = tokens(1, 12)
    ref, _ = model(prompt)
    knobs = Knobs(workers=2, heads_per_band=2, chunk_size=4, T_inner=2)
    with make_scheduler("queued", knobs) as sched:
        logits, _ = FastModel(model).forward(prompt, None, sched)
        mlstm_layers = len(model.config.mlstm_blocks)
        assert sched.counters.kernel_calls == sched.expected_counters(4, 12, calls=mlstm_layers).kernel_calls
    assert (logits - ref).abs().max().item() < 1e-5


def test_fusion_keeps_the_model_and_shares_memory():
    model = tiny()
    prompt = tokens(1, 7)
    before, _ = model(prompt)
    fast = FastModel(model)
    after, _ = model(prompt)
    assert torch.equal(before, after)  # the model's own forward reads the same numbers
    weight, bias = fast.in_proj[0]
    layer = model.blocks[0].mlstm_layer
    base = weight.untyped_storage().data_ptr()
    for lin in (layer.q, layer.k, layer.v, layer.ogate_preact, layer.igate_preact, layer.fgate_preact):
        assert lin.weight.untyped_storage().data_ptr() == base  # views, not copies
    assert torch.equal(bias[fast.layout.i], layer.igate_preact.bias)
    again = FastModel(model)  # fusing twice reuses the fused buffers
    assert again.in_proj[0][0].data_ptr() == weight.data_ptr()
    assert again.up_proj[0].data_ptr() == fast.up_proj[0].data_ptr()


def test_bf16_forward_close_to_model():
    model = tiny(torch.bfloat16)
    prompt = tokens(1, 8)
    ref, _ = model(prompt)
    logits, _ = FastModel(model)(prompt)
    assert ((logits - ref).abs().max() / ref.abs().max()).item() < 3e-2


def test_projection_layout_covers_the_fused_width():
    layout = ProjectionLayout(qk_dim=32, v_dim=64, num_heads=4)
    parts = [layout.q, layout.k, layout.v, layout.o, layout.i, layout.f]
    assert parts[0].start == 0 and parts[-1].stop == layout.width
    for a, b in zip(parts, parts[1:]):
        assert a.stop == b.start


def test_ops_selection_on_cpu():
    assert ops_for("cpu") is TorchOps
    with pytest.raises(ValueError, match="CUDA"):
        ops_for("cpu", prefer="triton")
    with pytest.raises(ValueError, match="prefer"):
        ops_for("cpu", prefer="fast")


def test_step_into_updates_only_its_band():
    g = torch.Generator().manual_seed(3)
    B, NH, DK, DV = 2, 4, 8, 16
    q, k = torch.randn(B, NH, DK, generator=g), torch.randn(B, NH, DK, generator=g)
    v = torch.randn(B, NH, DV, generator=g)
    i_pre, f_pre = torch.randn(B, NH, generator=g) * 10, torch.randn(B, NH, generator=g) * 5 + 3
    C, n, m = torch.randn(B, NH, DK, DV, generator=g), torch.randn(B, NH, DK, generator=g), torch.randn(B, NH, 1, generator=g)
    C_before = C.clone()
    n_out, m_out = torch.full_like(n, float("nan")), torch.full_like(m, float("nan"))
    h = torch.full((B, NH, DV), float("nan"))
    band = slice(1, 3)
    TorchOps.mlstm_step_into(q[:, band], k[:, band], v[:, band], i_pre[:, band], f_pre[:, band], 15.0,
                             C[:, band], n[:, band], m[:, band], n_out[:, band], m_out[:, band], h[:, band])
    from kernels import mlstm_step

    i, f = (15.0 * torch.tanh(x[:, band] / 15.0) for x in (i_pre, f_pre))
    h_ref, (C_ref, n_ref, m_ref) = mlstm_step(q[:, band], k[:, band], v[:, band], i, f,
                                              (C_before[:, band], n[:, band], m[:, band]))
    assert torch.allclose(h[:, band], h_ref) and torch.allclose(C[:, band], C_ref)
    assert torch.allclose(n_out[:, band], n_ref) and torch.allclose(m_out[:, band], m_ref)
    assert torch.equal(C[:, 0], C_before[:, 0]) and torch.equal(C[:, 3], C_before[:, 3])
    assert torch.isnan(h[:, 0]).all() and torch.isnan(n_out[:, 3]).all()  # other heads untouched
