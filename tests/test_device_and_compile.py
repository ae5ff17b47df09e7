"""Strict device resolution and the compiled-kernel cache."""

from __future__ import annotations

import pytest
import torch

import kernels.compiled as compiled
import kernels.device as device_mod
from kernels import (
    XLSTM,
    CompileError,
    DeviceUnavailableError,
    cache_info,
    clear_cache,
    compiled_block,
    compiled_step,
    get_config,
    mlstm_block,
    mlstm_step,
    resolve_device,
)

no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="describes a machine without CUDA and MPS (the CI machine)",
)


def inputs(B=1, NH=2, S=4, DHQK=8, DHV=8, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, B, NH, S, DHQK, generator=g)
    v = torch.randn(B, NH, S, DHV, generator=g)
    i, f = torch.randn(B, NH, S, generator=g), torch.randn(B, NH, S, generator=g) + 3
    return tuple(x.to(device=device, dtype=dtype if x.ndim == 4 else torch.float32) for x in (q, k, v, i, f))


# ----------------------------------------------------------------------------- devices


@no_accelerator
def test_cpu_and_auto_resolve_to_cpu_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_accelerator
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps", "CUDA:1"])
def test_unavailable_accelerator_is_an_error_not_a_fallback(name):
    with pytest.raises(DeviceUnavailableError, match="use device 'cpu'") as info:
        resolve_device(name)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "", "gpu"])
def test_unknown_device_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") as info:
        resolve_device(name)
    assert not isinstance(info.value, DeviceUnavailableError)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(device_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(device_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


@no_accelerator
def test_model_on_unavailable_device_is_an_error():
    with pytest.raises(DeviceUnavailableError):
        XLSTM(get_config("tiny"), device="cuda")
    with pytest.raises(DeviceUnavailableError):
        compiled_block(8, device="mps", dtype=torch.float32, compile=False)


# ----------------------------------------------------------------------------- compiled cache


def test_cache_is_keyed_by_shape_dtype_device_and_T_inner():
    clear_cache()
    block8 = compiled_block(8, device="cpu", dtype=torch.float32, compile=False)
    x = inputs(S=8)
    h, s = block8(*x)
    h_ref, s_ref = mlstm_block(*x)
    assert torch.equal(h, h_ref) and all(torch.equal(a, b) for a, b in zip(s, s_ref))
    assert cache_info() == compiled.CacheInfo(hits=0, misses=1, size=1)

    block8(*x, state=s)  # state given: a different specialisation
    block8(*x, state=s)
    assert cache_info() == compiled.CacheInfo(hits=1, misses=2, size=2)

    block8(*inputs(S=3))  # shorter tail call: its own entry
    compiled_block(8, device="cpu", dtype=torch.float32, compile=False)(*x)  # new wrapper, same key
    compiled_block(16, device="cpu", dtype=torch.float32, compile=False)(*x)  # other T_inner
    compiled_block(8, device="cpu", dtype=torch.bfloat16, compile=False)(*inputs(S=8, dtype=torch.bfloat16))
    assert cache_info() == compiled.CacheInfo(hits=2, misses=5, size=5)
    clear_cache()
    assert cache_info() == compiled.CacheInfo(hits=0, misses=0, size=0)


def test_wrapper_is_strict_about_steps_dtype_and_device():
    block4 = compiled_block(4, device="cpu", dtype=torch.float32, compile=False)
    with pytest.raises(ValueError, match="at most T_inner=4 steps"):
        block4(*inputs(S=5))
    with pytest.raises(ValueError, match="built for torch.float32"):
        block4(*inputs(S=4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="built for device cpu but got inputs on meta"):
        block4(*inputs(S=4, device="meta"))


def test_step_wrapper_matches_mlstm_step():
    clear_cache()
    step = compiled_step(device="cpu", dtype=torch.float32, compile=False)
    q, k, v, i, f = (x[:, :, 0] for x in inputs(S=1))
    h, s = step(q, k, v, i, f)
    h_ref, _ = mlstm_step(q, k, v, i, f)
    assert torch.equal(h, h_ref)
    assert cache_info().misses == 1


def test_compile_failure_names_the_config(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("backend exploded")

        return run

    clear_cache()
    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    block = compiled_block(4, device="cpu", dtype=torch.float32, compile=True)
    with pytest.raises(CompileError, match=r"mlstm_block T_inner=4 q\(1, 2, 4, 8\) v\(1, 2, 4, 8\) dtype=float32 device=cpu"):
        block(*inputs(S=4))
    assert cache_info().size == 0  # a failed entry is not kept


def test_kernels_have_no_graph_breaks():
    """mlstm_step and mlstm_block trace into one graph each: no .item(), no data-dependent
    Python branches, so they can be compiled whole and captured in CUDA graphs."""
    import torch._dynamo

    x = inputs(S=6)
    for fn, args in ((mlstm_block, x), (mlstm_step, tuple(t[:, :, 0] for t in x))):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, (fn.__name__, explanation.break_reasons)
        assert explanation.graph_count == 1


def test_compiled_block_matches_eager_on_cpu():
    """One real torch.compile (slow on CPU): same result as eager, cached afterwards."""
    clear_cache()
    block = compiled_block(4, device="cpu", dtype=torch.float32, compile=True)
    x = inputs(S=4, DHQK=4, DHV=4)
    h, s = block(*x)
    h_ref, s_ref = mlstm_block(*x)
    assert torch.allclose(h, h_ref, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(s, s_ref))
    block(*x)
    assert cache_info() == compiled.CacheInfo(hits=1, misses=1, size=1)
