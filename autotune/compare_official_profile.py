"""Where our prefill and decode time goes on a CUDA GPU: torch.profiler, by stage and kernel.

    python -m autotune.compare_official_profile --shape 7b --contexts 2048,8192,32768 --json OUT

Prefill: one forward of kernels.fastpath.FastModel over L tokens (cells through the
sequential scheduler, one band, one window over the prompt, as compare-official runs it),
each stage of each block inside a profiler range; every GPU kernel is counted in its stage
and classed as matmul (cuBLAS/CUTLASS) or not. The wall time of the same forward, timed
without the profiler, minus the kernels' summed time is the time the GPU sat idle
(launches, host work). Decode: the kernels of one step of the static decoder (the graph's
kernels, run eagerly), against the step time of the CUDA graph. Settings tried side by
side, each with its output difference: decode tiles (DECODE_SETTINGS), the prefill cell's
sub-chunk and output-kernel warps (CELL_SETTINGS), and the prefill as one CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from autotune.compare_official_model import timed, tokens
from kernels import XLSTM, chunkwise, get_config
from kernels.fastpath import FastModel
from kernels.registry import KernelRun, use_run, what_ran
from schedulers import Knobs, make_scheduler
from schedulers.graphs import GraphDecoder, StaticDecoder

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
    """(kernel name, µs) of every GPU kernel and copy in the profile."""
    device = [(ev.name, ev.time_range.elapsed_us()) for ev in prof.events()
              if ev.device_type == torch.autograd.DeviceType.CUDA]
    return device or [(k.name, k.duration) for ev in prof.events() for k in ev.kernels]


class StageTimer:
    """Device time of each named stage, from CUDA events around it (kernels plus the gaps
    between them while the stage runs)."""

    def __init__(self):
        self.marks = []

    @contextmanager
    def __call__(self, name: str):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.marks.append((name[6:], start, end))

    def totals_ms(self) -> dict:
        torch.cuda.synchronize()
        out = defaultdict(float)
        for name, start, end in self.marks:
            out[name] += start.elapsed_time(end)
        return dict(out)


def _summarize(kernels, wall_s: float, top: int = 25, per: int = 1) -> dict:
    """kernels: (name, µs) over `per` repetitions of the measured work."""
    by_name = defaultdict(lambda: [0, 0.0])
    for name, us in kernels:
        by_name[name][0] += 1
        by_name[name][1] += us / 1e3 / per
    busy_ms = sum(ms for _, ms in by_name.values())
    matmul_ms = sum(ms for n, (_, ms) in by_name.items() if kernel_class(n) == "matmul")
    top_kernels = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "wall_ms": wall_s * 1e3, "kernel_ms": busy_ms, "idle_ms": wall_s * 1e3 - busy_ms,
        "launches": len(kernels) // per, "matmul_ms": matmul_ms, "other_kernel_ms": busy_ms - matmul_ms,
        "top_kernels": [{"name": n[:120], "calls": c // per, "ms": ms, "class": kernel_class(n)}
                        for n, (c, ms) in top_kernels],
    }


def profile_prefill(fast, length: int, repeats: int, seed: int, graph_max: int = 8192) -> dict:
    model = fast.model
    toks = tokens(model.config.vocab_size, 1, length, seed, model.device)
    knobs = Knobs(workers=1, heads_per_band=model.config.num_heads, chunk_size=length, T_inner=length)
    with make_scheduler("sequential", knobs, device=model.device, dtype=model.dtype) as sched, torch.no_grad():
        fast.forward(toks, None, sched)  # warm-up
        wall = statistics.median(timed(lambda: fast.forward(toks, None, sched), repeats))
        torch.cuda.synchronize()
        start = time.perf_counter()
        fast.forward(toks, None, sched)
        host_s = time.perf_counter() - start  # the host's share: launches queued, no wait
        torch.cuda.synchronize()
        stages = StageTimer()
        _forward(fast, toks, sched, stages)
        stage_ms = stages.totals_ms()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _forward(fast, toks, sched, lambda name: nullcontext())
            torch.cuda.synchronize()
        out = _summarize(_kernels(prof), wall)
        out.update(tok_s=length / wall, host_ms=host_s * 1e3, stages_ms=stage_ms)
        if length <= graph_max:
            out["graph"] = _graph_prefill(fast, toks, sched, repeats)
    return out


def _graph_prefill(fast, toks, sched, repeats: int) -> dict:
    """The same forward captured once as a CUDA graph and replayed: its time and its
    largest logit difference from the eager forward (or why capture failed)."""
    expected, _ = fast.forward(toks, None, sched)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            fast.forward(toks, None, sched)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, _ = fast.forward(toks, None, sched)
    except Exception as exc:  # capture is what is being tried: its failure is the result
        torch.cuda.synchronize()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    graph.replay()
    diff = (logits - expected).abs().max().item()
    wall = statistics.median(timed(graph.replay, repeats))
    del graph
    return {"wall_ms": wall * 1e3, "tok_s": toks.shape[1] / wall, "max_abs_logit_diff": diff}


DECODE_SETTINGS = {  # kernel parameters of the triton ops tried side by side in the decode graph
    "as shipped": {},
    "rows_max_k=16384": {"rows_max_k": 16384},
    "step_tile=4096": {"step_tile": 4096},
    "both": {"rows_max_k": 16384, "step_tile": 4096},
}


def profile_decode(fast, steps: int, seed: int) -> dict:
    """The kernels of one decode step (run eagerly, the graph's own kernels), the graph's
    step time, and the step time under each of DECODE_SETTINGS (built and captured anew)
    with its largest logit difference from the shipped setting after one step."""
    model = fast.model
    knobs = Knobs(workers=1, heads_per_band=model.config.num_heads, chunk_size=64, T_inner=64)
    token = tokens(model.config.vocab_size, 1, 1, seed, model.device)
    settings, reference = {}, None
    with torch.no_grad():
        for label, values in [*DECODE_SETTINGS.items(), ("as shipped, again", {})]:
            with use_run(KernelRun(params=values)):  # the graph captures the kernels of this setting
                graph = GraphDecoder(model, knobs, fast=fast)
                graph.load_state(None)
                logits = graph.step(token).clone()
                reference = logits if reference is None else reference
                graph.generate(token, 4)
                step_s = statistics.median(timed(lambda: graph.generate(token, steps), 3)) / steps
            settings[label] = {"step_ms": step_s * 1e3, "tok_s": 1 / step_s,
                               "max_abs_logit_diff": (logits - reference).abs().max().item()}
            print(f"  decode {label:20} {step_s * 1e3:.3f} ms/step  {1 / step_s:7.1f} tok/s  "
                  f"max |dlogit| {settings[label]['max_abs_logit_diff']:.2e}", flush=True)
            del graph
        eager = StaticDecoder(model, knobs, fast=fast)
        eager.load_state(None)
        eager.generate(token, 2)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            eager.generate(token, steps)
            torch.cuda.synchronize()
    out = _summarize(_kernels(prof), settings["as shipped"]["step_ms"] / 1e3, per=steps)
    out["settings"] = settings
    return out


CELL_SETTINGS = {  # (sub_chunk, warps of the output kernel), tried side by side on one layer
    "as shipped (128, 8 warps)": (128, 8),
    "128, 16 warps": (128, 16),
    "64, 8 warps": (64, 8),
    "64, 16 warps": (64, 16),
}


def profile_cell(config, length: int, seed: int) -> dict:
    """One layer's prefill cell (the Triton sub-chunk kernels) at `length` under each of
    CELL_SETTINGS: ms per call (median of 5) and the largest h difference from the
    shipped setting."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    nh, dk, dv = config.num_heads, config.qk_dim // config.num_heads, config.v_dim // config.num_heads
    q, k = (torch.randn(1, nh, length, dk, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    v = torch.randn(1, nh, length, dv, device="cuda", generator=g).to(torch.bfloat16)
    i = 15 * torch.tanh((torch.randn(1, nh, length, device="cuda", generator=g) * 4 - 6) / 15)
    f = 15 * torch.tanh((torch.randn(1, nh, length, device="cuda", generator=g) * 2 + 4) / 15)
    out, reference = {}, None
    for label, (sub_chunk, warps) in CELL_SETTINGS.items():
        with use_run(KernelRun(params={"sub_chunk": sub_chunk, "output_warps": warps})):

            def call():
                return chunkwise.mlstm_chunkwise(q, k, v, i, f, method="triton")[0]

            h = call()
            reference = h if reference is None else reference
            ms = statistics.median(timed(call, 5)) * 1e3
        out[label] = {"ms": ms, "max_abs_h_diff": (h.float() - reference.float()).abs().max().item()}
        print(f"  cell L={length} {label:26} {ms:8.3f} ms/layer  max |dh| {out[label]['max_abs_h_diff']:.2e}",
              flush=True)
    return out


def main(argv=None) -> int:
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
    # decode first and the longest prompt next: the prefill graph captures (at lengths up
    # to 8192) come last, so a failed capture cannot spoil the other measurements
    if args.decode_steps:
        print("[profile] decode", file=sys.stderr, flush=True)
        result["decode"] = d = profile_decode(fast, args.decode_steps, args.seed)
        print(format_breakdown("decode step", d), flush=True)
    print("[profile] prefill cell settings", file=sys.stderr, flush=True)
    result["cell"] = profile_cell(model.config, 8192, args.seed)
    for L in sorted((int(x) for x in args.contexts.split(",") if x.strip()), reverse=True):
        print(f"[profile] prefill L={L}", file=sys.stderr, flush=True)
        result["prefill"][str(L)] = p = profile_prefill(fast, L, args.repeats, args.seed)
        print(format_breakdown(f"prefill L={L}", p), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["kernels"] = what_ran()  # the kernels and parameters that ran, any fallback
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def format_breakdown(title: str, p: dict) -> str:
    lines = [f"{title}: wall {p['wall_ms']:.2f} ms, kernels {p['kernel_ms']:.2f} ms ({p['launches']} launches), "
             f"matmul {p['matmul_ms']:.2f} ms, idle {p['idle_ms']:.2f} ms"]
    if "graph" in p:
        lines.append(f"  as one CUDA graph: {p['graph']}")
    if "host_ms" in p:
        lines.append(f"  host time to queue the forward: {p['host_ms']:.2f} ms")
    for stage, ms in sorted(p.get("stages_ms", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  stage {stage:16} {ms:9.2f} ms")
    for k in p["top_kernels"][:12]:
        lines.append(f"    {k['ms']:9.2f} ms {k['calls']:6d}x [{k['class']}] {k['name'][:90]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
