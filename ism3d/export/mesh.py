"""Mesh export: gaussians -> density grid -> marching cubes -> clean, decimated, coloured GLB/OBJ.

Pipeline (`gaussians_to_mesh`), all on the CPU:

1. keep the gaussians with opacity >= `min_opacity` (near-transparent ones add haze, not surface);
2. density field on a regular grid over their 3-sigma bounding box (cubic voxels of side h, the
   longest side sampled `resolution` times):

       D(x) = sum_i o_i exp(-1/2 (x - mu_i)^T S_i^-1 (x - mu_i)),
       S_i  = R_i diag(s_i^2 + (c h)^2) R_i^T

   each kernel truncated at Mahalanobis distance 3. The floor c h (c = `SHEET_FLOOR` = 0.5 voxel)
   widens sheets thinner than a voxel (surface gaussians are flat discs) so that the grid
   resolves them; it moves the surface outward by about one voxel at most. Evaluation is sparse:
   each gaussian only touches the voxels of its 3-sigma box, cut into tiles of at most 8^3
   voxels; tiles outside the gaussian's own 3-sigma box are culled, the rest bucketed by padded
   size and evaluated in vectorised chunks of 2^20 voxels (memory: the grid, 4 bytes a voxel,
   plus ~100 MB of work space; resolution 512 peaks at about 2.5 GB in all);
3. occupancy D > T; what it encloses is raised above T, so a closed shell of surface gaussians
   gives one outer surface instead of a thin double wall. "Encloses" is decided by a closing of
   CLOSE_VOXELS = 2 voxels, which seals pinholes between randomly placed gaussians (and bridges
   slots narrower than ~4 voxels);
4. marching cubes (scikit-image, Lewiner) at level T = `threshold`, faces wound outward;
5. cleanup: connected components smaller than `min_part` x the largest one's area are dropped
   (floaters; `min_part=1` keeps the largest component only);
6. quadric decimation to at most `faces` triangles (fast-simplification), then the folds it
   leaves repaired (`_tidy`) and step 5 repeated. The result is usually closed (watertight: 25 of
   the 27 ToyWorld family x face budget cases we tried), not always;
7. vertex colours: the density-weighted mean of the degree-0 colours (0.5 + SH_C0 sh_0, the
   view-averaged colour) of the 16 gaussians nearest to each vertex, weights o_i exp(-1/2 q_i)
   as in step 2; a vertex no kernel reaches takes the nearest gaussian's colour.

The default threshold T = 0.5 matches the renderer's alpha > 0.5 silhouette: for one gaussian the
3D level set {o exp(-q/2) > T} projects exactly onto the 2D level set {o exp(-q_2d/2) > T} of its
splat (the projection of a Mahalanobis ellipsoid is the Mahalanobis ellipse of the projected
covariance at the same radius), and the rendered alpha of one splat is o exp(-q_2d/2).

Orientation and units. The scene is z-up with its front facing +x, in world units that we call
metres (a ToyWorld object is about 1 m). glTF is y-up and "the front of a glTF asset faces +Z"
(glTF 2.0 spec, Coordinate System and Units). Both files are written in that frame with the
proper rotation (det +1, no scaling)

    (x, y, z)_file = (y, z, x)_world,   i.e. +z -> +Y (up), +x (front) -> +Z (front), +y -> +X

OBJ has no stated convention, but Blender, three.js and most viewers read OBJ as y-up too, so the
OBJ gets the same rotation: both files open upright, front towards the default camera, and
Blender imports either as z-up with the front facing -Y (its own "front" view).

Files. The GLB is written by `glb_bytes` (our own few lines: one mesh, POSITION / NORMAL /
COLOR_0 / uint32 indices, a non-metallic white material so COLOR_0 is the colour; it passes the
Khronos glTF Validator with no issue at all). Vertex colours are the renders' sRGB-encoded colours;
the GLB stores them linear (COLOR_0 is linear by the spec), the OBJ as they are (`v x y z r g b`).
No UV texture is baked: colour lives on the vertices only.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..render.sh import SH_C0
from ..types import Gaussians
from .video import atomic_write

__all__ = [
    "MeshError", "MESH_EXTS", "WORLD_TO_FILE", "DensityGrid", "density_grid", "gaussians_to_mesh",
    "vertex_colors", "srgb_to_linear", "glb_bytes", "write_mesh", "export_mesh",
    "export_mesh_from_ply",
]

MESH_EXTS = (".glb", ".obj")

# World (z-up, front +x) -> file (glTF / OBJ: y-up, front +Z). Rows are the file axes.
WORLD_TO_FILE = np.array([[0.0, 1.0, 0.0],
                          [0.0, 0.0, 1.0],
                          [1.0, 0.0, 0.0]])

CUTOFF = 3.0                    # kernels are evaluated out to this Mahalanobis distance
SHEET_FLOOR = 0.5               # minimum kernel std, in voxels (see step 2)
CLOSE_VOXELS = 2                # pinholes up to twice this (voxels) are sealed before filling
TILE = 8                        # longest tile side, voxels
_GROUP_TILES = 1 << 22          # tiles listed at once (bounds the tile lists' memory)
_TILE_SIZES = (1, 2, 3, 4, 6, 8)   # padded tile sides
_CHUNK = 1 << 20                # voxel evaluations per vectorised step
_COLOR_K = 16                   # gaussians per vertex for the colours


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


def _rotations(quats: Tensor) -> Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3] rotation matrices (normalised first)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def _covariances(g: Gaussians, floor: float) -> tuple[Tensor, Tensor]:
    """(S [N, 3, 3], S^-1 [N, 3, 3]) in float64, S = R diag(s^2 + floor^2) R^T."""
    R = _rotations(g.quats.double())                        # [N, 3, 3]
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
    R = _rotations(g.quats.double())  # [N, 3, 3] axes = columns
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


# ---------------------------------------------------------------------------------------------
# 3.-7. Surface, cleanup, decimation, colours
# ---------------------------------------------------------------------------------------------
def _surface(grid: DensityGrid, threshold: float, fill: bool):
    """Marching cubes at `threshold` -> (vertices [V, 3] world, faces [F, 3]) wound outward."""
    from scipy import ndimage
    from skimage import measure

    vol = grid.values.numpy()
    peak = float(vol.max())
    if not peak > threshold:
        raise MeshError(f"the density never reaches the threshold {threshold:g} (its maximum is "
                        f"{peak:.3g}): lower --threshold below {peak:.3g}")
    if fill:
        # 3. the outside is what a ball of radius r = CLOSE_VOXELS reaches from the border
        #    without touching the occupancy (morphological closing: dilate by r, fill the
        #    enclosed cavities, erode by r). Everything else that is empty is inside and raised
        #    above T. Pinholes narrower than ~2r voxels (gaps between randomly placed gaussians)
        #    then no longer join a cavity to the outside; the price is that slots narrower than
        #    ~2r voxels are bridged too.
        occ = vol > threshold
        r = CLOSE_VOXELS
        solid = ndimage.binary_erosion(
            ndimage.binary_fill_holes(ndimage.binary_dilation(occ, iterations=r)),
            iterations=r, border_value=0)
        inside = solid & ~occ
        if inside.any():
            vol = vol.copy()
            vol[inside] = 2.0 * threshold + peak
    verts, faces, _, _ = measure.marching_cubes(vol, level=threshold, spacing=(grid.h,) * 3,
                                                gradient_direction="descent",
                                                allow_degenerate=False)
    verts = verts.astype(np.float64) + grid.origin[None, :]
    # skimage's triangles are wound clockwise seen from the low-density side; reverse them so
    # they are counter-clockwise seen from outside (outward normals, positive signed volume).
    return verts, np.ascontiguousarray(faces[:, ::-1], dtype=np.int64)


def _drop_small_parts(mesh, min_part: float):
    """Remove connected components with less than `min_part` x the largest one's area.

    Components are those of the vertex graph (scipy csgraph on the triangle edges), which for
    marching-cubes output (shared vertices) are the mesh's connected pieces.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = mesh.faces                                                         # [F, 3]
    V = len(mesh.vertices)
    e0 = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    e1 = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(e0), dtype=np.int8), (e0, e1)), shape=(V, V))
    _, vlabel = connected_components(graph, directed=False)
    labels = vlabel[f[:, 0]]                                               # [F]
    area = np.bincount(labels, weights=mesh.area_faces)                    # [parts]
    keep = area >= min_part * area.max()
    if not keep.all():
        mesh.update_faces(keep[labels])
        mesh.remove_unreferenced_vertices()
    return mesh


def _decimate(mesh, faces: int):
    """Quadric edge-collapse decimation (fast-simplification) to at most `faces` triangles."""
    import trimesh

    if faces <= 0 or len(mesh.faces) <= faces:
        return mesh
    try:
        import fast_simplification
    except ImportError:
        raise MeshError("decimation needs the fast-simplification package: "
                        "pip install fast-simplification (or pass faces=0 to skip it)") from None
    reduction = 1.0 - faces / len(mesh.faces)
    v, f = fast_simplification.simplify(np.asarray(mesh.vertices, dtype=np.float64),
                                        np.asarray(mesh.faces, dtype=np.int64),
                                        target_reduction=reduction)
    return trimesh.Trimesh(v, f, process=False)


def _tidy(mesh):
    """Repair what quadric decimation breaks (it does not keep a closed surface closed):

    1. drop faces that repeat a vertex index;
    2. drop EVERY copy of a face whose vertex set occurs more than once (the decimator leaves
       folded pairs; keeping one copy would leave its edges open);
    3. drop unreferenced vertices; if the surface is still open, fill the simple holes
       (trimesh.repair.fill_holes). Zero-area faces with three distinct vertices are kept: they
       are harmless and removing them would open the surface.
    """
    import trimesh

    f = mesh.faces
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    _, inv, cnt = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    ok &= cnt[inv.reshape(-1)] == 1
    if not ok.all():
        mesh.update_faces(ok)
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) and not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    return mesh


def vertex_colors(gaussians: Gaussians, points: np.ndarray, floor: float = 0.0,
                  k: int = _COLOR_K) -> np.ndarray:
    """Density-weighted degree-0 colour of the gaussians around each point (step 7).

    Args:
        gaussians: activated gaussians (already filtered by opacity).
        points: [V, 3] world positions.
        floor: kernel std floor (the grid's `SHEET_FLOOR * h`), so weights match the density.
        k: nearest gaussians (by mean) considered per point.
    Returns:
        [V, 3] float64 colours in [0, 1].
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    assert pts.ndim == 2 and pts.shape[1] == 3, pts.shape
    means = gaussians.means.detach().cpu().double()
    n = means.shape[0]
    k = min(k, n)
    _, nn = cKDTree(means.numpy()).query(pts, k=k)                         # [V, k]
    nn = torch.from_numpy(np.asarray(nn).reshape(len(pts), k))
    _, inv = _covariances(Gaussians(means, gaussians.quats.detach().cpu(),
                                    gaussians.scales.detach().cpu(), gaussians.opacities,
                                    gaussians.sh), floor)
    d = torch.from_numpy(pts)[:, None, :] - means[nn]                      # [V, k, 3]
    q = torch.einsum("vki,vkij,vkj->vk", d, inv[nn], d)                    # [V, k]
    w = gaussians.opacities.detach().cpu().double()[nn] * torch.exp(-0.5 * q)
    col = _colors(gaussians).cpu()[nn]                                     # [V, k, 3]
    total = w.sum(1, keepdim=True)                                         # [V, 1]
    out = (w[:, :, None] * col).sum(1) / total.clamp_min(1e-300)
    out = torch.where(total > 1e-12, out, col[:, 0])                       # nearest fallback
    return out.numpy()


def gaussians_to_mesh(gaussians: Gaussians, resolution: int = 256, faces: int = 100_000,
                      threshold: float = 0.5, min_opacity: float = 0.01, min_part: float = 0.1,
                      fill: bool = True, stats: dict | None = None):
    """Extract a coloured triangle mesh from gaussians (module docstring, steps 1-7).

    Args:
        gaussians: activated gaussians, world frame (z-up).
        resolution: grid samples along the longest side of the scene's box.
        faces: face budget for decimation (0 = keep every marching-cubes face).
        threshold: density level of the surface (0.5 matches the alpha > 0.5 silhouette).
        min_opacity: gaussians below this opacity are ignored.
        min_part: connected components with less than this fraction of the largest one's area
            are removed (1.0 = the largest component only; 0 = keep all).
        fill: fill cavities enclosed by the surface (one outer wall for closed shells).
        stats: if a dict, receives seconds per stage ("density", "surface", "cleanup",
            "decimate", "colours") and sizes ("grid", "gaussians", "mc_faces", "faces",
            "vertices").
    Returns:
        trimesh.Trimesh in WORLD coordinates (z-up, metres), faces wound outward, uint8 RGBA
        vertex colours.
    Raises:
        MeshError: see `density_grid`, or no surface at `threshold`.
    """
    import trimesh

    if threshold <= 0:
        raise MeshError(f"the density threshold must be > 0, got {threshold:g}")
    if faces < 0:
        raise MeshError(f"the face budget must be >= 0 (0 = no decimation), got {faces}")
    if not 0.0 <= min_part <= 1.0:
        raise MeshError(f"min_part must be in [0, 1], got {min_part:g}")
    st = stats if stats is not None else {}
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        st[name] = now - clock[0]
        clock[0] = now

    grid = density_grid(gaussians, resolution, min_opacity)
    lap("density")
    verts, tris = _surface(grid, threshold, fill)
    lap("surface")
    mesh = _drop_small_parts(trimesh.Trimesh(verts, tris, process=False), min_part)
    lap("cleanup")
    # decimation can leave a few isolated triangles behind: drop them the same way
    mesh = _drop_small_parts(_tidy(_decimate(mesh, faces)), min_part)
    lap("decimate")
    if len(mesh.faces) == 0:
        raise MeshError("the surface vanished during cleanup: raise --resolution or lower "
                        "--threshold")
    g = _select(_cpu(gaussians), min_opacity)
    rgb = vertex_colors(g, mesh.vertices, floor=SHEET_FLOOR * grid.h)      # [V, 3]
    rgba = np.concatenate([np.round(rgb * 255.0), np.full((len(rgb), 1), 255.0)], 1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba.astype(np.uint8))
    lap("colours")
    st.update(grid=tuple(grid.values.shape), gaussians=len(g), mc_faces=len(tris),
              faces=len(mesh.faces), vertices=len(mesh.vertices))
    return mesh


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _check_ext(path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in MESH_EXTS:
        raise MeshError(f"cannot write {path}: the mesh extension must be one of "
                        f"{', '.join(MESH_EXTS)}")
    return ext


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _pad4(b: bytes, fill: bytes) -> bytes:
    return b + fill * (-len(b) % 4)


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
              colors: np.ndarray | None) -> bytes:
    """A minimal binary glTF 2.0: one mesh, one triangle primitive, one node, one scene.

    Args:
        vertices: [V, 3] positions (file frame, metres), written as float32 with min/max.
        faces: [F, 3] vertex indices, counter-clockwise seen from outside (uint32).
        normals: [V, 3] unit normals (float32).
        colors: [V, 3] LINEAR vertex colours in [0, 1] (glTF's COLOR_0 is linear), or None;
            written as normalised unsigned bytes, alpha 255.
    Returns:
        the .glb file's bytes. The material is a plain dielectric (metallic 0, roughness 1,
        base colour white, so COLOR_0 is the colour): glTF's default material when none is
        given is fully metallic, which renders almost black without an environment map.
    """
    V, F = len(vertices), len(faces)
    assert vertices.shape == (V, 3) and normals.shape == (V, 3) and faces.shape == (F, 3)
    pos = np.ascontiguousarray(vertices, dtype="<f4")
    nrm = np.ascontiguousarray(normals, dtype="<f4")
    idx = np.ascontiguousarray(faces, dtype="<u4")
    blobs = [pos.tobytes(), nrm.tobytes()]
    attributes = {"POSITION": 0, "NORMAL": 1}
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": V, "type": "VEC3",
         "min": pos.min(0).tolist(), "max": pos.max(0).tolist()},
        {"bufferView": 1, "componentType": 5126, "count": V, "type": "VEC3"},
    ]
    if colors is not None:
        assert colors.shape == (V, 3), colors.shape
        rgba = np.full((V, 4), 255, dtype=np.uint8)
        rgba[:, :3] = np.round(np.clip(colors, 0.0, 1.0) * 255.0)
        attributes["COLOR_0"] = len(blobs)
        accessors.append({"bufferView": len(blobs), "componentType": 5121, "normalized": True,
                          "count": V, "type": "VEC4"})
        blobs.append(rgba.tobytes())
    accessors.append({"bufferView": len(blobs), "componentType": 5125, "count": 3 * F,
                      "type": "SCALAR", "min": [int(idx.min())], "max": [int(idx.max())]})
    blobs.append(idx.tobytes())
    views, offset = [], 0
    for i, blob in enumerate(blobs):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob),
                      "target": 34963 if i == len(blobs) - 1 else 34962})
        offset += len(blob) + (-len(blob) % 4)
    binary = b"".join(_pad4(blob, b"\0") for blob in blobs)
    doc = {
        "asset": {"version": "2.0", "generator": "ism3d"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": attributes, "indices": len(blobs) - 1,
                                    "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                                                "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = _pad4(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(text), b"JSON"), text,
        struct.pack("<I4s", len(binary), b"BIN\0"), binary,
    ])


def write_mesh(mesh, path: str | os.PathLike) -> Path:
    """Write a world-frame mesh as .glb or .obj in the file frame (`WORLD_TO_FILE`), atomically.

    Colours: the mesh's vertex colours are the renders' (sRGB-encoded) colours. The OBJ stores
    them as they are (`v x y z r g b`, how OBJ readers take them); the GLB stores them linear,
    as glTF's COLOR_0 is defined, so that a viewer's sRGB output shows the same colour.

    Args:
        mesh: trimesh.Trimesh in world coordinates (z-up), optional uint8 vertex colours.
        path: destination (.glb or .obj); parent folders are created.
    Returns:
        the written path.
    """
    import trimesh

    ext = _check_ext(path)
    verts = np.asarray(mesh.vertices, dtype=np.float64) @ WORLD_TO_FILE.T      # [V, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)                             # [F, 3]
    colors = None
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0          # [V, 3] sRGB
    if ext == ".glb":
        # a rotation keeps winding and unit normals; degenerate spots get +Y, not NaN
        normals = np.asarray(mesh.vertex_normals, dtype=np.float64) @ WORLD_TO_FILE.T
        bad = ~np.isfinite(normals).all(1) | (np.linalg.norm(normals, axis=1) < 0.5)
        normals[bad] = (0.0, 1.0, 0.0)
        data = glb_bytes(verts, faces, normals, None if colors is None else srgb_to_linear(colors))
    else:
        out = trimesh.Trimesh(verts, faces, process=False)
        if colors is not None:
            out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=mesh.visual.vertex_colors)
        data = trimesh.exchange.obj.export_obj(out, include_normals=True, include_color=True,
                                               include_texture=False).encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def export_mesh(gaussians: Gaussians, path: str | os.PathLike, resolution: int = 256,
                faces: int = 100_000, threshold: float = 0.5, **kwargs) -> Path:
    """`gaussians_to_mesh` then `write_mesh` (.glb or .obj, checked before any work).

    Returns:
        the written path.
    """
    _check_ext(path)
    mesh = gaussians_to_mesh(gaussians, resolution=resolution, faces=faces,
                             threshold=threshold, **kwargs)
    return write_mesh(mesh, path)


def export_mesh_from_ply(ply_path: str | os.PathLike, path: str | os.PathLike,
                         resolution: int = 256, faces: int = 100_000, threshold: float = 0.5,
                         **kwargs) -> Path:
    """Mesh a 3DGS .ply file (what `ism3d export` runs).

    Raises:
        PlyError: not a readable 3DGS PLY. MeshError: see `gaussians_to_mesh`.
    """
    from ..ply import load_ply
    from ..scene import activate

    _check_ext(path)
    params, sh_degree = load_ply(ply_path)
    with torch.no_grad():
        gaussians = activate(params, sh_degree)
    return export_mesh(gaussians, path, resolution=resolution, faces=faces,
                       threshold=threshold, **kwargs)
