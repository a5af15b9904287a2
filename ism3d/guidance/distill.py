"""What ISM and SDS share around their different targets (spec steps 2 and 5): the latents and
the noise, the denoiser as a counted call, and the stop-gradient injection of the gradient."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..profiling import phase
from .schedule import sample_noise

if TYPE_CHECKING:
    from ..priors.base import DiffusionPrior


@dataclass
class Latents:
    z0: Tensor      # [B, C, h, w] encode(render) in the working dtype, the only tensor with a gradient
    ac: Tensor      # [T] alphas_cumprod in the working dtype, on z0's device
    noise: Tensor   # [B, C, h, w] randn + offset noise (spec "Noise")


def encode_latents(prior: "DiffusionPrior", images: Tensor, offset: float,
                   generator: torch.Generator) -> Latents:
    """z0 = encode(render) (the gradient flows back through this call only), in float32 at least,
    with alphas_cumprod and the step's noise (drawn from `generator` after the caller's t)."""
    with phase("encode_fwd"):
        z0 = prior.encode(images)                                     # [B, C, h, w]
    work = torch.promote_types(z0.dtype, torch.float32)
    ac = prior.alphas_cumprod.to(device=z0.device, dtype=work)        # [T]
    noise = sample_noise(tuple(z0.shape), offset, generator, z0.device).to(work)
    return Latents(z0=z0.to(work), ac=ac, noise=noise)


class CountingEps:
    """`prior.eps` returned in the working dtype; counts calls and rows (the spec's cost line).
    A Python int timestep is broadcast to the batch."""

    def __init__(self, prior: "DiffusionPrior", dtype: torch.dtype):
        self.prior, self.dtype, self.calls, self.rows = prior, dtype, 0, 0

    def __call__(self, x: Tensor, tt: int | Tensor, emb: Tensor) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        if isinstance(tt, int):
            tt = torch.full((x.shape[0],), tt, dtype=torch.long, device=x.device)
        return self.prior.eps(x, tt, emb).to(self.dtype)


def inject(z0: Tensor, grad: Tensor, reduce: str) -> Tensor:
    """A scalar loss with d loss / d z0 = grad ("sum") or grad / B ("mean"):

        loss = 0.5 * sum((z0 - (z0 - grad).detach())^2)   [/ B]
    """
    target = (z0 - grad).detach()
    loss = 0.5 * ((z0 - target) ** 2).sum()
    return loss / z0.shape[0] if reduce == "mean" else loss
