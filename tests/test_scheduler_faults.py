"""Faults in the thread backends: a failing task, a stuck task, cleanup afterwards.
(The same for Ray actors lives in test_ray_scheduler.py, which has a Ray instance.)"""

import threading
import time
import warnings

import pytest
import torch

from kernels import mlstm_sequence
from schedulers import Knobs, SchedulerError, make_scheduler
from schedulers.queued import THREAD_PREFIX
from schedulers.testing import FailOnMarker, InjectedFailure, StallOnMarker, plant_marker, random_cell_inputs


def queued_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def marked(x, head, step):
    return (plant_marker(x[0], head, step), *x[1:])


X = random_cell_inputs(2, 4, 12, 3, 3, seed=11)


@pytest.mark.parametrize("backend", ["sequential", "queued"])
@pytest.mark.parametrize("knobs, head, step, band, chunk", [
    (Knobs(2, 1, 4, 2), 2, 9, 2, 2),
    (Knobs(3, 2, 5, 5), 1, 4, 0, 0),
    (Knobs(2, 2, 4, 1), 3, 11, 1, 2),
])
def test_failing_task_reaches_the_caller_naming_band_and_chunk(backend, knobs, head, step, band, chunk):
    before = len(queued_threads())
    with make_scheduler(backend, knobs, kernel=FailOnMarker()) as sched:
        with pytest.raises(SchedulerError, match=f"{backend}: layer 7 band {band} chunk {chunk} failed: "
                                                 "InjectedFailure") as info:
            sched(7, *marked(X, head, step), None)
        assert (info.value.layer, info.value.band, info.value.chunk) == (7, band, chunk)
        assert isinstance(info.value.__cause__, InjectedFailure)
        # a failed task does not break the scheduler: the next call is exact
        h, _ = sched(0, *X, None)
        want, _ = mlstm_sequence(*X)
        torch.testing.assert_close(h, want, rtol=2e-4, atol=2e-4)
    assert len(queued_threads()) == before


def test_failure_during_decode_names_the_band():
    with make_scheduler("queued", Knobs(2, 1, 8, 4), kernel=FailOnMarker()) as sched:
        _, state = sched(0, *X, None)
        step = tuple(t[:, :, :1] for t in marked(X, 3, 0))
        with pytest.raises(SchedulerError, match="layer 2 band 3 chunk 0 failed"):
            sched(2, *step, state)


def test_stuck_task_hits_the_watchdog_and_threads_end_after_release(tmp_path):
    release = tmp_path / "release"
    before = len(queued_threads())
    sched = make_scheduler("queued", Knobs(2, 1, 4, 2), watchdog_s=1.0,
                           kernel=StallOnMarker(str(release), max_wait_s=60))
    start = time.monotonic()
    with pytest.raises(SchedulerError, match="queued: layer 0 band 1 chunk 1 did not finish within the 1 s watchdog"):
        sched(0, *marked(X, 1, 5), None)
    assert time.monotonic() - start < 10  # nothing hangs
    with pytest.raises(SchedulerError, match="unusable after an earlier failure"):
        sched(0, *X, None)
    release.touch()  # the stuck kernel returns; its thread can now stop
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no thread may be left behind
        sched.close()
    assert len(queued_threads()) == before


def test_close_does_not_hang_on_a_thread_that_stays_stuck(tmp_path):
    release = tmp_path / "release"
    sched = make_scheduler("queued", Knobs(2, 1, 4, 2), watchdog_s=0.5,
                           kernel=StallOnMarker(str(release), max_wait_s=60))
    with pytest.raises(SchedulerError, match="watchdog"):
        sched(0, *marked(X, 0, 0), None)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="1 worker thread\\(s\\) still inside a kernel"):
        sched.close()
    assert time.monotonic() - start < 5
    release.touch()
    deadline = time.monotonic() + 10
    while any(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queued_threads() == []
