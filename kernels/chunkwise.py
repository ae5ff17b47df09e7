"""Sub-chunked chunkwise-parallel mLSTM: one call over a long window of S steps.

mlstm_block is O(S²) per head (an S x S decay matrix), right for T_inner-sized windows up
to a few hundred steps. A long window (a prefill of thousands of tokens in one T_inner
call) is cut here into K sub-chunks of c steps (the run's `sub_chunk` parameter): the
stabiliser and state at every sub-chunk boundary first, by a scan over K, then every
output from its sub-chunk's incoming state, all sub-chunks batched
(kernels.chunkwise_stages has the stages). A tail of fewer than c steps runs through
mlstm_block from the last boundary state. Exact to fp32 rounding against mlstm_sequence:
the same stabilised sums in another order. Memory: K boundary states plus O(S·c) per head.

Three forms compute it, chosen per call (choose_method) and recorded in the run:
'triton' (the fused kernels of kernels.triton_chunkwise; bf16 on CUDA), 'split' (torch
matmuls on bf16 tensor cores at fp32 resolution, kernels.split_matmul) and 'fp32' (torch
fp32 matmuls). A Triton kernel that fails here is ruled out for the rest of the run and
the torch form takes its place, on record.
"""

from __future__ import annotations

import warnings

import torch

from kernels import chunkwise_stages as stages
from kernels.mlstm import EPS, MLSTMState, _compute_dtype, _state_or_zeros, mlstm_block
from kernels.registry import DEFAULT_SUB_CHUNK, MIN_SUB_CHUNKS, current_run
from kernels.split_matmul import cuda_has

SUB_CHUNK = DEFAULT_SUB_CHUNK


def run_sub_chunk() -> int:
    """The sub-chunk of the run in force (its `sub_chunk` kernel parameter)."""
    return current_run().param("sub_chunk")


def uses_sub_chunks(seq_len: int, sub_chunk: int | None = None) -> bool:
    """Whether a window of seq_len steps takes the sub-chunked form (sub_chunk: the run's)."""
    return seq_len >= MIN_SUB_CHUNKS * (run_sub_chunk() if sub_chunk is None else sub_chunk)


TRITON_CELL = "chunkwise--triton"


def _triton_usable(q, k, v, sub_chunk: int) -> bool:
    # a failure recorded in this run (kernels.registry) rules the kernels out from then on
    if not current_run().usable(TRITON_CELL) or q.device.type != "cuda":
        return False
    try:  # Triton is optional: imported only where these kernels could run
        from kernels import triton_chunkwise
    except ImportError as exc:  # on CUDA the Triton kernels were the choice: on record
        if q.dtype == k.dtype == v.dtype == torch.bfloat16:
            current_run().fail("prefill_cell", TRITON_CELL, exc,
                               fallback=lambda: f"chunkwise--{choose_method(q, k, v, sub_chunk)}")
        return False
    return triton_chunkwise.usable(q, k, v, sub_chunk)


def choose_method(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sub_chunk: int = SUB_CHUNK) -> str:
    """'triton' (fused kernels) for bf16 on CUDA where Triton runs, else 'split' (torch,
    tensor-core three-term matmuls) for bf16 on CUDA, else 'fp32' (torch fp32 matmuls)."""
    if _triton_usable(q, k, v, sub_chunk):
        return "triton"
    if (q.device.type == "cuda" and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and cuda_has("bmm", q.device)):
        return "split"
    return "fp32"


def _run_triton(q, k, v, i, f, C0, n0, m0, sub_chunk: int, h: torch.Tensor):
    """The fused-kernel form for the first K * sub_chunk steps; h is written in place."""
    from kernels import triton_chunkwise  # Triton is optional: imported on this path only

    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    c = sub_chunk
    K = S // c
    f_log, i_m, b, m_start, m_end, g, w = stages.gates(i, f, m0, K, c, C0.dtype)
    half = q.dtype if q.dtype == torch.float16 else torch.bfloat16  # exact copies of 16-bit inputs
    q_m = stages.k_major(q, K, c, half)
    k_m = stages.k_major(k, K, c, half)
    v_m = stages.k_major(v, K, c, half)
    slots = torch.empty((K + 1, B, NH, DHQK, stages.aug_width(DHV)), dtype=torch.float32, device=q.device)
    slots[0, ..., :DHV] = C0
    slots[0, ..., DHV] = n0
    triton_chunkwise.chunk_states(k_m, v_m, w, g, slots)
    triton_chunkwise.chunk_outputs(q_m, k_m, v_m, f_log, i_m, b, m_start, slots, h[:, :, : K * c], EPS)
    last = slots[K]
    return last[..., :DHV].contiguous(), last[..., DHV].contiguous(), m_end[-1].unsqueeze(-1)


METHODS = ("fp32", "split", "triton")


def _run(prepare, q, k, v, i, f, state, sub_chunk: int | None, mode: str | None):
    if sub_chunk is None:
        sub_chunk = run_sub_chunk()
    if sub_chunk < 1:
        raise ValueError(f"sub_chunk must be >= 1, got {sub_chunk}")
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    K = S // sub_chunk
    if K == 0:
        current_run().record("prefill_cell", "block")
        return mlstm_block(q, k, v, i, f, state)
    if mode is None or (mode == "triton" and not current_run().usable(TRITON_CELL)):
        mode = choose_method(q, k, v, sub_chunk)  # a kernel that failed in this run is not tried again
    elif mode not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} or None, got {mode!r}")
    ct = _compute_dtype(v)
    sixteen_bit = q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16)
    if (mode == "triton" and not sixteen_bit) or (mode == "split" and not (sixteen_bit and q.dtype == torch.bfloat16)):
        mode = "fp32"  # the fast forms need q, k, v exact in 16 bits; fp32/fp64 inputs stay exact
    C0, n0, m0 = _state_or_zeros(state, B, NH, DHQK, DHV, q.device, ct)
    main = K * sub_chunk
    if mode == "triton":
        h = torch.empty(B, NH, S, DHV, dtype=v.dtype, device=q.device)
        try:
            out_state = _run_triton(q, k, v, i, f, C0, n0, m0, sub_chunk, h)
        except Exception as exc:  # a Triton build or launch failure on this GPU: the torch form, on record
            why = current_run().fail("prefill_cell", TRITON_CELL, exc,
                                     fallback=lambda: f"chunkwise--{choose_method(q, k, v, sub_chunk)}")
            warnings.warn(f"Triton sub-chunk kernels unavailable ({why}); using torch matmuls",
                          RuntimeWarning, stacklevel=3)
            return _run(prepare, q, k, v, i, f, state, sub_chunk, None)
        current_run().record("prefill_cell", TRITON_CELL,
                             {"sub_chunk": sub_chunk, "output_warps": current_run().param("output_warps")})
        if main < S:
            t = slice(main, S)  # the tail, shorter than one sub-chunk
            h[:, :, t], out_state = mlstm_block(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t],
                                                out_state)
        return h, out_state
    current_run().record("prefill_cell", f"chunkwise--{mode}", {"sub_chunk": sub_chunk})
    q_m, k_m, v_aug, D, b, m_start, m_end, g, dCn = prepare(q, k, v, i, f, C0, n0, m0, sub_chunk, mode)
    dhva = dCn.shape[-1]
    Cn0 = torch.cat([C0, n0.unsqueeze(-1), C0.new_zeros(B, NH, DHQK, dhva - DHV - 1)], dim=-1)
    stages.scan_states(Cn0, dCn, g)
    h = stages.finish(q_m, k_m, v_aug, D, b, m_start, m_end, Cn0, dCn, mode, v.dtype, DHQK, DHV)
    last = dCn[-1]
    out_state = (last[..., :DHV].contiguous(), last[..., DHV].contiguous(), m_end[-1].unsqueeze(-1))
    if main == S:
        return h, out_state
    t = slice(main, S)  # the tail, shorter than one sub-chunk
    h_tail, out_state = mlstm_block(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], out_state)
    return torch.cat([h, h_tail], dim=2), out_state


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
    *,
    sub_chunk: int | None = None,
    method: str | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Advance the state by the S steps given, in sub-chunks of `sub_chunk` steps (None:
    the run's sub_chunk kernel parameter, kernels.registry).

    mlstm_block's signature and contract (shapes, fp32 state, h in v's dtype).
    method: 'fp32' (torch, fp32 matmuls), 'split' (torch, three-term bf16 tensor-core
    matmuls; bf16 q, k, v; emulated in fp32 on the CPU), 'triton' (the fused kernels of
    kernels.triton_chunkwise; bf16 on CUDA) or None (choose_method decides).
    """
    return _run(stages.prepare, q, k, v, i, f, state, sub_chunk, method)


def compiled_chunkwise():
    """mlstm_chunkwise with its loop-free preparation torch.compile'd (static shapes, full
    graph); the scan (K steps, which compiling would unroll) and the output stage, which
    writes into preallocated buffers, stay eager."""
    prepare = torch.compile(stages.prepare, dynamic=False, fullgraph=True)

    def run(q, k, v, i, f, state=None, *, sub_chunk: int | None = None, method: str | None = None):
        return _run(prepare, q, k, v, i, f, state, sub_chunk, method)

    return run
