"""Triton versions of kernels.torch_ops.TorchOps: one kernel per op (CUDA).

Same math and the same roundings to the weight dtype as TorchOps; sums may add in another
order. Imported only where Triton exists (kernels.fused_ops.ops_for decides).
"""

from __future__ import annotations

import inspect
import warnings

import torch
import triton
import triton.language as tl

from kernels.torch_ops import TorchOps
from kernels.mlstm import EPS
from kernels.registry import current_run


@triton.jit
def _tanh(x):
    # tanh through exp of a non-positive argument: no overflow, no cancellation near 0
    # beyond fp32 rounding.
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    y = (x * r).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (y * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _head_norm_gate_kernel(h_ptr, o_ptr, w_ptr, out_ptr, S, s_hb, s_hs, s_hh, s_ob, s_os, s_outb, s_outs,
                           DH, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # b * S + s
    head = tl.program_id(1)
    b = row // S
    s = row % S
    cols = tl.arange(0, BLOCK)
    mask = cols < DH
    x = tl.load(h_ptr + b * s_hb + s * s_hs + head * s_hh + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / DH
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / DH
    dt = out_ptr.dtype.element_ty
    y = (xc * (1.0 / tl.sqrt(var + eps))).to(dt).to(tl.float32)
    w = tl.load(w_ptr + head * DH + cols, mask=mask, other=0.0).to(tl.float32)
    y = (y * w).to(dt).to(tl.float32)
    o = tl.load(o_ptr + b * s_ob + s * s_os + head * DH + cols, mask=mask, other=0.0).to(tl.float32)
    gate = (1.0 / (1.0 + tl.exp(-o))).to(dt).to(tl.float32)
    tl.store(out_ptr + b * s_outb + s * s_outs + head * DH + cols, (gate * y).to(dt), mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_out, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    dt = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + hidden + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * u).to(dt), mask=mask)


@triton.jit
def _soft_cap_kernel(x_ptr, out_ptr, N, cap, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cap * _tanh(x / cap), mask=mask)


@triton.jit
def _mlstm_step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr,
    C_ptr, n_in_ptr, m_in_ptr, n_out_ptr, m_out_ptr, h_ptr,
    nh,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ib, s_ih, s_fb, s_fh,
    s_Cb, s_Ch, s_Ck, s_nib, s_nih, s_mib, s_mih, s_nob, s_noh, s_mob, s_moh, s_hb, s_hh,
    DHQK, DHV, scale, cap, eps,
    BLOCK_QK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # One program: one (batch, head) and BLOCK_V columns of its C. The gate and n/m
    # arithmetic is repeated in every program of the head (cheap); the column-0 program
    # writes n and m to the separate outputs, so no program reads a value another wrote.
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = pid // nh
    hd = pid % nh
    kk = tl.arange(0, BLOCK_QK)
    mk = kk < DHQK
    vv = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mv = vv < DHV

    q = tl.load(q_ptr + b * s_qb + hd * s_qh + kk, mask=mk, other=0.0).to(tl.float32) * scale
    k = tl.load(k_ptr + b * s_kb + hd * s_kh + kk, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * s_vb + hd * s_vh + vv, mask=mv, other=0.0).to(tl.float32)
    i_g = cap * _tanh(tl.load(i_ptr + b * s_ib + hd * s_ih).to(tl.float32) / cap)
    f_g = cap * _tanh(tl.load(f_ptr + b * s_fb + hd * s_fh).to(tl.float32) / cap)
    f_log = tl.minimum(f_g, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_g)))  # logsigmoid
    m_old = tl.load(m_in_ptr + b * s_mib + hd * s_mih)
    m_new = tl.maximum(f_log + m_old, i_g)
    f_act = tl.exp(f_log + m_old - m_new)
    i_act = tl.exp(i_g - m_new)

    n_old = tl.load(n_in_ptr + b * s_nib + hd * s_nih + kk, mask=mk, other=0.0)
    n_new = f_act * n_old + i_act * k
    qn = tl.sum(q * n_new, axis=0)

    c_ptrs = C_ptr + b * s_Cb + hd * s_Ch + kk[:, None] * s_Ck + vv[None, :]
    cmask = mk[:, None] & mv[None, :]
    C = tl.load(c_ptrs, mask=cmask, other=0.0)
    C = f_act * C + (i_act * k)[:, None] * v[None, :]
    tl.store(c_ptrs, C, mask=cmask)

    num = tl.sum(q[:, None] * C, axis=0)
    den = tl.maximum(tl.abs(qn), tl.exp(-m_new)) + eps
    tl.store(h_ptr + b * s_hb + hd * s_hh + vv, (num / den).to(h_ptr.dtype.element_ty), mask=mv)
    if pid_v == 0:
        tl.store(n_out_ptr + b * s_nob + hd * s_noh + kk, n_new, mask=mk)
        tl.store(m_out_ptr + b * s_mob + hd * s_moh, m_new)


# -- one-row matrix-vector products with the neighbouring elementwise stage fused in -------
# Decode multiplies one activation row by each weight matrix: pure weight streaming. The
# stage before each product (RMSNorm, the per-head norm with the output gate, SiLU-times-
# up) is recomputed from its small input vector by every program as it streams its rows
# of the weight, and the residual, bias or logit soft cap is applied on the way out: one
# launch per product instead of two or three.

PRO_NONE, PRO_RMS, PRO_SILU, PRO_HEAD_NORM = 0, 1, 2, 3


@triton.jit
def _input_stage(x_ptr, w_ptr, p1_ptr, p2_ptr, cols, cmask, K, r, eps,
                 PROLOGUE: tl.constexpr, DH: tl.constexpr, BLOCK_K: tl.constexpr, WHOLE_ROW: tl.constexpr):
    """The product's input at `cols`, after its fused stage, rounded to the weight dtype
    wherever the unfused model rounds. `r` is the RMSNorm scale (PROLOGUE 1), computed
    here from the same read when `cols` covers the whole row."""
    wdt = w_ptr.dtype.element_ty
    if PROLOGUE == 2:  # x = [gate | up] of width 2K: silu(gate) * up
        g = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + K + cols, mask=cmask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(wdt).to(tl.float32)
        xv = (act * u).to(wdt).to(tl.float32)
    else:
        xv = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if PROLOGUE == 1:
            if WHOLE_ROW:
                r = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=0) / K + eps)
            nw = tl.load(p1_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            xv = ((xv * r).to(wdt).to(tl.float32) * nw).to(wdt).to(tl.float32)
        if PROLOGUE == 3:  # `cols` is whole heads (BLOCK_K a multiple of DH): their layer norms
            hv = tl.reshape(xv, (BLOCK_K // DH, DH))
            mean = tl.sum(hv, axis=1) / DH
            xc = hv - mean[:, None]
            var = tl.sum(xc * xc, axis=1) / DH
            normed = xc * (1.0 / tl.sqrt(var + eps))[:, None]
            normed = tl.reshape(normed, (BLOCK_K,)).to(wdt).to(tl.float32)
            nw = tl.load(p2_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            normed = (normed * nw).to(wdt).to(tl.float32)
            o = tl.load(p1_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            gate = (1.0 / (1.0 + tl.exp(-o))).to(wdt).to(tl.float32)
            xv = (gate * normed).to(wdt).to(tl.float32)
    return xv


@triton.jit
def _epilogue(y, rows, rmask, bias_ptr, res_ptr, w_ptr, cap,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, SOFT_CAP: tl.constexpr):
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    if HAS_RES:
        y += tl.load(res_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    if SOFT_CAP:  # logits: rounded like the model's bf16 head output, then capped in fp32
        y = y.to(w_ptr.dtype.element_ty).to(tl.float32)
        y = cap * _tanh(y / cap)
    return y


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, bias_ptr, res_ptr, p1_ptr, p2_ptr, N, K, stride_w, eps, cap,
                 PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                 SOFT_CAP: tl.constexpr, DH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r = 1.0
    if PROLOGUE == 1:  # RMSNorm: the scale over the whole input first
        sq = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            sq += xv * xv
        r = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        xv = _input_stage(x_ptr, w_ptr, p1_ptr, p2_ptr, cols, cmask, K, r, eps, PROLOGUE, DH, BLOCK_K, False)
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)
        acc += w.to(tl.float32) * xv[None, :]
    y = _epilogue(tl.sum(acc, axis=1), rows, rmask, bias_ptr, res_ptr, w_ptr, cap, HAS_BIAS, HAS_RES, SOFT_CAP)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _gemv_rows_kernel(x_ptr, w_ptr, out_ptr, bias_ptr, res_ptr, p1_ptr, p2_ptr, N, K, stride_w, eps, cap,
                      PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                      SOFT_CAP: tl.constexpr, DH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      STAGES: tl.constexpr, PER_SM: tl.constexpr):
    # Persistent form for inputs that fit one register block (BLOCK_K >= K): each program
    # computes the input stage once, then streams whole weight rows, BLOCK_N at a time,
    # over a grid-stride loop, with STAGES row blocks in flight.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    xv = _input_stage(x_ptr, w_ptr, p1_ptr, p2_ptr, cols, cmask, K, 1.0, eps, PROLOGUE, DH, BLOCK_K, True)
    blocks = tl.cdiv(N, BLOCK_N)
    for rb in tl.range(pid, blocks, nprog, num_stages=STAGES):
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)
        acc = _epilogue(tl.sum(w.to(tl.float32) * xv[None, :], axis=1), rows, rmask, bias_ptr, res_ptr, w_ptr,
                        cap, HAS_BIAS, HAS_RES, SOFT_CAP)
        tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=rmask)


# The persistent form holds the whole input in registers: used up to the width of the
# run's rows_max_k (kernels.registry, default DEFAULT_ROWS_MAX_K).
# (BLOCK_N, warps, stages, programs per SM)
ROWS_TILES = [(2, 4, 3, 4), (1, 4, 4, 4), (4, 8, 3, 2), (2, 8, 4, 2), (1, 4, 3, 8), (4, 4, 2, 4)]
_SM_COUNT: dict = {}


def _sm_count(device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


# Each benchmark is a fresh process: keep the tile choices on disk (Triton's cache dir),
# or every trial spends seconds timing the same tiles again.
_CACHE_TUNING = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}

_gemv_rows = triton.autotune(
    **_CACHE_TUNING,
    configs=[triton.Config({"BLOCK_N": n, "STAGES": st, "PER_SM": p}, num_warps=w) for (n, w, st, p) in ROWS_TILES],
    key=["N", "K", "PROLOGUE", "SOFT_CAP", "DH"])(_gemv_rows_kernel)


def _gemv_configs(tiles):
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st) for (n, k, w, st) in tiles]


# (BLOCK_N, BLOCK_K, warps, stages), tried once per (N, K, stage) at first use, outside any
# graph capture.
GEMV_TILES = [(4, 1024, 4, 3), (8, 512, 4, 3), (2, 2048, 4, 3), (4, 2048, 8, 3), (8, 1024, 8, 3), (4, 1024, 4, 4)]


def _head_norm_tiles(configs, named_args, **kwargs):
    # The per-head norm needs whole heads in a chunk.
    dh = named_args["DH"] if "DH" in named_args else kwargs["DH"]
    k = named_args["K"] if "K" in named_args else kwargs["K"]
    kept = [c for c in configs if c.kwargs["BLOCK_K"] % dh == 0 and k % c.kwargs["BLOCK_K"] == 0]
    return kept or [triton.Config({"BLOCK_N": 8, "BLOCK_K": dh}, num_warps=4, num_stages=3)]


_gemv = triton.autotune(configs=_gemv_configs(GEMV_TILES), key=["N", "K", "PROLOGUE", "SOFT_CAP"],
                        **_CACHE_TUNING)(_gemv_kernel)
_gemv_head_norm = triton.autotune(configs=_gemv_configs(GEMV_TILES), key=["N", "K", "DH"], **_CACHE_TUNING,
                                  prune_configs_by={"early_config_prune": _head_norm_tiles})(_gemv_kernel)


def gemv(x, weight, *, prologue=PRO_NONE, bias=None, residual=None, p1=None, p2=None, eps=0.0,
         soft_cap=None, head_dim=1):
    """One row: out = stage(x) @ weightᵀ (+ bias) (+ residual), or its soft-capped fp32 logits."""
    N, K = weight.shape
    out = torch.empty(N, dtype=torch.float32 if soft_cap is not None else weight.dtype, device=weight.device)
    dummy = weight
    args = (x, weight, out, bias if bias is not None else dummy, residual if residual is not None else dummy,
            p1 if p1 is not None else dummy, p2 if p2 is not None else dummy, N, K, weight.stride(0),
            float(eps), float(soft_cap or 0.0))
    flags = dict(PROLOGUE=prologue, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                 SOFT_CAP=soft_cap is not None, DH=head_dim)

    if triton.next_power_of_2(K) <= current_run().param("rows_max_k") and (prologue != PRO_HEAD_NORM or K == triton.next_power_of_2(K)):
        sms = _sm_count(weight.device)

        def rows_grid(meta):
            return (min(triton.cdiv(N, meta["BLOCK_N"]), sms * meta["PER_SM"]),)

        _gemv_rows[rows_grid](*args, **flags, BLOCK_K=triton.next_power_of_2(K))
        return out

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    (_gemv_head_norm if prologue == PRO_HEAD_NORM else _gemv)[grid](*args, **flags)
    return out


def _one_row(*tensors) -> bool:
    """All inputs hold a single contiguous row (the decode case the GEMV serves)."""
    return all(t.numel() == t.shape[-1] and t.is_contiguous() for t in tensors)


@triton.jit
def _split3_kernel(x_ptr, out_ptr, inner, total, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    hi = x.to(tl.bfloat16)
    rest = x - hi.to(tl.float32)
    lo = rest.to(tl.bfloat16)
    lo2 = (rest - lo.to(tl.float32)).to(tl.bfloat16)
    base = (offs // inner) * (3 * inner) + offs % inner
    tl.store(out_ptr + base, hi, mask=mask)
    tl.store(out_ptr + base + inner, lo, mask=mask)
    tl.store(out_ptr + base + 2 * inner, lo2, mask=mask)


def split3_into(x: torch.Tensor, out: torch.Tensor, axis: int) -> None:
    """kernels.chunkwise.split3 in one pass: x (fp32, contiguous) -> out (bf16, contiguous,
    x's shape with 3 inserted before dimension `axis`)."""
    inner = 1
    for size in x.shape[axis:]:
        inner *= size
    total = x.numel()
    block = 1024
    _split3_kernel[(triton.cdiv(total, block),)](x, out, inner, total, BLOCK=block, num_warps=4)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, last) with a unit last stride (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


# Elements of C one decode-step program updates (BLOCK_QK x BLOCK_V) are the run's
# step_tile (kernels.registry, default DEFAULT_STEP_TILE): smaller tiles give more
# programs per head.


GEMV_KERNEL = "triton-gemv"


class TritonOps(TorchOps):
    name = "triton"

    @classmethod
    def _fused(cls, run, fallback):
        # A fused GEMV that failed to build or run here is ruled out for the rest of the run
        # (kernels.registry): later calls take the composed path (elementwise kernel +
        # cuBLAS), which computes the same function; the fallback is on the run's record.
        kernels = current_run()
        if kernels.usable(GEMV_KERNEL):
            try:
                out = run()
            except Exception as exc:  # a Triton build or launch failure on this GPU
                why = kernels.fail("ops", GEMV_KERNEL, exc, fallback="triton (composed: elementwise + cuBLAS)")
                warnings.warn(f"fused GEMV kernels unavailable ({why}); using the composed ops",
                              RuntimeWarning, stacklevel=3)
            else:
                kernels.record("ops", "triton", {"rows_max_k": kernels.param("rows_max_k"),
                                                 "step_tile": kernels.param("step_tile")})
                return out
        return fallback()

    @staticmethod
    def rms_norm(x, weight, eps):
        x2 = _rows(x)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        D = x2.shape[1]
        block = triton.next_power_of_2(D)
        _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, x2.stride(0), out.stride(0), D, eps,
                                         BLOCK=block, num_warps=_warps(block))
        return out.view(x.shape)

    @staticmethod
    def head_norm_gate(h, o_pre, weight, eps):
        B, S, NH, DH = h.shape
        if h.stride(-1) != 1:
            h = h.contiguous()
        if o_pre.stride(-1) != 1:
            o_pre = o_pre.contiguous()
        out = torch.empty(B, S, NH * DH, dtype=o_pre.dtype, device=o_pre.device)
        block = triton.next_power_of_2(DH)
        _head_norm_gate_kernel[(B * S, NH)](
            h, o_pre, weight, out, S, h.stride(0), h.stride(1), h.stride(2),
            o_pre.stride(0), o_pre.stride(1), out.stride(0), out.stride(1), DH, eps,
            BLOCK=block, num_warps=_warps(block))
        return out

    @staticmethod
    def silu_mul(gate_up, hidden):
        g2 = _rows(gate_up)
        out = torch.empty(g2.shape[0], hidden, dtype=gate_up.dtype, device=gate_up.device)
        block = min(1024, triton.next_power_of_2(hidden))
        grid = (g2.shape[0], triton.cdiv(hidden, block))
        _silu_mul_kernel[grid](g2, out, g2.stride(0), out.stride(0), hidden, BLOCK=block, num_warps=4)
        return out.view(*gate_up.shape[:-1], hidden)

    @staticmethod
    def soft_cap(x, cap):
        xc = x.contiguous()
        out = torch.empty(xc.shape, dtype=torch.float32, device=x.device)
        N = xc.numel()
        block = 1024
        _soft_cap_kernel[(triton.cdiv(N, block),)](xc, out, N, float(cap), BLOCK=block, num_warps=4)
        return out

    @classmethod
    def rms_linear(cls, x, norm_weight, eps, weight, bias=None):
        def composed():
            return super(TritonOps, cls).rms_linear(x, norm_weight, eps, weight, bias)

        if not _one_row(x):
            return composed()
        return cls._fused(lambda: gemv(x, weight, prologue=PRO_RMS, p1=norm_weight, eps=eps, bias=bias)
                          .view(*x.shape[:-1], weight.shape[0]), composed)

    @classmethod
    def rms_linear_soft_cap(cls, x, norm_weight, eps, weight, cap):
        def composed():
            return super(TritonOps, cls).rms_linear_soft_cap(x, norm_weight, eps, weight, cap)

        if not _one_row(x):
            return composed()
        return cls._fused(lambda: gemv(x, weight, prologue=PRO_RMS, p1=norm_weight, eps=eps, soft_cap=cap)
                          .view(*x.shape[:-1], weight.shape[0]), composed)

    @classmethod
    def head_norm_gate_linear_add(cls, x, h, o_pre, norm_weight, eps, weight):
        def composed():
            return super(TritonOps, cls).head_norm_gate_linear_add(x, h, o_pre, norm_weight, eps, weight)

        DH = h.shape[-1]
        if not (_one_row(x, o_pre) and h.numel() == h.shape[-1] * h.shape[-2] and h.is_contiguous()
                and DH == triton.next_power_of_2(DH)):
            return composed()
        return cls._fused(lambda: gemv(h, weight, prologue=PRO_HEAD_NORM, p1=o_pre, p2=norm_weight, eps=eps,
                                       residual=x, head_dim=DH).view(x.shape), composed)

    @classmethod
    def silu_linear_add(cls, x, gate_up, hidden, weight):
        def composed():
            return super(TritonOps, cls).silu_linear_add(x, gate_up, hidden, weight)

        if not _one_row(x, gate_up):
            return composed()
        return cls._fused(lambda: gemv(gate_up, weight, prologue=PRO_SILU, residual=x).view(x.shape), composed)

    @staticmethod
    def mlstm_step_into(q, k, v, i_pre, f_pre, cap, C, n_in, m_in, n_out, m_out, h_out):
        B, nh, DHQK = q.shape
        DHV = v.shape[-1]
        for name, t in (("q", q), ("k", k), ("v", v), ("C", C), ("n_in", n_in), ("n_out", n_out), ("h_out", h_out)):
            if t.stride(-1) != 1:
                raise ValueError(f"mlstm_step_into needs a unit last stride for {name}")
        block_qk = triton.next_power_of_2(DHQK)
        block_v = min(triton.next_power_of_2(DHV), max(16, current_run().param("step_tile") // block_qk))
        grid = (B * nh, triton.cdiv(DHV, block_v))
        _mlstm_step_kernel[grid](
            q, k, v, i_pre, f_pre, C, n_in, m_in, n_out, m_out, h_out, nh,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            i_pre.stride(0), i_pre.stride(1), f_pre.stride(0), f_pre.stride(1),
            C.stride(0), C.stride(1), C.stride(2), n_in.stride(0), n_in.stride(1),
            m_in.stride(0), m_in.stride(1), n_out.stride(0), n_out.stride(1),
            m_out.stride(0), m_out.stride(1), h_out.stride(0), h_out.stride(1),
            DHQK, DHV, DHQK**-0.5, float(cap), EPS,
            BLOCK_QK=block_qk, BLOCK_V=block_v, num_warps=4)
