"""Every failure ends as one JSON line with its kind and a non-zero exit code."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

import kernels
import schedulers
from autotune.bench import EXIT_CODES, NumericalError, measure, run_text
from autotune.bench.errors import classify
from autotune.bench.output import ResultChannel

TINY = {"shape": "tiny", "device": "cpu", "context": 16, "new_tokens": 2, "repeats": 1}


def bench(config, **kwargs) -> tuple[int, dict, str]:
    out = io.StringIO()
    code = run_text(json.dumps(config) if isinstance(config, dict) else config, ResultChannel(out), **kwargs)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return code, json.loads(lines[0]), lines[0]


def assert_error(code, result, kind):
    assert result["schema_version"] == 1
    assert result["status"] == "error"
    assert result["error"]["kind"] == kind, result["error"]
    assert result["error"]["message"]
    assert code == EXIT_CODES[kind] != 0


def test_classify_walks_the_cause_chain():
    assert classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify(RuntimeError("MPS backend out of memory"))[0] == "oom"
    assert classify(MemoryError())[0] == "oom"
    assert classify(kernels.CompileError("torch.compile failed for mlstm_block"))[0] == "compile_error"
    assert classify(NumericalError("logits has 3 non-finite values"))[0] == "numerical"
    assert classify(kernels.DeviceUnavailableError("no cuda"))[0] == "invalid_config"
    assert classify(KeyError("x")) == ("crash", "KeyError: 'x'")
    try:  # a scheduler wraps what failed inside a worker
        try:
            raise torch.OutOfMemoryError("out of memory")
        except Exception as exc:
            raise schedulers.SchedulerError("layer 0 band 1 chunk 2 failed") from exc
    except schedulers.SchedulerError as wrapped:
        kind, message = classify(wrapped)
    assert kind == "oom" and "band 1 chunk 2" in message


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"shape": "tiny",', "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ('{"shape": "tiny", "heads_per_band": 3}', "heads_per_band"),
        ('{"shape": "tiny", "T_inner": 5}', "T_inner"),
        ('{"shape": "nope"}', "shape"),
        ('{"shape": "tiny", "speed": 1}', "speed"),
        ('{"shape": "tiny", "device": "quantum"}', "device"),
    ],
)
def test_invalid_config_results(text, words):
    code, result, _ = bench(text)
    assert_error(code, result, "invalid_config")
    assert words in result["error"]["message"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_invalid_config():
    code, result, _ = bench({**TINY, "device": "cuda"})
    assert_error(code, result, "invalid_config")
    assert result["error"]["message"].startswith("device:")


def inject(monkeypatch, kernel):
    """Every scheduler the benchmark makes runs `kernel` instead of the mLSTM kernel."""
    real = measure.make_scheduler

    def make(backend, knobs, **kwargs):
        return real(backend, knobs, **{**kwargs, "kernel": kernel})

    monkeypatch.setattr(measure, "make_scheduler", make)


def fail_with(exc):
    def kernel(q, k, v, i, f, state=None):
        raise exc

    return kernel


@pytest.mark.parametrize("backend", ["sequential", "queued"])
def test_oom_inside_the_scheduler(monkeypatch, backend):
    inject(monkeypatch, fail_with(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")))
    code, result, _ = bench({**TINY, "backend": backend, "workers": 2, "heads_per_band": 2})
    assert_error(code, result, "oom")
    assert "out of memory" in result["error"]["message"]
    assert result["error"]["phase"] == "warmup"


def test_compile_error(monkeypatch):
    inject(monkeypatch, fail_with(kernels.CompileError("torch.compile failed for mlstm_block T_inner=64")))
    code, result, _ = bench(TINY)
    assert_error(code, result, "compile_error")
    assert "T_inner=64" in result["error"]["message"]


def test_nan_outputs_are_numerical(monkeypatch):
    def nan_kernel(q, k, v, i, f, state=None):
        h, state = kernels.mlstm_block(q, k, v, i, f, state)
        return torch.full_like(h, float("nan")), state

    inject(monkeypatch, nan_kernel)
    code, result, _ = bench(TINY)
    assert_error(code, result, "numerical")
    assert "non-finite" in result["error"]["message"]


def test_anything_else_is_a_crash(monkeypatch):
    inject(monkeypatch, fail_with(ZeroDivisionError("kernel bug")))
    code, result, line = bench(TINY)
    assert_error(code, result, "crash")
    assert "ZeroDivisionError" in result["error"]["message"]
    assert "Traceback" not in line
    assert result["config"]["shape"] == "tiny" and result["env"]["torch"] == torch.__version__


def test_result_channel_keeps_stdout_for_the_result(capfd):
    channel = ResultChannel(redirect_fds=True)
    try:
        print("library chatter")
        os.write(1, b"C-level chatter\n")
        assert channel.emit({"status": "ok", "x": float("nan")})
        assert not channel.emit({"status": "error"})  # only the first result is written
    finally:
        channel.close()
    out, err = capfd.readouterr()
    assert out.splitlines() == ['{"status":"ok","x":null}']
    assert "library chatter" in err and "C-level chatter" in err


def run_process(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "autotune.bench", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_process_malformed_json_exits_non_zero_with_one_line():
    proc = run_process('{"shape": tiny}')
    assert proc.returncode == EXIT_CODES["invalid_config"]
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["error"]["kind"] == "invalid_config" and "malformed JSON" in result["error"]["message"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_process_time_limit_is_a_timeout():
    proc = run_process(json.dumps({**TINY, "context": 4096, "repeats": 50, "time_limit_s": 1.5}))
    assert proc.returncode == EXIT_CODES["timeout"], proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["error"]["kind"] == "timeout"
    assert "time_limit_s=1.5" in result["error"]["message"]
    assert result["config"]["time_limit_s"] == 1.5


def test_a_run_that_cannot_fit_its_time_limit_ends_before_it():
    """1,000 prefills of 4096 tokens cannot fit in 20 s: the run says so after the
    warm-up instead of spending the limit. What is checked is the benchmark's own
    account (its clock starts where its time limit does), not the wall time of a
    machine other jobs may load."""
    code, result, _ = bench({**TINY, "context": 4096, "repeats": 1000, "time_limit_s": 20})
    assert_error(code, result, "timeout")
    message = result["error"]["message"]
    assert message.startswith("the run would exceed time_limit_s=20") and "1000 timed prefill(s)" in message
    spent = float(message.split(": ")[1].split(" s spent")[0])
    assert spent < 20 and result["timings"]["elapsed_s"] < 20
    assert result["timings"]["elapsed_s"] >= result["timings"]["warmup_s"]
    assert result["error"]["phase"] == "warmup" and "measured_s" not in result["timings"]


def test_the_time_limit_holds_between_warm_up_passes(monkeypatch):
    """Warm-up passes that settle compiled kernels (as on a GPU) stop once another pass
    and the timed prefills could no longer fit: the run ends before the next pass, in
    the warm-up, well before its limit by its own clock."""
    import time

    from autotune.bench import measure as m
    from autotune.bench.config import BenchRequest
    from autotune.bench.errors import BenchTimeout
    from autotune.bench.main import Progress

    calls = []
    real = m.ensure_time_for

    def spy(progress, config, prefills, fastest_s):
        calls.append((progress.phase, prefills))
        return real(progress, config, prefills, fastest_s)

    monkeypatch.setattr(m, "ensure_time_for", spy)
    monkeypatch.setattr(m, "settles_over_passes", lambda config, device: True)
    config = BenchRequest.from_dict({**TINY, "context": 2048, "repeats": 1000, "time_limit_s": 5})
    progress = Progress()
    try:
        with pytest.raises(BenchTimeout, match="1001 timed prefill"):
            m.measure(config, progress)
    finally:
        progress.cleanup()  # as the benchmark does: the scheduler's threads go
    assert calls == [("warmup", 1001)]  # before the second warm-up pass, not after the warm-up
    assert time.perf_counter() - progress.started < config.time_limit_s


def test_autotune_bench_command(capfd):
    from autotune.cli import main

    code = main(["bench", '{"shape": "tiny", "colour": "red"}'])
    out, err = capfd.readouterr()
    (line,) = out.splitlines()
    result = json.loads(line)
    assert code == EXIT_CODES["invalid_config"]
    assert result["error"]["kind"] == "invalid_config" and result["error"]["message"].startswith("colour:")
    assert "invalid config" in err


def test_a_broken_install_is_one_crash_result_not_a_traceback(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels.registry", None)  # importing it now fails
    code, result, _ = bench(TINY)
    assert_error(code, result, "crash")
    assert "kernels.registry" in result["error"]["message"]
