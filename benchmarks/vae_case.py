"""The VAE-encoder case shared by the GPU micro-benchmarks (calls_vae_attention.py, calls_autotune.py):
the SD-2.1-base VAE at random weights, its encoder called as the trainer calls it
(`quant_conv(encoder(x))`), an input that wants a gradient and a fixed weighting of the moments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class VaeCase:
    vae: torch.nn.Module
    x: Tensor          # [B, 3, S, S] renders, requires grad
    w: Tensor          # [B, 8, S/8, S/8] float32 weights of the encoder's moments

    def enc(self, x: Tensor) -> Tensor:
        return self.vae.quant_conv(self.vae.encoder(x))

    def fwd_bwd(self, f: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        """A call that runs f(x) forward and backward to x (the step's encode fwd + bwd)."""
        def call() -> None:
            (f(self.x).float() * self.w).sum().backward()
            self.x.grad = None
        return call

    def input_grad(self, f: Callable[[Tensor], Tensor]) -> Tensor:
        """d sum(w * f(x)) / dx, float32 [B, 3, S, S]."""
        self.x.grad = None
        (f(self.x).float() * self.w).sum().backward()
        g = self.x.grad.float().clone()
        self.x.grad = None
        return g


def vae_case(device: str = "cuda", dtype: torch.dtype = torch.float16, batch: int = 4,
             size: int = 512) -> VaeCase:
    from diffusers import AutoencoderKL
    from tiny_sd import sd21_base_configs

    with torch.device(device):
        vae = AutoencoderKL.from_config(sd21_base_configs()["vae"]).to(dtype).eval().requires_grad_(False)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(batch, 8, size // 8, size // 8, device=device)
    return VaeCase(vae, x, w)
