"""Fresh benchmark processes against a warm worker, side by side on one spec.

    python studies/warm_worker_compare.py --study studies/cpu-quick.toml --context 512 \
        --configs 8 --out studies/records/warm-worker-cpu.json

The baseline config and `--configs - 1` others drawn from the spec's space (seeded) are
each measured three times, interleaved so that a drift of the machine hits every mode
alike: a fresh process (A), the warm worker, another fresh process (B). The warm worker
is started once, by its first request, and that start is counted in its time.

Reported: wall time per measurement in each mode and the ratio of trials per hour
(warm / fresh), and per config the medians of prefill and decode tok/s: how far the warm
worker's lie from the fresh processes' mean, beside how far the two fresh processes lie
from each other (the process-to-process noise that confirmation measures).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from autotune.evaluators import FreshProcess, WarmWorker
from autotune.spec import load_spec
from autotune.sweep import sweep_space
from autotune.trials import bench_request

METRICS = ("prefill_tok_s", "decode_tok_s")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / ((a + b) / 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, help="hard limit per measurement (default: the spec's cap)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from kernels import get_config, resolve_device

    spec = load_spec(args.study)
    device = resolve_device(spec.model.device)
    device_str = spec.model.device if spec.model.device != "auto" else device.type
    space, baseline = sweep_space(spec, args.context, spec.model.backends, get_config(spec.model.shape).num_heads)
    others = [c for c in space.configs if c != baseline]
    configs = [baseline, *random.Random(args.seed).sample(others, min(args.configs - 1, len(others)))]
    timeout_s = args.timeout or spec.trials.timeout_cap_s
    fresh, warm = FreshProcess(), WarmWorker()
    rows = []
    try:
        for i, config in enumerate(configs, 1):
            request = bench_request(spec, device=device_str, context=args.context, params=config,
                                    repeats=spec.workload.repeats, timeout_s=timeout_s)
            row = {"config": config}
            for mode, evaluator in (("fresh_a", fresh), ("warm", warm), ("fresh_b", fresh)):
                start = time.monotonic()
                outcome = evaluator.measure(request, timeout_s=timeout_s)
                row[mode] = {"wall_s": round(time.monotonic() - start, 3), "ok": outcome.ok,
                             "error": None if outcome.ok else f"{outcome.error_kind}: {outcome.error_message}",
                             "timings": outcome.result.timings,
                             **{m: outcome.result.metrics.get(m, {}).get("median") for m in METRICS}}
            rows.append(row)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")  # kept if the run is cut off
            print(f"[{i}/{len(configs)}] {config}: " + ", ".join(
                f"{mode} {row[mode]['wall_s']:.1f} s" for mode in ("fresh_a", "warm", "fresh_b")), file=sys.stderr)
    finally:
        warm.close()

    ok = [r for r in rows if all(r[m]["ok"] for m in ("fresh_a", "warm", "fresh_b"))]
    fresh_s = statistics.mean(r[m]["wall_s"] for r in rows for m in ("fresh_a", "fresh_b"))
    warm_s = statistics.mean(r["warm"]["wall_s"] for r in rows)
    agreement = {}
    for metric in METRICS:
        noise = [_rel(r["fresh_a"][metric], r["fresh_b"][metric]) for r in ok]
        diff = [_rel(r["warm"][metric], (r["fresh_a"][metric] + r["fresh_b"][metric]) / 2) for r in ok]
        for r, n, d in zip(ok, noise, diff):
            r.setdefault("agreement", {})[metric] = {"fresh_vs_fresh": round(n, 4), "warm_vs_fresh": round(d, 4)}
        agreement[metric] = {"median_fresh_vs_fresh": round(statistics.median(noise), 4),
                             "median_warm_vs_fresh": round(statistics.median(diff), 4),
                             "max_fresh_vs_fresh": round(max(noise), 4),
                             "max_warm_vs_fresh": round(max(diff), 4)} if ok else None
    summary = {
        "study": args.study, "context": args.context, "device": device_str, "configs": len(configs),
        "configs_ok_in_every_mode": len(ok), "timeout_s": timeout_s,
        "mean_wall_s": {"fresh": round(fresh_s, 3), "warm": round(warm_s, 3)},
        "trials_per_hour": {"fresh": round(3600 / fresh_s, 1), "warm": round(3600 / warm_s, 1)},
        "warm_over_fresh": round(fresh_s / warm_s, 2),
        "warm_workers_started": warm.started,
        "agreement": agreement,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
