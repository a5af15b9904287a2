"""Evaluation renders: RGB, depth, normal and alpha images of gaussians on a camera ring.

What `ism3d render` writes. GPTEval3D (Wu et al. 2024, "GPT-4V(ision) is a Human-Aligned
Evaluator for Text-to-3D Generation") judges 120 views on a ring at 512 x 512, RGB plus normal
maps, stored per asset as `rgb_0.png .. rgb_119.png` and `normal_0.png .. normal_119.png`
(its assets/data_format.md); `write_view_folder` writes exactly that layout, one file per view
and mode, `{mode}_{k}.png`, k = 0 at the front view, counter-clockwise seen from above.

How each mode is shown (uint8 RGB, [C, H, W, 3]):

- rgb: the render composited over `background` (white by default).
- alpha: accumulated opacity as grey (white = opaque, black = empty).
- depth: expected camera z, normalised over ALL views together (one scale for the whole ring):
  near = white, far = dark grey (0.15), empty background black. The range is the 1st..99th
  percentile of the depth of pixels with alpha > 0.5, so a few floaters do not flatten it.
- normal: normals from the rendered depth (not from the gaussians' orientations, which are not
  surface normals for volumetric blobs): camera-space, in the OpenGL display convention that
  threestudio-style normal maps use (x right, y up, z towards the viewer), colour (n + 1) / 2, so
  a surface facing the camera is (0.5, 0.5, 1.0) light blue, one facing right is pinkish, one
  facing up is greenish. Composited over `background` with the alpha. See `depth_normals`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..types import CameraBatch, Gaussians
from .video import ExportError, to_uint8, write_png

__all__ = [
    "MODES", "depth_normals", "normals_to_rgb", "render_views", "write_view_folder", "render_eval",
]

MODES = ("rgb", "depth", "normal", "alpha")

ALPHA_MIN = 0.5          # pixels at least this opaque carry depth and normals
DEPTH_FAR_GREY = 0.15    # grey level of the farthest depth (0 is kept for the background)


def depth_normals(depth: Tensor, alpha: Tensor, Ks: Tensor, alpha_min: float = ALPHA_MIN) -> Tensor:
    """Camera-space unit normals from a depth map, pointing towards the camera.

    1. back-project pixel centres: P(u, v) = z(u, v) K^-1 (u + 0.5, v + 0.5, 1)   (OpenCV camera)
    2. tangents: along u the forward or backward difference of P, whichever has the smaller
       |dz| (so a depth edge between two surfaces does not bend the normal); same along v;
       a difference is usable only if both of its pixels have alpha >= alpha_min
    3. n = normalize(t_v x t_u), flipped where it points away from the camera (n . P > 0)
    4. OpenCV (x right, y down, z forward) -> display (x right, y up, z towards the viewer):
       (x, y, z) -> (x, -y, -z)

    Args:
        depth: [C, 1, H, W] expected camera z.
        alpha: [C, 1, H, W] accumulated opacity.
        Ks: [C, 3, 3] pixel intrinsics.
    Returns:
        [C, 3, H, W] unit normals in the display convention; 0 where alpha < alpha_min or a
        pixel has no usable neighbour along u or v.
    """
    C, _, H, W = depth.shape
    assert depth.shape == (C, 1, H, W) and alpha.shape == (C, 1, H, W), (depth.shape, alpha.shape)
    assert Ks.shape == (C, 3, 3), Ks.shape
    z = depth[:, 0].double()                                               # [C, H, W]
    ok = alpha[:, 0] >= alpha_min                                          # [C, H, W]
    K = Ks.double()
    # 1. back-projection
    u = torch.arange(W, dtype=torch.float64, device=z.device) + 0.5
    v = torch.arange(H, dtype=torch.float64, device=z.device) + 0.5
    x = (u[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * z
    y = (v[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * z
    P = torch.stack([x, y, z], dim=1)                                      # [C, 3, H, W]

    # 2. one-sided differences, the smaller |dz| of the usable ones
    def tangent(dim: int) -> tuple[Tensor, Tensor]:
        """(tangent [C, 3, H, W], usable [C, H, W]) along spatial dim 2 (v) or 3 (u) of P."""
        n = P.shape[dim]
        d = P.narrow(dim, 1, n - 1) - P.narrow(dim, 0, n - 1)             # P[i+1] - P[i]
        dok = ok.narrow(dim - 1, 1, n - 1) & ok.narrow(dim - 1, 0, n - 1)
        zero, no = torch.zeros_like(P.narrow(dim, 0, 1)), torch.zeros_like(ok.narrow(dim - 1, 0, 1))
        fwd, fok = torch.cat([d, zero], dim), torch.cat([dok, no], dim - 1)   # at i: P[i+1] - P[i]
        bwd, bok = torch.cat([zero, d], dim), torch.cat([no, dok], dim - 1)   # at i: P[i] - P[i-1]
        use_b = bok & (~fok | (bwd[:, 2].abs() < fwd[:, 2].abs()))
        return torch.where(use_b[:, None], bwd, fwd), fok | bok

    tu, oku = tangent(3)                                                   # along W (u)
    tv, okv = tangent(2)                                                   # along H (v)
    # 3. normal towards the camera
    n = torch.linalg.cross(tv, tu, dim=1)                                  # [C, 3, H, W]
    n = torch.nn.functional.normalize(n, dim=1)
    n = torch.where(((n * P).sum(1, keepdim=True) > 0), -n, n)
    valid = (ok & oku & okv)[:, None]
    n = torch.where(valid, n, torch.zeros(()))
    # 4. display convention
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=n.dtype, device=n.device)[None, :, None, None]
    return (n * flip).to(depth.dtype)


def normals_to_rgb(normals: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """[C, 3, H, W] display-convention normals -> colours (n + 1) / 2 over `background` [3].

    Pixels with a zero normal (no usable depth) show the background."""
    has = (normals.abs().sum(1, keepdim=True) > 0).to(normals.dtype)      # [C, 1, H, W]
    w = alpha.clamp(0, 1) * has
    bg = background.to(normals.dtype).reshape(1, 3, 1, 1)
    return w * (normals + 1.0) * 0.5 + (1.0 - w) * bg


def _depth_to_rgb(depth: Tensor, alpha: Tensor, lo: float, hi: float) -> Tensor:
    """Near = 1, far = DEPTH_FAR_GREY, composited over black with the alpha."""
    t = ((depth - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    grey = 1.0 - (1.0 - DEPTH_FAR_GREY) * t
    ok = (alpha >= ALPHA_MIN).to(depth.dtype)
    return (grey * ok).expand(-1, 3, -1, -1)


@torch.no_grad()
def render_views(gaussians: Gaussians, cams: CameraBatch, modes=("rgb",),
                 background=(1.0, 1.0, 1.0), chunk: int = 8,
                 **render_kwargs) -> dict[str, np.ndarray]:
    """Render every camera, `chunk` views per renderer call, in the requested display modes.

    Args:
        gaussians: activated gaussians (on the device to render on).
        cams: F cameras (moved to the gaussians' device chunk by chunk).
        modes: any of MODES.
        background: [3] in [0, 1], behind rgb and normal images.
        chunk: views per render call.
        render_kwargs: passed to `ism3d.render.render` (backend, near, far, eps2d).
    Returns:
        {mode: [F, H, W, 3] uint8 numpy}
    """
    from ..render import render

    modes = tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ExportError(f"unknown render mode {', '.join(bad) or '(none)'}: use "
                          f"{', '.join(MODES)}")
    if chunk < 1:
        raise ExportError(f"chunk must be at least 1, got {chunk}")
    device = gaussians.means.device
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)   # [3]
    assert bg.shape == (3,), bg.shape
    out: dict[str, list] = {m: [] for m in modes}
    depths, alphas = [], []
    for i in range(0, len(cams), chunk):
        part = cams[i:i + chunk].to(device)
        r = render(gaussians, part, bg, **render_kwargs)
        if "rgb" in out:
            out["rgb"].append(to_uint8(r.rgb))
        if "alpha" in out:
            out["alpha"].append(to_uint8(r.alpha.clamp(0, 1).expand(-1, 3, -1, -1)))
        if "normal" in out:
            n = depth_normals(r.depth, r.alpha, part.Ks.to(r.depth.dtype))
            out["normal"].append(to_uint8(normals_to_rgb(n, r.alpha, bg)))
        if "depth" in out:  # normalised after the loop, over every view
            depths.append(r.depth.cpu())
            alphas.append(r.alpha.cpu())
    if "depth" in out:
        depth, alpha = torch.cat(depths).float(), torch.cat(alphas)
        fg = depth[alpha >= ALPHA_MIN]
        if fg.numel() == 0:
            lo, hi = 0.0, 1.0
        else:
            sample = fg[torch.linspace(0, fg.numel() - 1, min(fg.numel(), 1 << 20)).long()]
            lo, hi = torch.quantile(sample, torch.tensor([0.01, 0.99])).tolist()
        out["depth"] = [to_uint8(_depth_to_rgb(depth, alpha, lo, hi))]
    return {m: np.concatenate(v, axis=0) for m, v in out.items()}


def write_view_folder(images: dict[str, np.ndarray], folder: str | os.PathLike) -> list[Path]:
    """Write `{mode}_{k}.png` for every mode and view k (the GPTEval3D layout), each atomically.

    Returns:
        the written paths, mode by mode, view by view.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for mode, frames in images.items():
        for k, frame in enumerate(frames):
            written.append(write_png(frame, folder / f"{mode}_{k}.png"))
    return written


def render_eval(ply_path: str | os.PathLike, out: str | os.PathLike, modes=("rgb",),
                views: int = 120, size: int = 512, radius: float = 3.5, fovy: float = 0.55,
                polar: float = 90.0, background=(1.0, 1.0, 1.0), device: str = "cpu",
                fps: float = 30, backend: str = "auto", unmarked: str = "z-up") -> list[Path]:
    """Render a 3DGS PLY on the eval ring and write what `out` asks for (`ism3d render`).
    `unmarked`: the frame of a PLY that does not name its own (ply.load_ply).

    - `out` a folder (an existing folder, or a path without extension): `{mode}_{k}.png` for
      every mode and each of the `views` views (GPTEval3D: 120 views, 512, rgb + normal);
    - `out` .mp4 / .gif: a turntable of `views` frames in the single mode given;
    - `out` .png: the 8 views at 0, 45, ..., 315 degrees tiled 4 x 2, single mode.

    Args:
        ply_path: a standard (INRIA layout) 3DGS .ply.
        out: destination folder or file.
        modes: display modes (see the module docstring); exactly one for a file.
        views: number of ring views (video frames or folder images).
        size: image width and height.
        radius, fovy, polar: camera distance, vertical FoV (radians), polar angle (degrees).
        background: RGB in [0, 1] behind rgb and normal images.
        device: torch device to render on.
        fps: video frame rate.
        backend: renderer backend (auto | gsplat | torch).
    Returns:
        the written paths.
    Raises:
        ExportError: bad extension / modes / counts (checked before loading). PlyError: bad PLY.
    """
    from ..cameras import eval_ring
    from ..ply import load_ply
    from ..scene import activate
    from .video import IMAGE_EXTS, VIDEO_EXTS, views_grid, write_video

    out = Path(out)
    ext = out.suffix.lower()
    folder = out.is_dir() or ext == ""
    if not folder and ext not in VIDEO_EXTS + IMAGE_EXTS:
        raise ExportError(f"cannot write {out}: use a folder or one of "
                          f"{', '.join(VIDEO_EXTS + IMAGE_EXTS)}")
    modes = tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ExportError(f"unknown render mode {', '.join(bad) or '(none)'}: use "
                          f"{', '.join(MODES)}")
    if not folder and len(modes) != 1:
        raise ExportError(f"a {ext} file shows one mode, got {len(modes)}: use a folder")
    if views < 1:
        raise ExportError(f"views must be at least 1, got {views}")
    params, sh_degree = load_ply(ply_path, unmarked=unmarked)
    if params["means"].shape[0] == 0:
        raise ExportError(f"{ply_path} holds no gaussians: nothing to render")
    bad = [k for k, v in params.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ExportError(f"{ply_path}: the gaussians' {', '.join(bad)} hold NaN or infinite values")
    with torch.no_grad():
        gaussians = activate(params.to(device), sh_degree)
    n = 8 if ext in IMAGE_EXTS else views
    cams = eval_ring(n, size, size, radius, fovy, polar)
    images = render_views(gaussians, cams, modes, background, backend=backend)
    if folder:
        return write_view_folder(images, out)
    frames = images[modes[0]]
    if ext in IMAGE_EXTS:
        return [write_png(views_grid(frames, cols=4), out)]
    return [write_video(frames, out, fps)]
