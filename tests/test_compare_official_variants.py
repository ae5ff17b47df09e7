"""compare-official's variant bookkeeping: every variant on record, the best one chosen, crashes kept."""

from __future__ import annotations

import pytest
import torch

from autotune import compare_official as co
from autotune.commands import compare_official as command
from autotune.compare_official_variants import (
    DecodeVariant, OfficialPlan, PrefillVariant, VariantResults, decode_bound_tok_s, decode_grid, describe_error,
    prefill_grid)


def test_grids_cover_every_combination():
    plan = OfficialPlan()
    prefill = prefill_grid(plan.weight_modes, plan.chunkwise_kernels, plan.chunk_sizes)
    assert len(prefill) == 2 * 2 * 3 and len({v.name for v in prefill}) == 12
    decode = decode_grid(plan.weight_modes, plan.step_kernels, plan.compiled_step_kernels)
    assert [v.name for v in decode] == ["fused/native/eager", "fused/triton/eager", "single/native/eager",
                                        "single/triton/eager", "fused/native/compiled", "single/native/compiled"]
    assert decode_grid(["fused"], ["native"], []) == [DecodeVariant("fused", "native", False)]
    only_fused = decode_grid(plan.weight_modes, plan.step_kernels, ["native"], ["fused"])
    assert [v.name for v in only_fused if v.compiled] == ["fused/native/compiled"] and len(only_fused) == 5


def test_best_is_the_fastest_that_ran_and_crashes_are_listed_once():
    r = VariantResults()
    slow, fast, broken = (PrefillVariant("single", "k", 64), PrefillVariant("fused", "k", 128),
                          PrefillVariant("fused", "xl", 128))
    r.add("prefill:2048", slow, tok_s=10.0)
    r.add("prefill:2048", fast, tok_s=30.0)
    r.add("prefill:2048", broken, error="RuntimeError: boom")
    r.add("prefill:8192", broken, error="RuntimeError: boom")
    r.add("prefill:8192", slow, tok_s=12.0)
    assert r.best("prefill:2048")["variant"] == "fused/k/chunk128"
    assert r.best("prefill:8192")["variant"] == "single/k/chunk64"
    assert r.best("decode:b1") is None
    assert r.crashed() == [{"variant": "fused/xl/chunk128", "error": "RuntimeError: boom",
                            "workloads": ["prefill:2048", "prefill:8192"]}]
    assert r.as_dict()["best"] == {"prefill:2048": "fused/k/chunk128", "prefill:8192": "single/k/chunk64"}
    with pytest.raises(ValueError):
        r.add("prefill:2048", slow)


def test_measure_records_a_raised_error_and_keeps_going():
    r = VariantResults()
    cleaned = []
    variant = DecodeVariant("fused", "triton", True)

    def crash():
        raise RuntimeError("triton compile failed\nlong details")

    entry = r.measure("decode:b1", variant, crash, on_error=cleaned.append)
    assert entry["error"] == "RuntimeError: triton compile failed" and len(cleaned) == 1
    entry = r.measure("decode:b1", DecodeVariant("fused", "native", False), lambda: {"tok_s": 5.0, "peak_bytes": 7})
    assert entry["tok_s"] == 5.0 and entry["peak_bytes"] == 7 and entry["settings"]["compiled"] is False
    assert r.best("decode:b1")["variant"] == "fused/native/eager"


def test_describe_error_without_a_message_names_where():
    try:
        raise AssertionError
    except AssertionError as exc:
        text = describe_error(exc)
    assert text.startswith("AssertionError at ") and "test_compare_official_variants.py" in text


def test_decode_bound_counts_weights_once_and_state_in_and_out_per_sequence():
    # 13.6 GB of weights at 4.26 TB/s: ~313 tok/s at batch 1; 134 MB of state per sequence
    assert decode_bound_tok_s(13.6e9, 0, 1, 4.26e12) == pytest.approx(313.2, abs=0.1)
    assert decode_bound_tok_s(13.6e9, 134e6, 16, 4.26e12) == pytest.approx(3810, rel=1e-3)
    assert decode_bound_tok_s(13.6e9, 134e6, 64, 4.26e12) == pytest.approx(8861, rel=1e-3)


def test_summary_divides_by_the_best_official_variant():
    r = VariantResults()
    r.add("decode:b1", DecodeVariant("single", "native", True), tok_s=50.0)
    r.add("decode:b1", DecodeVariant("fused", "native", True), tok_s=70.0)
    r.add("decode:b16", DecodeVariant("fused", "native", True), tok_s=1000.0, peak_bytes=3)
    r.add("prefill:2048", PrefillVariant("fused", "k", 128), tok_s=30.0)
    r.add("prefill:2048", PrefillVariant("fused", "xl", 128), error="SIGSEGV")
    result = {"shape": "7b", "gpu": "GPU", "torch": "2.x", "prefill_tok_s": {},
              "decode_weight_bytes": 13.6e9, "state_bytes_per_sequence": 134e6, "copy_bytes_per_s": 4.26e12,
              "ours": {"prefill": {"2048": {"tok_s": 39.0}}, "decode": {"tok_s": 280.0},
                       "decode_batches": {"1": {"tok_s": 280.0, "peak_bytes": 1}, "16": {"tok_s": 3000.0}}},
              "official": {"variants": r.as_dict()}}
    co.summarize(result, r, [2048], (1, 16))
    assert result["decode_tok_s"] == {"ours": 280.0, "official": 70.0, "official_variant": "fused/native/compiled"}
    assert result["ratios"]["decode"] == pytest.approx(4.0)
    assert result["ratios"]["prefill"]["2048"] == pytest.approx(1.3)
    assert result["decode_batches"]["16"]["official"] == 1000.0
    assert result["decode_batches"]["16"]["bound"] == pytest.approx(3810, rel=1e-3)
    table = command.format_table(result)
    assert "fused/native/compiled" in table and "crashed: fused/xl/chunk128: SIGSEGV" in table
    assert "B=16" in table


def test_a_probe_child_that_fails_or_dies_becomes_a_reason(monkeypatch):
    from autotune import compare_official_model as com

    # a child that cannot run the kernel (here: any failure of the probe script) is a
    # reason string, never an exception in the parent
    monkeypatch.setattr(com, "_PROBE_SCRIPT", "import sys; sys.stderr.write('boom\\nRuntimeError: no GPU\\n'); sys.exit(3)")
    out = com.probe_chunkwise_kernels([("k", 64, 2048), ("k", 128, 2048)], 8, (256, 512))
    assert out == {("k", 64, 2048): "exit code 3: RuntimeError: no GPU", ("k", 128, 2048): "exit code 3: RuntimeError: no GPU"}
    monkeypatch.setattr(com, "_PROBE_SCRIPT", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)")
    assert com.probe_chunkwise_kernels([("k", 64, 2048)], 8, (256, 512))[("k", 64, 2048)].startswith("killed by signal 6")
    monkeypatch.setattr(com, "_PROBE_SCRIPT", "print('ok')")
    assert com.probe_chunkwise_kernels([("k", 64, 2048)], 8, (256, 512)) == {("k", 64, 2048): None}


def test_the_official_grid_is_measured_in_full_without_a_gpu(monkeypatch):
    """measure_official with the model, the backend switch and the timers faked: every
    variant gets an entry, a failed probe and a failing switch are crashes, the rest ran."""
    from autotune import compare_official_model as com
    from kernels import get_config

    built, speeds = [], {64: 30.0, 128: 27.0}
    monkeypatch.setattr(com, "probe_chunkwise_kernels",
                        lambda cases, nh, dims: {c: ("exit code -6: LLVM assertion" if c[0] == "xl" else None)
                                                 for c in cases})
    monkeypatch.setattr(com, "build_official", lambda config, **kw: built.append(kw["weight_mode"]) or {"kw": kw})

    def set_backend(model, **changes):
        if changes.get("step_kernel") == "triton":
            raise KeyError("Unknown step kernel backend name: triton")
        model["kw"].update(changes)

    monkeypatch.setattr(com, "set_backend", set_backend)
    monkeypatch.setattr(com, "measure_prefill", lambda model, vocab, L, *a: {
        "tok_s": speeds[model["kw"]["chunk_size"]] * (1.1 if model["kw"]["weight_mode"] == "fused" else 1.0)})
    monkeypatch.setattr(com, "measure_decode", lambda model, vocab, **kw: {"tok_s": 70.0 if kw["compiled"] else 20.0})
    monkeypatch.setattr(com, "free", lambda: None)
    monkeypatch.setattr(com, "reset_compiled", lambda: None)
    results, checkpoints = VariantResults(), []
    plan = OfficialPlan(chunkwise_kernels=("limit", "xl"), chunk_sizes=(64, 128))
    com.measure_official(get_config("7b"), plan, contexts=[2048, 8192], repeats=1, decode_prompt=8, new_tokens=4,
                         seed=0, device="cpu", results=results, progress=lambda text: None,
                         checkpoint=lambda: checkpoints.append(1))
    assert built == ["fused", "single"] and checkpoints
    assert len(results.entries["prefill:2048"]) == 2 * 2 * 2
    assert results.best("prefill:8192")["variant"] == "fused/limit/chunk64"
    assert results.best("decode:b1")["variant"] == "fused/native/compiled"
    crashed = {c["variant"]: c["error"] for c in results.crashed()}
    assert crashed["fused/xl/chunk64"] == "probe: exit code -6: LLVM assertion"
    assert crashed["single/triton/eager"] == "KeyError: 'Unknown step kernel backend name: triton'"
    assert len(results.entries["decode:b1"]) == 6


def test_bytes_a_decode_step_streams():
    from kernels import XLSTM, get_config
    from autotune.compare_official_variants import state_bytes_per_sequence, weight_bytes_read_per_step

    assert state_bytes_per_sequence(get_config("7b")) == 32 * 8 * (256 * 512 + 256 + 1) * 4  # 134.5 MB
    config = get_config("tiny")  # one of its three blocks is sLSTM: no mLSTM state there
    assert state_bytes_per_sequence(config) == 2 * 4 * (8 * 16 + 8 + 1) * 4
    model = XLSTM(config, device="cpu", dtype=torch.bfloat16, seed=0)
    every = sum(p.numel() * 2 for p in model.parameters())
    assert weight_bytes_read_per_step(model) == every - config.vocab_size * config.embedding_dim * 2
