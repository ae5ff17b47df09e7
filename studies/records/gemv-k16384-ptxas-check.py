"""Registers and spills of the persistent GEMV at BLOCK_K 16384 (the rows_max_k=16384 setting), compiled for sm_90a on a machine without a GPU.

Run from the repository root with Triton 3.6 installed:  PYTHONPATH=$PWD python studies/records/gemv-k16384-ptxas-check.py
(the ptxas path below is the one inside the triton wheel; set it to yours).
"""
import subprocess, tempfile, os, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.triton_gemv as t
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
target = GPUTarget("cuda", 90, 32)
ptrs = {n: "*bf16" for n in ("x_ptr", "w_ptr", "out_ptr", "bias_ptr", "res_ptr", "p1_ptr", "p2_ptr")}
sig = {**ptrs, "N": "i32", "K": "i32", "stride_w": "i32", "eps": "fp32", "cap": "fp32"}
common = {"PROLOGUE": 2, "HAS_BIAS": False, "HAS_RES": True, "SOFT_CAP": False, "DH": 1}
def report(fn, c, opts, label):
    k = triton.compile(ASTSource(fn=fn, signature={**sig, **{x: "constexpr" for x in c}}, constexprs=c), target=target, options=opts)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    lines = [l.strip() for l in (out.stderr + out.stdout).splitlines() if l.strip()][-3:]
    print(label, "|", " ; ".join(lines)[:220])
for (n, w, st, p) in t.ROWS_TILES:
    report(t._gemv_rows_kernel, {**common, "BLOCK_N": n, "BLOCK_K": 16384, "STAGES": st, "PER_SM": p}, {"num_warps": w},
           f"rows K16384 N{n} w{w} s{st}")
report(t._gemv_rows_kernel, {**common, "PROLOGUE": 1, "BLOCK_N": 2, "BLOCK_K": 4096, "STAGES": 3, "PER_SM": 4}, {"num_warps": 4}, "rows K4096 (shipped up-proj form) N2 w4 s3")
