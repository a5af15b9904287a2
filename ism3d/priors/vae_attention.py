"""The VAE's self-attention as two matrix products and a softmax, for a fast encoder backward.

Stable Diffusion's VAE encoder has one self-attention layer (mid-block, 1 head of 512 channels over
the (S/8)^2 latent positions). PyTorch's `scaled_dot_product_attention` has no flash kernel for a head
dimension of 512, so it falls back to the memory-efficient kernel, whose *backward* at 4 x 4096
tokens takes 17 ms on an H100: a quarter of the whole encoder's forward + backward at 4 x 512^2
(docs/experiments/gpu-speed.md). The same attention written as matrix products runs on cuBLAS in
both directions, for the price of one stored [B, heads, N, N] matrix (134 MB at 4 x 64^2 in fp16).

For hidden states h [B, C, H, W] and N = H * W:
    1. x = group_norm(h), as [B, N, C]
    2. q, k, v = to_q(x), to_k(x), to_v(x), split into heads   # [B, heads, N, d]
    3. a = softmax((q * d^-1/4) @ (k * d^-1/4)^T)              # [B, heads, N, N]
       (the scale is split between q and k, as PyTorch's reference SDPA does, to keep the products
       inside the half-precision range)
    4. out = to_out(a @ v, heads merged) as [B, C, H, W], + h if the layer is residual,
       / rescale_output_factor
This is what diffusers' `AttnProcessor2_0` computes for these layers; tests/test_priors.py checks
both agree in float64, values and gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor


class MatmulSelfAttention:
    """A diffusers attention processor for plain 4-D self-attention layers (the VAE's)."""

    @staticmethod
    def supports(attn) -> bool:
        """Only the layer shape written out above: no spatial norm, no q/k norms, no cross-attention."""
        return (getattr(attn, "spatial_norm", None) is None and getattr(attn, "norm_q", None) is None
                and getattr(attn, "norm_k", None) is None and not getattr(attn, "is_cross_attention", True))

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MatmulSelfAttention handles unmasked 4-D self-attention only")
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        # 1. normalise, tokens last
        x = hidden_states.view(b, c, h * w)
        if attn.group_norm is not None:
            x = attn.group_norm(x)
        x = x.transpose(1, 2)                                                 # [B, N, C]
        # 2. projections, split into heads
        heads = attn.heads
        q, k, v = (f(x).view(b, h * w, heads, -1).transpose(1, 2)
                   for f in (attn.to_q, attn.to_k, attn.to_v))                # [B, heads, N, d]
        # 3. attention weights
        s = q.shape[-1] ** -0.25
        a = torch.softmax((q * s) @ (k * s).transpose(-1, -2), dim=-1)        # [B, heads, N, N]
        # 4. output projection, back to an image, residual
        o = (a @ v).transpose(1, 2).reshape(b, h * w, -1)                     # [B, N, C]
        o = attn.to_out[1](attn.to_out[0](o))
        o = o.transpose(1, 2).reshape(b, c, h, w)                             # [B, C, H, W]
        if attn.residual_connection:
            o = o + residual
        return o / attn.rescale_output_factor


def use_matmul_attention(module: torch.nn.Module) -> int:
    """Give every supported attention layer under `module` the matmul processor; returns how many."""
    from diffusers.models.attention_processor import Attention

    n = 0
    for m in module.modules():
        if isinstance(m, Attention) and MatmulSelfAttention.supports(m):
            m.set_processor(MatmulSelfAttention())
            n += 1
    return n
