"""Real spherical harmonics up to degree 3, in the 3DGS / gsplat basis and sign convention.

The basis is ordered by degree l = 0..3 and, inside a degree, by order m = -l..l (index l*l + l + m).
It is the real SH basis that keeps the Condon-Shortley phase, so for example
Y_1 = (-C1 y, C1 z, -C1 x) with C1 = sqrt(3 / (4 pi)). A colour is `eval_sh(...) + 0.5`, clamped
at 0 by the renderer (as gsplat and the INRIA code do), so degree 0 gives 0.5 + SH_C0 * sh[:, 0].

Symbols: d = (x, y, z) the unit view direction (gaussian mean minus camera centre, normalised).
"""
from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814                     # 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199                      # sqrt(3 / (4 pi))
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 coefficients per colour channel."""
    return (degree + 1) ** 2


def eval_sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """The real SH basis functions at unit directions.

    Args:
        degree: 0..3.
        dirs: [..., 3] unit directions (not normalised here).

    Returns:
        [..., (degree + 1)^2] basis values, index l*l + l + m.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    assert dirs.shape[-1] == 3, dirs.shape
    # 1. degree 0: a constant
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        # 2. degree 1: m = -1, 0, 1
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        # 3. degree 2: m = -2..2
        out += [SH_C2[0] * xy,
                SH_C2[1] * yz,
                SH_C2[2] * (2.0 * zz - xx - yy),
                SH_C2[3] * xz,
                SH_C2[4] * (xx - yy)]
    if degree >= 3:
        # 4. degree 3: m = -3..3
        out += [SH_C3[0] * y * (3.0 * xx - yy),
                SH_C3[1] * xy * z,
                SH_C3[2] * y * (4.0 * zz - xx - yy),
                SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                SH_C3[4] * x * (4.0 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy),
                SH_C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours (without the +0.5 offset) along view directions.

    Args:
        degree: SH degree to use, 0..3; only the first (degree + 1)^2 coefficients are read.
        dirs: [..., 3] view directions (any length > 0; normalised here, as gsplat does).
        coeffs: [..., K, 3] coefficients, K >= (degree + 1)^2.

    Returns:
        [..., 3] sum_k Y_k(dirs) * coeffs[..., k, :].
    """
    n = num_sh_bases(degree)
    assert coeffs.shape[-1] == 3 and coeffs.shape[-2] >= n, coeffs.shape
    assert dirs.shape[:-1] == coeffs.shape[:-2], (dirs.shape, coeffs.shape)
    if degree == 0:
        return SH_C0 * coeffs[..., 0, :]
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    bases = eval_sh_bases(degree, dirs)                      # [..., n]
    return (bases[..., :, None] * coeffs[..., :n, :]).sum(dim=-2)
