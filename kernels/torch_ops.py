"""The fused operations of kernels.fused_ops in plain torch (any device): the reference
the Triton versions (kernels.triton_ops) compute the same function as."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.mlstm import mlstm_step


class TorchOps:
    name = "torch"

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return x32.to(x.dtype) * weight

    @staticmethod
    def head_norm_gate(h: torch.Tensor, o_pre: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """h (B, S, NH, DH) (any strides), o_pre (B, S, NH*DH) -> (B, S, NH*DH) in o_pre's dtype."""
        B, S, NH, DH = h.shape
        x32 = h.float()
        x32 = (x32 - x32.mean(-1, keepdim=True)) * torch.rsqrt(x32.var(-1, keepdim=True, unbiased=False) + eps)
        normed = x32.to(weight.dtype).reshape(B, S, NH * DH) * weight
        return torch.sigmoid(o_pre) * normed

    @staticmethod
    def silu_mul(gate_up: torch.Tensor, hidden: int) -> torch.Tensor:
        """gate_up (..., 2*hidden) = [gate | up] -> silu(gate) * up."""
        return F.silu(gate_up[..., :hidden]) * gate_up[..., hidden:]

    @staticmethod
    def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
        """cap * tanh(x / cap) in fp32."""
        return cap * torch.tanh(x.float() / cap)

    # -- an elementwise stage and the matmul after it -------------------------------------
    @staticmethod
    def add_linear(x: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x + inp @ weightᵀ as one matmul with the residual as its addend."""
        out = torch.addmm(x.reshape(-1, x.shape[-1]), inp.reshape(-1, inp.shape[-1]), weight.t())
        return out.view(x.shape)

    @classmethod
    def rms_linear(cls, x, norm_weight, eps, weight, bias=None):
        """linear(rms_norm(x), weight, bias)."""
        return F.linear(cls.rms_norm(x, norm_weight, eps), weight, bias)

    @classmethod
    def rms_linear_soft_cap(cls, x, norm_weight, eps, weight, cap):
        """soft_cap(linear(rms_norm(x), weight), cap): the LM head's logits."""
        return cls.soft_cap(F.linear(cls.rms_norm(x, norm_weight, eps), weight), cap)

    @classmethod
    def head_norm_gate_linear_add(cls, x, h, o_pre, norm_weight, eps, weight):
        """x + head_norm_gate(h, o_pre) @ weightᵀ: an mLSTM layer's output and residual."""
        return cls.add_linear(x, cls.head_norm_gate(h, o_pre, norm_weight, eps), weight)

    @classmethod
    def silu_linear_add(cls, x, gate_up, hidden, weight):
        """x + silu_mul(gate_up) @ weightᵀ: the FFN's down projection and residual."""
        return cls.add_linear(x, cls.silu_mul(gate_up, hidden), weight)

    @classmethod
    def mlstm_step_into(cls, q, k, v, i_pre, f_pre, cap: float, C, n_in, m_in, n_out, m_out, h_out) -> None:
        """q, k (B, nh, DHQK), v (B, nh, DHV), i_pre, f_pre (B, nh) raw gate pre-activations
        (the model soft-caps them at `cap` in fp32 first); C (B, nh, DHQK, DHV) updated in
        place; n_in/m_in read, n_out/m_out and h_out (B, nh, DHV) written."""
        i = cls.soft_cap(i_pre, cap)
        f = cls.soft_cap(f_pre, cap)
        h, (C_new, n_new, m_new) = mlstm_step(q, k, v, i, f, (C, n_in, m_in))
        C.copy_(C_new)
        n_out.copy_(n_new)
        m_out.copy_(m_new)
        h_out.copy_(h)
