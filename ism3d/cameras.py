"""Orbit cameras: look-at matrices, pinhole intrinsics, the training-view sampler and the eval ring.

Conventions (the only place they are defined; `CameraBatch`'s docstring repeats them and
tests/test_cameras.py checks each one):

- world: right-handed, z up; the object's front faces +x.
- viewmats: world-to-camera 4x4 in the OpenCV convention: camera x right, y down, z forward.
  Seen from the front (camera on +x looking at the origin) world +y is on the image's RIGHT
  and world +z is up (smaller pixel row).
- polar: degrees from +z (90 = equator, 45 = above the object looking down).
- azimuth: degrees in (-180, 180], 0 = camera on +x (front view), counter-clockwise seen from
  above, so 90 = camera on +y.
- Ks: square pixels, principal point at (W/2, H/2), i.e. the image centre when pixel i covers
  [i, i+1) (gsplat's convention); fy = (H/2) / tan(fovy/2).

    centre(polar p, azimuth a, radius r) = target + r * (sin p cos a, sin p sin a, cos p)

Random training views (`sample_orbit`) follow the reference LucidDreamer
(EnVision-Research/LucidDreamer, scene/dataset_readers.py `rand_poses` / `GenerateRandomCameras`,
arguments/__init__.py `GenerateCamParams`, train.py), read for these facts:

- polar and azimuth are drawn as mid + half_width * sign * U^gamma (`gen_random_pos`; gamma =
  `rand_cam_gamma`, our `angle_gamma`: 1, uniform in angle, for most configs, 1.5 for the head
  configs; the uniform-on-sphere branch is off, `uniform_sphere_rate = 0`); radius uniform.
- jitter: the centre gets UNIFORM noise in [-j/2, j/2) per axis (j = jitter_center = 0.05), the
  look-at target (origin) gets GAUSSIAN noise of std jitter_target = 0.05, and gaussian noise of
  std jitter_up = 0.01 is added to the camera's own (orthogonalised) up vector.
- the returned polar/azimuth/radius are the nominal, pre-jitter values (used for view prompts);
  azimuth is reported in (-180, 180].
- progressive schedule (train.py): at iterations 500, 1000, ... (counted from 1) both radius
  bounds are multiplied by 0.95 and clamped below at (3.5, 5.0); the lower fovy bound is
  multiplied by 0.75 and clamped at 0.16; the upper fovy bound is multiplied by 1.1 but capped at
  its start value 0.60, so it never moves; both azimuth bounds are multiplied by 1.5 and clamped
  to max_phi_range (the head configs go +-80 -> +-120 -> +-180). The polar bounds have the same
  rule, but every released config sets theta_range = max_theta_range, so they never move: we
  keep polar_range fixed.
- differences, on purpose: the reference puts azimuth 0 on +y and turns clockwise seen from above
  (its centre is r*(sin p sin a, sin p cos a, cos p)); we use the +x / counter-clockwise
  convention above (a relabelling of the world, same distribution). The reference draws ONE fovy
  per pool of cameras (`random.random()` once per `GenerateRandomCameras` call); we draw one per
  view. Its jittered up vector is not re-orthogonalised (slightly non-rigid rotation); ours is.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import CameraConfig, ConfigError
from .types import CameraBatch

__all__ = [
    "CameraBatch", "CameraError", "look_at", "intrinsics", "orbit_cameras", "orbit_centers",
    "camera_schedule", "azimuth_schedule", "sample_orbit", "eval_ring", "turntable", "wrap_azimuth",
]


class CameraError(ValueError):
    """A camera argument is impossible (degenerate look-at, fov out of range, radius <= 0...)."""


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Map degrees to (-180, 180] (so -180 becomes 180)."""
    return azimuth - 360.0 * torch.ceil((azimuth - 180.0) / 360.0)


def look_at(
    centers: Tensor,  # [C, 3] camera positions (world)
    targets: Tensor,  # [C, 3] points the cameras look at
    ups: Tensor,      # [C, 3] approximate world up of each camera (need not be orthogonal)
) -> Tensor:
    """World-to-camera matrices (OpenCV: x right, y down, z forward) for look-at cameras.

    1. forward f = normalize(target - centre)            (camera +z)
    2. right   r = normalize(f x up)                     (camera +x)
    3. down    d = f x r                                 (camera +y; exactly orthonormal)
    4. R = [r; d; f] (rows), t = -R centre, viewmat = [[R, t], [0, 1]]

    Args:
        centers, targets, ups: `[C, 3]` float tensors.
    Returns:
        viewmats: `[C, 4, 4]` rigid (R orthonormal, det +1), dtype of `centers`.
    Raises:
        CameraError: a centre equals its target, or `up` is parallel to the viewing direction.
    """
    assert centers.ndim == 2 and centers.shape[-1] == 3, centers.shape
    assert targets.shape == centers.shape and ups.shape == centers.shape, (targets.shape, ups.shape)
    dtype = centers.dtype
    c, tg, up = centers.double(), targets.double(), ups.double()
    # 1. forward
    f = tg - c                                                    # [C, 3]
    f_norm = f.norm(dim=-1, keepdim=True)
    if bool((f_norm < 1e-9).any()):
        raise CameraError("look_at: a camera centre coincides with its target; move the camera away")
    f = f / f_norm
    # 2. right
    r = torch.linalg.cross(f, up, dim=-1)                         # [C, 3]
    r_norm = r.norm(dim=-1, keepdim=True)
    up_norm = up.norm(dim=-1, keepdim=True)
    if bool(((up_norm < 1e-12) | (r_norm < 1e-9 * up_norm)).any()):
        raise CameraError("look_at: the up vector is zero or parallel to the viewing direction; "
                          "use a polar angle strictly between 0 and 180 degrees or another up")
    r = r / r_norm
    # 3. down
    d = torch.linalg.cross(f, r, dim=-1)                          # [C, 3]
    # 4. assemble
    R = torch.stack([r, d, f], dim=-2)                            # [C, 3, 3] rows
    t = -(R @ c.unsqueeze(-1)).squeeze(-1)                        # [C, 3]
    viewmats = torch.zeros(c.shape[0], 4, 4, dtype=torch.float64, device=c.device)
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = t
    viewmats[:, 3, 3] = 1.0
    return viewmats.to(dtype)


def intrinsics(fovy: Tensor, width: int, height: int) -> Tensor:
    """Pinhole intrinsics with square pixels and the principal point at the image centre.

        fy = fx = (H / 2) / tan(fovy / 2),  cx = W / 2,  cy = H / 2

    Args:
        fovy: `[C]` vertical field of view in radians, in (0, pi).
        width, height: image size in pixels.
    Returns:
        Ks: `[C, 3, 3]`, dtype of `fovy`.
    """
    assert fovy.ndim == 1, fovy.shape
    if width < 1 or height < 1:
        raise CameraError(f"intrinsics: image size must be positive, got {width}x{height}")
    if bool(((fovy <= 0) | (fovy >= math.pi)).any()):
        raise CameraError(f"intrinsics: fovy must be in (0, pi) radians, got {fovy.tolist()}")
    focal = (0.5 * height) / torch.tan(0.5 * fovy.double())      # [C]
    Ks = torch.zeros(fovy.shape[0], 3, 3, dtype=torch.float64, device=fovy.device)
    Ks[:, 0, 0] = focal
    Ks[:, 1, 1] = focal
    Ks[:, 0, 2] = 0.5 * width
    Ks[:, 1, 2] = 0.5 * height
    Ks[:, 2, 2] = 1.0
    return Ks.to(fovy.dtype)


def orbit_centers(polar_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """`[C]` angles (degrees) and radii -> `[C, 3]` offsets r * (sin p cos a, sin p sin a, cos p)."""
    p, a = torch.deg2rad(polar_deg.double()), torch.deg2rad(azimuth_deg.double())
    r = radius.double()
    return torch.stack([r * torch.sin(p) * torch.cos(a),
                        r * torch.sin(p) * torch.sin(a),
                        r * torch.cos(p)], dim=-1)                 # [C, 3] float64


def _per_camera(v: Tensor | None, C: int, default: tuple[float, float, float]) -> Tensor:
    if v is None:
        return torch.tensor(default, dtype=torch.float64).expand(C, 3)
    v = torch.as_tensor(v, dtype=torch.float64)
    assert v.shape in ((3,), (C, 3)), v.shape
    return v.expand(C, 3)


def orbit_cameras(
    polar_deg: Tensor,    # [C] degrees from +z
    azimuth_deg: Tensor,  # [C] degrees, 0 = +x, counter-clockwise from above
    radius: Tensor,       # [C] distance to the target
    fovy: Tensor,         # [C] radians
    width: int,
    height: int,
    target: Tensor | None = None,  # [3] or [C, 3]; default the origin
    up: Tensor | None = None,      # [3] or [C, 3]; default +z
) -> CameraBatch:
    """Cameras on a sphere around `target`, looking at it (see the module docstring).

    Returns:
        CameraBatch of C float32 cameras on the CPU; `azimuth` wrapped to (-180, 180].
    """
    C = polar_deg.shape[0]
    assert polar_deg.shape == (C,) and azimuth_deg.shape == (C,), (polar_deg.shape, azimuth_deg.shape)
    assert radius.shape == (C,) and fovy.shape == (C,), (radius.shape, fovy.shape)
    if bool((radius <= 0).any()):
        raise CameraError(f"orbit_cameras: radius must be > 0, got {radius.tolist()}")
    tg = _per_camera(target, C, (0.0, 0.0, 0.0))                  # [C, 3]
    ups = _per_camera(up, C, (0.0, 0.0, 1.0))                     # [C, 3]
    centers = tg + orbit_centers(polar_deg, azimuth_deg, radius)  # [C, 3]
    return CameraBatch(
        viewmats=look_at(centers, tg.clone(), ups.clone()).float(),
        Ks=intrinsics(fovy.double(), width, height).float(),
        width=width, height=height,
        polar=polar_deg.float(), azimuth=wrap_azimuth(azimuth_deg.double()).float(),
        radius=radius.float(),
    )


def camera_schedule(cfg: CameraConfig, step: int) -> tuple[float, float, float, float]:
    """Radius and fovy ranges at `step` (a pure function of step).

    n = step // decay_every decays have happened (the k-th takes effect at step k * decay_every):
        radius_lo = max(radius_floor[0], radius_range[0] * radius_decay^n)
        radius_hi = max(radius_floor[1], radius_range[1] * radius_decay^n)
        fovy_lo   = max(fovy_floor,      fovy_range[0]   * fovy_decay^n)
        fovy_hi   = fovy_range[1]                      (the reference's upper bound never moves)
    A floor above the start value never raises the range (the start value is kept).

    Returns:
        (radius_lo, radius_hi, fovy_lo, fovy_hi)
    """
    if cfg.radius_floor[0] > cfg.radius_floor[1]:
        raise ConfigError(f"camera.radius_floor: the min floor must not exceed the max floor "
                          f"(got {cfg.radius_floor!r})")
    n = _decays(cfg, step)
    r0, r1 = cfg.radius_range
    f0, f1 = cfg.fovy_range
    radius_lo = max(min(cfg.radius_floor[0], r0), r0 * cfg.radius_decay ** n)
    radius_hi = max(min(cfg.radius_floor[1], r1), r1 * cfg.radius_decay ** n)
    fovy_lo = max(min(cfg.fovy_floor, f0), f0 * cfg.fovy_decay ** n)
    return radius_lo, radius_hi, fovy_lo, f1  # lo <= hi holds given valid floors


def _decays(cfg: CameraConfig, step: int) -> int:
    """How many decays have happened by 0-based `step`: the k-th at iteration k * decay_every,
    iterations counted from 1 as the reference counts them (iteration = step + 1)."""
    return (max(int(step), 0) + 1) // cfg.decay_every


def azimuth_schedule(cfg: CameraConfig, step: int) -> tuple[float, float]:
    """The azimuth range at `step` (a pure function of step), n = `_decays(cfg, step)`:

        lo = max(azimuth_range_max[0], azimuth_range[0] * azimuth_widen^n)
        hi = min(azimuth_range_max[1], azimuth_range[1] * azimuth_widen^n)
    but never narrower than azimuth_range (a bound of the "wrong" sign, or one already past
    azimuth_range_max, stays where it is).
    """
    n = _decays(cfg, step)
    (a0, a1), (m0, m1) = cfg.azimuth_range, cfg.azimuth_range_max
    w = cfg.azimuth_widen ** n
    return min(a0, max(m0, a0 * w)), max(a1, min(m1, a1 * w))


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _ranged(lo: float, hi: float, n: int, gamma: float, gen: torch.Generator) -> Tensor:
    """`[n]` draws in [lo, hi]: uniform for gamma == 1 (one draw each); otherwise the reference's
    mid + half * sign * U^gamma (two draws each: U, then the sign), denser at the middle for
    gamma > 1."""
    if gamma == 1.0:
        return _uniform(lo, hi, n, gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return 0.5 * (lo + hi) + 0.5 * (hi - lo) * sign * u ** gamma


def sample_orbit(cfg: CameraConfig, step: int, batch: int, width: int, height: int,
                 generator: torch.Generator) -> CameraBatch:
    """B random training views at `step` (spec "Cameras"; reference facts in the module docstring).

    1. ranges from `camera_schedule(cfg, step)` and `azimuth_schedule(cfg, step)`
    2. polar in polar_range, azimuth in the azimuth range, both uniform in angle (angle_gamma 1)
       or the reference's mid + half * sign * U^gamma; radius ~ U[radius range], fovy ~ U[fovy
       range]; one draw per view; with azimuth_sampling="stratified", view k's azimuth is U over
       the k-th of B equal slices of the range instead (each view is still uniform over it)
    3. nominal centre = r * (sin p cos a, sin p sin a, cos p) around the origin
    4. jitter: centre += U[-jc/2, jc/2)^3, target = N(0, jt^2 I), up = the nominal camera up
       (orthogonal to the jittered view direction, in the vertical plane) + N(0, ju^2 I)
    5. look-at matrices and intrinsics

    Args:
        cfg: camera section of the config.
        step: training step (0-based); sets the progressive ranges.
        batch: number of views B.
        width, height: render size in pixels.
        generator: a CPU torch.Generator; the only source of randomness.
    Returns:
        CameraBatch of B float32 cameras on the CPU (move it with `.to(device)`), carrying the
        nominal (pre-jitter) polar, azimuth in (-180, 180] and radius.
    """
    if batch < 1:
        raise CameraError(f"sample_orbit: batch must be at least 1, got {batch}")
    # 1. ranges
    r_lo, r_hi, f_lo, f_hi = camera_schedule(cfg, step)
    a_lo, a_hi = azimuth_schedule(cfg, step)
    if cfg.azimuth_sampling == "stratified" and cfg.angle_gamma != 1.0:
        raise CameraError("camera.azimuth_sampling=stratified needs camera.angle_gamma=1")
    # 2. nominal draws (one tensor per quantity, in this fixed order)
    polar = _ranged(*cfg.polar_range, batch, cfg.angle_gamma, generator)  # [B] degrees
    if cfg.azimuth_sampling == "stratified":
        u = torch.rand(batch, generator=generator, dtype=torch.float64)   # [B] U[0, 1)
        u = (torch.arange(batch, dtype=torch.float64) + u) / batch     # view k in slice k
        azimuth = a_lo + (a_hi - a_lo) * u                             # [B] degrees
    else:
        azimuth = _ranged(a_lo, a_hi, batch, cfg.angle_gamma, generator)  # [B] degrees
    radius = _uniform(r_lo, r_hi, batch, generator)                    # [B]
    fovy = _uniform(f_lo, f_hi, batch, generator)                      # [B] radians
    # 3. nominal centres
    centers = orbit_centers(polar, azimuth, radius)                    # [B, 3]
    # 4. jitter
    u = torch.rand(batch, 3, generator=generator, dtype=torch.float64)
    centers = centers + (u - 0.5) * cfg.jitter_center                  # [B, 3]
    targets = cfg.jitter_target * torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    f = torch.nn.functional.normalize(targets - centers, dim=-1)      # [B, 3] forward
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(batch, 3)
    right = torch.nn.functional.normalize(torch.linalg.cross(f, z, dim=-1), dim=-1)
    up0 = torch.linalg.cross(right, f, dim=-1)                         # [B, 3] unit, camera up
    ups = up0 + cfg.jitter_up * torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    # 5. matrices
    return CameraBatch(
        viewmats=look_at(centers, targets, ups).float(),
        Ks=intrinsics(fovy, width, height).float(),
        width=width, height=height,
        polar=polar.float(), azimuth=wrap_azimuth(azimuth).float(), radius=radius.float(),
    )


def eval_ring(n: int, width: int, height: int, radius: float, fovy: float,
              polar: float = 90.0) -> CameraBatch:
    """n views evenly spaced in azimuth (360 k / n, k = 0..n-1, starting at the front), fixed
    polar (degrees), radius and fovy (radians), looking at the origin with up +z."""
    if n < 1:
        raise CameraError(f"eval_ring: need at least one view, got n={n}")
    az = torch.arange(n, dtype=torch.float64) * (360.0 / n)            # [n]
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return orbit_cameras(full(polar), az, full(radius), full(fovy), width, height)


def turntable(n: int, size: int, radius: float, fovy: float, polar: float = 90.0) -> CameraBatch:
    """Square `size` x `size` eval ring of n frames for a turntable video (see `eval_ring`)."""
    return eval_ring(n, size, size, radius, fovy, polar)
