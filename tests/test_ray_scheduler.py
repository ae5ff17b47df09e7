"""The ray backend on a real local Ray instance (CPU): lifecycle, parity, counters,
resident states, the model hook, and faults inside actors.

The first two tests manage Ray themselves (a scheduler starting and stopping its own
instance; joining a cluster by address); the rest share one instance started once for
the module.
"""

import gc
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import ray
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from cell_parity import LOOSE, TIGHT, reference, step_slice
from kernels import XLSTM, get_config
from schedulers import Knobs, SchedulerError, make_plan, make_scheduler
from schedulers.measure import main as measure_main
from schedulers.ray_actors import RayState
from schedulers.testing import (FailOnMarker, Rendezvous, StallOnMarker, descendant_pids, plant_marker,
                                process_alive, random_cell_inputs, wait_until_gone)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as fh:
            return fh.read().replace("\0", " ")
    except OSError:
        return ""


# -- Ray lifecycle (no shared instance yet) -------------------------------------------------

def test_local_instance_starts_and_shuts_down_without_leftovers():
    assert not ray.is_initialized(), "another test left Ray running in this process"
    x = random_cell_inputs(1, 4, 10, 4, 4, seed=0)
    sched = make_scheduler("ray", Knobs(1, 1, 4, 2))
    try:
        assert ray.is_initialized()
        session_dir = ray._private.worker._global_node.get_session_dir_path()
        actor_pids = set(sched.actor_pids())
        started = descendant_pids(os.getpid())
        h, state = sched(0, *x, None)
        torch.testing.assert_close(h, reference(x)[0], **LOOSE)
        names = {cmdline(pid) for pid in started}
        assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names)
        assert actor_pids <= started
    finally:
        sched.close()
    assert not ray.is_initialized()
    assert wait_until_gone(started) == set(), "Ray processes left after close()"
    for entry in os.listdir("/proc"):
        if entry.isdigit() and process_alive(int(entry)):
            line = cmdline(int(entry))
            assert session_dir not in line, f"process {entry} of the closed session runs: {line[:200]}"


HEAD_SCRIPT = textwrap.dedent("""
    import sys, ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # run until the test closes stdin
    ray.shutdown()
""")


def test_joins_an_existing_cluster_by_address_and_leaves_it_running():
    assert not ray.is_initialized()
    head = subprocess.Popen([sys.executable, "-c", HEAD_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = head.stdout.readline().strip()
        assert ":" in address, "the head process did not report its address"
        cluster = {pid for pid in descendant_pids(head.pid)
                   if any(name in cmdline(pid) for name in ("raylet", "gcs_server"))}
        assert len(cluster) == 2
        x = random_cell_inputs(1, 2, 5, 3, 3, seed=2)
        with make_scheduler("ray", Knobs(1, 1, 2, 2), address=address) as sched:
            actor_pids = sched.actor_pids()
            assert set(actor_pids) <= descendant_pids(head.pid)  # the actors run in that cluster
            h, _ = sched(0, *x, None)
            torch.testing.assert_close(h, reference(x)[0], **LOOSE)
        assert not ray.is_initialized()  # the driver disconnected...
        assert wait_until_gone(actor_pids) == set()  # ...its actors are gone...
        assert all(process_alive(pid) for pid in cluster)  # ...and the cluster still runs
    finally:
        head.stdin.close()
        head.wait(timeout=60)
    assert wait_until_gone(cluster) == set()


@pytest.mark.slow
def test_measure_script_runs_its_ray_settings_on_one_local_instance_and_stops_it(capsys):
    assert not ray.is_initialized()
    code = measure_main(["--shape", "tiny", "--context", "8", "--new-tokens", "1", "--repeats", "1",
                         "--device", "cpu", "--backends", "ray", "--knobs", "2,2,8,4", "--knobs", "1,4,8,8"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and [(r["backend"], r["knobs"]["workers"], r["status"]) for r in results] == [
        ("ray", 2, "ok"), ("ray", 1, "ok")]
    assert not ray.is_initialized()  # the script started the instance, so it stopped it


# -- one shared instance for the rest of the module ---------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@st.composite
def cases(draw):
    num_heads = draw(st.sampled_from([2, 4]))
    heads_per_band = draw(st.sampled_from([d for d in range(1, num_heads + 1) if num_heads % d == 0]))
    chunk_size = draw(st.integers(1, 8))
    T_inner = draw(st.sampled_from([d for d in range(1, chunk_size + 1) if chunk_size % d == 0]))
    knobs = Knobs(draw(st.integers(1, 2)), heads_per_band, chunk_size, T_inner)
    shape = dict(batch=draw(st.integers(1, 2)), num_heads=num_heads, seq_len=draw(st.integers(1, 20)),
                 qk_dim=draw(st.integers(1, 5)), v_dim=draw(st.integers(1, 5)))
    return knobs, shape, draw(st.integers(0, 2**16))


# Each example starts actors (seconds): few examples, fixed seed, no shrinking.
@settings(max_examples=2, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example((Knobs(2, 1, 4, 2), dict(batch=2, num_heads=4, seq_len=13, qk_dim=3, v_dim=4), 1))
def test_prefill_then_decode_parity_with_sequential(ray_instance, case):
    knobs, shape, seed = case
    x = random_cell_inputs(**shape, seed=seed)
    tail = random_cell_inputs(**{**shape, "seq_len": 2}, seed=seed + 1)
    ref_h, ref_state = reference(x)
    ref_tail, ref_final = reference(tail, ref_state)
    outputs = {}
    for backend in ("sequential", "ray"):
        with make_scheduler(backend, knobs) as sched:
            h, state = sched(0, *x, None)
            prefill_state = sched.materialize(state)
            steps = []
            for t in range(2):
                h_t, state = sched(0, *step_slice(tail, t, t + 1), state)
                steps.append(h_t)
            final = sched.materialize(state)
            counters = sched.counters
            expected = sched.expected_counters(shape["num_heads"], shape["seq_len"]) + \
                sched.expected_counters(shape["num_heads"], 1, calls=2)
        assert counters.ordering_violations == 0
        assert (counters.kernel_calls, counters.bands, counters.chunks, counters.tasks) == (
            expected.kernel_calls, expected.bands, expected.chunks, expected.tasks)
        outputs[backend] = [h, *prefill_state, torch.cat(steps, dim=2), *final]
    for got, want in zip(outputs["ray"], outputs["sequential"]):
        torch.testing.assert_close(got, want, **TIGHT)
    torch.testing.assert_close(outputs["ray"][0], ref_h, **LOOSE)
    torch.testing.assert_close(outputs["ray"][4], ref_tail, **LOOSE)
    for got, want in zip(outputs["ray"][5:], ref_final):
        torch.testing.assert_close(got, want, **LOOSE)


NH, S = 4, 19
SETTINGS = {  # name -> knobs; each variant differs from base in one knob
    "base": Knobs(1, 1, 8, 4),
    "T_inner": Knobs(1, 1, 8, 2),
    "chunk_size": Knobs(1, 1, 4, 4),
    "heads_per_band": Knobs(1, 2, 8, 4),
    "workers": Knobs(2, 1, 8, 4),
}
MOVES = {"T_inner": {"kernel_calls"}, "chunk_size": {"chunks", "tasks"},
         "heads_per_band": {"bands", "tasks", "kernel_calls"}, "workers": {"peak_concurrency"}}


@pytest.mark.slow
def test_counters_equal_the_plan_and_every_knob_moves_them(ray_instance, tmp_path):
    """Actors meet at a file rendezvous inside their first kernel call, so the peak
    concurrency min(workers, bands) is certain to be observed."""
    x = random_cell_inputs(2, NH, S, 4, 4, seed=1)
    observed = {}
    for name, knobs in SETTINGS.items():
        directory = tmp_path / name
        directory.mkdir()
        parties = make_plan(NH, S, knobs).useful_concurrency
        with make_scheduler("ray", knobs, kernel=Rendezvous(str(directory), parties, timeout_s=60)) as sched:
            sched(0, *x, None)
            observed[name] = sched.counters
            assert observed[name] == sched.expected_counters(NH, S), name
    assert [observed[n].peak_concurrency for n in ("base", "workers")] == [1, 2]
    base = observed["base"].as_dict()
    for name, moved in MOVES.items():
        changed = {k for k, v in observed[name].as_dict().items() if base[k] != v}
        assert changed == moved, name


def test_states_stay_resident_in_the_actors_and_are_freed(ray_instance):
    x = random_cell_inputs(1, 4, 12, 3, 3, seed=4)
    with make_scheduler("ray", Knobs(2, 1, 4, 4)) as sched:
        _, state = sched(0, *x, None)
        assert isinstance(state, RayState)
        first_id = state.state_id
        assert sched.resident_state_ids() == {first_id}
        for t in range(4):  # decode: the model drops each old handle
            _, state = sched(0, *step_slice(x, t, t + 1), state)
            gc.collect()
        held = sched.resident_state_ids()
        assert state.state_id in held and first_id not in held
        assert len(held) <= 2  # the newest state, plus at most one release still in flight
        C, n, m = sched.materialize(state)
        assert (C.shape, n.shape, m.shape) == ((1, 4, 3, 3), (1, 4, 3), (1, 4, 1))
        with make_scheduler("ray", Knobs(1, 2, 3, 1)) as other:
            with pytest.raises(ValueError, match="made by another ray scheduler"):
                other(0, *step_slice(x, 0, 1), state)
            # a (C, n, m) tensor state (here: materialized from the first scheduler) is
            # shipped to the actors with each band's first chunk
            want_h, want_state = reference(x, (C, n, m))
            h, moved = other(0, *x, (C, n, m))
            torch.testing.assert_close(h, want_h, **LOOSE)
            for got, want in zip(other.materialize(moved), want_state):
                torch.testing.assert_close(got, want, **LOOSE)


def test_a_cluster_too_small_for_the_workers_is_a_clear_error(ray_instance):
    with pytest.raises(SchedulerError, match="workers=5 actors need 5 CPU in total but the Ray cluster has 4; "
                                             "lower workers or add nodes"):
        make_scheduler("ray", Knobs(5, 1, 4, 4))
    assert ray.is_initialized()  # the application's instance is left alone


def test_model_prefill_and_decode_through_ray(ray_instance):
    config = get_config("tiny")
    tokens = torch.randint(0, config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(1))
    direct = XLSTM(config, seed=0)
    want, want_state = direct(tokens)
    want_next, _ = direct(tokens[:, :1], want_state)
    layers = len(config.mlstm_blocks)
    knobs = Knobs(2, 1, 4, 2)
    with make_scheduler("ray", knobs) as sched:
        model = XLSTM(config, seed=0, cell_runner=sched)
        logits, state = model(tokens)
        torch.testing.assert_close(logits, want, **LOOSE)
        prefill = sched.counters
        assert (prefill.kernel_calls, prefill.tasks) == (
            sched.expected_counters(config.num_heads, 11, calls=layers).kernel_calls,
            sched.expected_counters(config.num_heads, 11, calls=layers).tasks)
        sched.reset_counters()
        logits, state = model(tokens[:, :1], state)
        torch.testing.assert_close(logits, want_next, **LOOSE)
        decode = sched.counters
        assert decode.kernel_calls == decode.bands == layers * config.num_heads
        assert decode.ordering_violations == 0


# -- faults inside actors ------------------------------------------------------------------

def test_actor_failure_names_band_and_chunk_and_actors_go_away_on_close(ray_instance):
    x = random_cell_inputs(1, 4, 12, 3, 3, seed=8)
    bad = (plant_marker(x[0], 2, 9), *x[1:])  # head 2 -> band 2; step 9 -> chunk 2
    with make_scheduler("ray", Knobs(2, 1, 4, 2), kernel=FailOnMarker()) as sched:
        pids = sched.actor_pids()
        with pytest.raises(SchedulerError, match="ray: layer 5 band 2 chunk 2 failed: InjectedFailure") as info:
            sched(5, *bad, None)
        assert (info.value.layer, info.value.band, info.value.chunk) == (5, 2, 2)
        # the actors survive a failed task: the next calls (prefill, then a failing decode) run
        h, state = sched(0, *x, None)
        torch.testing.assert_close(h, reference(x)[0], **LOOSE)
        with pytest.raises(SchedulerError, match="layer 1 band 3 chunk 0 failed"):
            sched(1, *step_slice((plant_marker(x[0], 3, 0), *x[1:]), 0, 1), state)
    assert wait_until_gone(pids) == set()


def test_stuck_actor_hits_the_watchdog_and_is_killed(ray_instance, tmp_path):
    x = random_cell_inputs(1, 4, 12, 3, 3, seed=9)
    bad = (plant_marker(x[0], 1, 2), *x[1:])  # band 1, chunk 0
    stall = StallOnMarker(str(tmp_path / "never-released"), max_wait_s=300)
    with make_scheduler("ray", Knobs(1, 1, 4, 2), kernel=stall, watchdog_s=3) as sched:
        pids = sched.actor_pids()
        start = time.monotonic()
        with pytest.raises(SchedulerError, match="ray: layer 0 band 1 chunk 0 did not finish within the 3 s watchdog"):
            sched(0, *bad, None)
        assert time.monotonic() - start < 30
        assert wait_until_gone(pids) == set()  # killed although its kernel never returned
        with pytest.raises(SchedulerError, match="unusable after an earlier failure"):
            sched(0, *x, None)
