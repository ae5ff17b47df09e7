"""The benchmark process: read one config, measure it, print one JSON result line.

`main(argv)` is the process entry (`python -m autotune.bench`, `autotune bench`): it
moves every other stdout write onto stderr, arms the time limit and maps any failure to
an error result with a kind and a non-zero exit code. `run_text` does the same work
without touching file descriptors or arming the watchdog, for in-process callers.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import sys
import threading
import time
import traceback
from typing import IO, Callable

from autotune.bench import tuner_watch
from autotune.bench.config import BenchRequest
from autotune.bench.errors import EXIT_CODES, TIMEOUT, InvalidConfig, classify
from autotune.bench.output import ResultChannel
from autotune.bench.result import SCHEMA_VERSION

# measure, env and kernels are imported where they are used: they load torch, which the
# tuner (it imports this module for its names) and `autotune bench --help` never need.

WORKER_ARG = "--worker"
END_OF_REQUEST = "bench worker: end of request"  # a warm worker's stderr line before each result

log = logging.getLogger("autotune.bench")

# A watchdog thread cannot run while C code holds the GIL; faulthandler's C thread can.
# It dumps the stacks to stderr and exits this long after the limit, as a last resort.
HARD_EXIT_GRACE_S = 30.0
CLEANUP_GRACE_S = 10.0


class Progress:
    """What the run has done so far; read by the watchdog to describe a timeout."""

    def __init__(self) -> None:
        self.started = time.perf_counter()  # the time limit counts from here
        self.phase = "start"
        self.device = None
        self.timings: dict[str, float] = {}
        self._cleanups: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._cleanups.append(fn)

    def cleanup(self) -> None:
        with self._lock:
            fns, self._cleanups = self._cleanups[::-1], []
        for fn in fns:
            try:
                fn()
            except Exception as exc:  # cleanup must never hide the result
                log.warning("cleanup failed: %s", exc)


def error_result(kind: str, message: str, config: BenchRequest | None, progress: Progress,
                 kernels: dict | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "error",
        "error": {"kind": kind, "message": message, "phase": progress.phase},
        "config": config.to_dict() if config is not None else None,
        # elapsed_s: when the run ended, by its own clock (its time limit counts from the same start)
        "timings": {**progress.timings, "elapsed_s": round(time.perf_counter() - progress.started, 3)},
        "env": _env_or_none(progress.device),
        "kernels": kernels,  # what ran before the failure (kernels.registry.what_ran), if anything
    }


def _env_or_none(device) -> dict | None:
    try:
        from autotune.bench import env

        return env.collect(device)
    except Exception as exc:
        log.warning("could not collect the environment: %s", exc)
        return None


def read_config_text(arg: str | None, stdin: IO[str] | None) -> str:
    """The config JSON: the first argument, or stdin when it is absent or '-'."""
    if arg is not None and arg != "-":
        return arg
    if stdin is None or stdin.closed:
        raise InvalidConfig(None, "no config given; pass a JSON object as the first argument or on stdin")
    if stdin.isatty():
        raise InvalidConfig(None, "no config given; pass a JSON object as the first argument or pipe it on stdin")
    text = stdin.read()
    if not text.strip():
        raise InvalidConfig(None, "empty config on stdin; pass a JSON object, e.g. '{\"shape\": \"tiny\"}'")
    return text


class Watchdog:
    """Emits the timeout result and ends the process when the time limit passes."""

    def __init__(self, limit_s: float, channel: ResultChannel, config: BenchRequest, progress: Progress,
                 kernels=None):
        self._kernels = kernels  # the request's KernelRun: what ran until the limit
        self._limit_s = limit_s
        self._channel = channel
        self._config = config
        self._progress = progress
        self._timer = threading.Timer(limit_s, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()
        faulthandler.dump_traceback_later(self._limit_s + HARD_EXIT_GRACE_S, exit=True)

    def cancel(self) -> None:
        self._timer.cancel()
        faulthandler.cancel_dump_traceback_later()

    def _fire(self) -> None:
        message = (
            f"the run exceeded time_limit_s={self._limit_s:g} during {self._progress.phase}; "
            "raise time_limit_s or lower context, new_tokens or repeats"
        )
        kernels = self._kernels.what_ran() if self._kernels is not None else None
        emitted = self._channel.emit(error_result(TIMEOUT, message, self._config, self._progress, kernels))
        if emitted:
            code = EXIT_CODES[TIMEOUT]
            log.error("%s", message)
        else:  # the result is out; only the cleanup after it overran the limit
            done = self._channel.emitted or {}
            code = 0 if done.get("status") == "ok" else EXIT_CODES.get(done.get("error", {}).get("kind"), 1)
            log.error("cleanup after the result exceeded time_limit_s=%g; exiting", self._limit_s)
        # Free threads, Ray actors and processes, but never wait forever for them.
        cleaner = threading.Thread(target=self._progress.cleanup, daemon=True)
        cleaner.start()
        cleaner.join(CLEANUP_GRACE_S)
        sys.stderr.flush()
        os._exit(code)


def run_text(text: str, channel: ResultChannel, *, watchdog: bool = False, cache=None) -> int:
    """Measure the config in `text`; emit exactly one result on `channel`; return the exit code.
    cache: what a warm worker keeps between measurements (autotune.bench.measure.WarmCache)."""
    progress = Progress()
    config = None
    dog = None
    # The kernels of this request alone: a fallback in one measurement of a warm worker
    # never carries over to the next.
    kernels = None
    try:
        # torch, the kernels and the schedulers: a broken install is a result line too
        from autotune.bench.measure import measure
        from kernels.registry import KernelRun, use_run

        config = BenchRequest.from_json(text)
        kernels = KernelRun(params=dict(config.kernel))
        if watchdog:
            dog = Watchdog(config.time_limit_s, channel, config, progress, kernels)
            dog.start()
        with use_run(kernels):
            body = measure(config, progress, cache)
        result = {"schema_version": SCHEMA_VERSION, "status": "ok", **body, "kernels": kernels.what_ran(),
                  "config": config.to_dict()}
        progress.phase = "done"
        channel.emit(result)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a result line
        if isinstance(exc, KeyboardInterrupt):
            kind, message = "crash", "interrupted (KeyboardInterrupt)"
        else:
            kind, message = classify(exc)
        if kind != "invalid_config":
            log.error("benchmark failed (%s) during %s:\n%s", kind, progress.phase, traceback.format_exc())
        else:
            log.error("invalid config: %s", message)
        channel.emit(error_result(kind, message, config, progress,
                                  kernels.what_ran() if kernels is not None else None))
        return EXIT_CODES[kind]
    finally:
        progress.cleanup()
        if dog is not None:
            dog.cancel()


class _Reply(ResultChannel):
    """A warm worker's answer to one request: the end-of-request marker goes to stderr
    just before the result line, so the tuner knows which stderr lines were this
    request's, although it reads the two pipes apart."""

    def emit(self, result: dict) -> bool:
        if self.emitted is None:
            print(END_OF_REQUEST, file=sys.stderr, flush=True)
        return super().emit(result)


def serve(channel: ResultChannel) -> int:
    """A warm worker: measure each request line as a benchmark process measures its one
    config (run_text), keeping what never depends on the knobs (WarmCache). A worker
    vouches only for a process in which nothing has gone wrong: after an error result
    it exits (a CUDA error can poison the context, an OOM leaves fragments, a timeout a
    stuck thread) and the tuner starts a fresh one. End of stdin ends it."""
    from autotune.bench.measure import WarmCache

    cache = WarmCache()
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        code = run_text(line, _Reply(channel.stream), watchdog=True, cache=cache)
        if code != 0:
            return code
        gc.collect()  # the last config's scheduler and tensors, before the next is timed


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bench %(levelname)s %(message)s"))
    root = logging.getLogger("autotune.bench")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Process entry: argv is [config-json] or [] (config on stdin), optionally with
    `--tuner PID:START` (the tuner this benchmark dies with), or `--worker`: measure
    request after request, one JSON line each on stdin (a warm worker)."""
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    channel = ResultChannel(redirect_fds=True)
    try:
        try:
            tuner, argv = tuner_watch.from_argv(argv)
        except ValueError as exc:
            raise InvalidConfig(None, str(exc)) from None
        tuner_watch.start(tuner)
        if argv == [WORKER_ARG]:
            return serve(channel)
        if len(argv) > 1:
            raise InvalidConfig(None, "pass the whole config as one JSON argument (quote it)")
        try:
            text = read_config_text(argv[0] if argv else None, sys.stdin)
        except InvalidConfig as exc:
            channel.emit(error_result(exc.kind, str(exc), None, Progress()))
            return EXIT_CODES[exc.kind]
        return run_text(text, channel, watchdog=True)
    except InvalidConfig as exc:
        channel.emit(error_result(exc.kind, str(exc), None, Progress()))
        return EXIT_CODES[exc.kind]
    finally:
        channel.close()
