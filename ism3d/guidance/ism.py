"""Interval Score Matching (LucidDreamer, Liang et al. CVPR 2024, arXiv 2311.11284).

The algorithm as shared/spec/ism.md states it (the paper's Eq. 7, Eq. 11 and Algorithm 1 have
typos; the spec resolves them). Symbols:

    z0        prior.encode(render)                      the only tensor with a gradient
    t, s, dT  timestep, interval start s = max(t - dT, t_first), interval length
    x_s       DDIM inversion of z0 to s, empty prompt, no CFG, stride delta_s
    eps_s     eps(x_s, s, empty)                        the ISM target
    x_t       step(x_s, s -> t, eps_s)                  one more inversion step
    eps_cfg   CFG at (x_t, t), negative prompt as the unconditional branch (Perp-Neg optional)
    grad      lambda * gamma(t) * (eps_cfg - eps_s)     injected into z0

Cost per call (prior forward passes, none differentiated): the inversion calls at batch B (at
most xs_inv_steps; ceil((s - start) / delta_s), at least 1, minus the identity call when
s == start and skip_identity_inversion), 1 call at B for eps_s, 1 CFG call at 2B (4B Perp-Neg).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..profiling import phase
from ..types import GuidanceOut
from .ddim import ddim_step, gamma, q_sample, x0_hat
from .perpneg import guided_eps
from .prompts import ViewPrompts
from .distill import CountingEps, encode_latents, inject
from .schedule import GuidanceError, sample_t

if TYPE_CHECKING:
    from ..config import GuidanceConfig
    from ..priors.base import DiffusionPrior


class ISMGuidance:
    """ISM loss for a batch of renders: d loss / d images is the ISM gradient (through the encoder).

    Args:
        prior: the frozen diffusion prior.
        cfg: guidance settings (`GuidanceConfig`).
        prompt: the text prompt.

    Example:
        >>> g = ISMGuidance(prior, cfg.guidance, "a corgi")
        >>> out = g(images, cams.azimuth, warm(step, cfg.guidance.warmup_iters), gen)
        >>> out.loss.backward()
    """

    def __init__(self, prior: "DiffusionPrior", cfg: "GuidanceConfig", prompt: str):
        _check_config(prior, cfg)
        self.prior, self.cfg = prior, cfg
        self.prompts = ViewPrompts(prior, prompt, cfg.negative_prompt, cfg.view_prompts)

    def __call__(self, images: Tensor, azimuth: Tensor, warm: float, generator: torch.Generator,
                 return_images: bool = False) -> GuidanceOut:
        """One ISM evaluation.

        Args:
            images: `[B, 3, H, W]` renders in [0, 1], differentiable.
            azimuth: `[B]` camera azimuths in degrees (0 = front).
            warm: in [0, 1], `schedule.warm(step, warmup_iters)`.
            generator: the trainer's generator (t, then the noise, are drawn from it).
            return_images: also decode x0 predictions for debugging.

        Returns:
            `GuidanceOut(loss, logs, images)`: loss is a scalar with d loss / d z0 = grad (or
            grad / B with reduce="mean"); logs has t, s, dT, grad_norm, eps_calls, eps_rows,
            inv_calls; images (if asked) has "render", "x0_cfg" (x0_hat at t from eps_cfg) and
            "x0_target" (x0_hat at s from eps_s), `[B, 3, H', W']` in [0, 1].
        """
        assert images.ndim == 4 and images.shape[1] == 3, images.shape
        B = images.shape[0]
        assert azimuth.shape == (B,), (azimuth.shape, B)
        cfg, prior = self.cfg, self.prior

        # 1. timestep t for the whole batch, interval dT, s = max(t - dT, t_first)
        t, s, dT = sample_t(warm, cfg, generator)

        # 2. z0 = encode(render) (the gradient flows back through this call only), the noise
        lat = encode_latents(prior, images, cfg.offset_noise, generator)
        z0w, ac, noise = lat.z0, lat.ac, lat.noise                        # [B, C, h, w], [T]
        empty = self.prompts.empty(B)                                     # [B, L, D]
        eps = CountingEps(prior, z0w.dtype)

        with torch.no_grad():
            # 3. x at start (almost clean): q_sample(z0, noise, start)
            steps = inversion_steps(s, cfg)
            start = steps[0][0] if steps else s
            x = q_sample(z0w.detach(), noise, ac[start])                  # [B, C, h, w]
            # 4. DDIM inversion start -> s, empty prompt, eps at the SOURCE step
            with phase("inversion"):
                for cur, nxt in steps:
                    x = ddim_step(x, eps(x, cur, empty), ac[cur], ac[nxt])
            inv_calls = eps.calls
            x_s = x
            # 5. the target eps_s = eps(x_s, s, empty) and x_t = step(x_s, s -> t, eps_s)
            with phase("target"):
                eps_s = eps(x_s, s, empty)                                # [B, C, h, w]
                x_t = ddim_step(x_s, eps_s, ac[s], ac[t])
            # 6. CFG at x_t: one batched call of 2B (4B with Perp-Neg) rows
            with phase("cfg"):
                eps_cfg, _ = guided_eps(eps, self.prompts, x_t, t, azimuth, cfg)
            # 7. grad = lambda * gamma(t) * (eps_cfg - eps_s); non-finite values are left visible
            grad = cfg.lambda_guidance * gamma(ac[t]) * (eps_cfg - eps_s)  # [B, C, h, w]

        # 8. stop-gradient injection: d loss / d z0 = grad (sum) or grad / B (mean)
        loss = inject(z0w, grad, cfg.reduce)

        logs = {"t": float(t), "s": float(s), "dT": float(dT), "grad_norm": grad.norm(),
                "inv_calls": float(inv_calls), "eps_calls": float(eps.calls),
                "eps_rows": float(eps.rows)}
        out_images = None
        if return_images:
            with torch.no_grad():
                out_images = {
                    "render": images.detach(),
                    "x0_cfg": prior.decode(x0_hat(x_t, ac[t], eps_cfg)),
                    "x0_target": prior.decode(x0_hat(x_s, ac[s], eps_s)),
                }
        return GuidanceOut(loss=loss, logs=logs, images=out_images)


def inversion_steps(s: int, cfg: "GuidanceConfig") -> list[tuple[int, int]]:
    """The DDIM inversion steps (source, destination) that take x from `start` to `s`.

        start = max(s - delta_s * xs_inv_steps, t_first)
        start -> start + delta_s -> ... -> s     (the last step may be shorter; at most
                                                  xs_inv_steps steps, each one prior call)

    s >= t_first always (`schedule.sample_t`). When s == start (s == t_first) and
    `skip_identity_inversion`, there is no step (x_s = x_start; the identity call is skipped).
    Benchmarks use it to count calls per step without running them.
    """
    start = max(s - cfg.delta_s * cfg.xs_inv_steps, cfg.t_first)
    if start == s and cfg.skip_identity_inversion:
        return []
    steps, cur = [], start
    for _ in range(cfg.xs_inv_steps):
        nxt = min(cur + cfg.delta_s, s)
        steps.append((cur, nxt))
        cur = nxt
        if cur == s:
            break
    assert cur == s, (cur, s)
    return steps


def _check_config(prior: "DiffusionPrior", cfg: "GuidanceConfig") -> None:
    """Settings that cannot work with this prior raise GuidanceError naming the key."""
    T = prior.num_train_timesteps
    if cfg.t_max_start >= T:
        raise GuidanceError(f"guidance.t_max_start={cfg.t_max_start} must be below the prior's {T} "
                            "timesteps (t is an index, both ends included)")
    if not 0 <= cfg.t_first < T:
        raise GuidanceError(f"guidance.t_first={cfg.t_first} must be in [0, {T - 1}]")
    if cfg.perp_neg and not cfg.view_prompts:
        raise GuidanceError("guidance.perp_neg needs guidance.view_prompts=true")
    if cfg.reduce not in ("mean", "sum"):
        raise GuidanceError(f"guidance.reduce must be mean or sum, got {cfg.reduce!r}")
    if cfg.delta_s < 1 or cfg.xs_inv_steps < 1:
        raise GuidanceError("guidance.delta_s and guidance.xs_inv_steps must be at least 1")
