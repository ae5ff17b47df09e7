"""The kernels of a benchmark result: what ran, with which parameters, any fallback,
and kernel parameters that move the work."""

import io
import json

import pytest
import torch

import autotune.bench.recall as recall_module
import kernels.chunkwise as ck
from autotune.bench import run_text
from autotune.bench.measure import WarmCache
from autotune.bench.output import ResultChannel
from autotune.bench.result import BenchResult

# bf16 on the CPU so that the sub-chunked path could take the Triton kernels; one window
# of 256 steps is two sub-chunks of 128.
REQUEST = {"shape": "tiny", "device": "cpu", "dtype": "bfloat16", "heads_per_band": 4,
           "chunk_size": 256, "T_inner": 256, "context": 256, "new_tokens": 1, "repeats": 1}


@pytest.fixture
def small_recall(monkeypatch):
    monkeypatch.setattr(recall_module, "RECALL_TOKENS", 256)
    monkeypatch.setattr(recall_module, "MIN_SEQUENCES", 1)


def measure(request: dict, cache=None) -> BenchResult:
    out = io.StringIO()
    code = run_text(json.dumps(request), ResultChannel(out), cache=cache)
    result = BenchResult.parse_line(out.getvalue())
    assert code == 0 and result.ok, result.error_message
    return result


def _triton_stand_in(q, k, v, i, f, C0, n0, m0, sub_chunk, h):
    """What the Triton kernels compute (the fp32 form), for a machine without them."""
    main = q.shape[2] // sub_chunk * sub_chunk
    t = slice(0, main)
    h_main, state = ck.mlstm_chunkwise(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t],
                                       (C0, n0, m0), sub_chunk=sub_chunk, method="fp32")
    h[:, :, t] = h_main
    return state


@pytest.mark.slow
def test_a_forced_triton_failure_is_in_the_result_and_the_next_request_starts_clean(small_recall, monkeypatch):
    chosen = ck.choose_method
    monkeypatch.setattr(ck, "choose_method", lambda q, k, v, sub_chunk=128: (
        "triton" if ck.current_run().usable(ck.TRITON_CELL) else chosen(q, k, v, sub_chunk)))
    calls = []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of resource: shared memory (forced for the test)")
        return _triton_stand_in(*args)

    monkeypatch.setattr(ck, "_run_triton", fails_once)
    cache = WarmCache()  # one warm worker, two requests
    with pytest.warns(RuntimeWarning, match="forced for the test"):
        first = measure(REQUEST, cache)
    assert first.fallback == ("chunkwise--triton -> chunkwise--fp32: "
                              "RuntimeError: out of resource: shared memory (forced for the test)")
    assert "chunkwise--triton" not in first.kernels["prefill_cell"]["kernels"]
    assert first.kernels["prefill_cell"]["kernels"]["chunkwise--fp32"] == {"sub_chunk": 128}
    assert len(calls) == 1  # ruled out for the rest of that request

    second = measure(REQUEST, cache)
    assert second.fallback is None and second.kernels["fallbacks"] == []
    # (the fp32 kernel runs too: the recall model is float32)
    assert second.kernels["prefill_cell"]["kernels"]["chunkwise--triton"] == {"sub_chunk": 128, "output_warps": 8}
    assert len(calls) > 1  # tried again: the failure belonged to the first request's run


@pytest.mark.slow
def test_sub_chunk_moves_the_recorded_kernel_and_keeps_the_outputs(small_recall):
    request = {**REQUEST, "dtype": "float32"}
    default = measure(request)
    smaller = measure({**request, "kernel": {"sub_chunk": 32}})
    # (the block kernel runs too: the drift reference's windows are 64 steps)
    assert default.kernels["prefill_cell"]["kernels"]["chunkwise--fp32"] == {"sub_chunk": 128}
    assert smaller.kernels["prefill_cell"]["kernels"]["chunkwise--fp32"] == {"sub_chunk": 32}
    assert smaller.kernels["params"]["sub_chunk"] == 32 and smaller.config["kernel"] == {"sub_chunk": 32}
    # both equal the sequential reference within fp32 rounding
    assert default.metrics["max_drift"] < 1e-3 and smaller.metrics["max_drift"] < 1e-3


def test_the_sub_chunk_of_the_run_moves_the_work_and_not_the_result():
    from kernels.registry import KernelRun, use_run

    g = torch.Generator().manual_seed(0)
    B, NH, S, DK, DV = 1, 2, 256, 8, 8
    q, k = torch.randn(B, NH, S, DK, generator=g), torch.randn(B, NH, S, DK, generator=g)
    v = torch.randn(B, NH, S, DV, generator=g)
    i, f = torch.randn(B, NH, S, generator=g), torch.randn(B, NH, S, generator=g) + 3
    outs = {}
    for sub_chunk in (32, 64, 128):
        with use_run(KernelRun(params={"sub_chunk": sub_chunk})) as run:
            outs[sub_chunk] = ck.mlstm_chunkwise(q, k, v, i, f)[0]
        assert run.what_ran()["prefill_cell"]["kernels"] == {"chunkwise--fp32": {"sub_chunk": sub_chunk}}
    torch.testing.assert_close(outs[32], outs[128], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[64], outs[128], rtol=1e-4, atol=1e-5)
    from kernels.compiled import compiled_block

    window = compiled_block(S, device="cpu", dtype=torch.float32, compile=False)
    with use_run(KernelRun(params={"sub_chunk": 256})) as run:  # 256 steps are one sub-chunk: the block form
        window(q, k, v, i, f)
    assert run.what_ran()["prefill_cell"] == {"kernels": {"block": {}}, "last": "block"}


@pytest.mark.parametrize("kernel,message", [
    ({"sub_chunk": 96}, "kernel: kernel parameter sub_chunk must be one of [32, 64, 128, 256], got 96"),
    ({"sub_chunks": 64}, "kernel: unknown kernel parameter 'sub_chunks'"),
    ({"step_tile": 2048}, "kernel: step_tile 2048 is under 16 columns"),
    ([64], "kernel: must be an object of kernel parameters"),
])
def test_impossible_kernel_parameters_are_an_invalid_config(kernel, message):
    from autotune.bench.config import BenchRequest
    from autotune.bench.errors import InvalidConfig

    with pytest.raises(InvalidConfig) as info:
        BenchRequest.from_dict({"shape": "7b", "kernel": kernel})
    assert str(info.value).startswith(message)


def test_an_outcome_on_a_fallback_is_a_failure_of_its_own_kind_everywhere():
    """Trials, confirmation and sweeps read outcomes alike: speeds measured on a fallback
    are never that config's."""
    from autotune.trials import TrialOutcome

    result = {"schema_version": 1, "status": "ok", "metrics": {"prefill_tok_s": 1.0},
              "kernels": {"fallback": "chunkwise--triton -> chunkwise--split: PTXAS error"}}
    outcome = TrialOutcome(result, "", 1.0, 0)
    assert outcome.fell_back and not outcome.ok
    assert outcome.error_kind == "kernel_fallback"
    assert outcome.error_message == "a kernel fell back: chunkwise--triton -> chunkwise--split: PTXAS error"
    clean = TrialOutcome({**result, "kernels": {"fallback": None}}, "", 1.0, 0)
    assert clean.ok and not clean.fell_back and clean.error_kind is None
