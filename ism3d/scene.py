"""The gaussian scene: raw parameters, their activation, and the initialisers.

Parameters are stored pre-activation in a `torch.nn.ParameterDict` under gsplat's names:

    means      [N, 3]       world positions (z-up)
    scales     [N, 3]       log standard deviations
    quats      [N, 4]       raw quaternions (w, x, y, z), normalised by `activate`
    opacities  [N]          logits
    sh0        [N, 1, 3]    SH DC coefficient per channel
    shN        [N, K-1, 3]  the other SH coefficients, K = (deg+1)^2 ([N, 0, 3] for degree 0)

Other code sees `activate(params, sh_degree) -> Gaussians`. `ply.save_ply`/`ply.load_ply` store
the same raw values, so a PLY round trip is exact.

Initialisers (`init_params(cfg, generator)`), all randomness drawn from `generator`:
- ball: volume-uniform (r = R cbrt(U), direction uniform on the sphere), or, with
  volume_uniform=False, the reference's distribution. We read LucidDreamer's
  `scene/dataset_readers.py::readCircleCamInfo` (init_shape 'sphere'): it draws
  theta = pi U1, phi = 2 pi U2, r = 0.5 U3 independently, i.e. radius uniform in [0, R]
  (centre-heavy: density ~ 1/r^2) AND the polar angle uniform in [0, pi] (pole-heavy, unlike
  arccos(2U - 1)). We reproduce both, with R = cfg.radius.
- shell: uniform on the sphere of radius R. box: uniform in [-R, R]^3.
- file: a point cloud (.ply), a mesh (.ply with faces, .obj, .glb, ... via trimesh; we sample
  `num_points` points on the surface, area-weighted, interpolating vertex colours), or an
  existing 3DGS .ply (detected by its properties; loaded as-is).
Every point gets an isotropic log scale from the mean distance to its 3 nearest neighbours
(`knn_log_scale`), opacity logit(cfg.opacity), colour cfg.color (or the file's) as SH DC, and the
identity rotation.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .config import InitConfig
from .ply import is_gaussian_ply, load_ply, read_ply_header, read_ply_vertices
from .types import Gaussians

__all__ = [
    "SH_C0", "SceneInitError", "Gaussians", "sh_num_coeffs", "rgb_to_sh0", "sh0_to_rgb",
    "activate", "make_params", "knn_log_scale", "sample_ball", "sample_shell", "sample_box",
    "init_params", "sh_degree_of",
]

# Y_0^0 = 1 / (2 sqrt(pi)): colour = 0.5 + SH_C0 * sh0 for degree 0 (3DGS convention).
SH_C0 = 0.28209479177387814

# Floor of the nearest-neighbour distance. INRIA clamps the mean *squared* distance at 1e-7;
# we clamp the distance at its square root, so duplicated points give log(3.16e-4), not -inf.
KNN_EPS = math.sqrt(1e-7)

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".off", ".stl")


class SceneInitError(ValueError):
    """The initial scene cannot be built (bad init file, no points, ...)."""


def sh_num_coeffs(sh_degree: int) -> int:
    """K = (deg + 1)^2, the number of SH coefficients per channel."""
    return (sh_degree + 1) ** 2


def sh_degree_of(params) -> int:
    """SH degree implied by shN's shape [N, K-1, 3]."""
    k = params["shN"].shape[1] + 1
    deg = math.isqrt(k) - 1
    assert (deg + 1) ** 2 == k, f"shN has {k - 1} coefficients: not (deg+1)^2 - 1"
    return deg


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> SH DC coefficient, the inverse of colour = 0.5 + SH_C0 * sh0."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def activate(params, sh_degree: int) -> Gaussians:
    """Raw parameters -> activated `Gaussians` (differentiable).

    Args:
        params: ParameterDict (or dict) with means [N, 3], scales [N, 3], quats [N, 4],
            opacities [N], sh0 [N, 1, 3], shN [N, K'-1, 3].
        sh_degree: degree to render with; at most the stored degree (lower degrees use the
            first (deg+1)^2 coefficients, e.g. for a progressive SH schedule).

    Returns:
        Gaussians(means [N, 3], quats [N, 4] unit, scales [N, 3] = exp, opacities [N] = sigmoid,
        sh [N, K, 3] = cat(sh0, shN)[:, :K], sh_degree).
    """
    means, scales, quats = params["means"], params["scales"], params["quats"]
    opacities, sh0, shn = params["opacities"], params["sh0"], params["shN"]
    n = means.shape[0]
    assert means.shape == (n, 3) and scales.shape == (n, 3) and quats.shape == (n, 4)
    assert opacities.shape == (n,) and sh0.shape == (n, 1, 3)
    assert shn.dim() == 3 and shn.shape[0] == n and shn.shape[2] == 3
    k = sh_num_coeffs(sh_degree)
    if k > 1 + shn.shape[1]:
        raise ValueError(f"activate: sh_degree {sh_degree} needs {k - 1} shN coefficients, "
                         f"the scene stores {shn.shape[1]}")
    sh = torch.cat([sh0, shn], dim=1)[:, :k]  # [N, K, 3]
    return Gaussians(
        means=means,
        quats=torch.nn.functional.normalize(quats, dim=-1),
        scales=torch.exp(scales),
        opacities=torch.sigmoid(opacities),
        sh=sh,
        sh_degree=sh_degree,
    )


def deactivate(g: Gaussians) -> dict[str, Tensor]:
    """Activated `Gaussians` -> raw parameters (the inverse of `activate`, e.g. for `save_ply`).

    Returns:
        dict: means [N, 3], scales [N, 3] = log, quats [N, 4] (as given), opacities [N] = logit
        (computed in float64, so opacities of 1 - 1e-7 stay finite in float32), sh0 [N, 1, 3],
        shN [N, K-1, 3]; float32 like the inputs, detached.
    """
    return {"means": g.means.detach(), "scales": g.scales.detach().log(), "quats": g.quats.detach(),
            "opacities": torch.logit(g.opacities.detach().double()).to(g.opacities.dtype),
            "sh0": g.sh[:, :1].detach(), "shN": g.sh[:, 1:].detach()}


def knn_log_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Isotropic initial log scale: log(mean distance to the k nearest other points).

    (INRIA's simple_knn uses sqrt of the mean *squared* distance; the spec asks for the mean
    distance, which is at most that.)

    Args:
        points: [N, 3] positions.
    Returns:
        [N] float64 log scales; distances are clamped at KNN_EPS, so duplicates stay finite.
    """
    pts = np.asarray(points, dtype=np.float64)
    assert pts.ndim == 2 and pts.shape[1] == 3, pts.shape
    n = pts.shape[0]
    if n <= 1:
        return np.full(n, math.log(KNN_EPS))
    kk = min(k, n - 1)
    # 1. query k+1 neighbours: the first is the point itself (or a duplicate at distance 0).
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # [N, kk+1], sorted ascending
    # 2. mean over the kk others, floored.
    mean = dist[:, 1:].mean(axis=1)
    return np.log(np.maximum(mean, KNN_EPS))


def make_params(means: Tensor, rgb: Tensor | None, cfg: InitConfig) -> torch.nn.ParameterDict:
    """Raw parameters for points `means` [N, 3] with colours `rgb` [N, 3] in [0, 1] (or cfg.color).

    Scales from `knn_log_scale`, opacity logit(cfg.opacity), identity quaternions, SH rest zero.
    """
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    means = means.to(torch.float32)
    if rgb is None:
        rgb = torch.tensor(cfg.color, dtype=torch.float32).expand(n, 3)
    assert rgb.shape == (n, 3), rgb.shape
    log_s = torch.from_numpy(knn_log_scale(means.numpy())).to(torch.float32)  # [N]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    tensors = {
        "means": means.clone(),
        "scales": log_s[:, None].repeat(1, 3),
        "quats": quats,
        "opacities": torch.full((n,), math.log(cfg.opacity / (1.0 - cfg.opacity))),
        "sh0": rgb_to_sh0(rgb.to(torch.float32)).reshape(n, 1, 3).clone(),
        "shN": torch.zeros(n, sh_num_coeffs(cfg.sh_degree) - 1, 3),
    }
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in tensors.items()})


# ---------------------------------------------------------------------------------------------
# Point samplers: [n, 3] float64 tensors on the CPU, all randomness from `generator`.
# ---------------------------------------------------------------------------------------------
def _uniform_directions(n: int, generator: torch.Generator) -> Tensor:
    """[n, 3] unit vectors, uniform on the sphere (z = cos(theta) uniform in [-1, 1])."""
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    z = 2.0 * u[:, 0] - 1.0
    phi = 2.0 * math.pi * u[:, 1]
    rxy = torch.sqrt(torch.clamp(1.0 - z * z, min=0.0))
    return torch.stack([rxy * torch.cos(phi), rxy * torch.sin(phi), z], dim=1)


def sample_ball(n: int, radius: float, volume_uniform: bool, generator: torch.Generator) -> Tensor:
    """[n, 3] points in the ball of `radius`.

    volume_uniform=True: uniform in volume (r = R cbrt(U), uniform direction).
    volume_uniform=False: the reference (LucidDreamer 'sphere' init): theta = pi U, phi = 2 pi U,
    r = R U, x = r sin(theta) sin(phi), y = r sin(theta) cos(phi), z = r cos(theta).
    """
    if volume_uniform:
        d = _uniform_directions(n, generator)
        r = radius * torch.rand(n, generator=generator, dtype=torch.float64).pow(1.0 / 3.0)
        return d * r[:, None]
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    theta, phi, r = math.pi * u[:, 0], 2.0 * math.pi * u[:, 1], radius * u[:, 2]
    return torch.stack([r * torch.sin(theta) * torch.sin(phi),
                        r * torch.sin(theta) * torch.cos(phi),
                        r * torch.cos(theta)], dim=1)


def sample_shell(n: int, radius: float, generator: torch.Generator) -> Tensor:
    """[n, 3] points uniform on the sphere of `radius`."""
    return radius * _uniform_directions(n, generator)


def sample_box(n: int, half: float, generator: torch.Generator) -> Tensor:
    """[n, 3] points uniform in the cube [-half, half]^3."""
    return half * (2.0 * torch.rand(n, 3, generator=generator, dtype=torch.float64) - 1.0)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _colors_from_vertex_props(v: dict[str, np.ndarray]) -> np.ndarray | None:
    """[N, 3] colours in [0, 1] from red/green/blue (or r/g/b) vertex properties, if present."""
    for names in (("red", "green", "blue"), ("r", "g", "b")):
        if all(n in v for n in names):
            cols = []
            for n in names:
                a = v[n]
                if np.issubdtype(a.dtype, np.integer):
                    a = a.astype(np.float64) / np.iinfo(a.dtype).max
                cols.append(np.clip(a.astype(np.float64), 0.0, 1.0))
            return np.stack(cols, axis=1)
    return None


def _subsample(points: np.ndarray, colors: np.ndarray | None, num: int,
               generator: torch.Generator):
    """Keep `num` random points (all of them if num == 0 or num >= N)."""
    if num <= 0 or num >= len(points):
        return points, colors
    idx = torch.randperm(len(points), generator=generator)[:num].sort().values.numpy()
    return points[idx], (None if colors is None else colors[idx])


def _sample_mesh(mesh, num: int, generator: torch.Generator, path: str):
    """`num` area-weighted points on the mesh surface, with barycentric vertex colours."""
    verts = np.asarray(mesh.vertices, dtype=np.float64)   # [V, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)        # [F, 3]
    vcol = _mesh_vertex_colors(mesh)                      # [V, 3] or None
    if num <= 0:                                          # 0 = use the vertices themselves
        return verts, vcol
    areas = np.array(mesh.area_faces, dtype=np.float64)  # [F] (a writable copy)
    if not np.isfinite(areas).all() or areas.sum() <= 0:
        raise SceneInitError(f"init.path {path}: the mesh has no surface area to sample")
    # 1. faces by area, 2. uniform barycentric point (reflect u + v > 1 back into the triangle).
    fi = torch.multinomial(torch.from_numpy(areas), num, replacement=True,
                           generator=generator).numpy()
    uv = torch.rand(num, 2, generator=generator, dtype=torch.float64).numpy()
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]
    w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)  # [num, 3]
    tri = faces[fi]                                                      # [num, 3]
    pts = np.einsum("nk,nkd->nd", w, verts[tri])
    cols = None if vcol is None else np.einsum("nk,nkd->nd", w, vcol[tri])
    return pts, cols


def _mesh_vertex_colors(mesh) -> np.ndarray | None:
    """[V, 3] vertex colours in [0, 1] (vertex colours, or a texture baked to vertices), or None."""
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    try:
        if kind == "texture":
            visual = visual.to_color()
            kind = visual.kind
        if kind in ("vertex", "face"):
            vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
            if len(vc) == len(mesh.vertices):
                return vc
    except Exception:  # an unusual material: fall back to cfg.color
        return None
    return None


def _load_trimesh(path: str):
    import trimesh  # optional dependency, only for meshes

    try:
        return trimesh.load(path, force="mesh")
    except Exception as e:
        raise SceneInitError(f"init.path {path}: cannot read it as a mesh ({e})") from None


def _points_from_file(cfg: InitConfig, generator: torch.Generator):
    """(points [M, 3], colours [M, 3] | None) from a point cloud or mesh file."""
    path = cfg.path
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        header = read_ply_header(path)
        faces = header.element("face")
        if faces is None or faces.count == 0:
            v = read_ply_vertices(path)
            if not all(n in v for n in ("x", "y", "z")):
                raise SceneInitError(f"init.path {path}: PLY vertices have no x, y, z")
            pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
            return _subsample(pts, _colors_from_vertex_props(v), cfg.num_points, generator)
        mesh = _load_trimesh(path)
    elif suffix in MESH_SUFFIXES:
        mesh = _load_trimesh(path)
    else:
        raise SceneInitError(f"init.path {path}: unsupported file type {suffix or '(none)'}; "
                             f"use .ply, {', '.join(MESH_SUFFIXES)}")
    if len(getattr(mesh, "faces", [])) == 0:  # a mesh file holding only points
        pts = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
        return _subsample(pts, _mesh_vertex_colors(mesh), cfg.num_points, generator)
    return _sample_mesh(mesh, cfg.num_points, generator, path)


def _init_from_gaussian_ply(cfg: InitConfig) -> torch.nn.ParameterDict:
    params, deg = load_ply(cfg.path)
    if deg > cfg.sh_degree:
        raise SceneInitError(f"init.path {cfg.path}: the file has SH degree {deg} but "
                             f"init.sh_degree={cfg.sh_degree}: set init.sh_degree={deg}")
    if deg < cfg.sh_degree:  # pad the missing higher-order coefficients with zeros (lossless)
        n = params["means"].shape[0]
        pad = torch.zeros(n, sh_num_coeffs(cfg.sh_degree) - sh_num_coeffs(deg), 3)
        params["shN"] = torch.nn.Parameter(torch.cat([params["shN"].detach(), pad], dim=1))
    return params


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def init_params(cfg: InitConfig, generator: torch.Generator) -> torch.nn.ParameterDict:
    """Initial raw parameters (on the CPU) from `cfg`; deterministic for a given generator state.

    Args:
        cfg: InitConfig (kind ball | shell | box | file, num_points, radius, volume_uniform,
            path, color, opacity, sh_degree).
        generator: a CPU torch.Generator; every random draw comes from it.

    Returns:
        ParameterDict with means [N, 3], scales [N, 3], quats [N, 4], opacities [N],
        sh0 [N, 1, 3], shN [N, K-1, 3].

    Raises:
        SceneInitError / PlyError (both ValueError): the file is missing, unreadable or empty.
    """
    if cfg.kind == "ball":
        pts = sample_ball(cfg.num_points, cfg.radius, cfg.volume_uniform, generator)
        return make_params(pts.to(torch.float32), None, cfg)
    if cfg.kind == "shell":
        return make_params(sample_shell(cfg.num_points, cfg.radius, generator).float(), None, cfg)
    if cfg.kind == "box":
        return make_params(sample_box(cfg.num_points, cfg.radius, generator).float(), None, cfg)
    if cfg.kind != "file":
        raise SceneInitError(f"init.kind: unknown {cfg.kind!r}; use ball, shell, box or file")

    path = cfg.path
    if not path:
        raise SceneInitError("init.path: required when init.kind=file")
    if not os.path.exists(path):
        raise SceneInitError(f"init.path {path}: file not found")
    if not os.path.isfile(path):
        raise SceneInitError(f"init.path {path}: not a regular file")
    if Path(path).suffix.lower() == ".ply" and is_gaussian_ply(path):
        params = _init_from_gaussian_ply(cfg)
        if params["means"].shape[0] == 0:
            raise SceneInitError(f"init.path {path}: the file holds zero gaussians")
        return params
    pts, cols = _points_from_file(cfg, generator)
    if len(pts) == 0:
        raise SceneInitError(f"init.path {path}: the file holds zero points")
    if not np.isfinite(pts).all():
        raise SceneInitError(f"init.path {path}: some point coordinates are NaN or infinite")
    means = torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))
    rgb = None if cols is None else torch.from_numpy(np.ascontiguousarray(cols, dtype=np.float32))
    return make_params(means, rgb, cfg)
