"""Ends a benchmark whose tuner is gone.

The trial runner starts every benchmark in its own session, so that a Ctrl-C at the
terminal never reaches it. The price: a tuner killed with SIGKILL (or by a power-off
of its terminal) would leave its benchmark, and any Ray workers the benchmark started,
running until the benchmark's own time limit, holding the device that the resumed tuner
is about to measure on. The runner names itself in AUTOTUNE_TUNER_PID; once that process
is no longer this one's parent, the benchmark's whole process group is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

ENV = "AUTOTUNE_TUNER_PID"  # set by autotune.trials.run_benchmark
POLL_S = 0.5


def start() -> threading.Thread | None:
    """Watch the tuner named in the environment; None when there is none to watch
    (a benchmark started by hand, or through a wrapper process)."""
    value = os.environ.get(ENV, "")
    if not value.isdigit() or os.getppid() != int(value):
        return None
    thread = threading.Thread(target=_watch, args=(int(value),), name="tuner-watch", daemon=True)
    thread.start()
    return thread


def _watch(tuner: int) -> None:
    while os.getppid() == tuner:
        time.sleep(POLL_S)
    try:  # the tuner read our stderr: the pipe is likely broken now
        sys.stderr.write(f"bench: the tuner (pid {tuner}) is gone; stopping this benchmark and its workers\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)
