"""Sub-chunked chunkwise-parallel mLSTM: one call over a long window of S steps.

mlstm_block is O(S²) per head (an S x S decay matrix), right for T_inner-sized windows up
to a few hundred steps. A long window (a prefill of thousands of tokens in one T_inner
call) is cut here into K sub-chunks of c steps:

1. per sub-chunk, independently of the incoming state: its total log forget gate B_k and
   its own stabiliser l_k (the largest log weight of an input at the sub-chunk's end);
2. the stabiliser at every sub-chunk boundary, vectorised over K (segment sums, as in
   mlstm_block):   m_k = max(m_{k-1} + B_k, l_k);
   then each sub-chunk's inputs summed into a state contribution already scaled to m_k
   (one batched matmul over all K):  dC_k = sum_s exp(B_k - b_s + i_s - m_k) k_s v_sᵀ;
3. the states at the boundaries by a scan over the K sub-chunks, one fused op each:
       C_k = exp(m_{k-1} + B_k - m_k) C_{k-1} + dC_k    (every weight <= 1);
4. every output from its sub-chunk's incoming state: mlstm_block's intra-chunk matmul form,
   batched over all K sub-chunks at once.

C and n travel together as one (DHQK, DHV + 1) matrix (n is C with v replaced by 1, the
denominators likewise ride along the numerators), so each scan step is one kernel and
each output term one matmul. Tensors are laid out sub-chunk-major, so every batched
matmul reads and writes its operands in place. On CUDA with bf16 inputs the matmuls run
on the tensor cores: q, k, v are exact in bf16, every fp32 operand is split into three
bf16 terms (see 'split' below), and products of bf16 values are exact in fp32. A tail of fewer than c steps runs through mlstm_block from the last boundary
state. Exact to fp32 rounding against mlstm_sequence: the same stabilised sums in
another order. Memory: K boundary states plus O(S·c) per head.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from kernels.mlstm import EPS, MLSTMState, _compute_dtype, _state_or_zeros, mlstm_block
from kernels.registry import DEFAULT_SUB_CHUNK, MIN_SUB_CHUNKS, current_run

SUB_CHUNK = DEFAULT_SUB_CHUNK


def run_sub_chunk() -> int:
    """The sub-chunk of the run in force (its `sub_chunk` kernel parameter)."""
    return current_run().param("sub_chunk")


def uses_sub_chunks(seq_len: int, sub_chunk: int | None = None) -> bool:
    """Whether a window of seq_len steps takes the sub-chunked form (sub_chunk: the run's)."""
    return seq_len >= MIN_SUB_CHUNKS * (run_sub_chunk() if sub_chunk is None else sub_chunk)


def _segment_sums(x: torch.Tensor) -> torch.Tensor:
    """seg[..., t, s] = sum_{s < r <= t} x[..., r] for s <= t (0 on the diagonal), -inf above.

    A cumsum of the masked repeated values, not a difference of prefix sums: no
    cancellation when the prefix sums grow large.
    """
    n = x.shape[-1]
    ones = torch.ones(n, n, dtype=torch.bool, device=x.device)
    strictly_lower = ones.tril(diagonal=-1)
    seg = x.unsqueeze(-1).expand(*x.shape, n).masked_fill(~strictly_lower, 0.0)
    seg = torch.cumsum(seg, dim=-2)
    return seg.masked_fill(~ones.tril(), float("-inf"))


def boundary_stabilisers(m0: torch.Tensor, B_tot: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Stage 2: m after each sub-chunk, m_k = max(m_{k-1} + B_k, l_k), for all k at once.

    m0 (..., 1); B_tot, ell (..., K) -> m_end (..., K), unrolled as
    m_k = max(m0 + sum_{j<=k} B_j, max_{j<=k} (l_j + sum_{j<r<=k} B_r)).
    """
    seg = _segment_sums(B_tot)  # (..., K, K)
    from_inputs = (seg + ell.unsqueeze(-2)).amax(dim=-1)
    return torch.maximum(m0 + torch.cumsum(B_tot, dim=-1), from_inputs)


def _k_major(x: torch.Tensor, K: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, NH, S, ...) (any strides) -> contiguous (K, B, NH, c, ...) in dtype: one pass.

    Sub-chunk-major, so that every batched matmul below sees one uniform batch stride
    and the boundary states of consecutive sub-chunks are contiguous slices.
    """
    B, NH = x.shape[:2]
    tail = tuple(x.shape[3:])
    view = x[:, :, : K * c].reshape(B, NH, K, c, *tail).movedim(2, 0)
    out = torch.empty((K, B, NH, c) + tail, dtype=dtype, device=x.device)
    out.copy_(view)
    return out


# -- how the stage matmuls run ------------------------------------------------------------
# 'fp32': every matmul in fp32. 'split' (CUDA, bf16 inputs): q, k, v are exact in bf16; each
# fp32 operand (the weighted keys, the intra-chunk weights, the incoming states) is written
# as three bf16 terms hi + lo + lo2 (together within ~2^-25 of it: fp32's own resolution)
# stacked along the contraction, so each product is ONE tensor-core matmul whose bf16
# products are exact in fp32 and whose sums are fp32.

_PROBE: dict = {}


def _cuda_has(op: str, device: torch.device) -> bool:
    """Whether torch.bmm/baddbmm take out_dtype=float32 for bf16 operands here."""
    if op not in _PROBE:
        try:
            a = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
            if op == "bmm":
                ok = torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
            else:
                ok = torch.baddbmm(torch.zeros(1, 2, 2, device=device), a, a,
                                   out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _PROBE[op] = ok
    return _PROBE[op]


TRITON_CELL = "chunkwise--triton"


def _triton_usable(q, k, v, sub_chunk: int) -> bool:
    # a failure recorded in this run (kernels.registry) rules the kernels out from then on
    if not current_run().usable(TRITON_CELL) or q.device.type != "cuda":
        return False
    try:
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
            and _cuda_has("bmm", q.device)):
        return "split"
    return "fp32"


def _gates(i, f, m0, K: int, c: int, ct: torch.dtype):
    """The per-step gate quantities the fused kernels need, sub-chunk-major, without any
    c x c tensor: f_log, i, b (local cumulative log forget gates), m_start/m_end, g and
    the weights w of each input into the boundary state after its sub-chunk."""
    f_log = F.logsigmoid(_k_major(f, K, c, ct))  # (K, B, NH, c)
    i_m = _k_major(i, K, c, ct)
    b = torch.cumsum(f_log, dim=-1)
    from_right = torch.flip(torch.cumsum(torch.flip(f_log, [-1]), dim=-1), [-1])  # sum_{r >= s}
    after = torch.cat([from_right[..., 1:], torch.zeros_like(from_right[..., :1])], dim=-1)  # sum_{r > s}
    last_row = after + i_m  # log weight of input s at the sub-chunk's end
    B_tot = b[..., -1]
    m_end = boundary_stabilisers(m0, B_tot.movedim(0, -1), last_row.amax(dim=-1).movedim(0, -1)).movedim(-1, 0)
    m_start = torch.cat([m0.movedim(-1, 0), m_end[:-1]], dim=0).contiguous()
    g = torch.exp(m_start + B_tot - m_end)
    w = torch.exp(last_row - m_end.unsqueeze(-1))
    return f_log, i_m, b, m_start, m_end, g, w


def _run_triton(q, k, v, i, f, C0, n0, m0, sub_chunk: int, h: torch.Tensor):
    """The fused-kernel form for the first K * sub_chunk steps; h is written in place."""
    from kernels import triton_chunkwise

    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    c = sub_chunk
    K = S // c
    f_log, i_m, b, m_start, m_end, g, w = _gates(i, f, m0, K, c, C0.dtype)
    half = q.dtype if q.dtype == torch.float16 else torch.bfloat16  # exact copies of 16-bit inputs
    q_m = _k_major(q, K, c, half)
    k_m = _k_major(k, K, c, half)
    v_m = _k_major(v, K, c, half)
    slots = torch.empty((K + 1, B, NH, DHQK, _aug_width(DHV)), dtype=torch.float32, device=q.device)
    slots[0, ..., :DHV] = C0
    slots[0, ..., DHV] = n0
    triton_chunkwise.chunk_states(k_m, v_m, w, g, slots)
    triton_chunkwise.chunk_outputs(q_m, k_m, v_m, f_log, i_m, b, m_start, slots, h[:, :, : K * c], EPS)
    last = slots[K]
    return last[..., :DHV].contiguous(), last[..., DHV].contiguous(), m_end[-1].unsqueeze(-1)


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of bf16 operands (any batch dims) with fp32 products and sums."""
    if a.device.type != "cuda":  # the same arithmetic, emulated (tests on the CPU)
        return torch.matmul(a.float(), b.float())
    batch = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
    return out.view(*batch, a.shape[-2], b.shape[-1])


def _add_mm32(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b (c fp32, a and b bf16), fp32 sums; c is consumed."""
    if a.device.type == "cuda" and _cuda_has("baddbmm", a.device):
        out = torch.baddbmm(c.reshape(-1, *c.shape[-2:]), a.reshape(-1, *a.shape[-2:]),
                            b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
        return out.view(c.shape)
    return c.add_(_mm32(a, b))


def split3(x: torch.Tensor, axis: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (fp32) as hi + lo + lo2 in bf16, the three terms stacked on a new axis inserted
    before x's dimension `axis` (so x (..., P, Q) with axis=-2 gives (..., 3, P, Q))."""
    axis = axis % x.dim()
    shape = x.shape[:axis] + (3,) + x.shape[axis:]
    if out is None:
        out = torch.empty(shape, dtype=torch.bfloat16, device=x.device)
    if x.device.type == "cuda" and x.is_contiguous() and out.is_contiguous():
        try:
            from kernels.triton_ops import split3_into
        except ImportError:
            split3_into = None
        if split3_into is not None:
            split3_into(x, out, axis)
            return out
    hi = x.to(torch.bfloat16)
    rest = x - hi.float()
    lo = rest.to(torch.bfloat16)
    out.copy_(torch.stack([hi, lo, (rest - lo.float()).to(torch.bfloat16)], dim=axis))
    return out


def _repeat3(x: torch.Tensor, axis: int) -> torch.Tensor:
    """x three times along a new axis before dimension `axis`, contiguous."""
    axis = axis % x.dim()
    return x.unsqueeze(axis).expand(*x.shape[:axis], 3, *x.shape[axis:]).contiguous()


def _prepare(q, k, v, i, f, C0, n0, m0, sub_chunk: int, mode: str):
    """Stages 1-2 and the boundary-state contributions (no loops). Shapes: see mlstm_chunkwise.

    Returns, sub-chunk-major (K, B, NH, ...): the q, k copies the matmuls use, v_aug =
    [v | 1 | 0 padding] (three stacked copies, (..., 3c, DHVA), in 'split' mode), D (log
    weights inside each sub-chunk), b (local cumulative log forget gates),
    m_start/m_end (stabilisers entering/leaving each sub-chunk), g (the decay of the
    incoming state over each sub-chunk) and dCn (each sub-chunk's inputs summed into a
    boundary state, already scaled to m_end; fp32).
    """
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    ct = C0.dtype
    c = sub_chunk
    K = S // c
    split = mode == "split"

    f_log = F.logsigmoid(_k_major(f, K, c, ct))  # (K, B, NH, c)
    b = torch.cumsum(f_log, dim=-1)
    D = _segment_sums(f_log) + _k_major(i, K, c, ct).unsqueeze(-2)  # D[t, s] = b_t - b_s + i_s
    ell = D[..., -1, :].amax(dim=-1)  # (K, B, NH): each sub-chunk's own largest input weight
    B_tot = b[..., -1]
    m_end = boundary_stabilisers(m0, B_tot.movedim(0, -1), ell.movedim(0, -1)).movedim(-1, 0)
    m_start = torch.cat([m0.movedim(-1, 0), m_end[:-1]], dim=0)
    g = torch.exp(m_start + B_tot - m_end)  # <= 1
    w = torch.exp(D[..., -1, :] - m_end.unsqueeze(-1))  # (K, B, NH, c), <= 1

    mm_dtype = torch.bfloat16 if split else ct
    q_m = _k_major(q, K, c, mm_dtype)
    k_m = _k_major(k, K, c, mm_dtype)
    dhva = _aug_width(DHV)
    v_aug = torch.zeros((K, B, NH, c, dhva), dtype=mm_dtype, device=q.device)  # n rides along as a column
    v_aug[..., :DHV].copy_(v[:, :, : K * c].reshape(B, NH, K, c, DHV).movedim(2, 0))
    v_aug[..., DHV] = 1.0
    kw = k_m * w.unsqueeze(-1)  # fp32
    if split:
        v_aug = _repeat3(v_aug, -2).flatten(-3, -2)  # (..., 3c, DHVA)
        kw3 = split3(kw, -2).flatten(-3, -2)  # (..., 3c, DHQK)
        dCn = _mm32(kw3.transpose(-1, -2), v_aug)
    else:
        dCn = torch.matmul(kw.transpose(-1, -2), v_aug)  # (K, B, NH, DHQK, DHVA)
    return q_m, k_m, v_aug, D, b, m_start, m_end, g, dCn


def _aug_width(dhv: int) -> int:
    """Columns of [v | 1], padded to a multiple of 8 so the matmuls see aligned rows."""
    return -(-(dhv + 1) // 8) * 8


def scan_states(Cn0: torch.Tensor, dCn: torch.Tensor, g: torch.Tensor) -> None:
    """Stage 3, in place: dCn[j] becomes the state after sub-chunk j,
    g_j * (state before it) + dCn[j]. Cn0 (B, NH, DHQK, DHVA); dCn (K, B, NH, ...); g (K, B, NH)."""
    g4 = g[..., None, None]
    dCn[0].addcmul_(Cn0, g4[0])
    for j in range(1, dCn.shape[0]):  # sequential: each boundary state needs the one before
        dCn[j].addcmul_(dCn[j - 1], g4[j])


def _finish(q_m, k_m, v_aug, D, b, m_start, m_end, Cn0, states, mode: str, out_dtype: torch.dtype,
            dhqk: int, dhv: int):
    """Stage 4: every output from its sub-chunk's incoming state, all sub-chunks batched.

    h_t = (q̂_t C_in inter_t + sum_s w_ts v_s) / (max(|q̂_t n_in inter_t + sum_s w_ts|, exp(-m_t)) + eps)
    with w_ts = (q̂_t·k_s) exp(D_ts - m_t): one matmul per term on [v | 1] and [C | n].
    Returns h (B, NH, K*c, DHV) in out_dtype.
    """
    K, B, NH, c = D.shape[:4]
    dhva = Cn0.shape[-1]
    scale = dhqk**-0.5
    split = mode == "split"
    a = m_start.unsqueeze(-1) + b  # log weight of the incoming state at step t
    m_t = torch.maximum(a, D.amax(dim=-1))
    decay = torch.exp(D - m_t.unsqueeze(-1) + math.log(scale))  # q's scale folded in; 0 above the diagonal
    inter = torch.exp(a - m_t) * scale  # weight of the incoming state, q's scale folded in
    if split:
        weights = _mm32(q_m, k_m.transpose(-1, -2)).mul_(decay)
        # the incoming state's part: q (exact in bf16) against the three terms of each
        # state, then weighted per step
        starts = torch.empty((K, B, NH, 3, dhqk, dhva), dtype=torch.bfloat16, device=D.device)
        split3(Cn0, -2, out=starts[0])
        if K > 1:
            split3(states[:-1], -2, out=starts[1:])
        out = _mm32(_repeat3(q_m, -1).flatten(-2, -1), starts.flatten(-3, -2)).mul_(inter.unsqueeze(-1))
        out = _add_mm32(out, split3(weights, -1).flatten(-2, -1), v_aug)
    else:
        weights = torch.matmul(q_m, k_m.transpose(-1, -2)).mul_(decay)
        q_in = q_m * inter.unsqueeze(-1)
        out = torch.empty((K, B, NH, c, dhva), dtype=q_in.dtype, device=D.device)  # [numerator | denominator]
        torch.matmul(q_in[0], Cn0, out=out[0])
        if K > 1:
            torch.matmul(q_in[1:], states[:-1], out=out[1:])
        out.view(-1, c, dhva).baddbmm_(weights.view(-1, c, c), v_aug.view(-1, c, dhva))
    denom = torch.maximum(out[..., dhv].abs(), torch.exp(-m_t)) + EPS
    h = torch.empty((B, NH, K * c, dhv), dtype=out_dtype, device=D.device)
    torch.div(out[..., :dhv], denom.unsqueeze(-1), out=h.view(B, NH, K, c, dhv).movedim(2, 0))
    return h


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
    scan_states(Cn0, dCn, g)
    h = _finish(q_m, k_m, v_aug, D, b, m_start, m_end, Cn0, dCn, mode, v.dtype, DHQK, DHV)
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
    return _run(_prepare, q, k, v, i, f, state, sub_chunk, method)


def compiled_chunkwise():
    """mlstm_chunkwise with its loop-free preparation torch.compile'd (static shapes, full
    graph); the scan (K steps, which compiling would unroll) and the output stage, which
    writes into preallocated buffers, stay eager."""
    prepare = torch.compile(_prepare, dynamic=False, fullgraph=True)

    def run(q, k, v, i, f, state=None, *, sub_chunk: int | None = None, method: str | None = None):
        return _run(prepare, q, k, v, i, f, state, sub_chunk, method)

    return run
