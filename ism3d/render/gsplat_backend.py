"""The CUDA backend: a thin call to `gsplat.rasterization` (gsplat 1.5.3, classic, unpacked).

The background is composited by the caller (`ism3d.render.render`), so the colour returned here
is premultiplied and alpha is gsplat's 1 - final transmittance, exactly as in the torch backend.

Two variants of the same call (the torch backend is their twin; tests/test_render_gpu.py):
- per-view scales `[C, N, 3]` use gsplat's batch dimensions: C scenes of one camera each, the
  shared tensors expanded (no copy; their gradients sum back);
- depth_grad=False composites [SH colour, camera z detached] as 4 plain colour channels (we
  evaluate the SH ourselves, as gsplat would), instead of gsplat's "RGB+ED" mode, whose depth
  differentiates through z.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sh import eval_sh


def render_gsplat(
    means: Tensor,      # [N, 3]
    quats: Tensor,      # [N, 4]
    scales: Tensor,     # [N, 3] or [C, N, 3] (per view)
    opacities: Tensor,  # [N]
    sh: Tensor,         # [N, K, 3]
    sh_degree: int,
    viewmats: Tensor,   # [C, 4, 4]
    Ks: Tensor,         # [C, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
    depth_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render C views with gsplat on CUDA (float32).

    Returns:
        rgb [C, 3, H, W] premultiplied (no background), alpha [C, 1, H, W], depth [C, 1, H, W]
        (expected camera z, 0 where alpha <= 1e-6), means2d [C, N, 2] ([C, 1, N, 2] with
        per-view scales: gsplat's projected means, the tensor whose gradient densification
        reads), radii [C, N] int32.
    """
    import gsplat  # lazy: CUDA-only dependency

    C, N = viewmats.shape[0], means.shape[0]
    # 1. colours: gsplat's SH evaluation ("RGB+ED") or ours with a detached camera z appended
    if depth_grad:
        colors, deg, mode = sh, sh_degree, "RGB+ED"                    # [N, K, 3]
    else:
        R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]                 # [C, 3, 3], [C, 3]
        campos = -(R.transpose(-1, -2) @ t[..., None])[..., 0]        # [C, 3]
        dirs = means[None] - campos[:, None]                          # [C, N, 3]
        rgb = torch.clamp_min(eval_sh(sh_degree, dirs, sh[None].expand((C,) + sh.shape)) + 0.5, 0.0)
        z = (torch.einsum("cij,nj->cni", R, means) + t[:, None])[..., 2]  # [C, N]
        colors, deg, mode = torch.cat([rgb, z.detach()[..., None]], -1), None, "RGB"  # [C, N, 4]
    # 2. one fused call; per-view scales -> C batches of one camera each
    per_view = scales.dim() == 3
    if per_view:
        if colors.dim() == 3 and deg is not None:                     # SH [N, K, 3] shared
            colors = colors[None].expand((C,) + colors.shape)          # [C, N, K, 3]
        elif deg is None:
            colors = colors[:, None]                                   # [C, 1, N, 4]
        kw = dict(means=means[None].expand(C, N, 3), quats=quats[None].expand(C, N, 4),
                  scales=scales, opacities=opacities[None].expand(C, N),
                  viewmats=viewmats[:, None], Ks=Ks[:, None])
    else:
        kw = dict(means=means, quats=quats, scales=scales, opacities=opacities,
                  viewmats=viewmats, Ks=Ks)
    render, alpha, meta = gsplat.rasterization(
        **kw, colors=colors, width=width, height=height, near_plane=near, far_plane=far,
        eps2d=eps2d, sh_degree=deg, packed=False, render_mode=mode, backgrounds=None,
        rasterize_mode="classic",
    )                                              # [(C,) C', H, W, 4], [(C,) C', H, W, 1]
    render, alpha = render.reshape(C, height, width, 4), alpha.reshape(C, height, width, 1)
    # 3. channels first; expected depth (sum w z / alpha) is 0 where nothing was hit
    rgb = render[..., :3].permute(0, 3, 1, 2)                          # [C, 3, H, W]
    alpha = alpha.permute(0, 3, 1, 2)                                  # [C, 1, H, W]
    depth = render[..., 3:].permute(0, 3, 1, 2)
    if not depth_grad:                                                 # "RGB" sums w z: normalise
        depth = depth / alpha.clamp_min(1e-6)
    depth = depth.where(alpha > 1e-6, 0.0)
    # 4. densification info: 1.5.3 returns radii per axis [..., N, 2]; keep the larger one
    radii = meta["radii"]
    if radii.shape[-1] == 2 and radii.dim() == (4 if per_view else 3):
        radii = radii.max(dim=-1).values
    return rgb, alpha, depth, meta["means2d"], radii.reshape(C, N).int()
