"""init.kind=prior-hull: a visual hull carved from the prior's own samples of the prompt.

The text-to-3D initialisers (Shap-E, Point-E) need a second pretrained model. This one needs
only the prior the run distils: it asks the prior what the object looks like from a ring of
views, and keeps the voxels that most of those pictures cover.

1. views: `hull_views` azimuths evenly spaced from the front (360 k / V), at each polar angle of
   `hull_polars`, framed like the run's cameras (camera.radius_range[0], camera.fovy_range[0]),
   at the prior's image size.
2. one DDIM sample per view (eta = 0, `hull_steps` steps, classifier-free guidance `hull_guidance`
   against the empty prompt, x0 clipped to [-1, 1] each step), conditioned on the view prompt the
   guidance itself uses at that azimuth (`ViewPrompts.positive`, or the plain prompt with
   guidance.view_prompts=false). All views are one batch.
3. foreground: the background of a sample is the per-channel median of its one-pixel border (the
   prior paints solid backgrounds); a pixel is foreground where a channel differs from it by more
   than `hull_threshold`.
4. carve: the centre of each voxel of a `hull_grid`^3 grid over the cube the views frame is
   projected into every view; its vote is the fraction of views whose foreground holds it. The
   samples are not consistent with one another (each is one draw of its view prompt, and a view
   prompt stands for a range of azimuths), so a voxel is kept when its vote is at least
   `hull_keep` rather than only when every view agrees (a strict visual hull).
5. points: M = num_points / copies voxel centres drawn (with replacement, from a generator of
   the run's seed) among the kept ones, each moved uniformly inside its voxel; a point's colour
   is the mean of the sampled pixels it falls on in the views that hold it (the prior's colour
   for that part; used with init.use_colors=true). Copies and jitter as for the other generated
   kinds (cloud.py); init.copies=1 init.jitter=0 keeps the M points as they are.

The samples and the cloud are made on the run's device, once, at the start of a run; the cloud is
kept as `init_points.ply` like the other generated kinds (inits/cloud.py). The prior is
not told about cameras: this module turns azimuths into prompts and pixels into voxels.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..cameras import orbit_cameras
from ..guidance.ddim import q_sample, x0_hat
from ..guidance.prompts import ViewPrompts
from .cloud import GeneratedCloud, InitError, num_base_points

if TYPE_CHECKING:
    from ..config import Config
    from ..priors.base import DiffusionPrior

__all__ = ["hull_cameras", "sample_views", "foreground", "carve", "generate"]


def hull_cameras(cfg: "Config", size: int):
    """Step 1: the V x P cameras (azimuth-major within each polar), `size` x `size` pixels."""
    init, cam = cfg.init, cfg.camera
    V = init.hull_views
    az = torch.arange(V, dtype=torch.float64) * (360.0 / V)                        # [V]
    polar = torch.tensor(init.hull_polars, dtype=torch.float64)                    # [P]
    az_all = az.repeat(len(polar))                                                 # [V*P]
    polar_all = polar.repeat_interleave(V)                                         # [V*P]
    n = az_all.shape[0]
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return orbit_cameras(polar_all, az_all, full(cam.radius_range[0]), full(cam.fovy_range[0]),
                         size, size)


@torch.no_grad()
def sample_views(prior: "DiffusionPrior", emb: Tensor, uncond: Tensor, *, steps: int,
                 scale: float, gen: torch.Generator) -> Tensor:
    """Step 2: DDIM samples with classifier-free guidance, one per row of `emb`.

    Notation: abar = prior.alphas_cumprod, e = e_u + g (e_c - e_u).
    1. x_T ~ N(0, I); timesteps t_0 > ... > t_{n-1}: round(linspace(T - 1, 0, n))
    2. x0 = clip(x0_hat(x, t, e), -1, 1); e' = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    3. x = q_sample(x0, e', abar of the next timestep); the last step returns x0

    Args:
        emb: `[B, L, D]` conditional embeddings; uncond: `[1, L, D]` (the empty prompt).
        gen: CPU generator of the starting noise.
    Returns:
        `[B, 3, S, S]` images in [0, 1] (float32, on the prior's device).
    """
    B = emb.shape[0]
    abar = prior.alphas_cumprod.double().cpu()
    T = abar.shape[0]
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    x = torch.randn((B, *prior.latent_shape), generator=gen).to(prior.device)    # [B, C, h, w]
    both = torch.cat([uncond.expand(B, -1, -1), emb])                            # [2B, L, D]
    for i, t in enumerate(ts):
        e = prior.eps(torch.cat([x, x]), torch.full((2 * B,), t, dtype=torch.long,
                                                    device=prior.device), both)
        e_u, e_c = e.chunk(2)
        e = e_u + scale * (e_c - e_u)                                            # [B, C, h, w]
        a = float(abar[t])
        x0 = x0_hat(x, a, e).clamp(-1.0, 1.0)
        if i == len(ts) - 1:
            x = x0
            break
        e = (x - math.sqrt(a) * x0) / math.sqrt(1.0 - a)
        x = q_sample(x0, e, float(abar[ts[i + 1]]))
    return prior.decode(x).float()


def foreground(images: Tensor, thresh: float) -> tuple[Tensor, Tensor]:
    """Step 3: `[S, 3, H, W]` images on solid backgrounds -> (mask `[S, H, W]` bool, bg `[S, 3]`)."""
    assert images.ndim == 4 and images.shape[1] == 3, images.shape
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0],
                        images[..., 1:-1, -1]], dim=-1)                         # [S, 3, P]
    bg = border.median(dim=-1).values                                            # [S, 3]
    mask = (images - bg[:, :, None, None]).abs().amax(dim=1) > thresh            # [S, H, W]
    return mask, bg


def _pixels(cams, pts: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """World points `[N, 3]` -> flat pixel index `[S, N]` (row * W + column, clamped) in each
    view, and `[S, N]` bool: in front of the camera and inside the image."""
    R = cams.viewmats[:, :3, :3].double()                                        # [S, 3, 3]
    t = cams.viewmats[:, :3, 3].double()                                         # [S, 3]
    pc = torch.einsum("sij,nj->sni", R, pts) + t[:, None, :]                     # [S, N, 3]
    uv = torch.einsum("sij,snj->sni", cams.Ks.double(), pc)                      # [S, N, 3]
    u = torch.floor(uv[..., 0] / uv[..., 2]).long()                              # [S, N] column
    v = torch.floor(uv[..., 1] / uv[..., 2]).long()                              # [S, N] row
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (pc[..., 2] > 0)          # [S, N]
    return v.clamp(0, H - 1) * W + u.clamp(0, W - 1), inside


def _grid(grid: int, half: float) -> tuple[Tensor, float]:
    side = 2.0 * half / grid
    c = (torch.arange(grid, dtype=torch.float64) + 0.5) * side - half            # [G]
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3), side


def orient(masks: Tensor, images: Tensor, cams, *, grid: int, half: float, keep: float,
           passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror the samples that disagree with the others (step 4's first half).

    A view prompt does not say from which side a side view is seen, so the prior may draw the
    mirror image of the view asked for (e.g. a chair's backrest on the left instead of the
    right). For each view in turn, the hull carved from all other views is projected into it;
    the view's sample is mirrored left-right when the mirror image overlaps that projection
    better (IoU). `passes` rounds over all views.

    Returns:
        masks, images (mirrored where chosen), flipped `[S]` bool.
    """
    S, H, W = masks.shape
    pts, _ = _grid(grid, half)
    flat, inside = _pixels(cams, pts, H, W)                                      # [S, N]
    masks, images = masks.clone(), images.clone()
    flipped = torch.zeros(S, dtype=torch.bool)
    for _ in range(passes):
        for s in range(S):
            hit = masks.reshape(S, -1).gather(1, flat) & inside                  # [S, N]
            others = torch.cat([hit[:s], hit[s + 1:]])                           # [S-1, N]
            kept = others.double().mean(0) >= keep                               # [N]
            pred = torch.zeros(H * W, dtype=torch.bool)
            pred[flat[s][kept & inside[s]]] = True
            pred = pred.reshape(H, W)
            cur, mir = masks[s], masks[s].flip(-1)
            iou = lambda m: float((m & pred).sum()) / max(float((m | pred).sum()), 1.0)  # noqa: E731
            if iou(mir) > iou(cur):
                masks[s], images[s] = mir, images[s].flip(-1)
                flipped[s] = ~flipped[s]
    return masks, images, flipped


def carve(masks: Tensor, images: Tensor, cams, *, grid: int, half: float, keep: float
          ) -> tuple[Tensor, Tensor, float]:
    """Step 4: voxels of [-half, half]^3 voted inside the masks, with their mean colour.

    Args:
        masks: `[S, H, W]` bool foreground per view; images: `[S, 3, H, W]` the samples.
        cams: CameraBatch of the S views (H x W pixels).
        grid: voxels per axis; half: half the side of the carved cube (world units);
        keep: the least fraction of views that must hold a kept voxel.
    Returns:
        centres `[K, 3]` float64 of the kept voxels, colours `[K, 3]` (mean sampled colour over
        the views holding the voxel), and the voxel side.
    """
    S, H, W = masks.shape
    pts, side = _grid(grid, half)                                                # [N, 3]
    # 1. world -> camera -> pixel for every (view, voxel)
    flat, inside = _pixels(cams, pts, H, W)                                      # [S, N]
    # 2. votes: a voxel outside a view's image counts as outside that view's mask
    hit = masks.reshape(S, -1).cpu().gather(1, flat) & inside                    # [S, N]
    vote = hit.double().mean(0)                                                  # [N]
    kept = vote >= keep                                                          # [N]
    # 3. colour: the mean of the sampled pixels over the views that hold the voxel
    px = images.permute(0, 2, 3, 1).reshape(S, -1, 3).double().cpu()            # [S, HW, 3]
    col = torch.stack([px[s][flat[s]] for s in range(S)])                        # [S, N, 3]
    w = hit.double()[..., None]                                                  # [S, N, 1]
    rgb = (col * w).sum(0) / w.sum(0).clamp_min(1.0)                             # [N, 3]
    return pts[kept], rgb[kept], side


def generate(cfg: "Config", prior: "DiffusionPrior", prompt: str, seed: int) -> GeneratedCloud:
    """Steps 1-5 for `prompt` (already checked by the prior). Raises InitError on an empty hull."""
    init = cfg.init
    gen = torch.Generator().manual_seed(seed)
    size = prior.image_size
    cams = hull_cameras(cfg, size)                                               # S views
    views = ViewPrompts(prior, prompt, "", view_prompts=cfg.guidance.view_prompts)
    emb = views.positive(cams.azimuth.to(torch.float64))                         # [S, L, D]
    images = sample_views(prior, emb, views.empty(1), steps=init.hull_steps,
                          scale=init.hull_guidance, gen=gen)                     # [S, 3, s, s]
    masks, _ = foreground(images, init.hull_threshold)                           # [S, s, s]
    # the views frame a square of half-height r tan(fovy / 2) at the origin
    half = float(cfg.camera.radius_range[0] * math.tan(0.5 * cfg.camera.fovy_range[0]))
    masks, images = masks.cpu(), images.cpu()
    if init.hull_orient:
        masks, images, _ = orient(masks, images, cams, grid=init.hull_grid, half=half,
                                  keep=init.hull_keep)
    centres, rgb, side = carve(masks, images, cams, grid=init.hull_grid, half=half,
                               keep=init.hull_keep)
    if centres.shape[0] == 0:
        raise InitError(
            f"init.kind=prior-hull: the prior's {len(cams)} views of {prompt!r} agree on no voxel "
            f"(init.hull_keep={init.hull_keep}); lower init.hull_keep or use another init.kind")
    m = num_base_points(init)
    pick = torch.randint(0, centres.shape[0], (m,), generator=gen)               # [M]
    offset = (torch.rand(m, 3, generator=gen, dtype=torch.float64) - 0.5) * side # [M, 3]
    points = centres[pick] + offset                                              # [M, 3]
    return GeneratedCloud(points.numpy(), rgb[pick].numpy())
