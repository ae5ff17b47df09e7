"""Brute-force tuning surfaces of the two Triton kernels of the sub-chunked mLSTM prefill
(kernels.triton_chunkwise: chunk_states, chunk_outputs), written as autotune-surface
files that `autotune replay` and the held-out tool read.

Knobs, the same for both kernels: the sub-chunk (C), the DK and DV tiles, num_warps and
num_stages. Every config is compiled (in parallel worker processes, into one Triton
cache), loaded onto the GPU (a config that needs more shared memory or threads than the
GPU has fails here), run once and checked against the kernel's shipped tiles at the same
sub-chunk, then timed alone: 7 samples, each the mean over enough back-to-back launches
to fill about a millisecond, timed with CUDA events. The objective is the kernel's time
in ms over the whole window (shape 7b: 8 heads, DK 256, DV 512; batch 1, 8192 steps).

  python studies/records/mlstm-kernel-surfaces.py measure --out DIR [--kernels K,K] [--jobs N] [--deadline S]
  python studies/records/mlstm-kernel-surfaces.py build DIR --out-dir studies/surfaces

`measure` appends one JSON line per config to DIR/compile.jsonl and DIR/runs.jsonl and
skips configs already there, so the same command continues after a stop; `build` turns
the journals into one surface file per kernel measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

KNOBS = {"sub_chunk": [16, 32, 64, 128], "block_dk": [16, 32, 64, 128], "block_dv": [16, 32, 64, 128],
         "num_warps": [2, 4, 8, 16], "num_stages": [1, 2, 3, 4]}
KERNELS = ("chunk_outputs", "chunk_states")
B, NH, S, DK, DV = 1, 8, 8192, 256, 512
SAMPLES = 7
SAMPLE_MS = 1.0
COMPILE_TIMEOUT_S = 120
TOLERANCE = 1e-3  # largest |difference| relative to the shipped tiles' largest |value|


def configs():
    keys = list(KNOBS)
    return [dict(zip(keys, values)) for values in itertools.product(*KNOBS.values())]


def key_of(kernel: str, config: dict) -> str:
    return kernel + ":" + ",".join(str(config[k]) for k in KNOBS)


def _ints(kernel: str, C: int):
    """The integer arguments of a launch at sub-chunk C (the cache key depends on them)."""
    from kernels.chunkwise_stages import aug_width
    K, dva = S // C, aug_width(DV)
    if kernel == "chunk_states":
        return dict(K=K, BNH=B * NH, DK=DK, DV=DV, DVA=dva)
    return dict(BNH=B * NH, NH=NH, DK=DK, DV=DV, DVA=dva, s_hb=NH * S * DV, s_hh=S * DV, s_ht=DV)


def shipped(kernel: str, C: int) -> dict:
    """The config the kernels run today at sub-chunk C (kernels.triton_chunkwise, and the
    registry's default output_warps)."""
    from kernels import triton_chunkwise as tc
    from kernels.registry import DEFAULT_OUTPUT_WARPS
    warps = tc.STATES_WARPS if kernel == "chunk_states" else DEFAULT_OUTPUT_WARPS
    return {"sub_chunk": C, "block_dk": tc._tile(DK, tc.TILE_CAP), "block_dv": tc._tile(DV, tc.TILE_CAP),
            "num_warps": warps, "num_stages": tc.STAGES}


def _error(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _launch(kernel: str, config: dict, tensors, warmup: bool = False):
    """One launch of `kernel` at `config`; tensors: a dict of arrays, or of dtypes for a
    compile-only warmup."""
    import torch
    import triton
    from kernels import triton_chunkwise as tc
    C, bdk, bv = config["sub_chunk"], config["block_dk"], config["block_dv"]
    ints = _ints(kernel, C)
    opts = dict(C=C, BDK=bdk, BV=bv, HALF=tc._HALF[torch.bfloat16],
                num_warps=config["num_warps"], num_stages=config["num_stages"])
    t = tensors
    if kernel == "chunk_states":
        grid = (B * NH, triton.cdiv(DK, bdk), triton.cdiv(DV, bv))
        args = (t["k_m"], t["v_m"], t["w"], t["g"], t["slots"], *ints.values())
        fn = tc._chunk_states_kernel
    else:
        grid = (ints["BNH"] * (S // C), triton.cdiv(DV, bv))
        args = (t["q_m"], t["k_m"], t["v_m"], t["f_log"], t["i_m"], t["b"], t["m_start"], t["slots"], t["h"],
                *ints.values(), DK ** -0.5, 1e-6)
        fn = tc._chunk_outputs_kernel
    if warmup:
        return fn.warmup(*args, grid=grid, **opts)
    return fn[grid](*args, **opts)


def _dtypes():
    import torch
    half, f32 = torch.bfloat16, torch.float32
    return dict(q_m=half, k_m=half, v_m=half, h=half, w=f32, g=f32, slots=f32, f_log=f32, i_m=f32, b=f32,
                m_start=f32)


def _timeout(signum, frame):
    raise TimeoutError(f"compile took over {COMPILE_TIMEOUT_S} s")


def compile_one(task):
    """Worker: compile and load one config; the compile time, registers, spills and shared
    memory, or the error."""
    kernel, config = task
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(COMPILE_TIMEOUT_S)
    start = time.perf_counter()
    row = {"key": key_of(kernel, config), "kernel": kernel, "config": config}
    try:
        compiled = _launch(kernel, config, _dtypes(), warmup=True)
        compiled._init_handles()  # loads it: fails where it needs more than the GPU has
        row.update(ok=True, n_regs=compiled.n_regs, n_spills=compiled.n_spills, shared=compiled.metadata.shared)
    except Exception as exc:  # noqa: BLE001 - every failure is a data point
        row.update(ok=False, error=_error(exc))
    finally:
        signal.alarm(0)
    row["compile_s"] = round(time.perf_counter() - start, 3)
    return row


def _worker_init():
    import torch
    torch.cuda.init()


def _journal(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["key"]] = row
    return rows


def _append(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def _inputs(C: int):
    """Real inputs at sub-chunk C (random q, k, v, gates) laid out as kernels.chunkwise lays
    them out, and the shipped tiles' outputs as the reference."""
    import torch
    from kernels import chunkwise_stages as st
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(B, NH, S, DK, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device="cuda", generator=gen).to(torch.bfloat16)
    i = torch.randn(B, NH, S, device="cuda", generator=gen)
    f = torch.randn(B, NH, S, device="cuda", generator=gen) + 3.0
    K = S // C
    m0 = torch.zeros(B, NH, 1, device="cuda")
    f_log, i_m, b, m_start, m_end, g, w = st.gates(i, f, m0, K, C, torch.float32)
    t = dict(q_m=st.k_major(q, K, C, torch.bfloat16), k_m=st.k_major(k, K, C, torch.bfloat16),
             v_m=st.k_major(v, K, C, torch.bfloat16), f_log=f_log, i_m=i_m, b=b, m_start=m_start, g=g, w=w,
             slots=torch.zeros(K + 1, B, NH, DK, st.aug_width(DV), device="cuda"),
             h=torch.empty(B, NH, S, DV, dtype=torch.bfloat16, device="cuda"))
    ref = {}
    for kernel in KERNELS[::-1]:  # the states first: the outputs read them
        _launch(kernel, shipped(kernel, C), t)
        ref[kernel] = (t["slots"] if kernel == "chunk_states" else t["h"]).clone()
    return t, ref


def _check(kernel: str, t, ref) -> float:
    out = t["slots"] if kernel == "chunk_states" else t["h"]
    want = ref[kernel]
    err = (out.float() - want.float()).abs().max().item() / max(want.float().abs().max().item(), 1e-30)
    if kernel == "chunk_outputs":
        t["h"].zero_()  # so that a config which writes nothing cannot pass on the last one's output
    return err


def time_one(kernel: str, config: dict, t, ref) -> dict:
    import torch
    row = {"key": key_of(kernel, config), "kernel": kernel, "config": config}
    try:
        if kernel == "chunk_states":  # timed after every chunk_outputs config, which reads these
            t["slots"][1:].zero_()
        _launch(kernel, config, t)
        torch.cuda.synchronize()
        err = _check(kernel, t, ref)
        row["rel_error"] = err
        if not math.isfinite(err) or err > TOLERANCE:
            row.update(ok=False, error=f"WrongResult: relative error {err:.3g} > {TOLERANCE}")
            return row
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            _launch(kernel, config, t)
        end.record()
        end.synchronize()
        reps = max(1, min(200, math.ceil(SAMPLE_MS / (start.elapsed_time(end) / 3))))
        samples = []
        for _ in range(SAMPLES):
            start.record()
            for _ in range(reps):
                _launch(kernel, config, t)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / reps)
        row.update(ok=True, samples=samples, reps=reps)
    except Exception as exc:  # noqa: BLE001
        torch.cuda.synchronize()
        row.update(ok=False, error=_error(exc))
    return row


def measure(args) -> int:
    import torch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.deadline
    compiled_path, runs_path = out / "compile.jsonl", out / "runs.jsonl"
    import triton
    (out / "machine.json").write_text(json.dumps({"device_name": torch.cuda.get_device_name(),
                                                   "torch": torch.__version__, "triton": triton.__version__,
                                                   "cuda": torch.version.cuda}) + "\n")
    done = _journal(compiled_path)
    kernels = [k for k in KERNELS if k in args.kernels.split(",")]
    todo = [(kn, c) for kn in kernels for c in configs() if key_of(kn, c) not in done]
    print(f"compile: {len(done)} journalled, {len(todo)} to go, {args.jobs} processes", flush=True)
    if todo:
        with mp.get_context("spawn").Pool(args.jobs, initializer=_worker_init, maxtasksperchild=64) as pool:
            for n, row in enumerate(pool.imap_unordered(compile_one, todo, chunksize=1), 1):
                _append(compiled_path, row)
                done[row["key"]] = row
                if n % 100 == 0:
                    print(f"  compiled {n}/{len(todo)}", flush=True)
                if time.monotonic() > deadline - args.bench_reserve:
                    print("compile: out of time", flush=True)
                    pool.terminate()
                    break
    runs = _journal(runs_path)
    print(f"time: {len(runs)} journalled; GPU {torch.cuda.get_device_name()}", flush=True)
    for C in KNOBS["sub_chunk"]:
        pending = [(kn, c) for kn in kernels for c in configs() if c["sub_chunk"] == C
                   and done.get(key_of(kn, c), {}).get("ok") and key_of(kn, c) not in runs]
        if not pending:
            continue
        t, ref = _inputs(C)
        for kernel, config in pending:
            if time.monotonic() > deadline:
                print("time: out of time", flush=True)
                return 3
            row = time_one(kernel, config, t, ref)
            _append(runs_path, row)
            runs[row["key"]] = row
        print(f"  sub_chunk {C}: {len(pending)} timed", flush=True)
        del t, ref
        torch.cuda.empty_cache()
    return 0


def _gpu(meta: dict) -> str:
    """'h200' for 'NVIDIA H200', 'h100' for 'NVIDIA H100 80GB HBM3'."""
    words = meta.get("device_name", "gpu").replace("NVIDIA", "").split()
    return words[0].lower() if words else "gpu"


def build(args) -> int:
    src = Path(args.dir)
    compiled, runs = _journal(src / "compile.jsonl"), _journal(src / "runs.jsonl")
    meta = json.loads((src / "machine.json").read_text()) if (src / "machine.json").exists() else {}
    for kernel in [k for k in KERNELS if any(row["kernel"] == k for row in compiled.values())]:
        entries = []
        for config in configs():
            key = key_of(kernel, config)
            c, r = compiled.get(key), runs.get(key)
            if c is None or (c.get("ok") and r is None):
                raise SystemExit(f"{key}: not measured yet; run measure again")
            error = None if (c["ok"] and r["ok"]) else (c.get("error") or r.get("error"))
            entries.append({"config": config, "samples": [] if error else r["samples"], "error": error,
                            "compile": {k: c.get(k) for k in ("compile_s", "n_regs", "n_spills", "shared")},
                            "rel_error": (r or {}).get("rel_error")})
        doc = {"format": "autotune-surface", "schema_version": 1, "name": f"{_gpu(meta)}-mlstm-{kernel.replace('_', '-')}",
               "kind": "triton-kernel", "kernel": f"kernels.triton_chunkwise.{kernel}",
               "shape": {"batch": B, "heads": NH, "steps": S, "dk": DK, "dv": DV, "dtype": "bfloat16"},
               "device": meta, "objective": {"name": "time_ms", "direction": "minimize",
                                            "definition": "kernel time over the window, ms (CUDA events)"},
               "knobs": KNOBS, "configs": entries}
        path = Path(args.out_dir) / f"{doc['name']}.json"
        path.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
        failing = sum(1 for e in entries if e["error"])
        print(f"{path}: {len(entries)} configs, {failing} failing")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("--kernels", default=",".join(KERNELS), help="which kernels (default: both)")
    m.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    m.add_argument("--deadline", type=float, default=560.0, help="seconds from start to stop cleanly")
    m.add_argument("--bench-reserve", type=float, default=150.0, help="seconds kept for timing")
    b = sub.add_parser("build")
    b.add_argument("dir")
    b.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    return measure(args) if args.command == "measure" else build(args)


if __name__ == "__main__":
    sys.exit(main())
