"""Registers and spills of the sub-chunk output kernel (kernels/triton_chunkwise.py) at each sub-chunk and warp count, compiled for sm_90a on a machine without a GPU.

Run from the repository root with Triton 3.6 installed:  PYTHONPATH=$PWD python studies/records/cell-ptxas-check.py
"""
import os, subprocess, tempfile, triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.triton_chunkwise as tc
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
target = GPUTarget("cuda", 90, 32)
sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "flog_ptr": "*fp32", "i_ptr": "*fp32", "b_ptr": "*fp32",
       "mstart_ptr": "*fp32", "slots_ptr": "*fp32", "h_ptr": "*bf16", "BNH": "i32", "NH": "i32", "DK": "i32",
       "DV": "i32", "DVA": "i32", "s_hb": "i32", "s_hh": "i32", "s_ht": "i32", "scale": "fp32", "eps": "fp32"}
for C in (64, 128):
    for warps in (4, 8, 16):
        c = {"C": C, "BDK": 64, "BV": 64, "HALF": tl.bfloat16}
        k = triton.compile(ASTSource(fn=tc._chunk_outputs_kernel, signature={**sig, **{x: "constexpr" for x in c}}, constexprs=c),
                           target=target, options={"num_warps": warps, "num_stages": 2})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(k.asm["ptx"])
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
        info = [l.split("info    :")[-1].strip() for l in out.stderr.splitlines() if "spill" in l or "registers" in l]
        shipped = " (shipped: sub-chunk 128, 8 warps)" if (C, warps) == (128, 8) else ""
        print(f"_chunk_outputs_kernel C={C} warps={warps}{shipped}: shared {k.metadata.shared} B | " + " ; ".join(info))
