"""GPU study of the fast paths: correctness of the Triton ops, the sub-chunked prefill form
and the CUDA-graph decode against the reference paths, then timings of their variants
(7b shape, bf16 weights, fp32 state, batch 1). CUDA only.

    python studies/fastpath_study.py OUT.json [--sections checks,gemv,decode,prefill]

Each section is independent (a failure is recorded and the next one runs); the JSON is
rewritten after every section, and a short table is printed last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import torch

ALL = ("checks", "light", "exact", "gemv", "sweep", "decode", "profile", "prefill")


def sync():
    torch.cuda.synchronize()


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sections


def _chunkwise_fp32_check(dev, g):
    """Random float64 inputs of 700 steps (two heads) and the fp32 sub-chunked form's
    error against the float64 reference loop on them."""
    from kernels import mlstm_sequence
    from kernels.chunkwise import mlstm_chunkwise

    B, NH, S, DK, DV = 1, 2, 700, 64, 128
    x = [torch.randn(B, NH, S, DK, device=dev, generator=g, dtype=torch.float64) for _ in range(2)]
    x.append(torch.randn(B, NH, S, DV, device=dev, generator=g, dtype=torch.float64))
    x.append(torch.randn(B, NH, S, device=dev, generator=g, dtype=torch.float64) * 3)
    x.append(torch.randn(B, NH, S, device=dev, generator=g, dtype=torch.float64) * 2 + 3)
    h_ref, s_ref = mlstm_sequence(*x)
    h, s = mlstm_chunkwise(*(t.float() for t in x))
    return x, {"h": rel(h, h_ref), "C": rel(s[0], s_ref[0]), "n": rel(s[1], s_ref[1]),
               "m_abs": (s[2].double() - s_ref[2]).abs().max().item()}


def section_checks(res):
    from kernels import XLSTM, get_config
    from kernels.fused_ops import TorchOps
    from kernels.triton_ops import TritonOps
    from schedulers import Knobs, make_scheduler
    from schedulers.graphs import GraphDecoder, StaticDecoder

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        d = {}
        x = torch.randn(3, 4096, device=dev, generator=g).to(dt)
        w = (torch.rand(4096, device=dev, generator=g) + 0.5).to(dt)
        a, b = TorchOps.rms_norm(x, w, 1e-6), TritonOps.rms_norm(x, w, 1e-6)
        d["rms_norm"] = {"rel": rel(b, a), "equal_frac": (a == b).float().mean().item()}
        h = torch.randn(1, 8, 5, 512, device=dev, generator=g).to(dt).transpose(1, 2)
        o = torch.randn(1, 5, 4096, device=dev, generator=g).to(dt)
        a, b = TorchOps.head_norm_gate(h, o, w, 1e-6), TritonOps.head_norm_gate(h, o, w, 1e-6)
        d["head_norm_gate"] = {"rel": rel(b, a), "equal_frac": (a == b).float().mean().item()}
        gu = torch.randn(5, 2 * 10944, device=dev, generator=g).to(dt)
        a, b = TorchOps.silu_mul(gu, 10944), TritonOps.silu_mul(gu, 10944)
        d["silu_mul"] = {"rel": rel(b, a), "equal_frac": (a == b).float().mean().item()}
        lg = (torch.randn(5, 50304, device=dev, generator=g) * 40).to(dt)
        a, b = TorchOps.soft_cap(lg, 30.0), TritonOps.soft_cap(lg, 30.0)
        d["soft_cap"] = {"rel": rel(b, a)}
        B, NH, DK, DV = 1, 8, 256, 512
        q = torch.randn(B, NH, DK, device=dev, generator=g).to(dt)
        k = torch.randn(B, NH, DK, device=dev, generator=g).to(dt)
        v = torch.randn(B, NH, DV, device=dev, generator=g).to(dt)
        ip = (torch.randn(B, NH, device=dev, generator=g) * 8).to(dt)
        fp = (torch.randn(B, NH, device=dev, generator=g) * 3 + 3).to(dt)
        C = torch.randn(B, NH, DK, DV, device=dev, generator=g)
        n = torch.randn(B, NH, DK, device=dev, generator=g)
        m = torch.randn(B, NH, 1, device=dev, generator=g)
        res_ops = []
        for ops in (TorchOps, TritonOps):
            C2 = C.clone()
            no, mo = torch.full_like(n, float("nan")), torch.full_like(m, float("nan"))
            ho = torch.full((B, NH, DV), float("nan"), device=dev).to(dt)
            for hs in (slice(0, 3), slice(3, 8)):  # two bands
                ops.mlstm_step_into(q[:, hs], k[:, hs], v[:, hs], ip[:, hs], fp[:, hs], 15.0, C2[:, hs],
                                    n[:, hs], m[:, hs], no[:, hs], mo[:, hs], ho[:, hs])
            res_ops.append((C2, no, mo, ho))
        d["mlstm_step_into"] = {name: rel(b, a) for name, a, b in zip("Cnmh", *res_ops)}
        d["mlstm_step_into"]["finite"] = bool(all(torch.isfinite(t).all() for t in res_ops[1]))
        out[str(dt)] = d
    # sub-chunked form on the GPU: fp32 against a float64 reference loop
    _, out["chunkwise_fp32_vs_f64"] = _chunkwise_fp32_check(dev, g)
    # graph decode vs the model on a small shape, several knob settings
    cfg = get_config("350m")
    model = XLSTM(cfg, device=dev, dtype=torch.bfloat16, seed=1)
    prompt = torch.randint(0, cfg.vocab_size, (1, 40), device=dev, generator=g)
    ref_model_logits = {}
    with torch.no_grad():
        logits, state = model(prompt)
        first = logits[:, -1:].argmax(-1)
        st, tok, ref_tokens = state, first, []
        for _ in range(8):
            lg, st = model(tok, st)
            ref_model_logits[len(ref_tokens)] = lg
            tok = lg[:, -1:].argmax(-1)
            ref_tokens.append(tok)
        ref_tokens = torch.cat(ref_tokens, 1)
        gd = {}
        for w, hb in ((1, 8), (2, 4), (8, 1), (3, 2)):
            knobs = Knobs(workers=w, heads_per_band=hb, chunk_size=64, T_inner=64)
            dec = GraphDecoder(model, knobs)
            dec.load_state(state)
            l0 = dec.step(first).clone()
            dec.load_state(state)
            dec.reset_counters()
            toks = dec.generate(first, 8)
            eager = StaticDecoder(model, knobs, fast=dec.fast)
            eager.load_state(state)
            le = eager.step(first)
            gd[f"w{w}_hb{hb}"] = {
                "logits_rel_vs_model": rel(l0, ref_model_logits[0]),
                "logits_rel_vs_static_eager": rel(l0, le),
                "tokens_equal_model": int((toks == ref_tokens).sum().item()), "tokens": 8,
                "counters": dec.counters.as_dict(), "expected": dec.expected_counters(8).as_dict(),
                "streams": dec.plan.streams,
            }
            del dec, eager
        out["graph_decode_350m"] = gd
        # prefill through FastModel vs the model (queued scheduler, chunkwise T_inner)
        knobs = Knobs(workers=2, heads_per_band=4, chunk_size=512, T_inner=512)
        long = torch.randint(0, cfg.vocab_size, (1, 1000), device=dev, generator=g)
        model.cell_runner = make_scheduler("sequential", Knobs(1, 8, 64, 64), device=dev, dtype=torch.bfloat16)
        ref_logits, ref_state = model(long)
        from kernels.fastpath import FastModel

        fm = FastModel(model)
        with make_scheduler("queued", knobs, device=dev, dtype=torch.bfloat16) as sched:
            lg, st2 = fm.forward(long, None, sched)
            out["prefill_350m_fast_vs_model"] = {"logits_rel": rel(lg, ref_logits),
                                                 "C_rel_last": rel(sched.materialize(st2[-1])[0], ref_state[-1][0]),
                                                 "counters": sched.counters.as_dict()}
    del model
    out["fp32_and_bf16_paths_350m"] = _path_precision(dev, g)
    out["gemv_composites"] = _gemv_composite_checks(dev, g)
    res["checks"] = out


def _path_precision(dev, g):
    """The fast paths in fp32 against the model in fp32 (same function, fp32 rounding), and
    both bf16 paths against the fp32 model (is the fast path's bf16 error the model's?)."""
    import copy

    from kernels import XLSTM, get_config
    from kernels.fastpath import FastModel
    from schedulers import Knobs, make_scheduler
    from schedulers.graphs import GraphDecoder

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = get_config("350m")
    m32 = XLSTM(cfg, device=dev, dtype=torch.float32, seed=3)
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (1, 300), device=dev, generator=g)
    knobs = Knobs(workers=2, heads_per_band=4, chunk_size=300, T_inner=300)
    out = {}
    with torch.no_grad():
        ref, st32 = m32(prompt)
        ref_next, _ = m32(ref[:, -1:].argmax(-1), [tuple(t.clone() for t in s) for s in st32])
        for name, model in (("fp32", m32), ("bf16", m16)):
            plain, plain_state = model(prompt)
            plain_next, _ = model(ref[:, -1:].argmax(-1), [tuple(t.clone() for t in s) for s in plain_state])
            fast = FastModel(model)
            with make_scheduler("sequential", knobs, device=dev, dtype=model.dtype) as sched:
                lg, st = fast.forward(prompt, None, sched)
                dec = GraphDecoder(model, knobs, fast=fast)
                dec.load_state(st, sched.materialize)
                nxt = dec.step(ref[:, -1:].argmax(-1)).clone()
            out[name] = {"model_prefill_vs_fp32_model": rel(plain, ref), "fast_prefill_vs_fp32_model": rel(lg, ref),
                         "fast_prefill_vs_same_dtype_model": rel(lg, plain),
                         "model_step_vs_fp32_model": rel(plain_next, ref_next),
                         "graph_step_vs_fp32_model": rel(nxt, ref_next),
                         "graph_step_vs_same_dtype_model": rel(nxt, plain_next)}
            del dec, fast
    return out


def _gemv_composite_checks(dev, g):
    from kernels.fused_ops import TorchOps
    from kernels.triton_ops import TritonOps

    out = {}
    for dt in (torch.float32, torch.bfloat16):
        d, hidden, NH, DH = 4096, 10944, 8, 512

        def r(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

        x, nw = r(1, 1, d), (torch.rand(d, device=dev, generator=g) + 0.5).to(dt)
        W, b = r(12304, d, scale=0.02), r(12304)
        cases = {
            "rms_linear": lambda ops: ops.rms_linear(x, nw, 1e-6, W, b),
            "rms_linear_soft_cap": lambda ops: ops.rms_linear_soft_cap(x, nw, 1e-6, W, 30.0),
        }
        h, o, hw, Wo = r(1, 1, NH, DH), r(1, 1, d), (torch.rand(d, device=dev, generator=g) + 0.5).to(dt), r(d, d, scale=0.02)
        cases["head_norm_gate_linear_add"] = lambda ops: ops.head_norm_gate_linear_add(x, h, o, hw, 1e-6, Wo)
        gu, Wd = r(1, 1, 2 * hidden), r(d, hidden, scale=0.02)
        cases["silu_linear_add"] = lambda ops: ops.silu_linear_add(x, gu, hidden, Wd)
        res = {}
        for name, fn in cases.items():
            a, bb = fn(TorchOps), fn(TritonOps)
            res[name] = {"rel": rel(bb, a), "equal_frac": (a == bb).float().mean().item(),
                         "max_ulps_bf16": ((a.float() - bb.float()).abs() / a.float().abs().clamp_min(1e-30)).max().item()}
        out[str(dt)] = res
    return out


def section_light(res):
    """The checks that changed code needs: fused GEMVs against torch, the sub-chunked form
    (fp32 and bf16 inputs, the tensor-core q·k path) against a float64 loop."""
    from kernels import mlstm_sequence
    from kernels.chunkwise import mlstm_chunkwise

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(5)
    out = {"gemv_composites": _gemv_composite_checks(dev, g)}
    x, out["chunkwise_fp32_vs_f64"] = _chunkwise_fp32_check(dev, g)
    xb = [t.to(torch.bfloat16) for t in x[:3]] + [t.float() for t in x[3:]]
    h_ref, s_ref = mlstm_sequence(*(t.double() for t in xb))
    for mode in ("fp32", "split", "triton"):
        h, s = mlstm_chunkwise(*xb, method=mode)
        out[f"chunkwise_bf16_{mode}_vs_f64"] = {"h": rel(h, h_ref), "C": rel(s[0], s_ref[0]),
                                                "n": rel(s[1], s_ref[1]),
                                                "m_abs": (s[2].double() - s_ref[2]).abs().max().item()}
    import kernels.chunkwise as ck
    from kernels.registry import what_ran

    out["auto_method_bf16_cuda"] = ck.choose_method(*xb[:3])
    out["triton_failed"] = what_ran()["fallback"]
    res["light"] = out


def section_exact(res):
    """The sub-chunked form at the 7b head sizes, every method against a float64 loop over
    the same bf16 inputs (with an incoming state; with and without a tail)."""
    from kernels import mlstm_sequence
    import kernels.chunkwise as ck
    from kernels.registry import what_ran

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(11)
    out = {}
    for S in (1024, 1000):
        B, NH, DK, DV = 1, 2, 256, 512
        q = torch.randn(B, NH, S, DK, device=dev, generator=g).to(torch.bfloat16)
        k = torch.randn(B, NH, S, DK, device=dev, generator=g).to(torch.bfloat16)
        v = torch.randn(B, NH, S, DV, device=dev, generator=g).to(torch.bfloat16)
        i = 15 * torch.tanh((torch.randn(B, NH, S, device=dev, generator=g) * 4 - 6) / 15)
        f = 15 * torch.tanh((torch.randn(B, NH, S, device=dev, generator=g) * 2 + 4) / 15)
        st = (torch.randn(B, NH, DK, DV, device=dev, generator=g), torch.randn(B, NH, DK, device=dev, generator=g),
              torch.randn(B, NH, 1, device=dev, generator=g))
        h_ref, s_ref = mlstm_sequence(q.double(), k.double(), v.double(), i.double(), f.double(),
                                      tuple(t.double() for t in st))
        row = {}
        results = {}
        for method in ("fp32", "split", "triton"):
            h, s_ = ck.mlstm_chunkwise(q, k, v, i, f, st, method=method)
            results[method] = (h, s_)
            row[method] = {"h": rel(h, h_ref), "C": rel(s_[0], s_ref[0]), "n": rel(s_[1], s_ref[1]),
                           "m_abs": (s_[2].double() - s_ref[2]).abs().max().item(),
                           "h_equal_frac_vs_fp32": None}
        for method in ("split", "triton"):
            row[method]["h_equal_frac_vs_fp32"] = (results[method][0] == results["fp32"][0]).float().mean().item()
            row[method]["C_rel_vs_fp32"] = rel(results[method][1][0], results["fp32"][1][0])
        out[f"S{S}"] = row
        log("exact", S, json.dumps(row)[:400])
    out["fallbacks"] = what_ran()["fallbacks"]
    res["exact"] = out


SWEEP_TILES = [(1, 4096, 4, 3), (2, 2048, 4, 3), (2, 4096, 8, 3), (4, 1024, 4, 3), (4, 1024, 4, 4),
               (4, 2048, 8, 3), (4, 2048, 4, 3), (8, 512, 4, 3), (8, 1024, 8, 3), (8, 1024, 4, 3),
               (16, 512, 8, 3), (16, 256, 4, 4), (2, 1024, 4, 4), (4, 512, 4, 4), (8, 2048, 8, 2),
               (1, 2048, 4, 4)]


def section_sweep(res):
    """Every tile shape of the fused GEMV on the 7b decode products (triton's benchmark,
    L2 flushed between runs): which tiles the production list should hold."""
    import triton

    import kernels.triton_gemv as tg

    dev = "cuda"
    bf = torch.bfloat16
    d, hidden, NH, DH = 4096, 10944, 8, 512
    x = torch.randn(d, device=dev, dtype=bf)
    nw = torch.rand(d, device=dev, dtype=bf) + 0.5
    h, o = torch.randn(d, device=dev, dtype=bf), torch.randn(d, device=dev, dtype=bf)
    gu = torch.randn(2 * hidden, device=dev, dtype=bf)
    cases = {
        "qkvoif_rms_bias": (12304, d, tg.PRO_RMS, dict(bias=torch.randn(12304, device=dev, dtype=bf), p1=nw)),
        "out_head_norm_res": (d, d, tg.PRO_HEAD_NORM, dict(residual=x, p1=o, p2=nw)),
        "up2_rms": (2 * hidden, d, tg.PRO_RMS, dict(p1=nw)),
        "down_silu_res": (d, hidden, tg.PRO_SILU, dict(residual=x)),
        "lm_head_rms_cap": (50304, d, tg.PRO_RMS, dict(p1=nw, soft_cap=30.0)),
    }
    out = {}
    for name, (n, k, pro, kw) in cases.items():
        w = torch.randn(n, k, device=dev, dtype=bf) * 0.02
        tuner = triton.autotune(configs=tg._gemv_configs(SWEEP_TILES), key=["N", "K", "PROLOGUE", "DH"],
                                prune_configs_by={"early_config_prune": tg._head_norm_tiles}
                                if pro == tg.PRO_HEAD_NORM else None)(tg._gemv_kernel)
        inp = {tg.PRO_RMS: x, tg.PRO_HEAD_NORM: h, tg.PRO_SILU: gu}[pro]
        soft = kw.get("soft_cap")
        o_buf = torch.empty(n, device=dev, dtype=torch.float32 if soft else bf)
        args = (inp, w, o_buf, kw.get("bias", w), kw.get("residual", w), kw.get("p1", w), kw.get("p2", w),
                n, k, w.stride(0), 1e-6, float(soft or 0.0))
        tuner[lambda m: (triton.cdiv(n, m["BLOCK_N"]),)](
            *args, PROLOGUE=pro, HAS_BIAS="bias" in kw, HAS_RES="residual" in kw, SOFT_CAP=soft is not None,
            DH=DH if pro == tg.PRO_HEAD_NORM else 1)
        timings = getattr(tuner, "configs_timings", {}) or {}
        rows = sorted(((t[0] if isinstance(t, (list, tuple)) else t, str(c)) for c, t in timings.items()))
        out[name] = [{"us": ms * 1e3, "TBps": n * k * 2 / (ms * 1e-3) / 1e12, "config": c[:60]} for ms, c in rows]
        log("sweep", name, out[name][:1])
        del w
    torch.cuda.empty_cache()
    res["sweep"] = out


def section_gemv(res):
    dev = "cuda"
    out = {}
    big = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(big)
    t = statistics.median(timed(lambda: dst.copy_(big), 10))
    out["copy_TBps_rw"] = 2 * big.numel() * 2 / t / 1e12
    del big, dst
    for name, (n_out, n_in) in {"qkvoif": (12304, 4096), "out": (4096, 4096), "up2": (21888, 4096),
                                "down": (4096, 10944), "lm_head": (50304, 4096)}.items():
        ws = [torch.randn(n_out, n_in, device=dev, dtype=torch.bfloat16) for _ in range(4)]
        x = torch.randn(1, n_in, device=dev, dtype=torch.bfloat16)
        torch.nn.functional.linear(x, ws[0])  # cuBLAS makes its handle on first use, never inside a capture
        sync()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(20):
                for w in ws:
                    torch.nn.functional.linear(x, w)
        t = statistics.median(timed(g.replay, 10)) / 80
        out[name] = {"us": t * 1e6, "TBps": n_out * n_in * 2 / t / 1e12}
        del ws, g
    torch.cuda.empty_cache()
    out["fused"] = _fused_gemv_timings(dev)
    res["gemv"] = out


def _fused_gemv_timings(dev):
    """Each decode stage as the fused GEMV (TritonOps) and as torch composition (TorchOps),
    four weight copies rotated so no weight sits in L2, 20 rounds in one graph."""
    import kernels.triton_gemv as tg
    from kernels.fused_ops import TorchOps
    from kernels.triton_ops import TritonOps

    d, hidden, NH, DH = 4096, 10944, 8, 512
    bf = torch.bfloat16
    x = torch.randn(1, 1, d, device=dev, dtype=bf)
    nw = torch.rand(d, device=dev, dtype=bf) + 0.5
    h, o = torch.randn(1, 1, NH, DH, device=dev, dtype=bf), torch.randn(1, 1, d, device=dev, dtype=bf)
    gu = torch.randn(1, 1, 2 * hidden, device=dev, dtype=bf)
    shapes = {"rms_linear/qkvoif": (12304, d), "head_norm_gate_linear_add/out": (d, d),
              "rms_linear/up2": (2 * hidden, d), "silu_linear_add/down": (d, hidden),
              "rms_linear_soft_cap/lm_head": (50304, d)}
    out = {}
    for name, (n, k) in shapes.items():
        ws = [torch.randn(n, k, device=dev, dtype=bf) * 0.02 for _ in range(4)]
        bias = torch.randn(n, device=dev, dtype=bf) if name.endswith("qkvoif") else None
        stage = name.split("/")[0]

        def call(ops, w):
            if stage == "rms_linear":
                return ops.rms_linear(x, nw, 1e-6, w, bias)
            if stage == "rms_linear_soft_cap":
                return ops.rms_linear_soft_cap(x, nw, 1e-6, w, 30.0)
            if stage == "head_norm_gate_linear_add":
                return ops.head_norm_gate_linear_add(x, h, o, nw, 1e-6, w)
            return ops.silu_linear_add(x, gu, hidden, w)

        row = {}
        for label, ops in (("triton", TritonOps), ("torch", TorchOps)):
            for w in ws:
                call(ops, w)  # autotune / warm-up outside the capture
            sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(20):
                    for w in ws:
                        call(ops, w)
            t = statistics.median(timed(graph.replay, 10)) / 80
            row[label] = {"us": t * 1e6, "TBps": n * k * 2 / t / 1e12}
            del graph
        out[name] = row
        del ws
    out["autotune_choice"] = {str(k): str(v) for k, v in {**tg._gemv.cache, **tg._gemv_head_norm.cache}.items()}
    torch.cuda.empty_cache()
    return out


def section_profile(res):
    """Where the 8192-token prefill spends GPU time (top kernels) and the CPU/GPU balance."""
    from torch.profiler import ProfilerActivity, profile

    from kernels import XLSTM, get_config
    from kernels.fastpath import FastModel
    from schedulers import Knobs, make_scheduler

    dev = "cuda"
    cfg = get_config("7b")
    model = XLSTM(cfg, device=dev, dtype=torch.bfloat16, seed=0)
    fast = FastModel(model)
    tok = torch.randint(0, cfg.vocab_size, (1, 8192), device=dev)
    out = {}
    with torch.no_grad(), make_scheduler("sequential", Knobs(1, 8, 8192, 8192), device=dev,
                                         dtype=torch.bfloat16) as sched:
        fast.forward(tok, None, sched)
        sync()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fast.forward(tok, None, sched)
            cpu_issue = time.perf_counter() - t
            sync()
        out["wall_s"] = time.perf_counter() - t
        out["cpu_issue_s"] = cpu_issue
        events = prof.key_averages()
        rows = []
        for e in events:
            dev_t = getattr(e, "self_device_time_total", None)
            if dev_t is None:
                dev_t = getattr(e, "self_cuda_time_total", 0)
            if dev_t:
                rows.append((dev_t, e.key, e.count))
        rows.sort(reverse=True)
        out["gpu_total_ms"] = sum(r[0] for r in rows) / 1e3
        out["top"] = [{"ms": r[0] / 1e3, "name": r[1][:120], "count": r[2]} for r in rows[:40]]
        # time without the profiler, and the cell alone
        s = timed(lambda: fast.forward(tok, None, sched), 2)
        out["forward_s"] = statistics.median(s)
    del model, fast
    torch.cuda.empty_cache()
    res["profile"] = out


def section_decode(res):
    from kernels import XLSTM, get_config
    from kernels.fastpath import FastModel
    from schedulers import Knobs
    from schedulers.graphs import GraphDecoder, StaticDecoder

    dev = "cuda"
    cfg = get_config("7b")
    t0 = time.perf_counter()
    model = XLSTM(cfg, device=dev, dtype=torch.bfloat16, seed=0)
    sync()
    out = {"build_s": time.perf_counter() - t0}
    fast = FastModel(model)
    g = torch.Generator(device=dev).manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (1, 64), device=dev, generator=g)
    with torch.no_grad():
        logits, state = fast.forward(prompt)  # default runner: model's direct runner
        ref_logits, ref_state = model(prompt)
        out["prefill64_fast_vs_model_rel"] = rel(logits, ref_logits)
        first = logits[:, -1:].argmax(-1)
        # reference next-step logits from the plain model
        ref_next, _ = model(first, [tuple(t.clone() for t in s) for s in ref_state])
        N = 128
        variants = {}
        for w, hb in ((1, 8), (2, 4), (4, 2), (8, 1), (2, 8), (4, 4)):
            if hb * w > 8 and (w, hb) != (2, 8):
                continue
            knobs = Knobs(workers=w, heads_per_band=hb, chunk_size=64, T_inner=64)
            try:
                t0 = time.perf_counter()
                dec = GraphDecoder(model, knobs, fast=fast)
                sync()
                cap_s = time.perf_counter() - t0
                dec.load_state(state)
                l0 = dec.step(first).clone()
                samples = []
                for _ in range(3):
                    dec.load_state(state)
                    samples += timed(lambda: dec.generate(first, N), 1, warmup=0)
                variants[f"w{w}_hb{hb}"] = {"tok_s": N / statistics.median(samples), "samples_s": samples,
                                            "capture_s": cap_s, "next_logits_rel_vs_model": rel(l0, ref_next),
                                            "argmax_equal": bool(l0.argmax() == ref_next.argmax())}
                log("decode", w, hb, variants[f"w{w}_hb{hb}"]["tok_s"])
                del dec
            except Exception as exc:
                variants[f"w{w}_hb{hb}"] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
        out["graph"] = variants
        import kernels.triton_gemv as tg

        out["autotune_choice"] = {str(k)[:60]: str(v)[:70] for k, v in {**tg._gemv.cache, **tg._gemv_head_norm.cache}.items()}
        # the graph without the fused GEMVs (elementwise Triton ops + cuBLAS)
        from kernels.fused_ops import TorchOps
        from kernels.triton_ops import TritonOps

        class NoGemv(TritonOps):
            pass

        for name in ("rms_linear", "rms_linear_soft_cap", "head_norm_gate_linear_add", "silu_linear_add"):
            setattr(NoGemv, name, TorchOps.__dict__[name])
        try:
            from kernels.fastpath import FastModel as _FM

            dec = GraphDecoder(model, Knobs(1, 8, 64, 64), fast=_FM(model, ops=NoGemv))
            samples = []
            for _ in range(3):
                dec.load_state(state)
                samples += timed(lambda: dec.generate(first, N), 1, warmup=0)
            out["graph_no_gemv_w1_hb8_tok_s"] = N / statistics.median(samples)
            del dec
        except Exception as exc:
            out["graph_no_gemv"] = f"{type(exc).__name__}: {exc}"
        # the same step without a graph, and the plain model eagerly
        dec = StaticDecoder(model, Knobs(1, 8, 64, 64), fast=fast)
        dec.load_state(state)
        s = timed(lambda: dec.generate(first, 16), 2)
        out["static_eager_tok_s"] = 16 / statistics.median(s)
        st = [tuple(t.clone() for t in x) for x in state]

        def plain():
            tok, s_ = first, st
            for _ in range(16):
                lg, s_ = model(tok, s_)
                tok = lg[:, -1:].argmax(-1)

        out["model_eager_tok_s"] = 16 / statistics.median(timed(plain, 2))
    res["decode"] = out
    del model, fast
    torch.cuda.empty_cache()


def section_prefill(res):
    from kernels import XLSTM, get_config
    from kernels.fastpath import FastModel
    import kernels.chunkwise as ck
    from schedulers import Knobs, make_scheduler

    dev = "cuda"
    cfg = get_config("7b")
    model = XLSTM(cfg, device=dev, dtype=torch.bfloat16, seed=0)
    g = torch.Generator(device=dev).manual_seed(1)
    out = {}
    with torch.no_grad():
        tok8 = torch.randint(0, cfg.vocab_size, (1, 8192), device=dev, generator=g)
        # the plain model (unfused) with the sub-chunked cell, one call per layer
        with make_scheduler("sequential", Knobs(1, 8, 8192, 8192), device=dev, dtype=torch.bfloat16) as sched:
            model.cell_runner = sched
            s = timed(lambda: model(tok8), 2)
            out["model_8192_tok_s"] = 8192 / statistics.median(s)
        fast = FastModel(model)
        for L in (2048, 8192, 32768):
            tok = torch.randint(0, cfg.vocab_size, (1, L), device=dev, generator=g)
            for label, knobs in (("T=L", Knobs(1, 8, L, L)), ("w2_hb4_T=L", Knobs(2, 4, L, L))):
                backend = "queued" if knobs.workers > 1 else "sequential"
                with make_scheduler(backend, knobs, device=dev, dtype=torch.bfloat16) as sched:
                    s = timed(lambda: fast.forward(tok, None, sched), 2)
                out[f"fast_{L}_{label}"] = {"tok_s": L / statistics.median(s), "samples_s": s}
                log("prefill", L, label, out[f"fast_{L}_{label}"]["tok_s"])
                torch.cuda.empty_cache()
        # the cell alone, one 7b layer at 8192 tokens: its share of the prefill
        B, NH, S = 1, 8, 8192
        q = torch.randn(B, NH, S, 256, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(B, NH, S, 256, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(B, NH, S, 512, device=dev, dtype=torch.bfloat16, generator=g)
        i = torch.randn(B, NH, S, device=dev, generator=g) * 3 - 5
        f = torch.randn(B, NH, S, device=dev, generator=g) + 4
        for mode in ("fp32", "split", "triton"):
            for sub in ((64, 128) if mode == "triton" else (128,)):
                try:
                    fn = lambda: ck.mlstm_chunkwise(q, k, v, i, f, sub_chunk=sub, method=mode)  # noqa: E731
                    fn()
                    sync()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        fn()
                    s_ = timed(graph.replay, 5)
                    out[f"cell_gpu_layer_8192_{mode}_sub{sub}_ms"] = statistics.median(s_) * 1e3
                    del graph
                except Exception as exc:
                    out[f"cell_gpu_layer_8192_{mode}_sub{sub}_ms"] = f"{type(exc).__name__}: {exc}"
                torch.cuda.empty_cache()
        a = q.reshape(-1, 128, 256)
        bmat = k.reshape(-1, 128, 256).transpose(1, 2)
        a32, b32 = a.float(), bmat.float()
        out["qk_fp32_bmm_ms"] = statistics.median(timed(lambda: torch.bmm(a32, b32), 5)) * 1e3
        try:
            out["qk_bf16_to_fp32_bmm_ms"] = statistics.median(
                timed(lambda: torch.bmm(a, bmat, out_dtype=torch.float32), 5)) * 1e3
            out["qk_bf16_to_fp32_rel"] = rel(torch.bmm(a, bmat, out_dtype=torch.float32), torch.bmm(a32, b32))
        except Exception as exc:
            out["qk_bf16_to_fp32"] = f"{type(exc).__name__}: {exc}"
        c32 = torch.randn(64 * 8, 256, 513, device=dev)
        out["qC_fp32_bmm_ms"] = statistics.median(timed(lambda: torch.bmm(a32, c32), 5)) * 1e3
        out["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    res["prefill"] = out
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sections", default=",".join(ALL))
    args = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name in args.sections.split(","):
        t = time.perf_counter()
        try:
            globals()[f"section_{name}"](res)
        except Exception as exc:
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            traceback.print_exc()
        res.setdefault("section_s", {})[name] = time.perf_counter() - t
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
        log(f"section {name} done in {time.perf_counter() - t:.1f}s")
    print(json.dumps(res, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    main()
