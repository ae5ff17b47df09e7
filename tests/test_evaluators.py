"""Warm workers at the process level: one process measures request after request and
is replaced after anything it cannot vouch for; it dies with its tuner. Fake workers
(small scripts) make the failures; one test runs the real benchmark worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from autotune.bench.config import BenchRequest
from autotune.evaluators import FreshProcess, WarmWorker, make_evaluator
from autotune.names import BACKENDS, KNOBS

REQUEST = BenchRequest(shape="tiny", device="cpu", workers=2, heads_per_band=2, chunk_size=32, T_inner=8,
                       context=64, new_tokens=2, repeats=2, time_limit_s=60.0)

# A fake worker: answers each stdin line; the request's `seed` says how to misbehave.
FAKE_WORKER = r'''
import json, os, sys, time
assert sys.argv[1] == "--tuner" and sys.argv[-1] == "--worker"
for line in sys.stdin:
    cfg = json.loads(line)
    print(f"worker {os.getpid()} got seed {cfg['seed']}", file=sys.stderr, flush=True)
    how = cfg["seed"]
    if how == 1:  # an error result: the worker exits after it, as the real one does
        print(json.dumps({"status": "error", "error": {"kind": "oom", "message": "out of memory"}}), flush=True)
        sys.exit(4)
    if how == 2:  # hangs
        time.sleep(600)
    if how == 3:  # dies without an answer
        print("Traceback: segfault-ish", file=sys.stderr, flush=True)
        os._exit(7)
    if how == 4:  # answers for another request
        cfg = {**cfg, "workers": 99}
    if how == 5:  # a line that is not a result
        print("not json", flush=True)
        continue
    print("bench worker: end of request", file=sys.stderr, flush=True)
    print(json.dumps({"status": "ok", "config": cfg, "metrics": {"pid": os.getpid()}}), flush=True)
'''


@pytest.fixture
def fake_worker(tmp_path) -> tuple[str, ...]:
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return (sys.executable, str(path))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_worker_measures_request_after_request(fake_worker):
    worker = WarmWorker(fake_worker)
    try:
        outcomes = [worker.measure(REQUEST.with_changes(workers=w), timeout_s=30) for w in (1, 2, 4)]
        assert all(o.ok for o in outcomes)
        assert len({o.result.metrics["pid"] for o in outcomes}) == 1 and worker.started == 1
        assert [o.result.config["workers"] for o in outcomes] == [1, 2, 4]
        # Each request's stderr is its own (the worker marks where a request's lines end).
        assert [o.stderr_tail.count("got seed 0") for o in outcomes[1:]] == [1, 1]
        assert "end of request" not in outcomes[2].stderr_tail
    finally:
        worker.close()


@pytest.mark.parametrize("how, kind, words", [
    (1, "oom", "out of memory"),
    (3, "crash", "exited with code 7"),
    (4, "crash", "another request"),
    (5, "crash", "not a result"),
])
def test_a_worker_that_cannot_vouch_for_its_answer_is_replaced(fake_worker, how, kind, words):
    worker = WarmWorker(fake_worker)
    try:
        first = worker.measure(REQUEST, timeout_s=30)
        pid = first.result.metrics["pid"]
        bad = worker.measure(REQUEST.with_changes(seed=how), timeout_s=30)
        assert not bad.ok and bad.error_kind == kind and words in bad.error_message
        assert not _alive(pid) and worker.pid is None  # killed, whole group
        after = worker.measure(REQUEST, timeout_s=30)
        assert after.ok and after.result.metrics["pid"] != pid and worker.started == 2
    finally:
        worker.close()


def test_a_hanging_worker_times_out_and_its_group_is_killed(fake_worker):
    worker = WarmWorker(fake_worker)
    try:
        pid = worker.measure(REQUEST, timeout_s=30).result.metrics["pid"]
        start = time.monotonic()
        outcome = worker.measure(REQUEST.with_changes(seed=2), timeout_s=1.5)
        assert outcome.error_kind == "timeout" and time.monotonic() - start < 10
        assert not _alive(pid)
    finally:
        worker.close()


def test_cancel_kills_the_worker_and_marks_the_outcome_interrupted(fake_worker):
    worker = WarmWorker(fake_worker)
    ticks = []
    try:
        outcome = worker.measure(REQUEST.with_changes(seed=2), timeout_s=60, tick_s=0.2,
                                 on_tick=lambda: ticks.append(1), cancel=lambda: len(ticks) >= 2)
        assert outcome.interrupted and outcome.error_kind == "interrupted" and worker.pid is None
    finally:
        worker.close()


def test_make_evaluator_follows_the_process_setting(fake_worker):
    assert isinstance(make_evaluator("warm"), WarmWorker)
    assert isinstance(make_evaluator("fresh"), FreshProcess)
    with pytest.raises(ValueError, match="warm, fresh"):
        make_evaluator("lukewarm")


def test_the_names_are_the_schedulers_own():
    import schedulers

    assert KNOBS == schedulers.KNOB_NAMES and BACKENDS == schedulers.BACKENDS


def test_a_warm_worker_dies_with_its_tuner(tmp_path):
    """kill -9 of the tuner: its warm worker (real benchmark worker, idle between
    requests, in its own session) notices and ends itself."""
    pid_file = tmp_path / "worker.pid"
    tuner = tmp_path / "tuner.py"
    tuner.write_text(textwrap.dedent(f"""
        import time
        from autotune.bench.config import BenchRequest
        from autotune.evaluators import WarmWorker
        worker = WarmWorker()
        request = BenchRequest(shape="tiny", device="cpu", context=16, new_tokens=2, repeats=1)
        assert worker.measure(request, timeout_s=120).ok
        open({str(pid_file)!r}, "w").write(str(worker.pid))
        time.sleep(300)
    """))
    proc = subprocess.Popen([sys.executable, str(tuner)])
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker_pid = int(pid_file.read_text())
    assert _alive(worker_pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)


def test_the_real_worker_keeps_its_models_and_measures_each_config_afresh():
    """Two configs in one real benchmark worker: the second skips the imports and model
    builds (its setup is a fraction of the first's) and still runs its own scheduler,
    with counters that follow its own knobs."""
    worker = WarmWorker()
    try:
        first = worker.measure(REQUEST.with_changes(workers=1, heads_per_band=4), timeout_s=120)
        second = worker.measure(REQUEST, timeout_s=120)
        assert first.ok and second.ok, (first.error_message, second.error_message)
        assert worker.started == 1
        assert second.result.timings["setup_s"] < first.result.timings["setup_s"] / 3
        assert second.result.counters["bands"] == 2 * first.result.counters["bands"]  # 2 bands per call, not 1
        assert second.result.config == REQUEST.to_dict()
    finally:
        worker.close()
