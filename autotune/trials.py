"""Run one benchmark child: `python -m autotune.bench --tuner PID:START '<request json>'`.

The child runs in its own session (so a Ctrl-C at the terminal never reaches it and a
kill reaches everything it started), with stdin closed and a hard time limit, and is
told who its tuner is so that it ends itself when the tuner dies. Its last stdout line
is the result (schema in docs/benchmark.md); when it dies without one, a result with
error kind 'timeout' or 'crash' is synthesized so that callers always get the same
shape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from autotune.bench.config import BenchRequest
from autotune.bench.result import KERNEL_FALLBACK, BenchResult, parse_stdout
from autotune.bench.tuner_watch import TunerIdentity
from autotune.names import KERNEL_KNOBS, KNOBS

BENCH_COMMAND = (sys.executable, "-m", "autotune.bench")
STDERR_TAIL_CHARS = 4000
# After SIGTERM the group gets this long to clean up (Ray actors, CUDA contexts).
TERM_GRACE_S = 3.0
POLL_S = 0.5  # how often a cancel request is looked at


def time_limit_for(timeout_s: float) -> float:
    """The benchmark's own limit under a hard kill at `timeout_s`: it stops itself a
    little before, with a clean result."""
    return round(max(1.0, timeout_s - min(30.0, 0.1 * timeout_s)), 1)


def bench_request(spec, *, device: str, context: int, params: dict[str, Any], repeats: int,
                  timeout_s: float) -> BenchRequest:
    """The benchmark request for one measurement of `params` (the knobs, any kernel
    knobs, and `backend` where the spec lists several) under a study spec."""
    return BenchRequest(
        shape=spec.model.shape,
        dtype=spec.model.dtype,
        device=device,
        backend=params.get("backend", spec.model.backends[0]),
        **{k: params[k] for k in KNOBS},
        context=context,
        new_tokens=spec.workload.new_tokens,
        batch=spec.workload.batch,
        repeats=repeats,
        seed=spec.workload.seed,
        time_limit_s=time_limit_for(timeout_s),
        compile=spec.model.compile,
        kernel={k: params[k] for k in KERNEL_KNOBS if k in params},
    )


@dataclass
class TrialOutcome:
    result: BenchResult  # the benchmark's result, or a synthesized error result
    stderr_tail: str
    wall_s: float
    returncode: int
    interrupted: bool = False  # killed on the caller's request (second Ctrl-C)

    def __post_init__(self) -> None:
        if isinstance(self.result, dict):  # a decoded JSON object, e.g. from a test
            self.result = BenchResult.from_dict(self.result) or BenchResult.failure("crash", "not a result")

    @property
    def fell_back(self) -> bool:
        """Measured, but a kernel fell back: other kernels ran than the config names."""
        return self.result.ok and self.result.fallback is not None

    @property
    def ok(self) -> bool:
        """A measurement of the config: a fallback's speeds belong to other kernels."""
        return self.result.ok and not self.fell_back

    @property
    def error_kind(self) -> str | None:
        return KERNEL_FALLBACK if self.fell_back else self.result.error_kind

    @property
    def error_message(self) -> str | None:
        return f"a kernel fell back: {self.result.fallback}" if self.fell_back else self.result.error_message


def request_json(request: BenchRequest | Mapping[str, Any]) -> str:
    return request.to_json() if isinstance(request, BenchRequest) else json.dumps(dict(request))


class KillGroup:
    """Kills the child's whole process group: SIGTERM, then SIGKILL after a grace."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def __call__(self) -> None:
        for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            if grace is None:
                return
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; kill anything of its group that outlived it.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _drain(proc: subprocess.Popen, timeout_s: float = 10.0) -> tuple[str, str]:
    """Output of a killed child; gives up if a descendant that escaped the group still
    holds the pipes open."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait()
        return "", ""


def kill_leftovers(pgid: int) -> None:
    """Kill what the child started and left behind in its group (a leaked thread pool
    or actor process would steal the next trial's CPU). Once the group is empty its id
    no longer exists, so this can hit nothing else."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


parse_result = parse_stdout


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def run_benchmark(
    request: BenchRequest | Mapping[str, Any],
    *,
    timeout_s: float,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 10.0,
    cancel: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
    tuner: TunerIdentity | None = None,
) -> TrialOutcome:
    """Measure `request` in a child process; never raises for a failing child.

    command: argv prefix replacing `python -m autotune.bench` (tests use a fake bench).
    env: the child's environment (default: this process's).
    on_tick: called about every `tick_s` seconds while the child runs (heartbeats).
    cancel: polled about twice a second; when it returns True the child's group is
        killed and the outcome is marked interrupted (the tuner's second Ctrl-C).
    on_start: called with the child's pid (= its process group id) once it started.
    tuner: the process the child watches and dies with (default: this one).
    """
    tuner = tuner or TunerIdentity.of_this_process()
    argv = [*(command or BENCH_COMMAND), *tuner.argv(), request_json(request)]
    start = time.monotonic()
    deadline = start + timeout_s
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ if env is None else env),
        text=True,
        errors="replace",
    )
    kill = KillGroup(proc)
    if on_start is not None:
        try:
            on_start(proc.pid)
        except BaseException:
            kill()
            _drain(proc)
            raise
    timed_out = interrupted = False
    next_tick = start + tick_s
    try:
        while True:
            now = time.monotonic()
            # Never 0: communicate(timeout=0) gives up before reading the pipes at all.
            wait = max(0.01, min(POLL_S, deadline - now, next_tick - now))
            try:
                stdout, stderr = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= deadline or (cancel is not None and cancel()):
                timed_out, interrupted = now >= deadline, now < deadline
                kill()
                stdout, stderr = _drain(proc)
                break
            if now >= next_tick:
                next_tick = now + tick_s
                if on_tick is not None:
                    on_tick()
    except BaseException:
        kill()  # never leave an orphaned benchmark behind
        _drain(proc)
        raise
    kill_leftovers(proc.pid)
    wall_s = time.monotonic() - start
    returncode = proc.returncode
    stderr_tail = tail(stderr)

    if timed_out:
        result = timeout_result(timeout_s)
    elif interrupted:
        result = INTERRUPTED
    else:
        result = parse_stdout(stdout)
        if result is None:
            result = died_result(returncode, stderr)
        elif result.ok and returncode != 0:
            result = BenchResult.failure("crash", f"the benchmark process reported ok but exited with code {returncode}")
    return TrialOutcome(result, stderr_tail, wall_s, returncode, interrupted=interrupted)


INTERRUPTED = BenchResult.failure("interrupted", "stopped by a second Ctrl-C")


def timeout_result(timeout_s: float) -> BenchResult:
    return BenchResult.failure("timeout", f"no result within the trial time limit of {timeout_s:.0f} s; "
                                          "the process group was killed")


def died_result(returncode: int | None, stderr: str) -> BenchResult:
    """The result of a benchmark process that ended without a result line."""
    last_err = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    how = (f"was killed by signal {-returncode}" if returncode is not None and returncode < 0
           else f"exited with code {returncode}")
    return BenchResult.failure(
        "crash", f"the benchmark process {how} without a result line" + (f": {last_err.strip()}" if last_err else ""))
