"""Where our prefill and decode time goes on a CUDA GPU: torch.profiler, by stage and kernel.

    python -m autotune.compare_official_profile --shape 7b --contexts 2048,8192,32768 --json OUT

Prefill: one forward of kernels.fastpath.FastModel over L tokens (cells through the
sequential scheduler, one band, one window over the prompt, as compare-official runs it),
each stage of each block inside a profiler range; every GPU kernel is counted in its stage
and classed as matmul (cuBLAS/CUTLASS) or not. The wall time of the same forward, timed
without the profiler, minus the kernels' summed time is the time the GPU sat idle
(launches, host work). Decode: the kernels of one step of the static decoder (the graph's
kernels, run eagerly), against the step time of the CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

MATMUL = re.compile(r"gemm|gemv|nvjet|cutlass|xmma|cublas|sm90_|ampere_|Kernel2", re.I)
STAGES = ("embed", "mlstm.in_proj", "mlstm.gates", "mlstm.cell", "mlstm.out", "ffn.up", "ffn.down", "head")


def kernel_class(name: str) -> str:
    return "matmul" if MATMUL.search(name) else "other"


def _forward(fast, toks, runner, rf):
    """FastModel.forward with each stage in a profiler range named stage:<name>."""
    with rf("stage:embed"):
        x = fast.embed(toks)
    for b, block in enumerate(fast.model.blocks):
        with rf("stage:mlstm.in_proj"):
            q, k, v, i_pre, f_pre, o_pre = fast.split(fast.mlstm_in(b, x))
        with rf("stage:mlstm.gates"):
            i, f = fast.gates(i_pre, f_pre)
        with rf("stage:mlstm.cell"):
            h, _ = runner(b, q, k, v, i, f, None)
        with rf("stage:mlstm.out"):
            x = fast.mlstm_out(b, x, h.transpose(1, 2), o_pre)
        with rf("stage:ffn.up"):
            gate_up = fast.ops.rms_linear(x, block.norm_ffn.weight, block.norm_ffn.eps, fast.up_proj[b])
        with rf("stage:ffn.down"):
            x = fast.ops.silu_linear_add(x, gate_up, fast.config.ffn_dim, block.ffn.proj_down.weight)
    with rf("stage:head"):
        return fast.head(x)


def _kernels(prof):
    """(kernel name, µs, stage) for every GPU kernel in the profile."""
    out = []
    for ev in prof.events():
        stage = None
        node = ev
        while node is not None:
            if node.name.startswith("stage:"):
                stage = node.name[6:]
                break
            node = node.cpu_parent
        for k in ev.kernels:
            out.append((k.name, k.duration, stage))
    return out


def _summarize(kernels, wall_s: float, top: int = 25) -> dict:
    by_stage = defaultdict(lambda: defaultdict(float))
    by_name = defaultdict(lambda: [0, 0.0])
    for name, us, stage in kernels:
        by_stage[stage or "unstaged"][kernel_class(name)] += us / 1e3
        by_name[name][0] += 1
        by_name[name][1] += us / 1e3
    busy_ms = sum(us for _, us, _ in kernels) / 1e3
    top_kernels = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "wall_ms": wall_s * 1e3, "kernel_ms": busy_ms, "idle_ms": wall_s * 1e3 - busy_ms,
        "launches": len(kernels),
        "matmul_ms": sum(v.get("matmul", 0.0) for v in by_stage.values()),
        "stages_ms": {s: dict(v) for s, v in by_stage.items()},
        "top_kernels": [{"name": n[:120], "calls": c, "ms": ms, "class": kernel_class(n)} for n, (c, ms) in top_kernels],
    }


def profile_prefill(fast, length: int, repeats: int, seed: int) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    from autotune.compare_official_model import timed, tokens
    from schedulers import Knobs, make_scheduler

    model = fast.model
    toks = tokens(model.config.vocab_size, 1, length, seed, model.device)
    knobs = Knobs(workers=1, heads_per_band=model.config.num_heads, chunk_size=length, T_inner=length)
    with make_scheduler("sequential", knobs, device=model.device, dtype=model.dtype) as sched, torch.no_grad():
        fast.forward(toks, None, sched)  # warm-up
        wall = statistics.median(timed(lambda: fast.forward(toks, None, sched), repeats))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            _forward(fast, toks, sched, record_function)
            torch.cuda.synchronize()
    out = _summarize(_kernels(prof), wall)
    out["tok_s"] = length / wall
    return out


def profile_decode(fast, steps: int, seed: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from autotune.compare_official_model import timed, tokens
    from schedulers import Knobs
    from schedulers.graphs import GraphDecoder, StaticDecoder

    model = fast.model
    knobs = Knobs(workers=1, heads_per_band=model.config.num_heads, chunk_size=64, T_inner=64)
    token = tokens(model.config.vocab_size, 1, 1, seed, model.device)
    with torch.no_grad():
        graph = GraphDecoder(model, knobs, fast=fast)
        graph.load_state(None)
        graph.generate(token, 4)
        step_s = statistics.median(timed(lambda: graph.generate(token, steps), 3)) / steps
        del graph
        eager = StaticDecoder(model, knobs, fast=fast)
        eager.load_state(None)
        eager.generate(token, 2)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            eager.generate(token, steps)
            torch.cuda.synchronize()
    kernels = [(k.name, k.duration, None) for ev in prof.events() for k in ev.kernels] or \
        [(ev.name, ev.device_time, None) for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    out = _summarize([(n, us / steps, s) for n, us, s in kernels], step_s)
    out["graph_step_ms"] = step_s * 1e3
    return out


def main(argv=None) -> int:
    from kernels import XLSTM, get_config
    from kernels.fastpath import FastModel

    parser = argparse.ArgumentParser(prog="python -m autotune.compare_official_profile", description=__doc__)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--contexts", default="2048,8192,32768")
    parser.add_argument("--decode-steps", type=int, default=16, help="decode steps profiled (0: no decode profile)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the breakdown as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: profiling needs a CUDA GPU; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    model = XLSTM(get_config(args.shape), device=device, dtype=torch.bfloat16, seed=args.seed)
    fast = FastModel(model)
    result = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "shape": args.shape,
              "command": "python -m autotune.compare_official_profile " + " ".join(sys.argv[1:]), "prefill": {}}
    for L in (int(x) for x in args.contexts.split(",") if x.strip()):
        print(f"[profile] prefill L={L}", file=sys.stderr, flush=True)
        result["prefill"][str(L)] = p = profile_prefill(fast, L, args.repeats, args.seed)
        print(format_breakdown(f"prefill L={L}", p), flush=True)
    if args.decode_steps:
        print("[profile] decode", file=sys.stderr, flush=True)
        result["decode"] = d = profile_decode(fast, args.decode_steps, args.seed)
        print(format_breakdown("decode step", d), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def format_breakdown(title: str, p: dict) -> str:
    lines = [f"{title}: wall {p['wall_ms']:.2f} ms, kernels {p['kernel_ms']:.2f} ms ({p['launches']} launches), "
             f"matmul {p['matmul_ms']:.2f} ms, idle {p['idle_ms']:.2f} ms"]
    for stage, v in sorted(p["stages_ms"].items(), key=lambda kv: -sum(kv[1].values())):
        lines.append(f"  {stage:16} matmul {v.get('matmul', 0.0):9.2f} ms   other {v.get('other', 0.0):9.2f} ms")
    for k in p["top_kernels"][:12]:
        lines.append(f"    {k['ms']:9.2f} ms {k['calls']:6d}x [{k['class']}] {k['name'][:90]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
