"""A copy of gaussians.ply turned for Gradio's splat viewer (the web app's "Gaussians" panel).

Our scenes are z-up with the front facing +x (`types.CameraBatch`). Gradio 6's Model3D draws .ply
splats with gsplat.js, whose orbit camera treats -y as up and starts on the -z side of the origin
(yaw and pitch 0.5 rad, radius 5), as scenes made by COLMAP expect. Shown as they are, our objects
lie on their backs and are seen from below. The viewer copy is the same gaussians turned by

    VIEWER_FROM_WORLD (rows = viewer axes):   x_v = y,   y_v = -z,   z_v = -x

so that up (+z) becomes the viewer's up (-y) and the front (+x) faces its starting camera (-z),
and shrunk by VIEW_SCALE so that a ~1-unit object fits that camera's narrow view with a margin:
    1. means' = k M @ means                                  (k = VIEW_SCALE)
    2. quats' = q_M * quats (Hamilton product; R' = M R), log-scales' = log-scales + log k,
       so every covariance becomes k^2 M Sigma M^T
    3. opacities and the base colour (SH band 0) unchanged; higher SH bands dropped (they would
       need turning too, and the copy is only a preview)
The download buttons still serve the run's own gaussians.ply; the copy lives in RUN/viewer/.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..ply import PlyError, load_ply, save_ply

VIEWER_FROM_WORLD = torch.tensor([[0.0, 1.0, 0.0],
                                  [0.0, 0.0, -1.0],
                                  [-1.0, 0.0, 0.0]])
# the same rotation as a unit quaternion (w, x, y, z): trace 0 -> w = 1/2, the rest from M - M^T
VIEWER_FROM_WORLD_QUAT = torch.tensor([0.5, 0.5, 0.5, -0.5])
VIEW_SCALE = 0.6
VIEWER_PLY = Path("viewer") / "gaussians.ply"


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (w, x, y, z) quaternions, [..., 4]: R(a * b) = R(a) R(b)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def turn_for_viewer(params) -> dict[str, Tensor]:
    """Raw 3DGS parameters (as `load_ply` returns them) -> the viewer copy's, SH degree 0."""
    means = params["means"].detach()                                        # [N, 3]
    quats = params["quats"].detach()                                        # [N, 4]
    q = VIEWER_FROM_WORLD_QUAT.to(quats).expand_as(quats)
    return {
        "means": VIEW_SCALE * means @ VIEWER_FROM_WORLD.to(means).T,        # 1.
        "quats": quat_multiply(q, quats),                                   # 2.
        "scales": params["scales"].detach() + math.log(VIEW_SCALE),
        "opacities": params["opacities"].detach(),                          # 3.
        "sh0": params["sh0"].detach(),
        "shN": means.new_zeros(means.shape[0], 0, 3),
    }


def viewer_ply(run_dir: str | Path) -> Path | None:
    """RUN/viewer/gaussians.ply, written (atomically) when missing or older than RUN/gaussians.ply.

    Returns None when the run has no readable gaussians.ply or the copy cannot be written.
    """
    run_dir = Path(run_dir)
    src, dst = run_dir / "gaussians.ply", run_dir / VIEWER_PLY
    try:
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            return dst
        params, _ = load_ply(src)
        save_ply(dst, turn_for_viewer(params), sh_degree=0)
    except (OSError, PlyError):
        return None
    return dst
