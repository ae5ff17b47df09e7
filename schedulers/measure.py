"""Prefill and decode tok/s of the schedulers on one model shape, as one JSON document.

    python -m schedulers.measure --shape 350m --context 8192 --device cuda \\
        --backends sequential,queued,ray --knobs 1,8,256,64 --knobs 4,2,256,64

For every backend x knob setting: a prefill of `context` random tokens, then
`new_tokens` greedy decode steps, timed with the device synchronised; one untimed
warm-up pass first. The model is built once (random weights). A setting that fails
(invalid knobs, OOM, a scheduler error) is reported with its error and the run goes on.
This is the quick scheduler comparison; `autotune bench` is the full measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time

import torch

from kernels import XLSTM, device_name, get_config, resolve_device, synchronize
from schedulers.factory import BACKENDS, make_scheduler
from schedulers.plan import Knobs, make_plan

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_knobs(text: str) -> Knobs:
    """'workers,heads_per_band,chunk_size,T_inner' -> Knobs."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"--knobs {text!r}: give four integers workers,heads_per_band,chunk_size,T_inner (e.g. 2,4,256,64)")
    return Knobs(*(int(p) for p in parts))


def default_knobs(num_heads: int, context: int) -> list[Knobs]:
    """A few settings spanning the knobs: one band, a band per head, and in between."""
    chunk = min(256, context)
    t_inner = max(d for d in (64, 32, 16, 8, 4, 2, 1) if chunk % d == 0)
    settings = [Knobs(1, num_heads, chunk, t_inner), Knobs(num_heads, 1, chunk, t_inner)]
    if num_heads >= 4:
        settings.append(Knobs(num_heads // 2, 2, chunk, t_inner))
    return settings


def _clock(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def _decode(model, token, state, steps: int):
    for _ in range(steps):
        logits, state = model(token[:, None], state)
        token = logits[:, -1].argmax(dim=-1)
    return state


@torch.no_grad()
def measure_setting(model, prompt, backend: str, knobs: Knobs, *, device, dtype, new_tokens: int,
                    repeats: int, compile: bool, address: str | None) -> dict:
    """tok/s of one backend and knob setting (medians over `repeats`, with all samples)."""
    num_heads, context = model.config.num_heads, prompt.shape[1]
    make_plan(num_heads, context, knobs)  # a PlanError here is the setting's error
    t0 = time.perf_counter()
    with make_scheduler(backend, knobs, device=device, dtype=dtype, compile=compile,
                        address=address if backend == "ray" else None) as sched:
        setup_s = time.perf_counter() - t0
        model.cell_runner = sched
        t0 = _clock(device)
        logits, state = model(prompt)  # warm-up: every kernel shape runs once
        first = logits[:, -1].argmax(dim=-1)
        del logits
        _decode(model, first, state, 2)
        warmup_s = _clock(device) - t0
        sched.reset_counters()
        prefill, decode = [], []
        for _ in range(repeats):
            t0 = _clock(device)
            logits, state = model(prompt)
            t1 = _clock(device)
            first = logits[:, -1].argmax(dim=-1)
            del logits
            if not decode:
                prefill_counters = sched.counters.as_dict()
                sched.reset_counters()
            t2 = _clock(device)
            _decode(model, first, state, new_tokens)
            t3 = _clock(device)
            if not decode:
                decode_counters = sched.counters.as_dict()
            prefill.append(prompt.numel() / (t1 - t0))
            decode.append(prompt.shape[0] * new_tokens / (t3 - t2))
            del state
    return {
        "backend": backend,
        "knobs": knobs.as_dict(),
        "status": "ok",
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_samples": prefill,
        "decode_samples": decode,
        "setup_s": setup_s,
        "warmup_s": warmup_s,
        "counters": {"prefill": prefill_counters, "decode_per_run": decode_counters},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m schedulers.measure", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", help="model shape (kernels SHAPES), default tiny")
    p.add_argument("--context", type=int, default=256, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="decoded tokens per repeat")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | mps | auto")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends")
    p.add_argument("--knobs", type=parse_knobs, action="append",
                   help="workers,heads_per_band,chunk_size,T_inner; repeat for several settings "
                        "(default: a few spanning settings for the shape)")
    p.add_argument("--compile", action="store_true", help="torch.compile the T_inner kernels")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local instance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    return p


def _start_local_ray(num_cpus: int):
    """One local Ray instance for every ray setting (a scheduler would start and stop its
    own): its shutdown, or None where Ray already runs in this process."""
    import ray  # an optional extra: imported only when a ray backend is measured

    if ray.is_initialized():
        return None
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return ray.shutdown


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        print(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    try:
        config = get_config(args.shape)
        device = resolve_device(args.device)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    knob_settings = args.knobs or default_knobs(config.num_heads, args.context)
    model = XLSTM(config, device=device, dtype=dtype, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (args.batch, args.context), generator=gen).to(device)

    stop_ray = None
    if "ray" in backends and args.address is None:
        stop_ray = _start_local_ray(max(k.workers for k in knob_settings))
    results = []
    for backend in backends:
        for knobs in knob_settings:
            try:
                result = measure_setting(model, prompt, backend, knobs, device=device, dtype=dtype,
                                         new_tokens=args.new_tokens, repeats=args.repeats,
                                         compile=args.compile, address=args.address)
            except Exception as exc:  # reported per setting; the others still run
                result = {"backend": backend, "knobs": knobs.as_dict(), "status": "error",
                          "error": f"{type(exc).__name__}: {exc}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"{backend:10s} {knobs}: " + (
                f"prefill {result['prefill_tok_s']:.1f} tok/s, decode {result['decode_tok_s']:.1f} tok/s"
                if result["status"] == "ok" else result["error"]), file=sys.stderr, flush=True)
            results.append(result)

    if stop_ray is not None:
        stop_ray()
    document = {
        "schema_version": 1,
        "command": "python -m schedulers.measure " + " ".join(sys.argv[1:] if argv is None else argv),
        "shape": args.shape, "context": args.context, "new_tokens": args.new_tokens,
        "batch": args.batch, "repeats": args.repeats, "dtype": args.dtype, "compile": args.compile,
        "env": {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                "python": platform.python_version(), "platform": platform.platform()},
        "results": results,
    }
    text = json.dumps(document, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
