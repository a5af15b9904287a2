"""The contract every diffusion prior meets, and the errors a prior raises.

A prior knows images, latents, timesteps and text. It never sees cameras, gaussians or losses:
the guidance (guidance/) turns its noise predictions into a gradient on the rendered images.

Conventions shared by all priors:
- images at the seam are `[B, 3, H, W]` float in [0, 1];
- `encode` maps them to the prior's clean sample z0 (`[B, C, h, w]`, float32) and is differentiable;
- `alphas_cumprod[t]` is abar_t of the prior's own training schedule, t in [0, T-1];
- `eps(x_t, t, emb)` is the prior's noise prediction (a v-prediction model is converted to eps);
- `embed("")` is the unconditional (empty-prompt) embedding; ISM needs it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


class PriorError(ValueError):
    """A prior cannot be found or loaded (missing file, model not available offline, bad folder)."""


class PromptError(ValueError):
    """A prompt the prior cannot use (empty, or words outside a fixed vocabulary)."""


@runtime_checkable
class DiffusionPrior(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype                  # dtype of the denoiser calls
    alphas_cumprod: Tensor              # [T] float32 on device (abar_t)
    num_train_timesteps: int            # T (1000)
    image_size: int                     # square image size `encode` works at
    latent_shape: tuple[int, int, int]  # (C, h, w) of z0
    is_latent: bool                     # True for VAE priors (render sizes must be multiples of 8)

    def check_prompt(self, text: str) -> None:
        """Raise PromptError (one line) if `text` is unusable as a user prompt."""
        ...

    def embed(self, prompts: list[str]) -> Tensor:
        """[B] strings -> [B, L, D] embeddings in `self.dtype`, cached per string."""
        ...

    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> z0 [B, C, h, w] float32, differentiable w.r.t. `images`."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """z [B, C, h, w] -> [B, 3, image_size, image_size] float32 in [0, 1], no grad."""
        ...

    def eps(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x_t [B, C, h, w], t [B] long, emb [B, L, D] -> eps [B, C, h, w] float32, no grad."""
        ...


def check_images(images: Tensor) -> None:
    """Shape/type checks shared by the priors' `encode`."""
    assert images.ndim == 4 and images.shape[1] == 3, f"images must be [B, 3, H, W], got {tuple(images.shape)}"
    assert images.is_floating_point(), f"images must be floating point, got {images.dtype}"


def check_eps_inputs(prior: DiffusionPrior, x: Tensor, t: Tensor, emb: Tensor) -> None:
    """Shape checks shared by the priors' `eps`."""
    assert x.ndim == 4 and tuple(x.shape[1:]) == tuple(prior.latent_shape), (
        f"x must be [B, {', '.join(map(str, prior.latent_shape))}], got {tuple(x.shape)}")
    assert t.ndim == 1 and t.shape[0] == x.shape[0], f"t must be [B={x.shape[0]}], got {tuple(t.shape)}"
    assert not t.is_floating_point(), f"t must be an integer tensor, got {t.dtype}"
    assert emb.ndim == 3 and emb.shape[0] == x.shape[0], (
        f"emb must be [B={x.shape[0]}, L, D], got {tuple(emb.shape)}")


def alphas_cumprod_from_config(config: dict) -> Tensor:
    """abar_t of a diffusers scheduler config, computed in float64, returned as float32 [T].

    Reads only the schedule keys (`num_train_timesteps`, `beta_schedule`, `beta_start`,
    `beta_end`, `trained_betas`, `rescale_betas_zero_snr`), so no scheduler object (with its
    `clip_sample` and other sampling defaults) is ever built.

    Steps:
    1. betas: linear      beta_t = linspace(beta_start, beta_end, T)
              scaled_linear beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2   (SD 1.x/2.x)
              squaredcos_cap_v2 beta_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos((t/T + 0.008)/1.008 * pi/2)^2
    2. abar_t = prod_{s<=t} (1 - beta_s)
    3. optional zero terminal SNR (Lin et al. 2024, Alg. 1): shift and scale sqrt(abar) so that
       sqrt(abar_0) is kept and sqrt(abar_{T-1}) = 0.
    """
    T = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "linear")
    b0, b1 = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    # 1. betas
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
        T = betas.shape[0]
    elif kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        f = lambda s: torch.cos((s / T + 0.008) / 1.008 * torch.pi / 2) ** 2  # noqa: E731
        s = torch.arange(T, dtype=torch.float64)
        betas = (1 - f(s + 1) / f(s)).clamp(max=0.999)
    else:
        raise PriorError(f"unsupported beta_schedule {kind!r} in the scheduler config: "
                         "expected linear, scaled_linear or squaredcos_cap_v2")
    # 2. cumulative product
    abar = torch.cumprod(1.0 - betas, dim=0)
    # 3. zero terminal SNR
    if config.get("rescale_betas_zero_snr", False):
        r = abar.sqrt()
        r0, rT = r[0].clone(), r[-1].clone()
        r = (r - rT) * r0 / (r0 - rT)
        abar = r ** 2
    return abar.float()
