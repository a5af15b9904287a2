"""Render a batch of views of the gaussians: `render(gaussians, cams, background) -> RenderOut`.

Two backends with the same semantics (3DGS, classic, as gsplat 1.5.3 computes it):
- "gsplat": `gsplat.rasterization` on CUDA (gsplat_backend.py);
- "torch": a sparse pure-PyTorch twin that runs anywhere (torch_backend.py).
"auto" takes gsplat when the gaussians are float32 on CUDA and gsplat imports, else torch.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..types import CameraBatch, Gaussians, RenderOut
from .sh import num_sh_bases

__all__ = ["render", "RenderOut", "RenderError", "gsplat_available"]


class RenderError(ValueError):
    """The inputs of `render` are inconsistent (shapes, devices, backend)."""


def gsplat_available() -> bool:
    """True when `import gsplat` works (it needs CUDA to run, not to import)."""
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def _pick_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in ("auto", "gsplat", "torch"):
        raise RenderError(f"unknown render backend {backend!r}: use auto, gsplat or torch")
    if backend == "auto":
        use_gsplat = device.type == "cuda" and dtype == torch.float32 and gsplat_available()
        return "gsplat" if use_gsplat else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise RenderError(f"the gsplat backend needs CUDA tensors, the gaussians are on {device}:"
                              " move them to cuda or use backend='torch'")
        if dtype != torch.float32:
            raise RenderError(f"the gsplat backend needs float32 gaussians, got {dtype}:"
                              " convert them or use backend='torch'")
        if not gsplat_available():
            raise RenderError("the gsplat backend needs the gsplat package (pip install gsplat==1.5.3)"
                              " or use backend='torch'")
    return backend


def render(
    gaussians: Gaussians,
    cams: CameraBatch,
    background: Tensor,  # [3] or [C, 3]
    *,
    backend: Literal["auto", "gsplat", "torch"] = "auto",
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
    depth_grad: bool = True,
) -> RenderOut:
    """Render C views of N gaussians in one call (3D Gaussian Splatting, Kerbl et al. 2023).

    .. note::
        Colour is the SH evaluation along (mean - camera centre), + 0.5, clamped at 0. Pixels are
        composited front to back in depth order, alpha_i = min(0.999, o_i exp(-0.5 d^T Q d)),
        pairs with alpha_i < 1/255 skipped, and a pixel stops before its transmittance would
        drop to 1e-4. Pixel centres are at (x + 0.5, y + 0.5).

    .. note::
        Per-view scales: `gaussians.scales` may be `[C, N, 3]`, one set per camera (the
        reference's scale augmentation draws fresh noise per view); everything else is shared.

    Args:
        gaussians: activated gaussians (means [N, 3], quats [N, 4], scales [N, 3] or [C, N, 3]
            std devs, opacities [N], sh [N, K, 3] with K >= (sh_degree + 1)^2).
        cams: C cameras: viewmats [C, 4, 4] world-to-camera (OpenCV), Ks [C, 3, 3] in pixels,
            width, height; on the gaussians' device.
        background: [3] or [C, 3] RGB composited behind: rgb = rgb_premult + (1 - alpha) * bg.
        backend: "auto" | "gsplat" (CUDA, float32) | "torch".
        near, far: camera-z clipping of the gaussian centres.
        eps2d: low-pass blur added to each projected covariance (pixels^2).
        depth_grad: False composites the camera z of each gaussian detached, so `depth`'s
            gradient reaches the gaussians through the compositing weights only (the
            reference rasterizer's depth); rgb and alpha are unchanged.

    Returns:
        RenderOut with rgb [C, 3, H, W], alpha [C, 1, H, W] (1 - final transmittance),
        depth [C, 1, H, W] (sum w_i z_i / alpha; 0 where alpha <= 1e-6) and info:
        "means2d" [C, N, 2] pixel coordinates (retain_grad'ed: after backward its .grad holds
        d loss / d means2d; [C, 1, N, 2] on gsplat with per-view scales), "radii" [C, N] int32
        (0 = culled), "width", "height", "n_cameras".

    Example:
        >>> out = render(gaussians, cams, torch.ones(3))
        >>> out.rgb.shape  # [C, 3, H, W]
    """
    g = gaussians
    N, C = len(g), len(cams)
    W, H = int(cams.width), int(cams.height)
    # 1. check the inputs
    scales_shape = (C, N, 3) if g.scales.dim() == 3 else (N, 3)
    shapes = {"means": (g.means, (N, 3)), "quats": (g.quats, (N, 4)), "scales": (g.scales, scales_shape),
              "opacities": (g.opacities, (N,)), "viewmats": (cams.viewmats, (C, 4, 4)),
              "Ks": (cams.Ks, (C, 3, 3))}
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise RenderError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if not 0 <= g.sh_degree <= 3:
        raise RenderError(f"sh_degree must be 0..3, got {g.sh_degree}")
    if g.sh.dim() != 3 or g.sh.shape[0] != N or g.sh.shape[2] != 3 \
            or g.sh.shape[1] < num_sh_bases(g.sh_degree):
        raise RenderError(f"sh has shape {tuple(g.sh.shape)}, expected [{N}, >="
                          f"{num_sh_bases(g.sh_degree)}, 3] for sh_degree {g.sh_degree}")
    if W < 1 or H < 1:
        raise RenderError(f"image size must be positive, got {W}x{H}")
    if not 0 < near < far:
        raise RenderError(f"need 0 < near < far, got near={near}, far={far}")
    if background.shape not in ((3,), (C, 3)):
        raise RenderError(f"background has shape {tuple(background.shape)}, expected (3,) or ({C}, 3)")
    device = g.means.device
    for name, t in (("viewmats", cams.viewmats), ("Ks", cams.Ks), ("background", background)):
        if t.device != device:
            raise RenderError(f"{name} is on {t.device} but the gaussians are on {device}: "
                              "call cams.to(device) / background.to(device)")

    # 2. premultiplied colour, alpha, depth
    args = (g.means, g.quats, g.scales, g.opacities, g.sh, g.sh_degree,
            cams.viewmats.to(g.means.dtype), cams.Ks.to(g.means.dtype), W, H, near, far, eps2d,
            depth_grad)
    if _pick_backend(backend, device, g.means.dtype) == "gsplat":
        from .gsplat_backend import render_gsplat
        rgb, alpha, depth, means2d, radii = render_gsplat(*args)
    else:
        from .torch_backend import render_torch
        rgb, alpha, depth, means2d, radii = render_torch(*args)

    # 3. background behind, densification info
    bg = background.to(rgb.dtype).expand(C, 3)[:, :, None, None]      # [C, 3, 1, 1]
    rgb = rgb + (1.0 - alpha) * bg
    if means2d.requires_grad:
        means2d.retain_grad()
    info = {"means2d": means2d, "radii": radii, "width": W, "height": H, "n_cameras": C}
    return RenderOut(rgb=rgb, alpha=alpha, depth=depth, info=info)
