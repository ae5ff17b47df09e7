"""The xLSTM forward regrouped for speed, on the weights of an existing XLSTM.

Same function as XLSTM.forward (tests hold it to the model), fewer and larger kernels:

- an mLSTM layer's six input projections (q, k, v, output gate, input and forget gate
  pre-activations) are one matmul against one fused weight; an FFN's gate and up
  projections are another. The model's own Linear parameters become views into the fused
  weights (memory is not doubled; XLSTM.forward keeps working on the same numbers);
- residual additions ride on the output matmuls (addmm);
- RMSNorm, the per-head norm with the output gate, SiLU-times-up and the soft caps are
  one op each (kernels.fused_ops: Triton on CUDA, plain torch elsewhere); for a single
  row (decode) each is fused into the matrix-vector product that follows it.

The cell is reached through pieces that a caller composes:
    x = fm.embed(tokens)
    per mLSTM block b:  proj = fm.mlstm_in(b, x); q, k, v, i_pre, f_pre, o_pre = fm.split(proj)
                        ... the cell, on q, k, v and the gates ...
                        x = fm.mlstm_out(b, x, h, o_pre);  x = fm.ffn(b, x)
    per sLSTM block b:  x, state = fm.slstm_block(b, x, state)
    logits = fm.head(x)
forward(tokens, state, cell_runner) composes them with a model cell runner (prefill,
any S); schedulers.graphs composes them around an in-place decode step for CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.fused_ops import ops_for
from kernels.model import XLSTM
from kernels.registry import current_run


@dataclass(frozen=True)
class ProjectionLayout:
    """Column offsets of the fused mLSTM input projection: [q | k | v | o | i | f]."""

    qk_dim: int
    v_dim: int
    num_heads: int

    @property
    def q(self) -> slice:
        return slice(0, self.qk_dim)

    @property
    def k(self) -> slice:
        return slice(self.qk_dim, 2 * self.qk_dim)

    @property
    def v(self) -> slice:
        return slice(2 * self.qk_dim, 2 * self.qk_dim + self.v_dim)

    @property
    def o(self) -> slice:
        start = 2 * self.qk_dim + self.v_dim
        return slice(start, start + self.v_dim)

    @property
    def i(self) -> slice:
        start = 2 * self.qk_dim + 2 * self.v_dim
        return slice(start, start + self.num_heads)

    @property
    def f(self) -> slice:
        start = 2 * self.qk_dim + 2 * self.v_dim + self.num_heads
        return slice(start, start + self.num_heads)

    @property
    def width(self) -> int:
        return 2 * self.qk_dim + 2 * self.v_dim + 2 * self.num_heads


def _already_fused(modules) -> torch.Tensor | None:
    """The fused weight the modules' weights are consecutive row blocks of, else None."""
    weights = [m.weight.detach() for m in modules]
    storage = weights[0].untyped_storage()
    rows, cols = sum(w.shape[0] for w in weights), weights[0].shape[1]
    if storage.nbytes() != rows * cols * weights[0].element_size():
        return None
    row = 0
    for w in weights:
        if (w.untyped_storage().data_ptr() != storage.data_ptr() or w.storage_offset() != row * cols
                or not w.is_contiguous() or w.shape[1] != cols):
            return None
        row += w.shape[0]
    return weights[0].new_empty(0).set_(storage, 0, (rows, cols))


def _fuse_rows(modules, biases: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the Linear weights (and biases, zeros where a Linear has none) row-wise,
    then make each module's parameters views into the result. Idempotent for the weights:
    ones that already are consecutive views of one buffer are used in place, not copied."""
    weight = _already_fused(modules)
    if weight is None:
        weight = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    bias = None
    if biases:
        parts = [m.bias.detach() if m.bias is not None else
                 torch.zeros(m.out_features, dtype=weight.dtype, device=weight.device) for m in modules]
        bias = torch.cat(parts).contiguous()
    row = 0
    for m in modules:
        rows = slice(row, row + m.out_features)
        m.weight.data = weight[rows]
        if m.bias is not None:
            m.bias.data = bias[rows]
        row += m.out_features
    return weight, bias


class FastModel:
    """Fused-weight, fused-op forward of `model` (an XLSTM); see the module docstring."""

    def __init__(self, model: XLSTM, *, ops=None):
        self.model = model
        self.config = config = model.config
        before = len(current_run().fallbacks)
        self.ops = ops if ops is not None else ops_for(model.device)
        self._ops_fallbacks = current_run().fallbacks[before:]  # why this op set, when it is a fallback
        self.declare()
        self.layout = ProjectionLayout(config.qk_dim, config.v_dim, config.num_heads)
        self.in_proj: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.up_proj: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for b, block in enumerate(model.blocks):
                if block.kind == "mlstm":
                    layer = block.mlstm_layer
                    self.in_proj[b] = _fuse_rows(
                        [layer.q, layer.k, layer.v, layer.ogate_preact, layer.igate_preact, layer.fgate_preact],
                        biases=True)
                self.up_proj[b] = _fuse_rows([block.ffn.proj_up_gate, block.ffn.proj_up], biases=False)[0]

    def declare(self) -> None:
        """Put this model's op set, and the fallback that chose it, on the current run's
        record: a model kept across runs (a warm worker's) declares it in each run."""
        run = current_run()
        for f in self._ops_fallbacks:
            run.fail(f["family"], f["kernel"], f["why"], fallback=f["instead"])
        run.record("ops", self.ops.name)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- pieces ---------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.model.embedding.weight)

    def mlstm_in(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """The fused input projection of block b's mLSTM layer: (B, S, layout.width)."""
        norm = self.model.blocks[b].norm_mlstm
        weight, bias = self.in_proj[b]
        return self.ops.rms_linear(x, norm.weight, norm.eps, weight, bias)

    def split(self, proj: torch.Tensor):
        """Views of a fused projection: q, k (B, NH, S, DHQK), v (B, NH, S, DHV), i_pre,
        f_pre (B, S, NH) (before the soft cap), o_pre (B, S, v_dim)."""
        B, S, _ = proj.shape
        L, NH = self.layout, self.config.num_heads
        q = proj[..., L.q].view(B, S, NH, -1).transpose(1, 2)
        k = proj[..., L.k].view(B, S, NH, -1).transpose(1, 2)
        v = proj[..., L.v].view(B, S, NH, -1).transpose(1, 2)
        return q, k, v, proj[..., L.i], proj[..., L.f], proj[..., L.o]

    def gates(self, i_pre: torch.Tensor, f_pre: torch.Tensor):
        """Soft-capped fp32 gates in the cell's layout (B, NH, S)."""
        cap = self.config.gate_soft_cap
        return self.ops.soft_cap(i_pre, cap).transpose(1, 2), self.ops.soft_cap(f_pre, cap).transpose(1, 2)

    def mlstm_out(self, b: int, x: torch.Tensor, h: torch.Tensor, o_pre: torch.Tensor) -> torch.Tensor:
        """x + out_proj(sigmoid(o) * norm(h)); h (B, S, NH, DHV) (any strides)."""
        layer = self.model.blocks[b].mlstm_layer
        norm = layer.multihead_norm
        return self.ops.head_norm_gate_linear_add(x, h, o_pre, norm.weight, norm.eps, layer.out_proj.weight)

    def ffn(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """x + FFN(RMSNorm(x)) of block b."""
        block = self.model.blocks[b]
        gate_up = self.ops.rms_linear(x, block.norm_ffn.weight, block.norm_ffn.eps, self.up_proj[b])
        return self.ops.silu_linear_add(x, gate_up, self.config.ffn_dim, block.ffn.proj_down.weight)

    def slstm_block(self, b: int, x: torch.Tensor, state):
        """An sLSTM block's layer (the model's own code) and its residual; the FFN is ffn()."""
        block = self.model.blocks[b]
        y, state = block.slstm_layer(self.ops.rms_norm(x, block.norm_mlstm.weight, block.norm_mlstm.eps), state)
        return x + y, state

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, S, vocab) fp32, soft-capped."""
        norm = self.model.out_norm
        return self.ops.rms_linear_soft_cap(x, norm.weight, norm.eps, self.model.lm_head.weight,
                                            self.config.logit_soft_cap)

    # -- the whole forward ----------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, state: list | None = None, cell_runner=None):
        """XLSTM.forward's contract: tokens (B, S) -> (logits (B, S, vocab) fp32, state).

        The mLSTM cells run through cell_runner (default: the model's), so the
        schedulers' knobs apply exactly as in XLSTM.forward.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        runner = cell_runner if cell_runner is not None else self.model.cell_runner
        if state is None:
            state = [None] * len(self.model.blocks)
        x = self.embed(tokens)
        new_state = []
        for b, block in enumerate(self.model.blocks):
            if block.kind == "mlstm":
                q, k, v, i_pre, f_pre, o_pre = self.split(self.mlstm_in(b, x))
                i, f = self.gates(i_pre, f_pre)
                h, block_state = runner(b, q, k, v, i, f, state[b])
                x = self.mlstm_out(b, x, h.transpose(1, 2), o_pre)
            else:
                x, block_state = self.slstm_block(b, x, state[b])
            x = self.ffn(b, x)
            new_state.append(block_state)
        return self.head(x), new_state

    __call__ = forward
