"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, arXiv 2209.14988), for comparison.

Spec (shared/spec/ism.md, step 6), with the same timestep sampler as ISM:

    x_t     = q_sample(z0, noise, t)
    eps_cfg = CFG at (x_t, t), negative prompt as the unconditional branch (Perp-Neg optional)
    grad    = lambda * w(t) * (eps_cfg - noise)

w(t) by cfg.sds_weighting: "gamma" sqrt((1 - abar_t) / abar_t) (the reference LucidDreamer's SDS
path, the default), "dreamfusion" 1 - abar_t (DreamFusion's w(t)), "constant" 1. Cost: the CFG
call only (2B or 4B rows).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..profiling import phase
from ..types import GuidanceOut
from .ddim import gamma, q_sample, x0_hat
from .perpneg import guided_eps
from .prompts import ViewPrompts
from .distill import CountingEps, encode_latents, inject
from .schedule import GuidanceError, sample_t

if TYPE_CHECKING:
    from ..config import GuidanceConfig
    from ..priors.base import DiffusionPrior


def sds_weight(abar_t: Tensor, weighting: str) -> Tensor:
    """w(t) for SDS: gamma sqrt((1 - abar_t) / abar_t) | dreamfusion 1 - abar_t | constant 1."""
    if weighting == "gamma":
        return gamma(abar_t)
    if weighting == "dreamfusion":
        return 1 - abar_t
    if weighting == "constant":
        return torch.ones_like(abar_t)
    raise GuidanceError(f"guidance.sds_weighting must be gamma, dreamfusion or constant, got {weighting!r}")


class SDSGuidance:
    """SDS loss for a batch of renders; same call signature as `ISMGuidance`.

    Args:
        prior: the frozen diffusion prior.
        cfg: guidance settings (`GuidanceConfig`).
        prompt: the text prompt.
    """

    def __init__(self, prior: "DiffusionPrior", cfg: "GuidanceConfig", prompt: str):
        T = prior.num_train_timesteps
        if cfg.t_max_start >= T:
            raise GuidanceError(f"guidance.t_max_start={cfg.t_max_start} must be below the prior's {T} "
                                "timesteps (t is an index, both ends included)")
        if cfg.perp_neg and not cfg.view_prompts:
            raise GuidanceError("guidance.perp_neg needs guidance.view_prompts=true")
        if cfg.reduce not in ("mean", "sum"):
            raise GuidanceError(f"guidance.reduce must be mean or sum, got {cfg.reduce!r}")
        sds_weight(torch.tensor(0.5), cfg.sds_weighting)  # rejects an unknown weighting now
        self.prior, self.cfg = prior, cfg
        self.prompts = ViewPrompts(prior, prompt, cfg.negative_prompt, cfg.view_prompts)

    def __call__(self, images: Tensor, azimuth: Tensor, warm: float, generator: torch.Generator,
                 return_images: bool = False) -> GuidanceOut:
        """One SDS evaluation.

        Args:
            images: `[B, 3, H, W]` renders in [0, 1], differentiable.
            azimuth: `[B]` camera azimuths in degrees (0 = front).
            warm: in [0, 1].
            generator: the trainer's generator (t, then the noise).
            return_images: also decode the x0 prediction for debugging.

        Returns:
            `GuidanceOut(loss, logs, images)`; logs has t, grad_norm, eps_calls, eps_rows; images
            (if asked) has "render" and "x0_cfg".
        """
        assert images.ndim == 4 and images.shape[1] == 3, images.shape
        B = images.shape[0]
        assert azimuth.shape == (B,), (azimuth.shape, B)
        cfg, prior = self.cfg, self.prior

        # 1. timestep t (the ISM sampler; s and dT are unused)
        t, _, _ = sample_t(warm, cfg, generator)
        # 2. z0 = encode(render), the noise
        lat = encode_latents(prior, images, cfg.offset_noise, generator)
        z0w, ac, noise = lat.z0, lat.ac, lat.noise                        # [B, C, h, w], [T]
        eps = CountingEps(prior, z0w.dtype)

        with torch.no_grad():
            # 3. x_t = q_sample(z0, noise, t)
            x_t = q_sample(z0w.detach(), noise, ac[t])                    # [B, C, h, w]
            # 4. CFG at x_t
            with phase("cfg"):
                eps_cfg, _ = guided_eps(eps, self.prompts, x_t, t, azimuth, cfg)
            # 5. grad = lambda * w(t) * (eps_cfg - noise)
            grad = cfg.lambda_guidance * sds_weight(ac[t], cfg.sds_weighting) * (eps_cfg - noise)

        # 6. stop-gradient injection: d loss / d z0 = grad (sum) or grad / B (mean)
        loss = inject(z0w, grad, cfg.reduce)

        logs = {"t": float(t), "grad_norm": grad.norm(),
                "eps_calls": float(eps.calls), "eps_rows": float(eps.rows)}
        out_images = None
        if return_images:
            with torch.no_grad():
                out_images = {"render": images.detach(),
                              "x0_cfg": prior.decode(x0_hat(x_t, ac[t], eps_cfg))}
        return GuidanceOut(loss=loss, logs=logs, images=out_images)
