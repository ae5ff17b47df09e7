"""A warm benchmark worker: one process that measures config after config.

The worker (`python -m autotune.bench --tuner PID:START --worker`, bench.main.serve)
keeps torch, the models and compiled kernels loaded; each request still gets its own
scheduler, warm-up, repeats, drift and recall. It runs in its own session like a fresh benchmark,
with the tuner's identity on its command line so that it dies with the tuner.

This side vouches for a result only when the worker answered the request it was sent
with an ok result. Anything else (an error result, no answer within the time limit, a
line that is not a result, an answer for another request, the worker's death, a
cancel) kills the worker's whole process group; the next request starts a fresh one.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
import time
from typing import IO, Sequence

from autotune.bench.config import BenchRequest
from autotune.bench.result import BenchResult
from autotune.bench.tuner_watch import TunerIdentity
from autotune.bench.main import END_OF_REQUEST, WORKER_ARG
from autotune.trials import (
    BENCH_COMMAND,
    INTERRUPTED,
    POLL_S,
    STDERR_TAIL_CHARS,
    KillGroup,
    TrialOutcome,
    died_result,
    kill_leftovers,
    tail,
    timeout_result,
)

EXIT_WAIT_S = 5.0  # a worker that reported an error exits by itself; after this it is killed
_EOF = None


class _StderrLog:
    """The worker's stderr, read as it comes; each request's share is its stderr tail."""

    def __init__(self, pipe: IO[str]):
        self._chunks: collections.deque[str] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self.ends = 0  # end-of-request markers read so far
        threading.Thread(target=self._read, args=(pipe,), name="worker-stderr", daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:  # the reader closes its pipe at the worker's end
            for line in pipe:
                if line.rstrip("\n") == END_OF_REQUEST:
                    with self._lock:
                        self.ends += 1
                        self._ended.notify_all()
                    continue
                with self._lock:
                    self._chunks.append(line)
                    self._size += len(line)
                    while self._size > 4 * STDERR_TAIL_CHARS and len(self._chunks) > 1:
                        self._size -= len(self._chunks.popleft())

    def wait_for_end(self, count: int, timeout_s: float = 2.0) -> None:
        """Until `count` requests' lines are read (each marker precedes its result line)."""
        with self._lock:
            self._ended.wait_for(lambda: self.ends >= count, timeout=timeout_s)

    def peek(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def take(self) -> str:
        """Everything since the last take (its last STDERR_TAIL_CHARS)."""
        with self._lock:
            text = "".join(self._chunks)
            self._chunks.clear()
            self._size = 0
        return text


def _read_lines(pipe: IO[str], lines: queue.Queue) -> None:
    with pipe:  # the reader closes its pipe at the worker's end
        for line in pipe:
            if line.strip():
                lines.put(line)
    lines.put(_EOF)


def _answers(result: BenchResult, request: BenchRequest) -> bool:
    """The result is for `request`: every field the request set, as the worker read it
    (a field left None is one the benchmark resolves, e.g. T_inner = chunk_size)."""
    config = result.config or {}
    return all(config.get(k) == v for k, v in request.to_dict().items() if v is not None)


class WarmWorker:
    """The Evaluator of one slot: a worker process started on first use and replaced
    after anything it cannot vouch for."""

    def __init__(self, command: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 tuner: TunerIdentity | None = None):
        """command: argv prefix replacing `python -m autotune.bench` (`--worker` is
        appended); env: the worker's environment (None: this process's)."""
        self.command = tuple(command) if command else BENCH_COMMAND
        self.env = env
        self.tuner = tuner
        self.started = 0  # worker processes started so far
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: _StderrLog | None = None
        self._answered = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _ensure(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.close()
        tuner = self.tuner or TunerIdentity.of_this_process()
        self._proc = subprocess.Popen(
            [*self.command, *tuner.argv(), WORKER_ARG],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=dict(os.environ if self.env is None else self.env),
            text=True, errors="replace", bufsize=1,
        )
        self._lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(self._proc.stdout, self._lines),
                         name="worker-stdout", daemon=True).start()
        self._stderr = _StderrLog(self._proc.stderr)
        self._answered = 0  # results this process gave
        self.started += 1
        return self._proc

    def close(self) -> None:
        """Kill the worker's process group (if any); the next request starts another."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            KillGroup(proc)()
        proc.wait()
        kill_leftovers(proc.pid)
        try:
            proc.stdin.close()
        except OSError:
            pass  # a broken pipe: the worker is gone already

    def measure(self, request: BenchRequest, *, timeout_s: float, on_tick=None, tick_s: float = 10.0,
                cancel=None, on_start=None) -> TrialOutcome:
        start = time.monotonic()
        proc = self._ensure()
        self._stderr.take()  # what an earlier request left is not this one's
        try:
            if on_start is not None:
                on_start(proc.pid)
            result, interrupted = self._exchange(proc, request, start + timeout_s, timeout_s,
                                                 on_tick, tick_s, cancel)
        except BaseException:
            self.close()  # never leave a worker measuring for nobody
            raise
        vouched = result.ok and _answers(result, request)
        if result.ok and not vouched:
            result = BenchResult.failure("crash", "the worker answered with a result for another request")
        self._answered += 1
        if vouched and self._stderr is not None:
            self._stderr.wait_for_end(self._answered)  # the worker marks the end of each request
        returncode = 0 if vouched else self._end_after_failure(proc)
        stderr_tail = tail(self._stderr.take() if self._stderr else "")
        return TrialOutcome(result, stderr_tail, time.monotonic() - start, returncode, interrupted=interrupted)

    def _exchange(self, proc, request, deadline, timeout_s, on_tick, tick_s, cancel) -> tuple[BenchResult, bool]:
        try:
            proc.stdin.write(request.to_json() + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its end of stdout says so below
        next_tick = time.monotonic() + tick_s
        while True:
            now = time.monotonic()
            wait = max(0.01, min(POLL_S, deadline - now, next_tick - now))
            try:
                line = self._lines.get(timeout=wait)
            except queue.Empty:
                line = ""
            if line is _EOF:
                returncode = proc.wait()
                time.sleep(0.05)  # let the stderr reader catch the last lines
                return died_result(returncode, self._stderr.peek() if self._stderr else ""), False
            if line:
                result = BenchResult.parse_line(line)
                return (result or BenchResult.failure("crash", "the worker printed a line that is not a result: "
                                                               + line.strip()[:200])), False
            now = time.monotonic()
            if now >= deadline:
                self.close()
                return timeout_result(timeout_s), False
            if cancel is not None and cancel():
                self.close()
                return INTERRUPTED, True
            if now >= next_tick:
                next_tick = now + tick_s
                if on_tick is not None:
                    on_tick()

    def _end_after_failure(self, proc: subprocess.Popen) -> int:
        """Let a worker that reported an error exit by itself (its exit code says what
        kind), then make sure its group is gone."""
        if self._proc is proc:
            try:
                proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            self.close()
        return proc.returncode if proc.returncode is not None else -9
