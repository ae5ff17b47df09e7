"""A stand-in for `python -m autotune.bench` in the multi-worker tests: prints one
result line like the real benchmark, in a fraction of a second.

Its speed grows with `workers` and `chunk_size` (so the search has a best config) and
is deterministic per config. It records what the tests check about the child itself:
CUDA_VISIBLE_DEVICES and its start and end times (in `env` and `timings`).
FAKE_BENCH_SLEEP (seconds) makes each run last that long. With `--worker` it answers
one request per stdin line, as a warm worker does.
"""

import json
import os
import random
import sys
import time


def answer(cfg):
    started = time.time()
    print("fake bench: " + json.dumps(cfg), file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("FAKE_BENCH_SLEEP", "0")))
    rng = random.Random(str(sorted(cfg.items())))
    speed = cfg["workers"] * (1 + cfg["chunk_size"] / 256)

    def metric(base):
        s = sorted(base * speed * (1 + 0.01 * rng.random()) for _ in range(cfg["repeats"]))
        return {"samples": s, "median": s[len(s) // 2], "iqr": s[-1] - s[0]}

    print(json.dumps({
        "schema_version": 1, "status": "ok", "config": cfg,
        "metrics": {"prefill_tok_s": metric(1000.0), "decode_tok_s": metric(50.0), "ttft_ms": metric(2.0),
                    "peak_mem_bytes": 0, "state_bytes": 0, "recall": 1.0, "mqar_pairs": 8, "max_drift": 0.0},
        "counters": {"kernel_calls": 3, "bands": 1, "chunks": 1, "tasks": 1, "peak_concurrency": 1,
                     "ordering_violations": 0, "decode": {"kernel_calls": 1}},
        "timings": {"setup_s": 0.0, "warmup_s": 0.0, "measured_s": 0.0, "started": started, "ended": time.time()},
        "env": {"device_name": "fake", "torch": "x", "project_version": "y",
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
    }), flush=True)


if sys.argv[-1] == "--worker":  # a warm worker: one request per stdin line
    for line in sys.stdin:
        answer(json.loads(line))
        print("bench worker: end of request", file=sys.stderr, flush=True)
else:
    answer(json.loads(sys.argv[-1]))
