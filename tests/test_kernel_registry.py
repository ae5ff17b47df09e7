"""Kernels by name with declared parameters, and a run's record of what ran: a Triton
failure is recorded as a fallback, never silent."""

from __future__ import annotations

import pytest
import torch

import kernels.chunkwise as ck
from kernels.registry import KernelRun, get_kernel, kernel_names, use_run, what_ran


def test_names_per_family_and_clear_errors():
    assert kernel_names("prefill_cell") == ["chunkwise--triton", "chunkwise--split", "chunkwise--fp32", "block"]
    assert kernel_names("ops") == ["torch", "triton"] and kernel_names("decode") == ["graph", "eager"]
    with pytest.raises(ValueError, match="valid: chunkwise--triton, chunkwise--split"):
        get_kernel("prefill_cell", "chunkwise--xl")
    with pytest.raises(ValueError, match="families: prefill_cell, ops, decode"):
        kernel_names("gemm")


def test_declared_parameters_and_constraints_apply_before_running():
    spec = get_kernel("prefill_cell", "chunkwise--triton")
    assert spec.defaults() == {"sub_chunk": 128, "output_warps": 8}
    assert spec.why_invalid({"sub_chunk": 48}, {}) .startswith("chunkwise--triton: sub_chunk must be one of")
    assert "at least 512 steps" in spec.why_invalid({"sub_chunk": 256}, {"seq_len": 300})
    assert sorted({s["sub_chunk"] for s in spec.valid_settings({"seq_len": 200})}) == [32, 64]
    assert len(spec.valid_settings({"seq_len": 200})) == 2 * 3
    assert "no parameter 'tile'" in spec.why_invalid({"tile": 1}, {})
    ops = get_kernel("ops", "triton")
    assert "16 columns" in ops.why_invalid({"step_tile": 2048}, {"dhqk": 256})
    assert {"rows_max_k": 16384, "step_tile": 4096} in ops.valid_settings({"dhqk": 256})
    assert all(s["step_tile"] >= 4096 for s in ops.valid_settings({"dhqk": 256}))


def _inputs(S=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, NH, DK, DV = 1, 2, 16, 32
    q, k = (torch.randn(B, NH, S, DK, generator=g).to(torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g).to(torch.bfloat16)
    i = torch.randn(B, NH, S, generator=g)
    f = torch.randn(B, NH, S, generator=g) + 3
    return q, k, v, i, f


def test_a_forced_triton_failure_is_recorded_and_the_torch_form_runs(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTXAS error: forced for the test\nmore lines")

    monkeypatch.setattr(ck, "_run_triton", broken)
    x = _inputs()
    with use_run(KernelRun()) as run, pytest.warns(RuntimeWarning, match="forced for the test"):
        h, state = ck.mlstm_chunkwise(*x, sub_chunk=64, method="triton")
    h_ref, _ = ck.mlstm_chunkwise(*x, sub_chunk=64, method="fp32")
    torch.testing.assert_close(h, h_ref)
    ran = what_ran(run)
    assert ran["fallback"] == "chunkwise--triton -> chunkwise--fp32: RuntimeError: PTXAS error: forced for the test"
    assert ran["prefill_cell"]["last"] == "chunkwise--fp32"
    assert ran["prefill_cell"]["kernels"] == {"chunkwise--fp32": {"sub_chunk": 64}}
    assert not run.usable("chunkwise--triton")
    with use_run(run):  # ruled out for the rest of the run: not tried again
        ck.mlstm_chunkwise(*x, sub_chunk=64, method="triton")
    assert len(calls) == 1 and len(run.fallbacks) == 1
    with use_run(KernelRun()) as fresh:  # another run starts clean
        assert fresh.usable("chunkwise--triton") and what_ran(fresh)["fallback"] is None


def test_short_windows_record_the_block_kernel():
    from kernels.compiled import compiled_block

    x = _inputs(S=40)
    with use_run(KernelRun()) as run:
        compiled_block(64, device="cpu", dtype=torch.bfloat16, compile=False)(*x)
        ck.mlstm_chunkwise(*_inputs(S=40), sub_chunk=64)
    assert what_ran(run)["prefill_cell"] == {"kernels": {"block": {}}, "last": "block"}


def test_cuda_without_triton_falls_back_to_the_torch_ops_on_record(monkeypatch):
    import kernels.fused_ops as fo
    from kernels.fastpath import FastModel
    from kernels import XLSTM, get_config

    monkeypatch.setattr(fo, "triton_available", lambda: "Triton is not importable (forced)")
    with use_run(KernelRun()) as run:
        assert fo.ops_for(torch.device("cuda")) is fo.TorchOps
        fo.ops_for(torch.device("cuda"))  # recorded once
        FastModel(XLSTM(get_config("tiny"), device="cpu", dtype=torch.float32, seed=0))
    ran = what_ran(run)
    assert ran["fallback"] == "triton -> torch: Triton is not importable (forced)" and len(ran["fallbacks"]) == 1
    assert ran["ops"] == {"kernels": {"torch": {}}, "last": "torch"}
    with use_run(KernelRun()) as cpu_run:  # on the CPU the torch ops are the choice, not a fallback
        assert fo.ops_for("cpu") is fo.TorchOps
    assert what_ran(cpu_run)["fallback"] is None


def test_a_kept_fast_model_declares_its_op_fallback_in_every_run(monkeypatch):
    """A warm worker keeps the fused model across requests; each request's record still
    says which op set runs and why."""
    import kernels.fastpath as fp
    from kernels import XLSTM, get_config
    from kernels.fused_ops import TorchOps
    from kernels.registry import current_run

    def no_triton(device):
        current_run().fail("ops", "triton", "Triton is not importable (forced)", fallback="torch")
        return TorchOps

    monkeypatch.setattr(fp, "ops_for", no_triton)
    with use_run(KernelRun()) as first:
        fast = fp.FastModel(XLSTM(get_config("tiny"), device="cpu", dtype=torch.float32, seed=0))
    with use_run(KernelRun()) as second:
        fast.declare()
    for run in (first, second):
        ran = what_ran(run)
        assert ran["fallback"] == "triton -> torch: Triton is not importable (forced)"
        assert ran["ops"] == {"kernels": {"torch": {}}, "last": "torch"}
