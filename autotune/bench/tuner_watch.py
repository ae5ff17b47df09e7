"""Ends a benchmark whose tuner is gone.

The tuner starts every benchmark (and every warm worker) in its own session, so that a
Ctrl-C at the terminal never reaches it. The price: a tuner killed with SIGKILL (or by
a power-off of its terminal) would leave its benchmark, and any Ray workers the
benchmark started, running until the benchmark's own time limit, holding the device
that the resumed tuner is about to measure on.

The tuner names itself on the benchmark's command line (`--tuner PID:START`, START
being the kernel's start time of that pid). Once no process with that pid and start
time is alive, the benchmark kills its whole process group; that is checked before
the benchmark does anything else, so a tuner that died in the benchmark's first
instant is noticed too. A pid alone could not tell: it may be reused at once. Without
/proc (macOS) the tuner must be this process's parent. A benchmark started by hand
names no tuner and watches none.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

OPTION = "--tuner"
POLL_S = 0.5


def _start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot; None without /proc or when
    no such process is alive (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)"; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


@dataclass(frozen=True)
class TunerIdentity:
    pid: int
    started: int | None  # None where /proc is absent

    @classmethod
    def of_this_process(cls) -> "TunerIdentity":
        return cls(os.getpid(), _start_time(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> "TunerIdentity":
        pid, _, started = text.partition(":")
        if not pid.isdigit() or (started and not started.isdigit()):
            raise ValueError(f"{OPTION} takes PID:START (e.g. 1234:5678), got {text!r}")
        return cls(int(pid), int(started) if started else None)

    def argv(self) -> list[str]:
        return [OPTION, f"{self.pid}:{'' if self.started is None else self.started}"]

    def alive(self) -> bool:
        if self.started is not None and _has_proc():
            return _start_time(self.pid) == self.started
        return os.getppid() == self.pid


def from_argv(argv: list[str]) -> tuple[TunerIdentity | None, list[str]]:
    """The tuner named in `argv` and the arguments without that option."""
    if OPTION not in argv:
        return None, list(argv)
    i = argv.index(OPTION)
    if i + 1 >= len(argv):
        raise ValueError(f"{OPTION} needs PID:START")
    return TunerIdentity.parse(argv[i + 1]), argv[:i] + argv[i + 2 :]


def start(tuner: TunerIdentity | None) -> threading.Thread | None:
    """Watch `tuner`; None when there is none to watch (a benchmark started by hand).
    A tuner already gone ends this process group at once."""
    if tuner is None:
        return None
    if not tuner.alive():
        _end(tuner)
    thread = threading.Thread(target=_watch, args=(tuner,), name="tuner-watch", daemon=True)
    thread.start()
    return thread


def _watch(tuner: TunerIdentity) -> None:
    while tuner.alive():
        time.sleep(POLL_S)
    _end(tuner)


def _end(tuner: TunerIdentity) -> None:
    try:  # the tuner read our stderr: the pipe is likely broken now
        sys.stderr.write(f"bench: the tuner (pid {tuner.pid}) is gone; stopping this benchmark and its workers\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)
