"""sequential and queued schedulers: parity with the recurrence, counters, the model hook."""

import json
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cell_parity import LOOSE, TIGHT, reference, step_slice
from kernels import XLSTM, get_config, mlstm_sequence
from schedulers import Counters, Knobs, PlanError, SchedulerError, make_plan, make_scheduler
from schedulers.queued import THREAD_PREFIX
from schedulers.testing import Rendezvous, random_cell_inputs


def queued_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@st.composite
def cases(draw):
    num_heads = draw(st.sampled_from([1, 2, 3, 4, 6]))
    heads_per_band = draw(st.sampled_from([d for d in range(1, num_heads + 1) if num_heads % d == 0]))
    chunk_size = draw(st.integers(1, 12))
    T_inner = draw(st.sampled_from([d for d in range(1, chunk_size + 1) if chunk_size % d == 0]))
    knobs = Knobs(draw(st.integers(1, 4)), heads_per_band, chunk_size, T_inner)
    shape = dict(batch=draw(st.integers(1, 2)), num_heads=num_heads, seq_len=draw(st.integers(1, 30)),
                 qk_dim=draw(st.integers(1, 6)), v_dim=draw(st.integers(1, 6)))
    return knobs, shape, draw(st.integers(0, 2**16)), draw(st.integers(1, 3))


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_prefill_then_decode_parity(case):
    """Every knob setting of both thread backends equals the recurrence; queued equals
    sequential; the state carries exactly into decode steps."""
    knobs, shape, seed, decode_steps = case
    x = random_cell_inputs(**shape, seed=seed)
    S = shape["seq_len"]
    tail = random_cell_inputs(**{**shape, "seq_len": decode_steps}, seed=seed + 1)
    ref_h, ref_state = reference(x)
    ref_tail, ref_final = reference(tail, ref_state)
    results = {}
    for backend in ("sequential", "queued"):
        with make_scheduler(backend, knobs) as sched:
            h, state = sched(0, *x, None)
            torch.testing.assert_close(h, ref_h, **LOOSE)
            for got, want in zip(sched.materialize(state), ref_state):
                torch.testing.assert_close(got, want, **LOOSE)
            decoded = []
            for t in range(decode_steps):
                h_t, state = sched(0, *step_slice(tail, t, t + 1), state)
                decoded.append(h_t)
            decoded = torch.cat(decoded, dim=2)
            final = sched.materialize(state)
            torch.testing.assert_close(decoded, ref_tail, **LOOSE)
            for got, want in zip(final, ref_final):
                torch.testing.assert_close(got, want, **LOOSE)
            expected = sched.expected_counters(shape["num_heads"], S) + sched.expected_counters(
                shape["num_heads"], 1, calls=decode_steps)
            got = sched.counters
            assert got.ordering_violations == 0
            assert (got.kernel_calls, got.bands, got.chunks, got.tasks) == (
                expected.kernel_calls, expected.bands, expected.chunks, expected.tasks)
            assert 1 <= got.peak_concurrency <= expected.peak_concurrency
            results[backend] = (h, decoded, final)
    for a, b in zip(results["sequential"], results["queued"]):
        if isinstance(a, tuple):
            for ta, tb in zip(a, b):
                torch.testing.assert_close(ta, tb, **TIGHT)
        else:
            torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("backend", ["sequential", "queued"])
def test_float64_inputs_match_the_recurrence_closely(backend):
    x = random_cell_inputs(2, 4, 23, 5, 3, seed=7, dtype=torch.float64)
    want_h, want_state = mlstm_sequence(*x)
    with make_scheduler(backend, Knobs(3, 1, 8, 4), dtype=torch.float64) as sched:
        h, state = sched(0, *x, None)
    assert h.dtype == torch.float64 and state[0].dtype == torch.float64
    torch.testing.assert_close(h, want_h, rtol=1e-10, atol=1e-10)
    for got, want in zip(state, want_state):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_bfloat16_inputs_keep_an_fp32_state():
    x = random_cell_inputs(1, 4, 9, 4, 4, seed=3, dtype=torch.bfloat16)
    x = (*x[:3], x[3].float(), x[4].float())  # the model passes gates in fp32
    with make_scheduler("queued", Knobs(2, 2, 4, 2), dtype=torch.bfloat16) as sched:
        h, state = sched(0, *x, None)
    assert h.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in state)
    ref_h, _ = reference(x)
    torch.testing.assert_close(h.float(), ref_h, rtol=2e-2, atol=2e-2)


# -- counters: every knob moves them, exactly as the plan says ---------------------------

NH, S = 4, 19
BASE = Knobs(workers=2, heads_per_band=1, chunk_size=8, T_inner=4)
VARIANTS = {  # knob -> (setting differing from BASE only in that knob, counters it must move)
    "T_inner": (Knobs(2, 1, 8, 2), {"kernel_calls"}),
    "chunk_size": (Knobs(2, 1, 4, 4), {"chunks", "tasks"}),
    "heads_per_band": (Knobs(2, 2, 8, 4), {"bands", "tasks", "kernel_calls"}),
    "workers": (Knobs(3, 1, 8, 4), {"peak_concurrency"}),
}


def observed_counters(backend, knobs, tmp_path, seq_len=S, calls=1):
    """Counters of `calls` cell calls; queued tasks meet at a rendezvous first so the peak
    concurrency the plan allows is certain to be observed."""
    plan = make_plan(NH, seq_len, knobs)
    parties = 1 if backend == "sequential" else plan.useful_concurrency
    directory = tmp_path / f"rv-{backend}-{knobs.workers}-{knobs.heads_per_band}-{knobs.chunk_size}-{knobs.T_inner}-{seq_len}"
    directory.mkdir()
    kernel = Rendezvous(str(directory), parties, timeout_s=30)
    x = random_cell_inputs(2, NH, seq_len, 4, 4, seed=1)
    with make_scheduler(backend, knobs, kernel=kernel) as sched:
        state = None
        for _ in range(calls):
            _, state = sched(0, *x, state)
        return sched.counters, sched.expected_counters(NH, seq_len, calls=calls)


@pytest.mark.parametrize("backend", ["sequential", "queued"])
@pytest.mark.parametrize("knobs", [BASE] + [v[0] for v in VARIANTS.values()], ids=["base", *VARIANTS])
def test_counters_equal_the_plan(backend, knobs, tmp_path):
    got, expected = observed_counters(backend, knobs, tmp_path)
    assert got == expected


@pytest.mark.parametrize("knob", list(VARIANTS))
def test_every_knob_moves_the_counters(knob, tmp_path):
    variant, moved = VARIANTS[knob]
    base, _ = observed_counters("queued", BASE, tmp_path)
    other, _ = observed_counters("queued", variant, tmp_path)
    changed = {name for name, value in base.as_dict().items() if other.as_dict()[name] != value}
    assert changed == moved


def test_decode_counters_one_call_per_band(tmp_path):
    got, expected = observed_counters("queued", Knobs(2, 2, 8, 4), tmp_path, seq_len=1, calls=3)
    assert got == expected
    assert (got.kernel_calls, got.bands, got.chunks, got.tasks) == (6, 6, 3, 6)


@pytest.mark.parametrize("workers, heads_per_band, peak", [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 2)])
def test_queued_peak_concurrency_is_min_of_workers_and_bands(workers, heads_per_band, peak, tmp_path):
    """Barrier-instrumented kernel: the first `peak` tasks wait for each other, so the
    overlap is certain; a scheduler running fewer at once would time out."""
    got, _ = observed_counters("queued", Knobs(workers, heads_per_band, 8, 4), tmp_path)
    assert got.peak_concurrency == peak


def test_sequential_ignores_workers_for_concurrency(tmp_path):
    got, _ = observed_counters("sequential", Knobs(4, 1, 8, 4), tmp_path)
    assert got.peak_concurrency == 1


def test_counters_accumulate_and_reset():
    x = random_cell_inputs(1, 4, 10, 4, 4, seed=0)
    with make_scheduler("queued", Knobs(2, 2, 4, 2)) as sched:
        sched(0, *x, None)
        once = sched.counters
        sched(1, *x, None)
        twice = sched.counters
        assert twice.kernel_calls == 2 * once.kernel_calls and twice.tasks == 2 * once.tasks
        assert twice.as_dict().keys() == {"kernel_calls", "bands", "chunks", "tasks",
                                          "peak_concurrency", "ordering_violations"}
        sched.reset_counters()
        assert sched.counters == Counters()


# -- the model hook: prefill and every decoded token go through the scheduler ------------

@pytest.mark.parametrize("backend, knobs", [
    ("sequential", Knobs(1, 1, 4, 2)),
    ("queued", Knobs(2, 1, 8, 4)),
    ("queued", Knobs(4, 2, 3, 1)),
])
def test_model_prefill_and_decode_through_the_scheduler(backend, knobs):
    config = get_config("tiny")
    tokens = torch.randint(0, config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    direct = XLSTM(config, seed=0)
    want_logits, want_state = direct(tokens)
    want_steps = []
    for t in range(3):
        logits, want_state = direct(tokens[:, t:t + 1], want_state)
        want_steps.append(logits)

    layers = len(config.mlstm_blocks)
    with make_scheduler(backend, knobs) as sched:
        model = XLSTM(config, seed=0, cell_runner=sched)
        logits, state = model(tokens)
        torch.testing.assert_close(logits, want_logits, **LOOSE)
        prefill = sched.counters.as_dict()
        expected = sched.expected_counters(config.num_heads, 13, calls=layers).as_dict()
        assert 1 <= prefill.pop("peak_concurrency") <= expected.pop("peak_concurrency")
        assert prefill == expected
        for t in range(3):
            sched.reset_counters()
            logits, state = model(tokens[:, t:t + 1], state)
            torch.testing.assert_close(logits, want_steps[t], **LOOSE)
            decode = sched.counters.as_dict()
            expected = sched.expected_counters(config.num_heads, 1, calls=layers).as_dict()
            assert decode["kernel_calls"] == decode["bands"] == layers * config.num_heads // knobs.heads_per_band
            assert 1 <= decode.pop("peak_concurrency") <= expected.pop("peak_concurrency")
            assert decode == expected


# -- input checks and lifecycle ------------------------------------------------------------

def test_bad_inputs_are_clear_errors():
    x = random_cell_inputs(1, 4, 6, 4, 4)
    with make_scheduler("queued", Knobs(2, 3, 4, 2)) as sched:
        with pytest.raises(PlanError, match="heads_per_band=3 must divide num_heads=4"):
            sched(0, *x, None)
        q, k, v, i, f = x
        with pytest.raises(ValueError, match="k must have q's shape"):
            sched(0, q, k[:, :, :3], v, i, f, None)
    with make_scheduler("sequential", Knobs(2, 2, 4, 2)) as sched:
        with pytest.raises(ValueError, match="state shapes"):
            sched(0, *x, (torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 2)))
        with pytest.raises(TypeError, match=r"expected an mLSTM state \(C, n, m\)"):
            sched(0, *x, "not a state")
    with pytest.raises(PlanError, match="T_inner=3 must divide chunk_size=4"):
        make_scheduler("queued", Knobs(2, 2, 4, 3))
    with pytest.raises(ValueError, match="unknown backend 'threads'; choose one of sequential, queued, ray"):
        make_scheduler("threads", BASE)
    with pytest.raises(ValueError, match="address is a Ray option"):
        make_scheduler("queued", BASE, address="127.0.0.1:6379")


def test_queued_threads_end_on_close_and_closed_scheduler_refuses_work():
    before = len(queued_threads())
    sched = make_scheduler("queued", Knobs(3, 1, 4, 2))
    assert len(queued_threads()) == before + 3
    sched(0, *random_cell_inputs(1, 4, 6, 4, 4), None)
    sched.close()
    assert len(queued_threads()) == before
    with pytest.raises(SchedulerError, match="closed"):
        sched(0, *random_cell_inputs(1, 4, 6, 4, 4), None)
    sched.close()  # idempotent


def test_measure_script_reports_every_backend_and_setting(capsys):
    from schedulers.measure import main

    code = main(["--shape", "tiny", "--context", "12", "--new-tokens", "2", "--repeats", "1",
                 "--device", "cpu", "--dtype", "float32", "--backends", "sequential,queued",
                 "--knobs", "2,2,8,4", "--knobs", "1,4,12,6", "--knobs", "1,3,8,4"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1  # the third setting is invalid for 4 heads
    results = document["results"]
    assert [(r["backend"], r["knobs"]["chunk_size"], r["status"]) for r in results] == [
        ("sequential", 8, "ok"), ("sequential", 12, "ok"), ("sequential", 8, "error"),
        ("queued", 8, "ok"), ("queued", 12, "ok"), ("queued", 8, "error")]
    assert "heads_per_band=3 must divide num_heads=4" in results[2]["error"]
    layers = len(get_config("tiny").mlstm_blocks)
    for r in (x for x in results if x["status"] == "ok"):
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        plan = make_plan(4, 12, Knobs(**r["knobs"]))
        assert r["counters"]["prefill"]["kernel_calls"] == layers * plan.kernel_calls
        assert r["counters"]["decode_per_run"]["tasks"] == 2 * layers * plan.bands


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_queued_cuda_streams_match_sequential(dtype):
    """Many bands and chunks on one stream per worker: any missing event wait or early
    memory reuse shows up as a mismatch against the single-stream reference."""
    x = random_cell_inputs(2, 8, 512, 64, 64, seed=5, dtype=dtype, device="cuda")
    x = (*x[:3], x[3].float(), x[4].float())
    knobs = Knobs(8, 1, 16, 8)
    with make_scheduler("sequential", knobs, device="cuda", dtype=dtype) as ref:
        want_h, want_state = ref(0, *x, None)
        want_step, want_final = ref(0, *step_slice(x, 0, 1), want_state)
    with make_scheduler("queued", knobs, device="cuda", dtype=dtype) as sched:
        for _ in range(3):
            h, state = sched(0, *x, None)
            step, final = sched(0, *step_slice(x, 0, 1), state)
            del state  # freed on the caller's stream while workers' streams may still run
            torch.testing.assert_close(h, want_h, **TIGHT)
            torch.testing.assert_close(step, want_step, **TIGHT)
            for got, want in zip(final, want_final):
                torch.testing.assert_close(got, want, **TIGHT)
        assert sched.counters.ordering_violations == 0


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_queued_runs_under_the_callers_autograd_mode(mode):
    """The worker threads take the calling thread's mode: under inference_mode the
    inputs are inference tensors, which a thread outside that mode may not use."""
    config = get_config("tiny")
    tokens = torch.randint(0, config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = XLSTM(config, seed=0)(tokens)
    context = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}[mode]
    with make_scheduler("queued", Knobs(2, 1, 4, 2)) as sched:
        model = XLSTM(config, seed=0, cell_runner=sched)
        with context():
            logits, _ = model(tokens)
    assert logits.is_inference() == (mode == "inference_mode")
    torch.testing.assert_close(logits, want, **LOOSE)
