"""Coordinate frames of the files we write, and turning gaussians from one frame to another.

The trainer's world is z-up with the object's front facing +x (`types.CameraBatch`). Files follow
the convention of their ecosystem instead, so that they open upright with the front towards the
viewer's default camera:

    frame    up   front  used by
    z-up     +z   +x     our world; `output.frame=z-up` keeps it in gaussians.ply (pipelines
                         that expect today's files)
    y-down   -y   -z     3DGS PLY and .splat (the default): the COLMAP/OpenCV frame (x right,
                         y down, z forward) that the INRIA viewers, antimatter15's splat viewer,
                         gsplat.js, SuperSplat and splat-transform assume for .ply/.splat; their
                         default cameras sit on the -z side looking along +z
    y-up     +y   +z     glTF (spec: "+Y up, the front of an asset faces +Z") and SPZ (Niantic:
                         RUB, right-up-back); the mesh files (export/mesh_files.py) too

Each is a proper rotation of the world (signed axis permutation, det +1, no scaling), rows are
the file axes: x_file = FILE_FROM_WORLD[frame] @ x_world. y-up is y-down turned 180 degrees about
x, which is exactly what SPZ's readers undo when they convert RUB to a PLY's RDF.

Turning gaussians by R (`rotate_params`):
    1. means' = R means
    2. quats' = q_R * quats (Hamilton product), so R' = R R_i and every covariance R S R^T;
       log-scales and opacities unchanged
    3. SH: the colour seen along direction d must stay the colour seen along R d, f'(d) = f(R^T d).
       Per band the map is linear, sh' = T sh with T [K, K] fitted exactly on 64 directions:
       Y(D) T = Y(D R) (least squares; exact since the real SH of a band span a rotation-
       invariant space)
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .render.sh import eval_sh_bases

__all__ = ["FRAMES", "FILE_FROM_WORLD", "matrix_to_quat", "quat_multiply", "sh_rotation",
           "rotate_params", "to_frame", "from_frame"]

FRAMES = ("y-down", "z-up", "y-up")
FILE_FROM_WORLD = {
    "z-up": torch.eye(3, dtype=torch.float64),
    "y-down": torch.tensor([[0.0, 1.0, 0.0],     # x_file = y_world (the object's left -> right)
                            [0.0, 0.0, -1.0],    # y_file = -z_world (down)
                            [-1.0, 0.0, 0.0]],   # z_file = -x_world (front -> towards -z)
                           dtype=torch.float64),
    "y-up": torch.tensor([[0.0, 1.0, 0.0],
                          [0.0, 0.0, 1.0],
                          [1.0, 0.0, 0.0]], dtype=torch.float64),
}


def matrix_to_quat(R: Tensor) -> Tensor:
    """[3, 3] rotation -> (w, x, y, z) unit quaternion with w >= 0 (Shepperd's method)."""
    R = R.double()
    t = float(R.trace())
    if t > 0:
        s = 2.0 * math.sqrt(1.0 + t)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + float(R[i, i] - R[j, j] - R[k, k]), 0.0))
        v = [0.0, 0.0, 0.0]
        v[i] = 0.25 * s
        v[j] = float(R[j, i] + R[i, j]) / s
        v[k] = float(R[k, i] + R[i, k]) / s
        q = [float(R[k, j] - R[j, k]) / s] + v
    q = torch.tensor([float(x) for x in q], dtype=torch.float64)
    return q if q[0] >= 0 else -q


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (w, x, y, z) quaternions, [..., 4]: R(a * b) = R(a) R(b)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def _fibonacci(n: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (1 + 5 ** 0.5) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1)


def sh_rotation(R: Tensor, degree: int) -> Tensor:
    """[K, K] float64 T with sh' = T sh for gaussians turned by R (module docstring, step 3)."""
    R = R.double()
    dirs = _fibonacci(64)                                                  # [64, 3]
    A = eval_sh_bases(degree, dirs)                                        # [64, K] Y(d)
    B = eval_sh_bases(degree, dirs @ R)                                    # [64, K] Y(R^T d)
    T = torch.linalg.lstsq(A, B).solution                                  # [K, K]
    return torch.where(T.abs() < 1e-12, torch.zeros_like(T), T)


def rotate_params(params: Mapping[str, Tensor], R: Tensor) -> dict[str, Tensor]:
    """Raw 3DGS parameters (means, quats, scales, opacities, sh0, shN) turned by the rotation R
    [3, 3] (module docstring, steps 1-3). Computed in float64, returned in the input dtype."""
    means = params["means"].detach()                                       # [N, 3]
    dt = means.dtype
    R = R.double()
    assert R.shape == (3, 3) and torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype)), R
    q = matrix_to_quat(R).expand(means.shape[0], 4)                        # [N, 4]
    sh = torch.cat([params["sh0"].detach(), params["shN"].detach()], 1).double()   # [N, K, 3]
    degree = math.isqrt(sh.shape[1]) - 1
    T = sh_rotation(R, degree)                                             # [K, K]
    sh = torch.einsum("kj,njc->nkc", T, sh)
    return {
        "means": (means.double() @ R.T).to(dt),                            # 1.
        "quats": quat_multiply(q, params["quats"].detach().double()).to(dt),   # 2.
        "scales": params["scales"].detach().clone(),
        "opacities": params["opacities"].detach().clone(),
        "sh0": sh[:, :1].to(dt).contiguous(),                              # 3.
        "shN": sh[:, 1:].to(dt).contiguous(),
    }


def to_frame(params: Mapping[str, Tensor], frame: str) -> dict[str, Tensor]:
    """World-frame raw parameters -> the same gaussians in `frame` (one of FRAMES)."""
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}: choose one of {', '.join(FRAMES)}")
    if frame == "z-up":
        return {k: params[k].detach() for k in params}
    return rotate_params(params, FILE_FROM_WORLD[frame])


def from_frame(params: Mapping[str, Tensor], frame: str) -> dict[str, Tensor]:
    """Raw parameters stored in `frame` -> the world frame (z-up, front +x)."""
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}: choose one of {', '.join(FRAMES)}")
    if frame == "z-up":
        return {k: params[k].detach() for k in params}
    return rotate_params(params, FILE_FROM_WORLD[frame].T)
