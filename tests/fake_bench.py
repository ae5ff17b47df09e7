"""A stand-in for `python -m autotune.bench` in the tuner's tests: prints one result line
like the real benchmark, in a fraction of a second.

Its speed grows with `workers` and `chunk_size` (so the search has a best config) and is
deterministic per config. It records what the tests check about the child itself: its
pid, CUDA_VISIBLE_DEVICES and its start and end times (in `timings` and `env`). With
`--worker` it answers one request per stdin line, as a warm worker does.

Behaviour on demand, through the environment:
- FAKE_BENCH_SLEEP (seconds): each run lasts that long;
- FAKE_CRASH_HPB=n: a config with heads_per_band n crashes (traceback, exit 1);
- FAKE_FAIL_T_INNER=n: T_inner n reports a numerical failure;
- FAKE_FLAT: every config is equally fast;
- FAKE_LOW_RECALL_WORKERS=n: workers n recalls 0.2;
- FAKE_FALLBACK_T_INNER=n: T_inner n reports a kernel fallback.
"""

import json
import os
import random
import sys
import time

env = os.environ.get


def fail(kind, message, code):
    print(json.dumps({"schema_version": 1, "status": "error", "error": {"kind": kind, "message": message}}))
    sys.exit(code)


def answer(cfg):
    started = time.time()
    print("fake bench: " + json.dumps(cfg), file=sys.stderr, flush=True)
    time.sleep(float(env("FAKE_BENCH_SLEEP", "0")))
    if env("FAKE_CRASH_HPB") and cfg["heads_per_band"] == int(env("FAKE_CRASH_HPB")):
        print("Traceback: boom", file=sys.stderr)
        sys.exit(1)
    if env("FAKE_FAIL_T_INNER") and cfg["T_inner"] == int(env("FAKE_FAIL_T_INNER")):
        fail("numerical", "NaN in the outputs", 6)
    key = (cfg["workers"], cfg["heads_per_band"], cfg["chunk_size"], cfg["T_inner"], cfg["repeats"], cfg["context"])
    rng = random.Random(str(key))
    speed = 1.0 if env("FAKE_FLAT") else cfg["workers"] * (1 + cfg["chunk_size"] / 256)

    def metric(base):
        s = sorted(base * speed * (1 + 0.02 * rng.random()) for _ in range(cfg["repeats"]))
        return {"samples": s, "median": s[len(s) // 2], "iqr": s[-1] - s[0]}

    low_recall = env("FAKE_LOW_RECALL_WORKERS") and cfg["workers"] == int(env("FAKE_LOW_RECALL_WORKERS"))
    fell_back = env("FAKE_FALLBACK_T_INNER") and cfg["T_inner"] == int(env("FAKE_FALLBACK_T_INNER"))
    kernels = {"prefill_cell": {"kernels": {"block": {}}, "last": "block"},
               "fallback": "chunkwise--triton -> chunkwise--fp32: forced" if fell_back else None}
    print(json.dumps({
        "schema_version": 1, "status": "ok", "config": cfg, "kernels": kernels,
        "metrics": {"prefill_tok_s": metric(1000.0), "decode_tok_s": metric(50.0), "ttft_ms": metric(2.0),
                    "peak_mem_bytes": 0, "state_bytes": 0, "recall": 0.2 if low_recall else 1.0, "mqar_pairs": 8,
                    "max_drift": 0.0},
        "counters": {"kernel_calls": 3, "bands": 4 // cfg["heads_per_band"], "chunks": 1, "tasks": 1,
                     "peak_concurrency": 1, "ordering_violations": 0, "decode": {"kernel_calls": 1}},
        "timings": {"setup_s": 0.0, "warmup_s": 0.0, "measured_s": 0.0, "pid": os.getpid(),
                    "started": started, "ended": time.time()},
        "env": {"device_name": "fake", "torch": "x", "project_version": "y",
                "cuda_visible_devices": env("CUDA_VISIBLE_DEVICES")},
    }), flush=True)


if sys.argv[-1] == "--worker":  # a warm worker: one request per stdin line
    for line in sys.stdin:
        answer(json.loads(line))
        print("bench worker: end of request", file=sys.stderr, flush=True)
else:
    answer(json.loads(sys.argv[-1]))
