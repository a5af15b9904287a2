"""The density grid of the mesh export (ism3d/export/mesh.py, step 2): the opacity-weighted sum of
the gaussian kernels on a regular grid, evaluated sparsely tile by tile.

    D(x) = sum_i o_i exp(-1/2 (x - mu_i)^T S_i^-1 (x - mu_i)),   S_i = R_i diag(s_i^2 + (c h)^2) R_i^T

The derivation, the floor c h and the memory figures are in mesh.py's docstring. Also here: the
helpers on gaussians the other mesh steps share (selection, covariances, degree-0 colours).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..render.sh import SH_C0
from ..render.torch_backend import quat_to_rotmat
from ..types import Gaussians

__all__ = ["MeshError", "DensityGrid", "density_grid", "CUTOFF", "SHEET_FLOOR", "CLOSE_VOXELS",
           "TILE"]

CUTOFF = 3.0                    # kernels are evaluated out to this Mahalanobis distance
SHEET_FLOOR = 0.5               # minimum kernel std, in voxels (see step 2)
CLOSE_VOXELS = 2                # pinholes up to twice this (voxels) are sealed before filling
TILE = 8                        # longest tile side, voxels
_GROUP_TILES = 1 << 22          # tiles listed at once (bounds the tile lists' memory)
_TILE_SIZES = (1, 2, 3, 4, 6, 8)   # padded tile sides
_CHUNK = 1 << 20                # voxel evaluations per vectorised step


class MeshError(ValueError):
    """The scene cannot be meshed (no gaussians, all transparent, no surface at the threshold) or
    an export argument is bad (extension, resolution, face budget)."""


@dataclass
class DensityGrid:
    """D sampled at origin + h * (i, j, k), i < shape[0], j < shape[1], k < shape[2]."""
    values: Tensor        # [X, Y, Z] float32
    origin: np.ndarray    # [3] world position of voxel (0, 0, 0)
    h: float              # voxel side (world units)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _check_gaussians(g: Gaussians) -> None:
    n = g.means.shape[0]
    assert g.means.shape == (n, 3), g.means.shape
    assert g.quats.shape == (n, 4) and g.scales.shape == (n, 3), (g.quats.shape, g.scales.shape)
    assert g.opacities.shape == (n,), g.opacities.shape
    assert g.sh.ndim == 3 and g.sh.shape[0] == n and g.sh.shape[2] == 3, g.sh.shape
    if n == 0:
        raise MeshError("the scene holds no gaussians: nothing to mesh")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        if not bool(torch.isfinite(getattr(g, name)).all()):
            raise MeshError(f"the gaussians' {name} hold NaN or infinite values: the scene is "
                            "broken, re-run or resume the generation")


def _covariances(g: Gaussians, floor: float) -> tuple[Tensor, Tensor]:
    """(S [N, 3, 3], S^-1 [N, 3, 3]) in float64, S = R diag(s^2 + floor^2) R^T."""
    R = quat_to_rotmat(g.quats.double())                        # [N, 3, 3]
    var = g.scales.double() ** 2 + floor ** 2               # [N, 3]
    cov = R @ (var[:, :, None] * R.transpose(1, 2))         # [N, 3, 3]
    inv = R @ ((1.0 / var)[:, :, None] * R.transpose(1, 2))
    return cov, inv


def _select(g: Gaussians, min_opacity: float) -> Gaussians:
    keep = g.opacities >= min_opacity
    if not bool(keep.any()):
        raise MeshError(f"all {len(g)} gaussians are (nearly) transparent (opacity < "
                        f"{min_opacity:g}): nothing to mesh; lower --min-opacity if intended")
    return Gaussians(g.means[keep], g.quats[keep], g.scales[keep], g.opacities[keep],
                     g.sh[keep], g.sh_degree)


def _cpu(g: Gaussians) -> Gaussians:
    return Gaussians(*(t.detach().cpu() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)),
                     g.sh_degree)


def _colors(g: Gaussians) -> Tensor:
    """[N, 3] view-averaged (degree-0) colours in [0, 1]."""
    return (0.5 + SH_C0 * g.sh[:, 0].double()).clamp(0.0, 1.0)


@contextlib.contextmanager
def _one_thread():
    """Run torch ops single-threaded inside the block, then restore the thread count.

    The grid is filled by thousands of ~1M-element operations; torch's intra-op threads pay a
    synchronisation per operation, which on a busy 2-core machine made the 100k-gaussian
    benchmark 17x slower (37 s with 2 threads, 2.2 s with 1). Process-wide state: do not mesh
    from two Python threads at once.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# 2. Density grid
# ---------------------------------------------------------------------------------------------
def _grid_frame(means: Tensor, cov: Tensor, resolution: int) -> tuple[np.ndarray, float, tuple]:
    """Origin [3], voxel side h and grid shape covering every 3-sigma box plus the floor."""
    ext = CUTOFF * torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2))      # [N, 3] half-extents
    lo = (means.double() - ext).min(0).values.numpy()
    hi = (means.double() + ext).max(0).values.numpy()
    span = hi - lo
    # empty margin a side: the floor adds <= CUTOFF * SHEET_FLOOR = 1.5 voxels to the box, the
    # closing of step 3 needs CLOSE_VOXELS more, and marching cubes an empty border.
    margin = 3 + CLOSE_VOXELS
    h = float(max(span.max(), 1e-9)) / (resolution - 1 - 2 * margin)
    shape = tuple(int(math.ceil(s / h - 1e-6)) + 1 + 2 * margin for s in span)
    origin = lo - margin * h
    return origin, h, shape


def density_grid(gaussians: Gaussians, resolution: int = 256, min_opacity: float = 0.01,
                 floor_voxels: float = SHEET_FLOOR) -> DensityGrid:
    """Opacity-weighted sum of the gaussian kernels on a regular grid (module docstring, step 2).

    Sparse evaluation: each gaussian's 3-sigma box (in voxels) is cut into tiles of at most
    TILE^3 voxels; a tile is skipped when it lies outside one of the gaussian's three principal
    3-sigma slabs (the separating-axis test of the box against the gaussian's oriented box, which
    never skips a voxel inside the ellipsoid); the remaining tiles are bucketed by padded size and
    evaluated in vectorised chunks, the quadratic form assembled from per-axis terms.

    Args:
        gaussians: activated gaussians (any device; computed on the CPU in float32).
        resolution: samples along the longest side of the bounding box (>= 16).
        min_opacity: gaussians below this opacity are ignored.
        floor_voxels: minimum kernel standard deviation, in voxels.
    Returns:
        DensityGrid with values [X, Y, Z] (max(X, Y, Z) = resolution).
    Raises:
        MeshError: no gaussians, all transparent, non-finite values, resolution < 16.
    """
    if resolution < 16:
        raise MeshError(f"the mesh resolution must be at least 16, got {resolution}")
    _check_gaussians(gaussians)
    g = _select(_cpu(gaussians), min_opacity)
    # The floor depends on h, which depends on the box: size the box without it (the margin
    # covers the difference), then build the covariances with it.
    cov0, _ = _covariances(g, 0.0)
    origin, h, shape = _grid_frame(g.means, cov0, resolution)
    # Groups of consecutive gaussians with at most _GROUP_TILES tiles (from their box sizes).
    cov, _ = _covariances(g, floor_voxels * h)
    boxes = 2.0 * CUTOFF * torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2)) / h + 1.0   # [N, 3]
    tiles = torch.ceil(torch.minimum(boxes, torch.tensor(shape)) / TILE).prod(1)      # [N]
    grid = torch.zeros(shape[0] * shape[1] * shape[2], dtype=torch.float32)
    with _one_thread():
        s, csum = 0, torch.cumsum(tiles.double(), 0).numpy()
        while s < len(g):
            base = csum[s - 1] if s else 0.0
            e = max(s + 1, int(np.searchsorted(csum, base + _GROUP_TILES, side="right")))
            part = Gaussians(g.means[s:e], g.quats[s:e], g.scales[s:e], g.opacities[s:e],
                             g.sh[s:e], g.sh_degree)
            _splat_group(grid, part, origin, h, shape, floor_voxels * h)
            s = e
    return DensityGrid(grid.reshape(shape), origin, h)


def _splat_group(grid: Tensor, g: Gaussians, origin: np.ndarray, h: float, shape: tuple,
                 floor: float) -> None:
    """Add the kernels of gaussians `g` to the flat grid [X*Y*Z] in place."""
    _, Y, Z = shape
    dims = torch.tensor(shape)
    R = quat_to_rotmat(g.quats.double())  # [N, 3, 3] axes = columns
    sd = torch.sqrt(g.scales.double() ** 2 + floor ** 2)                   # [N, 3] principal stds
    cov = R @ ((sd ** 2)[:, :, None] * R.transpose(1, 2))                  # [N, 3, 3]
    inv = R @ ((1.0 / sd ** 2)[:, :, None] * R.transpose(1, 2))
    org64 = torch.from_numpy(origin)

    # 1. each gaussian's box of voxel indices [i0, i1] (clipped to the grid)
    ext = CUTOFF * torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2))         # [N, 3]
    rel = (g.means.double() - org64) / h                                   # [N, 3] in voxels
    i0 = torch.ceil(rel - ext / h).long().clamp(min=0)
    i1 = torch.minimum(torch.floor(rel + ext / h).long(), dims - 1)
    size = (i1 - i0 + 1).clamp(min=0)                                      # [N, 3]
    gid = torch.nonzero((size > 0).all(1))[:, 0]                           # [G]
    i0, size = i0[gid], size[gid]

    # 2. tiles of at most TILE voxels a side
    nt = (size + TILE - 1) // TILE                                         # [G, 3] tiles per axis
    count = nt.prod(1)                                                     # [G]
    tg = torch.repeat_interleave(torch.arange(len(gid)), count)            # [T] box of each tile
    j = torch.arange(len(tg)) - (torch.cumsum(count, 0) - count)[tg]       # [T] tile in its box
    ntt = nt[tg]
    a = torch.stack([j // (ntt[:, 1] * ntt[:, 2]), (j // ntt[:, 2]) % ntt[:, 1], j % ntt[:, 2]], 1)
    t_org = i0[tg] + a * TILE                                              # [T, 3]
    t_size = torch.minimum(size[tg] - a * TILE, torch.tensor(TILE))        # [T, 3]
    t_g = gid[tg]                                                          # [T] gaussian

    # 3. separating-axis cull against the gaussian's principal 3-sigma slabs:
    #    keep iff |e_m . (c - mu)| <= 3 sd_m + sum_k |e_mk| hs_k for m = 0, 1, 2
    hs = 0.5 * (t_size.double() - 1.0) * h                                 # [T, 3] half sizes
    c = org64 + (t_org.double() + 0.5 * (t_size.double() - 1.0)) * h      # [T, 3] centres
    Rt = R[t_g]                                                            # [T, 3, 3]
    proj = torch.einsum("tkm,tk->tm", Rt, c - g.means.double()[t_g]).abs()  # [T, 3]
    reach = CUTOFF * sd[t_g] + torch.einsum("tkm,tk->tm", Rt.abs(), hs)
    keep = (proj <= reach + 1e-9 * h).all(1)
    t_org, t_size, t_g = t_org[keep], t_size[keep], t_g[keep]

    # 4. bucket by padded size, evaluate chunk by chunk
    sizes = torch.tensor(_TILE_SIZES)
    pad = sizes[torch.searchsorted(sizes, t_size)]                         # [T, 3]
    key = (pad[:, 0] * 64 + pad[:, 1]) * 64 + pad[:, 2]
    mu = g.means.float()
    inv6 = torch.stack([inv[:, 0, 0], inv[:, 1, 1], inv[:, 2, 2],
                        2 * inv[:, 0, 1], 2 * inv[:, 0, 2], 2 * inv[:, 1, 2]], 1).float()
    op = g.opacities.float()
    org = torch.from_numpy(origin).float()
    work = {"q": torch.empty(_CHUNK), "bad": torch.empty(_CHUNK, dtype=torch.bool),
            "flat": torch.empty(_CHUNK, dtype=torch.long)}
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    start = 0
    for k, n in zip(keys.tolist(), counts.tolist()):
        idx = order[start:start + n]
        start += n
        p = (k // 4096, (k // 64) % 64, k % 64)
        step = max(1, _CHUNK // (p[0] * p[1] * p[2]))
        for s in range(0, n, step):
            sel = idx[s:s + step]
            flat, val = _eval_tiles(t_org[sel], t_size[sel], t_g[sel], p, mu, inv6, op, org,
                                    h, Y, Z, work)
            grid.index_add_(0, flat, val)


def _eval_tiles(t_org, t_size, t_g, p, mu, inv6, op, org, h, Y, Z, work):
    """(flat voxel index [P*B], value [P*B]) of B tiles padded to p = (px, py, pz) voxels.

    The quadratic form q = d^T S^-1 d is assembled from per-axis pieces ([px, 1, 1, B],
    [1, py, 1, B], [1, 1, pz, B], [px, py, 1, B]) so that only a few operations run at full size
    [px, py, pz, B], with the tile index innermost (long contiguous loops) and written into the
    preallocated `work` buffers (allocating a tensor per operation costs more than the arithmetic
    on the CPU). Padding voxels and values beyond the cutoff get index 0 and value 0.
    """
    B = t_org.shape[0]
    P = p[0] * p[1] * p[2]
    view = ((-1, 1, 1, B), (1, -1, 1, B), (1, 1, -1, B))
    m = mu[t_g].T                                                          # [3, B]
    ii, d, bad = [], [], []
    for ax in range(3):
        off = torch.arange(p[ax])
        i = t_org[None, :, ax] + off[:, None]                              # [p, B]
        ii.append(i.view(view[ax]))
        d.append((org[ax] + i.float() * h - m[ax]).view(view[ax]))
        bad.append((off[:, None] >= t_size[None, :, ax]).view(view[ax]))
    a = inv6[t_g].T.contiguous()                                           # [6, B]
    dx, dy, dz = d
    # q = [a0 dx^2 + a1 dy^2 + a3 dx dy] + (a4 dx + a5 dy) dz + a2 dz^2   (a3..a5 hold 2 S^-1_ij)
    s_xy = a[0] * dx * dx + a[1] * dy * dy + a[3] * dx * dy                # [px, py, 1, B]
    w_xy = a[4] * dx + a[5] * dy                                           # [px, py, 1, B]
    q = work["q"][:B * P].view(*p, B)
    torch.mul(w_xy, dz, out=q)
    q.add_(s_xy).add_(a[2] * dz * dz)                                      # [px, py, pz, B]
    out = work["bad"][:B * P].view(*p, B)
    torch.gt(q, CUTOFF * CUTOFF, out=out)
    out.logical_or_(bad[0] | bad[1]).logical_or_(bad[2])
    q.mul_(-0.5).exp_().mul_(op[t_g]).masked_fill_(out, 0.0)
    flat = work["flat"][:B * P].view(*p, B)
    torch.add(ii[0] * (Y * Z) + ii[1] * Z, ii[2], out=flat)
    flat.masked_fill_(out, 0)
    return flat.view(-1), q.view(-1)
