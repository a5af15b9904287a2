"""Mesh export: gaussians -> density grid -> marching cubes -> clean, decimated, coloured GLB/OBJ.

Three files along the pipeline's seams: the density grid (step 2) is `mesh_grid.py`, writing the
files is `mesh_files.py`, and this file holds the surface extraction (steps 3-7) and the entry
points (`gaussians_to_mesh`, `export_mesh`, `export_mesh_from_ply`); every name is importable from here.

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

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..render.sh import SH_C0
from ..types import Gaussians
from .mesh_files import (MESH_EXTS, WORLD_TO_FILE, _check_ext, glb_bytes, srgb_to_linear,
                         write_mesh, write_textured_mesh)
from .mesh_grid import (CLOSE_VOXELS, SHEET_FLOOR, DensityGrid, MeshError, _colors, _covariances,
                        _cpu, _select, density_grid)

__all__ = [
    "MeshError", "MESH_EXTS", "WORLD_TO_FILE", "DensityGrid", "density_grid", "gaussians_to_mesh",
    "vertex_colors", "srgb_to_linear", "glb_bytes", "write_mesh", "export_mesh",
    "export_mesh_from_ply", "texture_mesh", "face_budget", "SH_C0",
]

_COLOR_K = 16                   # gaussians per vertex for the colours


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
    st.update(grid=tuple(grid.values.shape), h=grid.h, gaussians=len(g), mc_faces=len(tris),
              faces=len(mesh.faces), vertices=len(mesh.vertices))
    return mesh


def face_budget(out_cfg) -> int:
    """The face budget `generate` meshes with: `output.mesh_faces`, and with a texture also at
    most `output.texture_faces` (0 = no limit from that one; both 0 = no decimation)."""
    budgets = [out_cfg.mesh_faces] + ([out_cfg.texture_faces] if out_cfg.mesh_texture else [])
    budgets = [b for b in budgets if b > 0]
    return min(budgets) if budgets else 0


def texture_mesh(mesh, gaussians: Gaussians, size: int = 1024, min_opacity: float = 0.01,
                 h: float = 0.0, bake: str = "field", device: str | torch.device = "cpu"):
    """Bake a base-colour texture for a `gaussians_to_mesh` result (export/mesh_texture.py).

    Args:
        mesh: trimesh.Trimesh in world coordinates.
        gaussians: the activated gaussians it was made from.
        size: texture side in texels.
        min_opacity: the same opacity cut as the mesh's.
        h: the density grid's voxel side (stats["h"]): the field colour's weights use its floor.
        bake: "render" (render the gaussians from 48 views on `device` and project: ~2 dB
            better, slow on a CPU), "field" (the gaussian field's colour at each texel: seconds)
            or "auto" (render on a CUDA device, field otherwise).
    Returns:
        TexturedMesh (world frame).
    """
    from .mesh_texture import bake_texture, field_colour, render_colour

    if bake not in ("auto", "render", "field"):
        raise MeshError(f"unknown texture bake {bake!r}: use auto, render or field")
    if bake == "auto":
        bake = "render" if torch.device(device).type == "cuda" else "field"
    g = _select(_cpu(gaussians), min_opacity)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    colour_at = (render_colour(g, device=device) if bake == "render"
                 else field_colour(g, floor=SHEET_FLOOR * h))
    return bake_texture(np.asarray(mesh.vertices), np.asarray(mesh.faces), normals, colour_at,
                        size=size)


def export_mesh(gaussians: Gaussians, path: str | os.PathLike, resolution: int = 256,
                faces: int = 100_000, threshold: float = 0.5, texture_size: int = 0,
                texture_bake: str = "field", device: str | torch.device = "cpu",
                stats: dict | None = None, **kwargs) -> Path:
    """`gaussians_to_mesh` then `write_mesh` (.glb or .obj, checked before any work); with
    `texture_size` > 0 the mesh gets a UV atlas and a baked base-colour texture of that size
    instead of vertex colours (`texture_mesh`, `write_textured_mesh`).

    Returns:
        the written path.
    """
    _check_ext(path)
    if texture_size and not 16 <= texture_size <= 8192:
        raise MeshError(f"the texture size must be between 16 and 8192, got {texture_size}")
    st = stats if stats is not None else {}
    mesh = gaussians_to_mesh(gaussians, resolution=resolution, faces=faces,
                             threshold=threshold, stats=st, **kwargs)
    if not texture_size:
        return write_mesh(mesh, path)
    t0 = time.perf_counter()
    tm = texture_mesh(mesh, gaussians, texture_size, kwargs.get("min_opacity", 0.01), st["h"],
                      bake=texture_bake, device=device)
    st.update(texture=time.perf_counter() - t0, vertices=len(tm.vertices))
    return write_textured_mesh(tm, path)


def export_mesh_from_ply(ply_path: str | os.PathLike, path: str | os.PathLike,
                         resolution: int = 256, faces: int = 100_000, threshold: float = 0.5,
                         unmarked: str = "z-up", **kwargs) -> Path:
    """Mesh a 3DGS .ply file (what `ism3d export` runs); `unmarked` is the frame of a PLY that
    does not name its own (ply.load_ply).

    Raises:
        PlyError: not a readable 3DGS PLY. MeshError: see `gaussians_to_mesh`.
    """
    from ..ply import load_ply
    from ..scene import activate

    _check_ext(path)
    params, sh_degree = load_ply(ply_path, unmarked=unmarked)
    with torch.no_grad():
        gaussians = activate(params, sh_degree)
    return export_mesh(gaussians, path, resolution=resolution, faces=faces,
                       threshold=threshold, **kwargs)
