"""Generated point clouds -> gaussians, and the `init_points.ply` cache of a run folder.

Shared by the text-to-3D initialisers (`shap_e.py`, `point_e.py`). A generator returns a
`GeneratedCloud`: M points already in the scene frame (world units), with colours. Then:

1. frame. Shap-E meshes and Point-E clouds are z-up with the object's front facing -y:
   - Shap-E's preview cameras (`create_pan_cameras` in openai/shap-e) start on -y, looking at
     +y, with +z up in the image; GaussianDreamer uses the vertices as they are and puts its
     azimuth-0 ("front view") camera on -y (`pose_spherical(azimuth + 180, ...)`); the
     threestudio-3dgs Shap-E init ("-y,+x,+z" `transform_point_cloud`) rotates them by +90 deg
     about z instead.
   - the reference LucidDreamer negates Point-E's y (`xyz[:, 1] = -xyz[:, 1]`) to turn that
     -y front to its own front camera on +y, and lifts the cloud by 0.15 along z.
   Our scene (cameras.py) is z-up with the front facing +x, so both generators go through the
   rotation by +90 deg about z,

       p_scene = scale * (R p + lift e_z),    R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
                                             (x, y, z) -> (-y, x, z);  -y -> +x, z -> z,

   a proper rotation (det +1). The reference's y negation is a mirror image (det -1): it turns
   the front to its camera but also swaps the object's left and right; we do not copy that.
   `lift` is 0.15 for Point-E (the reference) and 0 for Shap-E (GaussianDreamer lifts nothing).
2. copies. Each of the M points becomes `copies` gaussians, jittered inside a ball of radius
   `jitter` (`scene.sample_ball`, uniform in volume, or with init.volume_uniform=false the
   reference's centre-heavy ball). The reference adds ONE set of offsets to every point (the
   same 20 displacement vectors everywhere); we draw independent offsets per gaussian.
   Colours are copied (the reference adds U[0, 1e-4) noise to them; we do not).
3. gaussians through `scene.make_params`, the very code the file initialiser uses: isotropic
   scale from the mean distance to the 3 nearest neighbours, opacity init.opacity, identity
   rotation, colour = the generated colour (init.use_colors) or init.color.

Only step 2 draws from the training generator, so a run that reuses a cached cloud ends with the
same gaussians as a run that generated it.

The cache (`INIT_CLOUD` = `init_points.ply` in the run folder) is a plain binary PLY point cloud
(x, y, z, float red/green/blue in [0, 1]; a valid `init.kind=file` input) whose header holds one
line `comment ism3d-init {json}`: the key of everything the cloud depends on (kind, model,
effective init prompt, seed, steps, guidance scale, point count, scale, decode grid). It is
reused only when that key equals the run's; any other key regenerates the cloud and replaces
the file (the reference reuses any `init_points3d.ply` it finds, whatever the prompt: a known
bug this avoids).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..config import ConfigError, InitConfig
from ..ply import PlyError, read_ply_vertices
from ..scene import make_params, sample_ball

__all__ = [
    "GENERATOR_TO_SCENE",
    "INIT_CLOUD",
    "TEXT_KINDS",
    "GeneratedCloud",
    "InitError",
    "cache_key",
    "cloud_to_params",
    "init_prompt",
    "linear_to_srgb",
    "load_cloud",
    "num_base_points",
    "sample_surface",
    "save_cloud",
    "to_scene_frame",
]


INIT_CLOUD = "init_points.ply"
TEXT_KINDS = ("shap-e", "point-e")
KEY_TAG = "ism3d-init"
# Generator frame (z up, front -y) -> scene frame (z up, front +x): +90 deg about z.
GENERATOR_TO_SCENE = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


class InitError(ConfigError):
    """A text-to-3D initialiser cannot run (model or package missing, empty result...).

    A ConfigError, so the CLI prints its one line and exits 2."""


@dataclass
class GeneratedCloud:
    """M generated points in the scene frame (world units) and their colours."""
    points: np.ndarray  # [M, 3] float32
    colors: np.ndarray  # [M, 3] float32 in [0, 1] (sRGB, as a gaussian's colour)

    def __post_init__(self):
        m = len(self.points)
        assert self.points.shape == (m, 3) and self.colors.shape == (m, 3), \
            (self.points.shape, self.colors.shape)
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        self.colors = np.ascontiguousarray(np.clip(self.colors, 0.0, 1.0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Small pure pieces
# ---------------------------------------------------------------------------------------------
def to_scene_frame(points: np.ndarray, scale: float, lift: float = 0.0) -> np.ndarray:
    """[N, 3] generator-frame points (z up, front -y) -> [N, 3] float64 scene-frame points.

    p_scene = scale * (R p + lift e_z), R = +90 deg about z (module docstring, step 1).
    """
    p = np.asarray(points, dtype=np.float64)
    assert p.ndim == 2 and p.shape[1] == 3, p.shape
    out = p @ GENERATOR_TO_SCENE.T  # [N, 3]
    out[:, 2] += lift
    return scale * out


def linear_to_srgb(u: np.ndarray) -> np.ndarray:
    """Linear-light colour -> sRGB encoding (IEC 61966-2-1), elementwise on values in [0, 1]."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return np.where(u <= 0.0031308, 12.92 * u, 1.055 * np.power(u, 1.0 / 2.4) - 0.055)


def sample_surface(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, num: int,
                   generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`num` points uniform on a triangle mesh (area-weighted), colours interpolated.

    1. pick faces with probability proportional to their area
    2. uniform barycentric (u, v) in the unit square, reflected into the triangle when u + v > 1
    3. point and colour = the barycentric mix of the face's 3 vertices

    Args:
        verts: [V, 3] vertex positions; faces: [F, 3] vertex indices; colors: [V, 3].
        generator: CPU torch.Generator for every draw.
    Returns:
        (points [num, 3], colors [num, 3]) float64.
    Raises:
        InitError: the mesh has no area.
    """
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    c = np.asarray(colors, dtype=np.float64)
    assert v.ndim == 2 and v.shape[1] == 3 and c.shape == v.shape, (v.shape, c.shape)
    assert f.ndim == 2 and f.shape[1] == 3, f.shape
    tri = v[f]                                                              # [F, 3, 3]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if len(f) == 0 or not np.isfinite(area).all() or area.sum() <= 0:
        raise InitError("the generated mesh has no surface to sample points on")
    # 1. faces by area
    fi = torch.multinomial(torch.from_numpy(area), num, replacement=True,
                           generator=generator).numpy()                    # [num]
    # 2. barycentric weights
    uv = torch.rand(num, 2, generator=generator, dtype=torch.float64).numpy()
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]
    w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)  # [num, 3]
    # 3. mix
    idx = f[fi]                                                             # [num, 3]
    return np.einsum("nk,nkd->nd", w, v[idx]), np.einsum("nk,nkd->nd", w, c[idx])


def num_base_points(cfg: InitConfig) -> int:
    """Generated points M = num_points // copies (Point-E makes at most 4096)."""
    m = cfg.num_points // max(cfg.copies, 1)
    return min(m, 4096) if cfg.kind == "point-e" else m


def init_prompt(cfg: InitConfig, prompt: str) -> str:
    """The generator's prompt: init.prompt, or the main prompt when it is empty."""
    return cfg.prompt.strip() or prompt.strip()


def cache_key(cfg: InitConfig, prompt: str, seed: int) -> dict:
    """Everything the generated cloud depends on (see the module docstring)."""
    key = {"kind": cfg.kind, "prompt": init_prompt(cfg, prompt), "seed": int(seed),
           "steps": cfg.steps, "points": num_base_points(cfg), "scale": cfg.scale}
    if cfg.kind == "shap-e":
        key.update(model=cfg.model, guidance=cfg.shap_e_guidance, grid=cfg.shap_e_grid)
    else:
        from .point_e import MODEL_NAME
        key.update(model=MODEL_NAME, guidance=cfg.point_e_guidance)
    return key


# ---------------------------------------------------------------------------------------------
# init_points.ply
# ---------------------------------------------------------------------------------------------
def save_cloud(path: str | Path, cloud: GeneratedCloud, key: dict) -> Path:
    """Write `cloud` with `key` in a header comment (binary PLY, atomically)."""
    n = len(cloud.points)
    tag = json.dumps(key, sort_keys=True, ensure_ascii=True)
    head = "".join(["ply\n", "format binary_little_endian 1.0\n", f"comment {KEY_TAG} {tag}\n",
                    f"element vertex {n}\n"]
                   + [f"property float {p}\n" for p in ("x", "y", "z", "red", "green", "blue")]
                   + ["end_header\n"])
    body = np.concatenate([cloud.points, cloud.colors], axis=1).astype("<f4").tobytes()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(head.encode("ascii"))
            f.write(body)

    return atomic_write(path, write)


def _read_key(path: Path) -> dict | None:
    """The json key of the `comment ism3d-init` header line, or None."""
    with open(path, "rb") as f:
        for _ in range(64):
            line = f.readline(1 << 20).decode("ascii", errors="replace").strip()
            if line == "end_header" or not line:
                return None
            if line.startswith(f"comment {KEY_TAG} "):
                try:
                    key = json.loads(line[len(f"comment {KEY_TAG} "):])
                except json.JSONDecodeError:
                    return None
                return key if isinstance(key, dict) else None
    return None


def load_cloud(path: str | Path) -> tuple[GeneratedCloud, dict] | None:
    """(cloud, key) from an `init_points.ply`, or None if it is missing, unreadable or keyless."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        key = _read_key(path)
        if key is None:
            return None
        v = read_ply_vertices(path)
        cols = [v[k] for k in ("x", "y", "z", "red", "green", "blue")]
    except (OSError, PlyError, KeyError):
        return None
    pts = np.stack(cols[:3], axis=1)
    rgb = np.stack(cols[3:], axis=1)
    if not (np.isfinite(pts).all() and np.isfinite(rgb).all()):
        return None
    return GeneratedCloud(pts, rgb), key


# ---------------------------------------------------------------------------------------------
# cloud -> gaussians
# ---------------------------------------------------------------------------------------------
def cloud_to_params(cloud: GeneratedCloud, cfg: InitConfig,
                    generator: torch.Generator) -> torch.nn.ParameterDict:
    """M generated points -> M * copies gaussians (module docstring, steps 2 and 3).

    Args:
        cloud: the generated points [M, 3] and colours [M, 3].
        cfg: InitConfig (copies, jitter, volume_uniform, use_colors, color, opacity, sh_degree).
        generator: the training generator (only the jitter draws from it).
    Returns:
        ParameterDict as `scene.init_params` returns, N = M * copies, gaussian i * copies + j
        being copy j of point i.
    """
    m, k = len(cloud.points), cfg.copies
    if m == 0:
        raise InitError("the generator returned no points")
    pts = torch.from_numpy(cloud.points).to(torch.float64)                  # [M, 3]
    means = pts.repeat_interleave(k, dim=0)                                 # [M*k, 3]
    if cfg.jitter > 0:
        means = means + sample_ball(m * k, cfg.jitter, cfg.volume_uniform, generator)
    rgb = None
    if cfg.use_colors:
        rgb = torch.from_numpy(cloud.colors).repeat_interleave(k, dim=0)    # [M*k, 3]
    return make_params(means.to(torch.float32), rgb, cfg)

