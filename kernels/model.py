"""The xLSTM language model, readable top to bottom.

    tokens -> embedding
           -> num_blocks x block, each either
                mLSTM block:  x + mLSTMLayer(RMSNorm(x)),  then x + SwiGLU(RMSNorm(x))
                sLSTM block:  x + sLSTMLayer(RMSNorm(x)),  then x + SwiGLU(RMSNorm(x))
           -> RMSNorm -> LM head -> logit soft cap 30 -> logits (fp32)

mLSTM layer (the layout of the official xLSTM-7B): projections q, k, v, output gate
and the i, f gate pre-activations (soft-capped at 15); the cell; a per-head layer norm
on h; h * sigmoid(output gate); output projection.

The cell itself is not called here directly: every mLSTM layer hands q, k, v, i, f for
its whole input sequence to `model.cell_runner`:

    cell_runner(layer_index, q, k, v, i, f, state) -> (h, new_state)

q, k (B, NH, S, DHQK), v (B, NH, S, DHV) in the weight dtype; i, f (B, NH, S) fp32;
`state` is what the runner returned last time for this layer (None at first);
layer_index is the block's position in the stack. The model never looks inside an
mLSTM state, so a runner may return a handle. The schedulers plug in here;
DirectCellRunner is the default.

Weights are bf16 or fp32; every recurrent state is fp32. Random initialisation happens
directly on the target device (modules are built on the meta device, then materialised
where they will run), so even the 7b shape initialises on a GPU in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.device import resolve_device
from kernels.mlstm import mlstm_block, mlstm_step
from kernels.slstm import slstm_sequence, slstm_step


# ----------------------------------------------------------------------------- config


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    embedding_dim: int
    num_heads: int
    num_blocks: int
    slstm_at: tuple[int, ...] = ()  # block positions that are sLSTM blocks
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    ffn_proj_factor: float = 2.667
    ffn_round_up_to: int = 64
    gate_soft_cap: float = 15.0
    logit_soft_cap: float = 30.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        for pos in self.slstm_at:
            if not 0 <= pos < self.num_blocks:
                raise ValueError(f"{self.name}: sLSTM position {pos} outside 0..{self.num_blocks - 1}")
        for what, dim in (("qk", self.qk_dim), ("v", self.v_dim), ("embedding", self.embedding_dim)):
            if dim % self.num_heads:
                raise ValueError(f"{self.name}: {what} dim {dim} is not divisible by {self.num_heads} heads")

    @property
    def qk_dim(self) -> int:
        return int(self.embedding_dim * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        return int(self.embedding_dim * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def slstm_head_dim(self) -> int:
        return self.embedding_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round_up(self.embedding_dim * self.ffn_proj_factor, self.ffn_round_up_to)

    @property
    def mlstm_blocks(self) -> tuple[int, ...]:
        return tuple(b for b in range(self.num_blocks) if b not in self.slstm_at)

    def state_bytes_per_sequence(self) -> int:
        """Bytes of fp32 recurrent state one sequence carries through the whole model."""
        per_mlstm = self.num_heads * (self.qk_head_dim * self.v_head_dim + self.qk_head_dim + 1)
        per_slstm = 4 * self.embedding_dim
        return 4 * (len(self.mlstm_blocks) * per_mlstm + len(self.slstm_at) * per_slstm)


SHAPES: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("tiny", vocab_size=256, embedding_dim=64, num_heads=4, num_blocks=3, slstm_at=(1,)),
        # Recall model (autotune/bench/recall.py): 8 heads so that every heads_per_band valid
        # for a 4- or 8-head shape fits it; an sLSTM block first gives the mLSTM block the
        # previous token, under which MQAR stores each value.
        ModelConfig("mqar-tiny", vocab_size=8192, embedding_dim=128, num_heads=8, num_blocks=2,
                    slstm_at=(0,), qk_dim_factor=1.0, ffn_proj_factor=1.0),
        ModelConfig("125m", vocab_size=50304, embedding_dim=768, num_heads=4, num_blocks=12),
        ModelConfig("350m", vocab_size=50304, embedding_dim=1024, num_heads=8, num_blocks=24),
        ModelConfig("1.3b", vocab_size=50304, embedding_dim=2048, num_heads=8, num_blocks=48),
        ModelConfig("7b", vocab_size=50304, embedding_dim=4096, num_heads=8, num_blocks=32),
    )
}


def get_config(name: str) -> ModelConfig:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; valid shapes: {', '.join(SHAPES)}") from None


# ----------------------------------------------------------------------------- cell runner


class DirectCellRunner:
    """Runs the mLSTM cell in the calling thread: mlstm_step for one token, otherwise
    sequential chunks of `chunk_size` steps through mlstm_block."""

    def __init__(self, chunk_size: int = 64):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def __call__(self, layer_index, q, k, v, i, f, state):
        S = q.shape[2]
        if S == 1:
            h, state = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
            return h.unsqueeze(2), state
        hs = []
        for start in range(0, S, self.chunk_size):
            end = min(start + self.chunk_size, S)
            h, state = mlstm_block(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                i[:, :, start:end], f[:, :, start:end], state,
            )  # fmt: skip
            hs.append(h)
        return (hs[0] if len(hs) == 1 else torch.cat(hs, dim=2)), state


# ----------------------------------------------------------------------------- layers


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, **factory))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class MultiHeadLayerNorm(nn.Module):
    """Layer norm over each head's features separately; x (B, S, NH, DH) -> (B, S, NH*DH)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_heads * head_dim, **factory))

    def forward(self, x):
        B, S, NH, DH = x.shape
        x32 = x.float()
        x32 = (x32 - x32.mean(-1, keepdim=True)) * torch.rsqrt(x32.var(-1, keepdim=True, unbiased=False) + self.eps)
        return x32.to(self.weight.dtype).reshape(B, S, NH * DH) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: proj_down(silu(proj_up_gate(x)) * proj_up(x))."""

    def __init__(self, config: ModelConfig, **factory):
        super().__init__()
        d, hidden = config.embedding_dim, config.ffn_dim
        self.proj_up_gate = nn.Linear(d, hidden, bias=False, **factory)
        self.proj_up = nn.Linear(d, hidden, bias=False, **factory)
        self.proj_down = nn.Linear(hidden, d, bias=False, **factory)

    def forward(self, x):
        return self.proj_down(F.silu(self.proj_up_gate(x)) * self.proj_up(x))


class mLSTMLayer(nn.Module):
    def __init__(self, config: ModelConfig, **factory):
        super().__init__()
        self.config = config
        d, NH = config.embedding_dim, config.num_heads
        self.q = nn.Linear(d, config.qk_dim, bias=False, **factory)
        self.k = nn.Linear(d, config.qk_dim, bias=False, **factory)
        self.v = nn.Linear(d, config.v_dim, bias=False, **factory)
        self.ogate_preact = nn.Linear(d, config.v_dim, bias=False, **factory)
        self.igate_preact = nn.Linear(d, NH, bias=True, **factory)
        self.fgate_preact = nn.Linear(d, NH, bias=True, **factory)
        self.multihead_norm = MultiHeadLayerNorm(NH, config.v_head_dim, config.norm_eps, **factory)
        self.out_proj = nn.Linear(config.v_dim, d, bias=False, **factory)

    def forward(self, x, state, cell_runner, layer_index):
        B, S, _ = x.shape
        NH, cap = self.config.num_heads, self.config.gate_soft_cap
        q = self.q(x).view(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, DHQK)
        k = self.k(x).view(B, S, NH, -1).transpose(1, 2)
        v = self.v(x).view(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, DHV)
        i = soft_cap(self.igate_preact(x).float(), cap).transpose(1, 2)  # (B, NH, S)
        f = soft_cap(self.fgate_preact(x).float(), cap).transpose(1, 2)

        h, state = cell_runner(layer_index, q, k, v, i, f, state)  # h (B, NH, S, DHV)

        h = self.multihead_norm(h.transpose(1, 2))  # (B, S, NH*DHV)
        h = torch.sigmoid(self.ogate_preact(x)) * h
        return self.out_proj(h), state


class sLSTMLayer(nn.Module):
    """Gate projections of the input, the sLSTM cell with a block-diagonal recurrent
    matrix per head, a per-head norm and an output projection."""

    def __init__(self, config: ModelConfig, **factory):
        super().__init__()
        d, NH, DH = config.embedding_dim, config.num_heads, config.slstm_head_dim
        self.num_heads, self.head_dim = NH, DH
        self.gates = nn.Linear(d, 4 * d, bias=False, **factory)  # i, f, z, o
        self.recurrent = nn.Parameter(torch.empty(4, NH, DH, DH, **factory))
        self.bias = nn.Parameter(torch.empty(4, NH, DH, **factory))
        self.multihead_norm = MultiHeadLayerNorm(NH, DH, config.norm_eps, **factory)
        self.out_proj = nn.Linear(d, d, bias=False, **factory)

    def forward(self, x, state):
        B, S, _ = x.shape
        wx = self.gates(x).view(B, S, 4, self.num_heads, self.head_dim)
        if S == 1:
            y, state = slstm_step(wx[:, 0], self.recurrent, self.bias, state)
            y = y.unsqueeze(1)
        else:
            y, state = slstm_sequence(wx, self.recurrent, self.bias, state)
        return self.out_proj(self.multihead_norm(y)), state  # y (B, S, NH, DH)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, kind: str, **factory):
        super().__init__()
        self.kind = kind
        d, eps = config.embedding_dim, config.norm_eps
        self.norm_mlstm = RMSNorm(d, eps, **factory)  # official name, also used by sLSTM blocks
        if kind == "mlstm":
            self.mlstm_layer = mLSTMLayer(config, **factory)
        else:
            self.slstm_layer = sLSTMLayer(config, **factory)
        self.norm_ffn = RMSNorm(d, eps, **factory)
        self.ffn = FeedForward(config, **factory)

    def forward(self, x, state, cell_runner, layer_index):
        if self.kind == "mlstm":
            y, state = self.mlstm_layer(self.norm_mlstm(x), state, cell_runner, layer_index)
        else:
            y, state = self.slstm_layer(self.norm_mlstm(x), state)
        x = x + y
        x = x + self.ffn(self.norm_ffn(x))
        return x, state


# ----------------------------------------------------------------------------- model


class XLSTM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = 0,
        cell_runner=None,
    ):
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"model weights must be torch.float32 or torch.bfloat16, got {dtype}")
        device = resolve_device(device)
        self.config = config
        self.cell_runner = cell_runner if cell_runner is not None else DirectCellRunner()

        # Built on the meta device (no memory, no init work), then materialised on the
        # target device and initialised there.
        factory = dict(device="meta", dtype=dtype)
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, **factory)
        self.blocks = nn.ModuleList(
            Block(config, "slstm" if b in config.slstm_at else "mlstm", **factory)
            for b in range(config.num_blocks)
        )
        self.out_norm = RMSNorm(config.embedding_dim, config.norm_eps, **factory)
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False, **factory)
        self.to_empty(device=device)
        self.init_weights(seed)
        self.requires_grad_(False)  # an inference runtime
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """Random initialisation in place on the model's device: normal(0, 0.02) weights,
        unit norm weights, and the official gate biases (input -10, forget 3..6)."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
        std = 0.02
        for name, p in self.named_parameters():
            if "norm" in name:  # norm_mlstm, norm_ffn, multihead_norm, out_norm
                p.fill_(1.0)
            elif name.endswith("igate_preact.bias"):
                p.fill_(-10.0)
            elif name.endswith("fgate_preact.bias"):
                p.copy_(torch.linspace(3.0, 6.0, p.numel(), device=p.device, dtype=p.dtype))
            elif name.endswith("slstm_layer.bias"):
                p.zero_()
                p[1].fill_(3.0)  # forget gate: remember by default
            elif name.endswith("slstm_layer.recurrent"):
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]) * 0.5, generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)

    def forward(self, tokens: torch.Tensor, state: list | None = None):
        """tokens (B, S) int64 -> (logits (B, S, vocab) fp32, state: one entry per block)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        if state is None:
            state = [None] * len(self.blocks)
        x = self.embedding(tokens)
        new_state = []
        for index, block in enumerate(self.blocks):
            x, block_state = block(x, state[index], self.cell_runner, index)
            new_state.append(block_state)
        x = self.out_norm(x)
        logits = soft_cap(self.lm_head(x).float(), self.config.logit_soft_cap)
        return logits, new_state
