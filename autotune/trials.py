"""Run one benchmark child: `python -m autotune.bench '<config json>'`.

The child runs in its own session (so a Ctrl-C at the terminal never reaches it and a
kill reaches everything it started), with stdin closed and a hard time limit. Its last
stdout line is the result (schema in docs/benchmark.md); when it dies without
one, a result with error kind 'timeout' or 'crash' is synthesized so that callers always
get the same shape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autotune.bench.tuner_watch import ENV as TUNER_ENV  # the child ends itself once this process is gone
from autotune.defaults import KNOBS

BENCH_COMMAND = (sys.executable, "-m", "autotune.bench")
STDERR_TAIL_CHARS = 4000
# After SIGTERM the group gets this long to clean up (Ray actors, CUDA contexts).
TERM_GRACE_S = 3.0
POLL_S = 0.5  # how often a cancel request is looked at


def bench_request(spec, *, device: str, context: int, params: dict[str, Any], repeats: int,
                  timeout_s: float) -> dict[str, Any]:
    """The benchmark child's config for one measurement of `params` (the knobs, and
    `backend` where the spec lists several) under a study spec."""
    return {
        "shape": spec.model.shape,
        "dtype": spec.model.dtype,
        "device": device,
        "backend": params.get("backend", spec.model.backends[0]),
        **{k: params[k] for k in KNOBS},
        "context": context,
        "new_tokens": spec.workload.new_tokens,
        "batch": spec.workload.batch,
        "repeats": repeats,
        "seed": spec.workload.seed,
        # The child stops itself a little before the hard kill, with a clean result.
        "time_limit_s": round(max(1.0, timeout_s - min(30.0, 0.1 * timeout_s)), 1),
        "compile": spec.model.compile,
    }


@dataclass
class TrialOutcome:
    result: dict[str, Any]  # the child's JSON line, or a synthesized error result
    stderr_tail: str
    wall_s: float
    returncode: int
    interrupted: bool = False  # killed on the caller's request (second Ctrl-C)

    @property
    def ok(self) -> bool:
        return self.result.get("status") == "ok"

    @property
    def error_kind(self) -> str | None:
        return None if self.ok else (self.result.get("error") or {}).get("kind", "crash")

    @property
    def error_message(self) -> str | None:
        return None if self.ok else (self.result.get("error") or {}).get("message", "")


class _Kill:
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


def _kill_leftovers(pgid: int) -> None:
    """Kill what the child started and left behind in its group (a leaked thread pool
    or actor process would steal the next trial's CPU). Once the group is empty its id
    no longer exists, so this can hit nothing else."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _error_result(kind: str, message: str) -> dict[str, Any]:
    return {"schema_version": 1, "status": "error", "error": {"kind": kind, "message": message}}


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The result object from the child's stdout: its last non-empty line, if that is
    a JSON object with a status; None otherwise."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    if not isinstance(result, dict) or result.get("status") not in ("ok", "error"):
        return None
    return result


def _tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def run_benchmark(
    config: dict[str, Any],
    *,
    timeout_s: float,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 10.0,
    cancel: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> TrialOutcome:
    """Measure `config` in a child process; never raises for a failing child.

    command: argv prefix replacing `python -m autotune.bench` (tests use a fake bench).
    env: the child's environment (default: this process's).
    on_tick: called about every `tick_s` seconds while the child runs (heartbeats).
    cancel: polled about twice a second; when it returns True the child's group is
        killed and the outcome is marked interrupted (the tuner's second Ctrl-C).
    on_start: called with the child's pid (= its process group id) once it started.
    """
    argv = [*(command or BENCH_COMMAND), json.dumps(config)]
    start = time.monotonic()
    deadline = start + timeout_s
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**(os.environ if env is None else env), TUNER_ENV: str(os.getpid())},
        text=True,
        errors="replace",
    )
    kill = _Kill(proc)
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
    _kill_leftovers(proc.pid)
    wall_s = time.monotonic() - start
    returncode = proc.returncode
    stderr_tail = _tail(stderr)

    if timed_out:
        result = _error_result("timeout", f"no result within the trial time limit of {timeout_s:.0f} s; the process group was killed")
    elif interrupted:
        result = _error_result("interrupted", "stopped by a second Ctrl-C")
    else:
        result = parse_result(stdout)
        if result is None:
            last_err = next((l for l in reversed(stderr.splitlines()) if l.strip()), "")
            how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
            result = _error_result(
                "crash",
                f"the benchmark process {how} without a result line" + (f": {last_err.strip()}" if last_err else ""),
            )
        elif result.get("status") == "ok" and returncode != 0:
            result = _error_result("crash", f"the benchmark process reported ok but exited with code {returncode}")
    return TrialOutcome(result, stderr_tail, wall_s, returncode, interrupted=interrupted)
