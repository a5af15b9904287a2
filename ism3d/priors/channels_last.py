"""`prior.channels_last`: the UNet and the VAE encoder run on channels-last (NHWC) tensors end to
end, with our fused GroupNorm (+ SiLU) kernels (`ism3d/kernels/group_norm.py`) in place of
PyTorch's GroupNorm, which is slow on that layout.

What `use_channels_last(module)` changes in a diffusers UNet or VAE encoder (values unchanged;
tests/test_group_norm.py checks eps and the encoder's gradient against the plain networks in float64):
    1. ResNet blocks (norm -> SiLU, twice): each GroupNorm becomes a fused GroupNorm + SiLU and the
       block's shared SiLU an identity; the SiLU it also applied to the time embedding moves in
       front of the time projection (`Sequential(SiLU, Linear)`, `skip_time_act`), so the block's
       own forward is untouched.
    2. The closing `conv_norm_out -> conv_act` pair of the UNet and the encoder: fused the same way.
    3. Every other GroupNorm (attention layers): fused, without SiLU.
    4. Transformer blocks' output: kept channels-last (diffusers ends it with `.contiguous()`,
       which would turn the rest of the network back to NCHW).
    5. The 4-D weights (convolutions) go channels-last, so cuDNN takes its NHWC kernels.
The caller makes the network inputs channels-last (`StableDiffusionPrior.encode` and `denoise`).
"""
from __future__ import annotations

import types

import torch
from torch import nn

from ism3d.kernels.group_norm import FusedGroupNorm


def _silu(m) -> bool:
    return isinstance(m, nn.SiLU)


def _fusable(gn) -> bool:
    return type(gn) is nn.GroupNorm and gn.affine


def _transformer_output_channels_last(self, hidden_states, residual, batch_size, height, width, inner_dim):
    """Transformer2DModel's output projection, [B, HW, C] tokens -> [B, C, H, W] as a channels-last
    view (no copy), plus the residual."""
    if self.use_linear_projection:
        hidden_states = self.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    if not self.use_linear_projection:
        hidden_states = self.proj_out(hidden_states)
    return hidden_states + residual


def use_channels_last(module: nn.Module) -> dict:
    """Steps 1-5 of the module docstring on `module` (a UNet or a VAE encoder), in place.
    Returns counts: {"fused_silu": ..., "fused": ..., "transformers": ...}."""
    from diffusers.models.resnet import ResnetBlock2D

    counts = {"fused_silu": 0, "fused": 0, "transformers": 0}
    # 1. ResNet blocks
    for block in module.modules():
        if not (isinstance(block, ResnetBlock2D) and _silu(block.nonlinearity)
                and block.time_embedding_norm == "default" and _fusable(block.norm1) and _fusable(block.norm2)):
            continue
        if block.time_emb_proj is not None and not block.skip_time_act:
            block.time_emb_proj = nn.Sequential(nn.SiLU(), block.time_emb_proj)
            block.skip_time_act = True
        block.norm1 = FusedGroupNorm.replacing(block.norm1, silu=True)
        block.norm2 = FusedGroupNorm.replacing(block.norm2, silu=True)
        block.nonlinearity = nn.Identity()
        counts["fused_silu"] += 2
    # 2. the closing norm + activation
    if _fusable(getattr(module, "conv_norm_out", None)) and _silu(getattr(module, "conv_act", None)):
        module.conv_norm_out = FusedGroupNorm.replacing(module.conv_norm_out, silu=True)
        module.conv_act = nn.Identity()
        counts["fused_silu"] += 1
    # 3. the other GroupNorms
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _fusable(child):
                setattr(parent, name, FusedGroupNorm.replacing(child, silu=False))
                counts["fused"] += 1
    # 4. transformer outputs stay channels-last
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    for m in module.modules():
        if (isinstance(m, Transformer2DModel) and getattr(m, "is_input_continuous", False)
                and hasattr(m, "_get_output_for_continuous_inputs")):
            m._get_output_for_continuous_inputs = types.MethodType(_transformer_output_channels_last, m)
            counts["transformers"] += 1
    # 5. weights
    module.to(memory_format=torch.channels_last)
    return counts
