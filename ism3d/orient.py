"""Auto-orientation: turn a finished scene about the vertical so that its front faces azimuth 0.

The view prompts say where the front is (azimuth 0 = "front view"), but a distillation follows
the faint front/back of its initial scene more than them (session 9 in
docs/experiments/toyworld-quality.md): a run can end as one consistent object turned 90 or 180
degrees. A user then gets an asset that faces away from the default camera, and the benchmark's
Janus test reads it as "flipped". The prior can tell which way an object faces, as a diffusion
classifier: its view-conditioned denoising loss is lowest when each render's view prompt matches
the side the render shows.

Turning the object by theta and looking from azimuth a + theta shows what the unturned object
shows from azimuth a, so one set of renders serves all four turns:

1. Render the scene at `n_azimuths` azimuths (multiples of 360/n) x the eval polars, on white,
   at the prior's image size: images [V, 3, S, S] -> z0 = prior.encode(images).
2. For each turn theta in (0, 90, 180, 270) and each (t, noise) pair of a fixed set (the same
   noise for every turn: common random numbers, so the turns' differences are not drowned by
   sampling noise): x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise,
   loss(theta) = mean || eps(x_t, t, y(a + theta)) - noise ||^2,
   y(a) the view-interpolated prompt embedding the guidance uses at azimuth a.
3. theta* = argmin loss. The scene is turned by theta* only when loss(theta*) is below loss(0)
   by more than `margin` (relative), so a symmetric object (a sphere, a cube) stays as trained.

The prior never sees cameras: it gets images, timesteps and embeddings, as in the guidance.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .cameras import orbit_cameras
from .frames import quat_multiply
from .guidance.ddim import q_sample
from .guidance.prompts import ViewPrompts
from .render import render

TURNS = (0, 90, 180, 270)


def turn_params(params, degrees: float) -> dict[str, Tensor]:
    """Raw gaussian parameters turned by `degrees` about +z (counter-clockwise from above).

    Means rotate; quaternions are left-multiplied by the turn's (so each gaussian's axes turn
    with it); scales, opacities and the view-independent colour (sh0) are unchanged. Higher SH
    bands are refused (they would need rotating too; every preset trains degree 0).
    """
    shN = params.get("shN")
    if shN is not None and shN.numel() > 0:
        raise ValueError("turn_params: only SH degree 0 scenes can be turned (shN is not empty)")
    r = math.radians(degrees)
    c, s = math.cos(r), math.sin(r)
    means = params["means"].detach()                                       # [N, 3]
    rot = means.new_tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # [3, 3]
    quats = params["quats"].detach()                                       # [N, 4] (w, x, y, z)
    q_turn = quats.new_tensor([math.cos(r / 2), 0.0, 0.0, math.sin(r / 2)])  # about +z
    out = {k: v.detach().clone() for k, v in params.items()}
    out["means"] = means @ rot.T
    out["quats"] = quat_multiply(q_turn.expand_as(quats), quats)
    return out


@torch.no_grad()
def turn_losses(gaussians, prior, prompt: str, *, radius: float, fovy: float,
                polars: tuple[float, ...], n_azimuths: int = 8,
                timesteps: tuple[int, ...] = (100, 200, 300, 400, 500, 600), draws: int = 2,
                seed: int = 0) -> dict[int, float]:
    """Steps 1-2: the prior's view-conditioned denoising loss for each turn in TURNS.

    Args:
        gaussians: activated gaussians on the prior's device.
        prompt: the user prompt (view suffixes are appended per azimuth, as in training).
        radius, fovy, polars: the eval ring's framing (the toy prior pins the object's size).
        n_azimuths: renders per polar; a multiple of 4, so the turns map the ring onto itself.
    """
    if n_azimuths % 4:
        raise ValueError(f"turn_losses: n_azimuths must be a multiple of 4, got {n_azimuths}")
    dev = prior.device
    size = prior.image_size
    az = torch.arange(n_azimuths, dtype=torch.float64) * (360.0 / n_azimuths)   # [A]
    azs = az.repeat(len(polars))                                                # [V]
    pol = torch.tensor(polars, dtype=torch.float64).repeat_interleave(n_azimuths)
    full = torch.full_like(azs, 1.0)
    cams = orbit_cameras(pol, azs, full * radius, full * fovy, size, size).to(dev)
    # 1. one set of renders, encoded once
    images = render(gaussians, cams, torch.ones(3, device=dev)).rgb           # [V, 3, S, S]
    z0 = prior.encode(images)                                                  # [V, C, h, w]
    V = z0.shape[0]
    vp = ViewPrompts(prior, prompt, "", view_prompts=True)
    gen = torch.Generator().manual_seed(seed)
    pairs = [(t, torch.randn(z0.shape, generator=gen).to(dev)) for t in timesteps for _ in range(draws)]
    losses = {}
    for theta in TURNS:
        # 2. captions of azimuth a + theta for the renders taken at a
        emb = vp.positive((azs + theta).to(dev))                               # [V, L, D]
        total = 0.0
        for t, noise in pairs:
            x_t = q_sample(z0, noise, prior.alphas_cumprod[t].to(z0.dtype))    # [V, C, h, w]
            eps = prior.eps(x_t.to(prior.dtype), torch.full((V,), t, device=dev, dtype=torch.long), emb)
            total += float(((eps.float() - noise) ** 2).mean())
        losses[theta] = total / len(pairs)
    return losses


def choose_turn(losses: dict[int, float], margin: float) -> int:
    """Step 3: the turn with the lowest loss, or 0 unless it beats no turn by `margin` (relative)."""
    best = min(losses, key=losses.get)
    return best if losses[best] < losses[0] * (1.0 - margin) else 0
