"""Every Triton kernel of kernels/ in Triton's interpreter (CPU tensors), against the torch
form it must compute: the elementwise stages, the decode step, the fused GEMV bodies in
both forms, the three-term split and the sub-chunk kernels.

The interpreter is chosen when the kernels are decorated, so the kernels run in a child
process with TRITON_INTERPRET=1. Skipped where Triton is not installed (CI); where it is,
no GPU is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _errors() -> dict[str, float]:
    """Relative error of each Triton kernel against its torch form (run in the child)."""
    import kernels.chunkwise as ck
    from kernels import triton_chunkwise, triton_gemv
    from kernels.registry import KernelRun, use_run
    from kernels.torch_ops import TorchOps
    from kernels.triton_ops import TritonOps

    g = torch.Generator().manual_seed(0)
    bf = torch.bfloat16

    def r(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    err = {}
    with use_run(KernelRun()):
        x, w = r(3, 5, 96, dtype=bf), (r(96) * 0.1 + 1).to(bf)
        err["rms_norm"] = _rel(TritonOps.rms_norm(x, w, 1e-6), TorchOps.rms_norm(x, w, 1e-6))
        h, o, hw = r(2, 3, 4, 16, dtype=bf), r(2, 3, 64, dtype=bf), (r(64) * 0.1 + 1).to(bf)
        err["head_norm_gate"] = _rel(TritonOps.head_norm_gate(h, o, hw, 1e-6), TorchOps.head_norm_gate(h, o, hw, 1e-6))
        gu = r(4, 600, dtype=bf)
        err["silu_mul"] = _rel(TritonOps.silu_mul(gu, 300), TorchOps.silu_mul(gu, 300))
        xc = r(7, 33, scale=40.0)
        err["soft_cap"] = _rel(TritonOps.soft_cap(xc, 15.0), TorchOps.soft_cap(xc, 15.0))

        q, k, v = r(1, 2, 64, dtype=bf), r(1, 2, 64, dtype=bf), r(1, 2, 128, dtype=bf)
        i_pre, f_pre = r(1, 2, scale=3.0), r(1, 2, scale=3.0) + 2
        C0, n0, m0 = r(1, 2, 64, 128), r(1, 2, 64), r(1, 2, 1)
        for tile in (2048, 8192):
            outs = []
            for ops in (TritonOps, TorchOps):
                C, n_out, m_out = C0.clone(), torch.empty_like(n0), torch.empty_like(m0)
                h_out = torch.empty(1, 2, 128, dtype=bf)
                with use_run(KernelRun(params={"step_tile": tile})):
                    ops.mlstm_step_into(q, k, v, i_pre, f_pre, 15.0, C, n0, m0, n_out, m_out, h_out)
                outs.append((C, n_out, m_out, h_out))
            for name, a, b in zip(("C", "n", "m", "h"), *outs):
                err[f"step{tile}_{name}"] = _rel(a, b)

        # The GEMV bodies at fixed tiles (choosing tiles needs a GPU) against torch.
        N, K, DH = 24, 64, 16
        wt, bias, res = r(N, K, dtype=bf, scale=0.1), r(N, dtype=bf), r(N, dtype=bf)
        p1, p2 = (r(K) * 0.1 + 1).to(bf), (r(K) * 0.1 + 1).to(bf)
        inputs = {triton_gemv.PRO_RMS: r(K, dtype=bf), triton_gemv.PRO_SILU: r(2 * K, dtype=bf),
                  triton_gemv.PRO_HEAD_NORM: r(K, dtype=bf)}
        expected = {
            triton_gemv.PRO_RMS: TorchOps.rms_linear(inputs[1][None], p1, 1e-6, wt, bias)[0],
            triton_gemv.PRO_SILU: TorchOps.silu_linear_add(res[None], inputs[2][None], K, wt)[0],
            triton_gemv.PRO_HEAD_NORM: TorchOps.head_norm_gate_linear_add(
                res.view(1, 1, N), inputs[3].view(1, 1, K // DH, DH), p1.view(1, 1, K), p2, 1e-6, wt)[0, 0],
        }
        for pro, want in expected.items():
            for form in ("tiled", "rows"):
                out = torch.empty(N, dtype=bf)
                args = (inputs[pro], wt, out, bias, res, p1, p2, N, K, wt.stride(0), 1e-6, 0.0)
                flags = dict(PROLOGUE=pro, HAS_BIAS=pro == triton_gemv.PRO_RMS, HAS_RES=pro != triton_gemv.PRO_RMS,
                             SOFT_CAP=False, DH=DH if pro == triton_gemv.PRO_HEAD_NORM else 1)
                if form == "tiled":
                    triton_gemv._gemv_kernel[(N // 4,)](*args, **flags, BLOCK_N=4, BLOCK_K=32)
                else:
                    triton_gemv._gemv_rows_kernel[(3,)](*args, **flags, BLOCK_N=2, BLOCK_K=K, STAGES=2, PER_SM=1)
                err[f"gemv{pro}_{form}"] = _rel(out, want)

        xs = r(4, 5, 6, scale=1e3)
        for axis in (0, 1, 2):
            buf = torch.empty(xs.shape[:axis] + (3,) + xs.shape[axis:], dtype=bf)
            triton_chunkwise.split3_into(xs, buf, axis)
            err[f"split3_{axis}"] = ((buf.float().sum(dim=axis) - xs).abs() / xs.abs()).max().item()

        # Sub-chunk kernels with fp16 q, k, v (what the interpreter takes) against the
        # fp32 torch form on the same inputs; 40 steps = 2 sub-chunks of 16 + a tail.
        xq, xk, xv = (r(1, 2, 40, 16, dtype=torch.float16) for _ in range(3))
        xi, xf = r(1, 2, 40, scale=3.0), r(1, 2, 40, scale=3.0) + 2
        state = (r(1, 2, 16, 16), r(1, 2, 16), r(1, 2, 1))
        hc = torch.zeros(1, 2, 40, 16, dtype=torch.float16)
        got = ck._run_triton(xq, xk, xv, xi, xf, *state, 16, hc)
        h_ref, want = ck.mlstm_chunkwise(*(t[:, :, :32] for t in (xq, xk, xv, xi, xf)), state,
                                         sub_chunk=16, method="fp32")
        err["chunkwise_h"] = _rel(hc[:, :, :32], h_ref)
        for name, a, b in zip(("C", "n", "m"), got, want):
            err[f"chunkwise_{name}"] = _rel(a, b)
    return err


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="Triton is not installed; pip install triton to run its kernels in the interpreter")
def test_triton_kernels_compute_the_torch_forms_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = json.loads(done.stdout.splitlines()[-1])
    assert len(err) == 25
    for name, e in err.items():
        if name.startswith("split3"):  # hi + lo + lo2 is x to fp32 resolution
            assert e < 2**-22, f"{name}: {e}"
        elif name[-2:] in ("_C", "_n", "_m"):  # fp32 states: fp32 rounding
            assert e < 1e-5, f"{name}: {e}"
        elif name == "chunkwise_h":  # fp16, rounded to nearest on both sides
            assert e < 1e-3, f"{name}: {e}"
        else:
            # bf16 outputs. The interpreter rounds fp32 -> bf16 toward zero where a GPU
            # rounds to nearest: each rounding the op makes can cost a whole ulp (2^-8).
            assert e < 3e-2, f"{name}: {e}"


if __name__ == "__main__":
    print(json.dumps(_errors()))
