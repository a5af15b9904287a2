"""The CUDA backend: a thin call to `gsplat.rasterization` (gsplat 1.5.3, classic, unpacked).

The background is composited by the caller (`ism3d.render.render`), so the colour returned here
is premultiplied and alpha is gsplat's 1 - final transmittance, exactly as in the torch backend.
"""
from __future__ import annotations

from torch import Tensor


def render_gsplat(
    means: Tensor,      # [N, 3]
    quats: Tensor,      # [N, 4]
    scales: Tensor,     # [N, 3]
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render C views with gsplat on CUDA (float32).

    Returns:
        rgb [C, 3, H, W] premultiplied (no background), alpha [C, 1, H, W], depth [C, 1, H, W]
        (expected camera z, 0 where alpha <= 1e-6), means2d [C, N, 2] (gsplat's projected means,
        the tensor whose gradient densification reads), radii [C, N] int32.
    """
    import gsplat  # lazy: CUDA-only dependency

    # 1. one fused call: SH colours (+0.5, clamped at 0), RGB and expected depth
    render, alpha, meta = gsplat.rasterization(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=sh,
        viewmats=viewmats, Ks=Ks, width=width, height=height,
        near_plane=near, far_plane=far, eps2d=eps2d, sh_degree=sh_degree,
        packed=False, render_mode="RGB+ED", backgrounds=None, rasterize_mode="classic",
    )                                                                  # [C, H, W, 4], [C, H, W, 1]
    # 2. channels first; expected depth is 0 where nothing was hit
    rgb = render[..., :3].permute(0, 3, 1, 2)                          # [C, 3, H, W]
    alpha = alpha.permute(0, 3, 1, 2)                                  # [C, 1, H, W]
    depth = render[..., 3:].permute(0, 3, 1, 2)
    depth = depth.where(alpha > 1e-6, 0.0)
    # 3. densification info: 1.5.3 returns radii per axis [C, N, 2]; keep the larger one
    radii = meta["radii"]
    if radii.dim() == 3:
        radii = radii.max(dim=-1).values
    return rgb, alpha, depth, meta["means2d"], radii.int()
