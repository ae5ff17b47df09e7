"""The prefill profile's staged forward is the model's forward, and its kernel bookkeeping adds up."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from autotune import compare_official_profile as prof
from kernels import XLSTM, get_config
from kernels.fastpath import FastModel


def test_staged_forward_equals_the_fast_forward():
    config = dataclasses.replace(get_config("tiny"), slstm_at=())
    model = XLSTM(config, device="cpu", dtype=torch.float32, seed=1)
    fast = FastModel(model)
    toks = torch.randint(0, config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    stages = []

    def rf(name):
        stages.append(name)
        return contextlib.nullcontext()

    with torch.no_grad():
        staged = prof._forward(fast, toks, model.cell_runner, rf)
        expected, _ = fast.forward(toks)
    torch.testing.assert_close(staged, expected)
    assert {s[6:] for s in stages} == set(prof.STAGES)
    assert stages.count("stage:mlstm.cell") == config.num_blocks


def test_kernel_classes_and_summary():
    assert prof.kernel_class("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT") == "matmul"
    assert prof.kernel_class("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert prof.kernel_class("_gemv_rows_kernel") == "matmul"
    assert prof.kernel_class("_rms_norm_kernel") == "other"
    kernels = [("nvjet_a", 600.0), ("_rms_norm_kernel", 100.0), ("_chunk_outputs", 300.0), ("nvjet_a", 600.0)]
    s = prof._summarize(kernels, wall_s=0.0012, per=2)
    assert s["kernel_ms"] == 0.8 and abs(s["idle_ms"] - 0.4) < 1e-9 and s["matmul_ms"] == 0.6
    assert s["launches"] == 2 and s["top_kernels"][0] == {"name": "nvjet_a", "calls": 1, "ms": 0.6, "class": "matmul"}
    s["stages_ms"] = {"ffn.up": 0.7}
    assert "stage ffn.up" in prof.format_breakdown("t", s)

