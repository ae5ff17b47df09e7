"""A real benchmark run: the result schema, and counters that match the plan."""

import json
import subprocess
import sys

import pytest

import autotune.bench.recall as recall_module
from autotune.bench import SCHEMA_VERSION, run_text
from autotune.bench.output import ResultChannel
from kernels.model import get_config
from kernels.mqar import pairs_for_length
from schedulers import Knobs, make_plan

SUMMARY_METRICS = ("prefill_tok_s", "decode_tok_s", "ttft_ms")
COUNTER_KEYS = ("kernel_calls", "bands", "chunks", "tasks", "peak_concurrency", "ordering_violations")


@pytest.fixture
def small_recall(monkeypatch):
    """Recall on fewer tokens: these tests are about plumbing, test_bench_recall about recall."""
    monkeypatch.setattr(recall_module, "RECALL_TOKENS", 256)
    monkeypatch.setattr(recall_module, "MIN_SEQUENCES", 1)


def bench(config: dict) -> dict:
    import io

    out = io.StringIO()
    code = run_text(json.dumps(config), ResultChannel(out))
    result = json.loads(out.getvalue())
    assert code == 0 and result["status"] == "ok", result.get("error")
    return result


def expected_counters(shape: str, seq_len: int, knobs: Knobs) -> dict:
    """What the plan implies for one pass over every mLSTM layer of the shape."""
    config = get_config(shape)
    layers = len(config.mlstm_blocks)
    plan = make_plan(config.num_heads, seq_len, knobs)
    return plan.expected_counters(calls=layers).as_dict()


def test_result_schema_from_the_process():
    config = {"shape": "tiny", "device": "cpu", "backend": "queued", "workers": 2, "heads_per_band": 2,
              "chunk_size": 16, "T_inner": 4, "context": 40, "new_tokens": 3, "repeats": 2}
    proc = subprocess.run([sys.executable, "-m", "autotune.bench"], input=json.dumps(config),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["schema_version"] == SCHEMA_VERSION == 1
    assert result["status"] == "ok" and "error" not in result
    assert set(result) == {"schema_version", "status", "metrics", "counters", "timings", "env", "config",
                           "kernels"}

    metrics = result["metrics"]
    for name in SUMMARY_METRICS:
        s = metrics[name]
        assert len(s["samples"]) == 2 and all(x > 0 for x in s["samples"])
        assert min(s["samples"]) <= s["median"] <= max(s["samples"]) and s["iqr"] >= 0
    # ttft includes the whole prefill: never less than L tokens at the prefill rate allows.
    assert metrics["ttft_ms"]["median"] >= 1000 * 40 / max(metrics["prefill_tok_s"]["samples"]) * 0.999
    assert metrics["peak_mem_bytes"] > 0 and metrics["peak_mem_source"] in ("vm_hwm", "ru_maxrss")
    assert metrics["state_bytes"] == get_config("tiny").state_bytes_per_sequence()
    assert 0.0 <= metrics["recall"] <= 1.0
    assert metrics["mqar_pairs"] == pairs_for_length(40) and metrics["mqar_queries"] > 0
    assert 0.0 <= metrics["max_drift"] < 1e-3  # fp32: scheduling changes only rounding

    assert {k: v for k, v in result["counters"].items() if k != "decode"}.keys() == set(COUNTER_KEYS)
    assert set(result["counters"]["decode"]) == set(COUNTER_KEYS)
    timings = result["timings"]
    for key in ("setup_s", "warmup_s", "measured_s", "drift_s", "recall_s", "total_s"):
        assert timings[key] >= 0
    assert timings["total_s"] >= timings["setup_s"] + timings["warmup_s"] + timings["measured_s"]
    env = result["env"]
    assert env["device"] == "cpu" and env["device_name"] and env["os"] and env["torch"]
    assert env["project_version"] and "git_commit" in env
    assert result["config"] == {**config, "dtype": "float32", "batch": 1, "seed": 0,
                                "time_limit_s": 600.0, "compile": False, "kernel": {}}
    kernels = result["kernels"]  # T_inner 4: every window runs through mlstm_block
    assert kernels["prefill_cell"] == {"kernels": {"block": {}}, "last": "block"}
    assert kernels["fallback"] is None and kernels["fallbacks"] == []
    assert kernels["params"]["sub_chunk"] == 128


@pytest.mark.parametrize(
    "backend,knobs,context",
    [
        ("sequential", Knobs(1, 4, 64, 64), 100),
        ("sequential", Knobs(1, 1, 16, 4), 100),
        ("queued", Knobs(2, 2, 32, 8), 96),
        ("queued", Knobs(4, 1, 8, 8), 30),
    ],
)
def test_counters_match_the_plan(small_recall, backend, knobs, context):
    result = bench({"shape": "tiny", "device": "cpu", "backend": backend, **knobs.as_dict(),
                    "context": context, "new_tokens": 2, "repeats": 1, "batch": 2})
    counters = dict(result["counters"])
    decode = counters.pop("decode")
    for measured, seq_len in ((counters, context), (decode, 1)):
        expected = expected_counters("tiny", seq_len, knobs)
        peak = expected.pop("peak_concurrency")
        assert 1 <= measured.pop("peak_concurrency") <= peak
        assert measured == expected


@pytest.mark.slow
def test_knobs_move_the_counters(small_recall):
    base = {"shape": "tiny", "device": "cpu", "context": 64, "new_tokens": 1, "repeats": 1}
    one = bench({**base, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64})["counters"]
    more_bands = bench({**base, "heads_per_band": 1, "chunk_size": 64, "T_inner": 64})["counters"]
    more_calls = bench({**base, "heads_per_band": 4, "chunk_size": 64, "T_inner": 8})["counters"]
    more_chunks = bench({**base, "heads_per_band": 4, "chunk_size": 16, "T_inner": 16})["counters"]
    assert more_bands["bands"] == 4 * one["bands"] and more_bands["decode"]["bands"] == 4 * one["decode"]["bands"]
    assert more_calls["kernel_calls"] == 8 * one["kernel_calls"]
    assert more_chunks["chunks"] == 4 * one["chunks"] and more_chunks["tasks"] == 4 * one["tasks"]


def test_recall_skipped_below_the_minimum_context(small_recall):
    metrics = bench({"shape": "tiny", "device": "cpu", "context": 4, "new_tokens": 1, "repeats": 1})["metrics"]
    assert metrics["recall"] is None and metrics["mqar_pairs"] is None
