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

ALL = ("checks", "gemv", "decode", "prefill")


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


def section_checks(res):
    from kernels import XLSTM, get_config, mlstm_sequence
    from kernels.chunkwise import mlstm_chunkwise
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
    B, NH, S, DK, DV = 1, 2, 700, 64, 128
    x = [torch.randn(B, NH, S, DK, device=dev, generator=g, dtype=torch.float64) for _ in range(2)]
    x.append(torch.randn(B, NH, S, DV, device=dev, generator=g, dtype=torch.float64))
    x.append(torch.randn(B, NH, S, device=dev, generator=g, dtype=torch.float64) * 3)
    x.append(torch.randn(B, NH, S, device=dev, generator=g, dtype=torch.float64) * 2 + 3)
    h_ref, s_ref = mlstm_sequence(*x)
    h, s = mlstm_chunkwise(*(t.float() for t in x))
    out["chunkwise_fp32_vs_f64"] = {"h": rel(h, h_ref), "C": rel(s[0], s_ref[0]), "n": rel(s[1], s_ref[1]),
                                    "m_abs": (s[2].double() - s_ref[2]).abs().max().item()}
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
    res["checks"] = out


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
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(20):
                for w in ws:
                    torch.nn.functional.linear(x, w)
        t = statistics.median(timed(g.replay, 10)) / 80
        out[name] = {"us": t * 1e6, "TBps": n_out * n_in * 2 / t / 1e12}
        del ws, g
    torch.cuda.empty_cache()
    res["gemv"] = out


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
            for label, knobs in (("T=L", Knobs(1, 8, L, L)), ("T=4096", Knobs(1, 8, min(L, 4096), min(L, 4096)))):
                if label == "T=4096" and L <= 4096:
                    continue
                with make_scheduler("sequential", knobs, device=dev, dtype=torch.bfloat16) as sched:
                    s = timed(lambda: fast.forward(tok, None, sched), 2)
                out[f"fast_{L}_{label}"] = {"tok_s": L / statistics.median(s), "samples_s": s}
                log("prefill", L, label, out[f"fast_{L}_{label}"]["tok_s"])
                torch.cuda.empty_cache()
        for sub in (64, 256):
            def cell(layer, q, k, v, i, f, state, sub=sub):
                return ck.mlstm_chunkwise(q, k, v, i, f, state, sub_chunk=sub)
            s = timed(lambda: fast.forward(tok8, None, cell), 2)
            out[f"fast_8192_sub{sub}"] = {"tok_s": 8192 / statistics.median(s)}
            log("prefill sub", sub, out[f"fast_8192_sub{sub}"]["tok_s"])
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
