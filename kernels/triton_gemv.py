"""The decode GEMV as Triton kernels: one activation row times a weight matrix, with the
neighbouring elementwise stage fused in (TritonOps' rms_linear, rms_linear_soft_cap,
head_norm_gate_linear_add, silu_linear_add).

Decode multiplies one activation row by each weight matrix: pure weight streaming. The
stage before each product (RMSNorm, the per-head norm with the output gate, SiLU-times-
up) is recomputed from its small input vector by every program as it streams its rows
of the weight, and the residual, bias or logit soft cap is applied on the way out: one
launch per product instead of two or three.

`gemv` takes the persistent form (_gemv_rows_kernel) for inputs up to the run's
rows_max_k wide, else the tiled form (_gemv_kernel, the RMSNorm scale in a first pass),
each with the tile Triton's autotuner picks from the tables below at first use.
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from kernels.registry import current_run
from kernels.triton_elementwise import tanh

# The stage fused before the product: none, RMSNorm, SiLU(gate) * up, per-head norm x gate.
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
        y = cap * tanh(y / cap)
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
