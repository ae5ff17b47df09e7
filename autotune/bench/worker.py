"""A warm benchmark worker: `python -m autotune.bench --tuner PID:START --worker`.

It reads one request (a BenchRequest as JSON) per stdin line and answers each with one
result line on stdout, measured exactly as a benchmark process measures one config
(`run_text`: its own scheduler, warm-up, repeats, drift and recall, its time limit
enforced by a watchdog), while torch, the models and compiled kernels stay loaded
between requests (autotune.bench.measure.WarmCache).

A worker vouches only for a process in which nothing has gone wrong: after an error
result (a CUDA error can poison the context, an OOM leaves fragments, a timeout leaves
a stuck thread) it exits, and the tuner starts a fresh one. End of stdin ends it.
"""

from __future__ import annotations

import gc
import sys

from autotune.bench.main import run_text
from autotune.bench.measure import WarmCache
from autotune.bench.output import ResultChannel

# Written to stderr just before each result line: the tuner then knows which stderr
# lines belong to which request, although the two pipes are read apart.
END_OF_REQUEST = "bench worker: end of request"


class _Reply(ResultChannel):
    def emit(self, result: dict) -> bool:
        if self.emitted is None:
            print(END_OF_REQUEST, file=sys.stderr, flush=True)
        return super().emit(result)


def serve(channel: ResultChannel) -> int:
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
