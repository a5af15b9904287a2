"""ToyWorld objects: procedural, opaque surface gaussians whose 3D shape we know exactly.

Every object is built from parametric surface patches (rectangles, discs, cylinder and cone
mantles, spheres, torus sections, triangles). Each patch is covered by flat gaussian discs:

1. points: a low-discrepancy R2 sequence (Roberts 2018) in the patch's unit square, randomly
   shifted per patch (Cranley-Patterson rotation, from `seed`), mapped to the surface by an
   area-preserving map, so the discs are evenly spread (no holes a random draw would leave);
2. counts: `n_i = max(MIN_PER_PATCH, round(n_points * area_i / total_area))`;
3. discs: standard deviation sigma = DISC_K * sqrt(total_area / n_points) along the surface and
   THIN * sigma along the normal (the local z axis is rotated onto the normal), opacity OPACITY;
4. colour: base colour x tint x shade(n), shade = AMBIENT + sum_k w_k max(0, n . l_k), baked in
   (SH degree 0: sh = (rgb - 0.5) / SH_C0) so renders read as 3D under any renderer.

The lights lie in the x = 0 plane (from above, from +y and from -y), so the lighting is mirror-
symmetric under x -> -x. A family that is itself symmetric under x -> -x (all the plain solids)
then renders its back view as the exact horizontal mirror of its front view (up to the sampling
of the discs); only the asymmetric families (`ASYMMETRIC`) break this, through one part each:

- mug: a cylinder cup with a handle on the +x (front) side;
- house: box + gable roof, a dark door on the +x (front) wall;
- chair: seat, four legs and a backrest on the -x (back) side (the chair faces +x).

World conventions (ism3d.types): z up, the front faces +x. Sizes: every object spans about one
world unit (0.8 .. 1.0 along its largest axis) around the origin, so at the eval ring (radius
3.5, fovy 0.55) it fills about half the frame height.

The words that name the objects (families, colours, views, captions) are in
ism3d/toyworld/captions.py, re-exported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..render.sh import SH_C0
from ..types import Gaussians
from .captions import (ASYMMETRIC, COLOURS, FAMILIES, SYMMETRIC, VIEWS, WorldError, caption,
                       parse_prompt, view_of_azimuth, vocabulary)

__all__ = [
    "FAMILIES", "SYMMETRIC", "ASYMMETRIC", "COLOURS", "VIEWS", "WorldError", "make_object",
    "asymmetric_part_mask", "vocabulary", "caption", "view_of_azimuth", "parse_prompt",
    "shade", "hue_of", "DEFAULT_POINTS",
]


# ---------------------------------------------------------------------------------------------
# Shading and colour helpers
# ---------------------------------------------------------------------------------------------
AMBIENT = 0.45
# (direction, weight): a key light from above and +y, a fill from -y. All in the x = 0 plane.
LIGHTS = (((0.0, 0.6, 0.8), 0.55), ((0.0, -0.97, 0.243), 0.25))


def shade(normals: Tensor) -> Tensor:
    """[N, 3] unit normals -> [N] Lambert shade AMBIENT + sum_k w_k max(0, n . l_k), clamped to 1."""
    assert normals.ndim == 2 and normals.shape[1] == 3, normals.shape
    s = torch.full(normals.shape[:1], AMBIENT, dtype=normals.dtype, device=normals.device)
    for direction, weight in LIGHTS:
        l = torch.nn.functional.normalize(torch.tensor(direction, dtype=normals.dtype,
                                                       device=normals.device), dim=0)
        s = s + weight * (normals @ l).clamp_min(0.0)
    return s.clamp(max=1.0)


def hue_of(rgb: Tensor) -> Tensor:
    """HSV hue in degrees [0, 360) of [..., 3] RGB (0 where the colour is grey)."""
    r, g, b = rgb.unbind(-1)
    mx, _ = rgb.max(-1)
    mn, _ = rgb.min(-1)
    d = (mx - mn).clamp_min(1e-12)
    h = torch.where(mx == r, torch.remainder((g - b) / d, 6.0),
                    torch.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    return torch.where(mx - mn > 1e-12, h * 60.0, torch.zeros_like(h))


# ---------------------------------------------------------------------------------------------
# Patches: (u, v) in [0, 1)^2 -> points [M, 3] and unit normals [M, 3], area-preserving
# ---------------------------------------------------------------------------------------------
Sampler = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Patch:
    area: float
    sample: Sampler
    colour: tuple[float, float, float] | None = None  # fixed RGB; None = the object's colour
    tint: float = 1.0                                 # multiplies the colour (darker roof, inside)


def _v(*xs: float) -> Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def _frame(normal: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors orthogonal to `normal` [3] and to each other."""
    n = normal / normal.norm()
    helper = _v(1, 0, 0) if abs(float(n[0])) < 0.9 else _v(0, 1, 0)
    a = torch.linalg.cross(n, helper)
    a = a / a.norm()
    return a, torch.linalg.cross(n, a)


def rect(origin: Tensor, e1: Tensor, e2: Tensor, **kw) -> Patch:
    """Parallelogram origin + u e1 + v e2; normal along e1 x e2."""
    n = torch.linalg.cross(e1, e2)

    def sample(u, v):
        p = origin + u[:, None] * e1 + v[:, None] * e2
        return p, (n / n.norm()).expand_as(p)
    return Patch(float(n.norm()), sample, **kw)


def triangle(a: Tensor, b: Tensor, c: Tensor, **kw) -> Patch:
    """Triangle a b c (normal along (b - a) x (c - a)); the unit square folded onto it."""
    n = torch.linalg.cross(b - a, c - a)

    def sample(u, v):
        fold = (u + v) > 1.0
        u, v = torch.where(fold, 1.0 - u, u), torch.where(fold, 1.0 - v, v)
        p = a + u[:, None] * (b - a) + v[:, None] * (c - a)
        return p, (n / n.norm()).expand_as(p)
    return Patch(0.5 * float(n.norm()), sample, **kw)


def disc(center: Tensor, radius: float, normal: Tensor, inner: float = 0.0, **kw) -> Patch:
    """Flat annulus inner <= rho <= radius around `center`, facing `normal`."""
    e1, e2 = _frame(normal)
    n = normal / normal.norm()

    def sample(u, v):
        rho = torch.sqrt(inner ** 2 + u * (radius ** 2 - inner ** 2))
        th = 2.0 * math.pi * v
        p = center + rho[:, None] * (torch.cos(th)[:, None] * e1 + torch.sin(th)[:, None] * e2)
        return p, n.expand_as(p)
    return Patch(math.pi * (radius ** 2 - inner ** 2), sample, **kw)


def mantle(center: Tensor, radius: float, z0: float, z1: float, outward: bool = True, **kw) -> Patch:
    """Vertical cylinder mantle of `radius` around the vertical line through `center` (its z is
    ignored), world z in [z0, z1]; normals outward (or inward)."""
    sign = 1.0 if outward else -1.0

    def sample(u, v):
        th = 2.0 * math.pi * u
        n = torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
        p = center + radius * n
        p[:, 2] = z0 + (z1 - z0) * v
        return p, sign * n
    return Patch(2.0 * math.pi * radius * (z1 - z0), sample, **kw)


def cone_mantle(base: Tensor, radius: float, height: float, **kw) -> Patch:
    """Cone with its base circle around `base` (z up) and apex at base + height z."""
    slant = math.hypot(radius, height)
    apex = base + _v(0, 0, height)

    def sample(u, v):
        rho = torch.sqrt(u)                      # area-uniform distance fraction from the apex
        th = 2.0 * math.pi * v
        c, s = torch.cos(th), torch.sin(th)
        p = apex + rho[:, None] * torch.stack([radius * c, radius * s,
                                               torch.full_like(c, -height)], -1)
        n = torch.stack([height * c, height * s, torch.full_like(c, radius)], -1) / slant
        return p, n
    return Patch(math.pi * radius * slant, sample, **kw)


def sphere(center: Tensor, radius: float, **kw) -> Patch:
    """Sphere (Archimedes: z uniform in [-1, 1] is area-uniform)."""
    def sample(u, v):
        z = 1.0 - 2.0 * u
        r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
        th = 2.0 * math.pi * v
        n = torch.stack([r * torch.cos(th), r * torch.sin(th), z], -1)
        return center + radius * n, n
    return Patch(4.0 * math.pi * radius ** 2, sample, **kw)


def torus(center: Tensor, R: float, r: float, axis: Tensor, e1: Tensor,
          theta: tuple[float, float] = (0.0, 2.0 * math.pi), **kw) -> Patch:
    """Torus section: ring of radius R around `axis` through `center` (theta measured from e1
    towards axis x e1, over the range `theta`), tube radius r.

    Area element (R + r cos phi) dtheta dphi: theta is uniform, phi is drawn by inverting the
    CDF F(phi) = (phi + (r / R) sin phi) / (2 pi) with Newton steps.
    """
    a = axis / axis.norm()
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(a, e1)
    t0, t1 = theta

    def sample(u, v):
        th = t0 + (t1 - t0) * u
        phi = 2.0 * math.pi * v
        target = 2.0 * math.pi * v
        for _ in range(20):                       # F is monotone, F' >= (R - r) / R > 0
            phi = phi - (phi + (r / R) * torch.sin(phi) - target) / (1.0 + (r / R) * torch.cos(phi))
        d = torch.cos(th)[:, None] * e1 + torch.sin(th)[:, None] * e2   # [M, 3] ring direction
        n = torch.cos(phi)[:, None] * d + torch.sin(phi)[:, None] * a
        return center + R * d + r * n, n
    return Patch((t1 - t0) * R * 2.0 * math.pi * r, sample, **kw)


def box(lo: tuple[float, float, float], hi: tuple[float, float, float],
        skip: tuple[str, ...] = (), **kw) -> list[Patch]:
    """The six faces (named +x -x +y -y +z -z, outward normals) of an axis-aligned box, minus `skip`."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
    faces = {
        "+x": (_v(x1, y0, z0), _v(0, dy, 0), _v(0, 0, dz)),
        "-x": (_v(x0, y0, z0), _v(0, 0, dz), _v(0, dy, 0)),
        "+y": (_v(x0, y1, z0), _v(0, 0, dz), _v(dx, 0, 0)),
        "-y": (_v(x0, y0, z0), _v(dx, 0, 0), _v(0, 0, dz)),
        "+z": (_v(x0, y0, z1), _v(dx, 0, 0), _v(0, dy, 0)),
        "-z": (_v(x0, y0, z0), _v(0, dy, 0), _v(dx, 0, 0)),
    }
    return [rect(*f, **kw) for name, f in faces.items() if name not in skip]


# ---------------------------------------------------------------------------------------------
# Families. Dimensions are module constants so `asymmetric_part_mask` reads the same numbers.
# ---------------------------------------------------------------------------------------------
O = _v(0, 0, 0)
Z = _v(0, 0, 1)

CUBE_HALF = 0.4
SPHERE_R = 0.5
CYL_R, CYL_H = 0.4, 0.9
CONE_R, CONE_H = 0.45, 1.0
TORUS_R, TORUS_r = 0.35, 0.15
PYR_HALF, PYR_H = 0.45, 0.8
# mug: body radius/height, wall thickness, floor height, handle ring radius and tube radius.
# The body stays centred on the z axis (MUG_X = 0), so that without its handle the mug is
# mirror-symmetric under x -> -x (the handle sticks out to x = 0.57).
MUG_R, MUG_H, MUG_WALL, MUG_FLOOR = 0.32, 0.8, 0.05, 0.08
MUG_HANDLE_R, MUG_HANDLE_r = 0.2, 0.05
MUG_X = 0.0
# house: walls x in +-HOUSE_DX, y in +-HOUSE_DY, z in [HOUSE_Z0, HOUSE_Z1]; ridge at HOUSE_RIDGE
HOUSE_DX, HOUSE_DY, HOUSE_Z0, HOUSE_Z1, HOUSE_RIDGE, HOUSE_EAVE = 0.35, 0.4, -0.45, 0.1, 0.45, 0.06
DOOR_HALF_W, DOOR_TOP, DOOR_OUT = 0.12, -0.08, 0.006
DOOR_COLOUR = (0.12, 0.10, 0.10)
# chair: seat half size and thickness, leg size, backrest thickness and top
CHAIR_HALF, CHAIR_SEAT, CHAIR_LEG, CHAIR_BACK, CHAIR_TOP, CHAIR_BOTTOM = 0.36, 0.04, 0.07, 0.08, 0.5, -0.5


def _cube() -> list[Patch]:
    h = CUBE_HALF
    return box((-h, -h, -h), (h, h, h))


def _sphere() -> list[Patch]:
    return [sphere(O, SPHERE_R)]


def _cylinder() -> list[Patch]:
    z0, z1 = -CYL_H / 2, CYL_H / 2
    return [mantle(O, CYL_R, z0, z1), disc(_v(0, 0, z1), CYL_R, Z), disc(_v(0, 0, z0), CYL_R, -Z)]


def _cone() -> list[Patch]:
    base = _v(0, 0, -CONE_H / 2)
    return [cone_mantle(base, CONE_R, CONE_H), disc(base, CONE_R, -Z)]


def _torus() -> list[Patch]:
    return [torus(O, TORUS_R, TORUS_r, Z, _v(1, 0, 0))]


def _pyramid() -> list[Patch]:
    h, z0 = PYR_HALF, -PYR_H / 2
    apex = _v(0, 0, PYR_H / 2)
    c = [_v(h, -h, z0), _v(h, h, z0), _v(-h, h, z0), _v(-h, -h, z0)]   # counter-clockwise from above
    sides = [triangle(c[i], c[(i + 1) % 4], apex) for i in range(4)]
    return sides + [rect(_v(-h, -h, z0), _v(0, 2 * h, 0), _v(2 * h, 0, 0))]


def _mug() -> list[Patch]:
    c = _v(MUG_X, 0, 0)
    z0, z1 = -MUG_H / 2, MUG_H / 2
    r_in = MUG_R - MUG_WALL
    return [
        mantle(c, MUG_R, z0, z1),
        disc(c + _v(0, 0, z0), MUG_R, -Z),
        disc(c + _v(0, 0, z1), MUG_R, Z, inner=r_in),                        # rim
        mantle(c, r_in, z0 + MUG_FLOOR, z1, outward=False, tint=0.7),        # inner wall
        disc(c + _v(0, 0, z0 + MUG_FLOOR), r_in, Z, tint=0.7),               # inner floor
        torus(c + _v(MUG_R, 0, 0), MUG_HANDLE_R, MUG_HANDLE_r, _v(0, -1, 0), _v(1, 0, 0),
              theta=(-0.5 * math.pi, 0.5 * math.pi)),                        # handle, in xz
    ]


def _house() -> list[Patch]:
    dx, dy, z0, z1 = HOUSE_DX, HOUSE_DY, HOUSE_Z0, HOUSE_Z1
    ey = dy + HOUSE_EAVE
    eave_z = z1 - HOUSE_EAVE * (HOUSE_RIDGE - z1) / dy   # the roof slope continued past the wall
    walls = box((-dx, -dy, z0), (dx, dy, z1), skip=("+z",))
    gables = [triangle(_v(dx, -dy, z1), _v(dx, dy, z1), _v(dx, 0, HOUSE_RIDGE)),
              triangle(_v(-dx, dy, z1), _v(-dx, -dy, z1), _v(-dx, 0, HOUSE_RIDGE))]
    roof = [rect(_v(-dx, -ey, eave_z), _v(2 * dx, 0, 0), _v(0, ey, HOUSE_RIDGE - eave_z), tint=0.6),
            rect(_v(-dx, ey, eave_z), _v(0, -ey, HOUSE_RIDGE - eave_z), _v(2 * dx, 0, 0), tint=0.6)]
    door = rect(_v(dx + DOOR_OUT, -DOOR_HALF_W, z0), _v(0, 2 * DOOR_HALF_W, 0),
                _v(0, 0, DOOR_TOP - z0), colour=DOOR_COLOUR)
    return walls + gables + roof + [door]


def _chair() -> list[Patch]:
    h, s, leg, b = CHAIR_HALF, CHAIR_SEAT, CHAIR_LEG, CHAIR_BACK
    parts = box((-h, -h, -s), (h, h, s))
    for sx in (-1, 1):
        for sy in (-1, 1):
            x0, y0 = (h - leg if sx > 0 else -h), (h - leg if sy > 0 else -h)
            parts += box((x0, y0, CHAIR_BOTTOM), (x0 + leg, y0 + leg, -s), skip=("+z",))
    parts += box((-h, -h, s), (-h + b, h, CHAIR_TOP), skip=("-z",))          # backrest
    return parts


_BUILDERS: dict[str, Callable[[], list[Patch]]] = {
    "cube": _cube, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "pyramid": _pyramid, "mug": _mug, "house": _house, "chair": _chair,
}


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------
DEFAULT_POINTS = 4000
MIN_PER_PATCH = 24
DISC_K = 0.75        # disc std / mean spacing
THIN = 0.1           # normal std / disc std
OPACITY = 0.95
_R2 = 1.32471795724474602596  # plastic number: R2 steps (1/g, 1/g^2)


def _r2(n: int, shift: Tensor) -> tuple[Tensor, Tensor]:
    k = torch.arange(n, dtype=torch.float64)
    u = torch.remainder(shift[0] + k / _R2, 1.0)
    v = torch.remainder(shift[1] + k / _R2 ** 2, 1.0)
    return u, v


def _normal_to_quat(n: Tensor) -> Tensor:
    """[M, 3] unit normals -> [M, 4] (w, x, y, z) unit quaternions rotating +z onto n.

    q = (1 + n_z, -n_y, n_x, 0) / sqrt(2 (1 + n_z)) (half-way rotation); for n = -z, 180 deg
    about x.
    """
    q = torch.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)
    flip = n[:, 2] < -1.0 + 1e-9
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return q / q.norm(dim=-1, keepdim=True)


def make_object(family: str, colour: str, *, seed: int = 0, n_points: int = DEFAULT_POINTS,
                device: torch.device | str = "cpu") -> Gaussians:
    """The ground-truth object "a {colour} {family}" as opaque surface gaussians (SH degree 0).

    Args:
        family: one of `FAMILIES`.
        colour: one of `COLOURS`.
        seed: shifts the disc positions (same shape and colours, another even sampling).
        n_points: target number of gaussians (the result has about this many; small patches get
            at least MIN_PER_PATCH).
        device: where the tensors live.
    Returns:
        Gaussians: means [N, 3], quats [N, 4], scales [N, 3], opacities [N], sh [N, 1, 3], float32.
    Raises:
        WorldError: unknown family or colour, or n_points < 100.
    """
    if family not in FAMILIES:
        raise WorldError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    if colour not in COLOURS:
        raise WorldError(f"unknown colour {colour!r}: use one of {', '.join(COLOURS)}")
    if n_points < 100:
        raise WorldError(f"n_points must be at least 100, got {n_points}")
    patches = _BUILDERS[family]()
    total = sum(p.area for p in patches)
    sigma = DISC_K * math.sqrt(total / n_points)
    gen = torch.Generator().manual_seed(int(seed))
    base = torch.tensor(COLOURS[colour], dtype=torch.float64)
    means, normals, rgb = [], [], []
    # 1.-2. evenly spread points per patch, counts proportional to area
    for p in patches:
        n = max(MIN_PER_PATCH, round(n_points * p.area / total))
        u, v = _r2(n, torch.rand(2, generator=gen, dtype=torch.float64))
        pts, nrm = p.sample(u, v)                                          # [n, 3] each
        nrm = torch.nn.functional.normalize(nrm, dim=-1)
        col = torch.tensor(p.colour, dtype=torch.float64) if p.colour is not None else base
        # 4. baked colour
        rgb.append((col * p.tint)[None, :] * shade(nrm)[:, None])
        means.append(pts)
        normals.append(nrm)
    means_t, normals_t, rgb_t = torch.cat(means), torch.cat(normals), torch.cat(rgb).clamp(0, 1)
    N = means_t.shape[0]
    # 3. flat discs along the surface
    scales = torch.tensor([sigma, sigma, THIN * sigma], dtype=torch.float64).expand(N, 3)
    return Gaussians(
        means=means_t.float().to(device),                                   # [N, 3]
        quats=_normal_to_quat(normals_t).float().to(device),                # [N, 4]
        scales=scales.float().contiguous().to(device),                      # [N, 3]
        opacities=torch.full((N,), OPACITY, dtype=torch.float32, device=device),
        sh=((rgb_t - 0.5) / SH_C0).float()[:, None, :].to(device),          # [N, 1, 3]
        sh_degree=0,
    )


def asymmetric_part_mask(family: str, gaussians: Gaussians) -> Tensor:
    """[N] bool: the gaussians of the part that makes the object's front differ from its back.

    A region of space, so it applies to any set of gaussians in object coordinates:
    - mug: the handle, outside the body's cylinder on the +x side:
        x > MUG_X, (x - MUG_X)^2 + y^2 > (MUG_R + 1e-3)^2, |z| <= handle ring + tube + 1e-3
        (the handle's two ends inside the body are hidden and count as body);
    - house: the door, in front of the +x wall: x > HOUSE_DX + DOOR_OUT / 2;
    - chair: the backrest, above the seat at the back: x < -CHAIR_HALF + CHAIR_BACK + 1e-3 and
        z > CHAIR_SEAT + 1e-3;
    - symmetric families: all False.
    """
    if family not in FAMILIES:
        raise WorldError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    m = gaussians.means
    assert m.ndim == 2 and m.shape[1] == 3, m.shape
    x, y, z = m.unbind(-1)
    if family == "mug":
        rad2 = (x - MUG_X) ** 2 + y ** 2
        reach = MUG_HANDLE_R + MUG_HANDLE_r + 1e-3
        return (x > MUG_X) & (rad2 > (MUG_R + 1e-3) ** 2) & (z.abs() <= reach)
    if family == "house":
        return x > HOUSE_DX + 0.5 * DOOR_OUT
    if family == "chair":
        return (x < -CHAIR_HALF + CHAIR_BACK + 1e-3) & (z > CHAIR_SEAT + 1e-3)
    return torch.zeros_like(x, dtype=torch.bool)
