"""Decode step kernel: STEP_TILE_ELEMS 4096 against the shipped 8192, and against the torch step.

Run from the repository root with Triton installed (no GPU needed):
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python studies/records/step-tile-interpreter-check.py
"""
import torch
import kernels.triton_ops as t
from kernels.torch_ops import TorchOps
torch.manual_seed(0)
B, nh, DK, DV = 1, 2, 256, 512
q, k = (torch.randn(B, nh, DK).to(torch.bfloat16) for _ in range(2)); v = torch.randn(B, nh, DV).to(torch.bfloat16)
i_pre, f_pre = torch.randn(B, nh) * 3, torch.randn(B, nh) * 3 + 2
C0, n0, m0 = torch.randn(B, nh, DK, DV), torch.randn(B, nh, DK), torch.randn(B, nh, 1)
def run(ops):
    C = C0.clone(); n_out = torch.empty_like(n0); m_out = torch.empty_like(m0); h = torch.empty(B, nh, DV, dtype=torch.bfloat16)
    ops.mlstm_step_into(q, k, v, i_pre, f_pre, 15.0, C, n0, m0, n_out, m_out, h)
    return C, n_out, m_out, h
res = {}
for tile in (8192, 4096):
    t.STEP_TILE_ELEMS = tile
    res[tile] = run(t.TritonOps)
ref = run(TorchOps)
print("step_tile 4096 vs 8192 bitwise equal:", all(torch.equal(a, b) for a, b in zip(res[8192], res[4096])))
for name, a, b in zip(("C", "n", "m", "h"), res[4096], ref):
    print(name, "rel to torch", ((a.double() - b.double()).norm() / b.double().norm()).item())
