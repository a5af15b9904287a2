"""Camera conventions, rigidity, intrinsics, the training-view sampler and its schedule."""
import math

import numpy as np
import pytest
import torch

from ism3d.cameras import (
    CameraError, azimuth_schedule, camera_schedule, eval_ring, intrinsics, look_at, orbit_cameras, sample_orbit,
    turntable, wrap_azimuth,
)
from ism3d.config import CameraConfig, ConfigError

W, H = 64, 48


def project(cams, points):
    """float64 pinhole projection of [P, 3] world points -> ([C, P, 2] pixels, [C, P] depth)."""
    V = cams.viewmats.double()
    K = cams.Ks.double()
    p = torch.as_tensor(points, dtype=torch.float64)
    pc = torch.einsum("cij,pj->cpi", V[:, :3, :3], p) + V[:, None, :3, 3]   # [C, P, 3]
    z = pc[..., 2]
    u = K[:, None, 0, 0] * pc[..., 0] / z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / z + K[:, None, 1, 2]
    return torch.stack([u, v], -1), z


def centres(cams):
    """Camera centres in world: c = -R^T t."""
    V = cams.viewmats.double()
    return -(V[:, :3, :3].transpose(1, 2) @ V[:, :3, 3:]).squeeze(-1)


def one(polar, azimuth, radius=4.0, fovy=0.6):
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(t(polar), t(azimuth), t(radius), t(fovy), W, H)


# ------------------------------------------------------------------------------ conventions
def test_front_camera_sits_on_plus_x_and_sees_origin_at_centre():
    cams = one(90, 0)
    torch.testing.assert_close(centres(cams)[0], torch.tensor([4.0, 0, 0], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    uv, z = project(cams, [[0.0, 0.0, 0.0]])
    torch.testing.assert_close(uv[0, 0], torch.tensor([W / 2, H / 2], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    assert z[0, 0] == pytest.approx(4.0, abs=1e-5)  # in front of the camera (OpenCV z forward)


def test_up_is_up_and_plus_y_is_right_from_the_front():
    cams = one(90, 0)
    uv, z = project(cams, [[0.0, 0.0, 0.5], [0.0, 0.5, 0.0], [0.0, 0.0, -0.5]])
    # +z appears above the centre (smaller row), -z below, same column
    assert uv[0, 0, 1] < H / 2 - 1 and abs(uv[0, 0, 0] - W / 2) < 1e-4
    assert uv[0, 2, 1] > H / 2 + 1
    # standing on +x looking at the origin with z up, world +y is on the RIGHT (larger column)
    assert uv[0, 1, 0] > W / 2 + 1 and abs(uv[0, 1, 1] - H / 2) < 1e-4
    assert (z > 0).all()


def test_azimuth_90_on_plus_y_and_polar_45_above():
    c = centres(one(90, 90, radius=2.0))[0]
    torch.testing.assert_close(c, torch.tensor([0, 2.0, 0], dtype=torch.float64), atol=1e-5, rtol=0)
    c = centres(one(90, -90, radius=2.0))[0]
    torch.testing.assert_close(c, torch.tensor([0, -2.0, 0], dtype=torch.float64), atol=1e-5, rtol=0)
    c = centres(one(45, 0, radius=2.0))[0]
    s = 2.0 * math.sqrt(0.5)
    torch.testing.assert_close(c, torch.tensor([s, 0, s], dtype=torch.float64), atol=1e-5, rtol=0)
    # from above, the origin is still at the image centre and +z is still up in the image
    uv, _ = project(one(45, 0), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert abs(uv[0, 0, 0] - W / 2) < 1e-4 and abs(uv[0, 0, 1] - H / 2) < 1e-4
    assert uv[0, 1, 1] < H / 2 - 1


def test_orbit_matches_spherical_formula_float64():
    g = torch.Generator().manual_seed(1)
    C = 50
    polar = 5 + 170 * torch.rand(C, generator=g, dtype=torch.float64)
    az = -360 + 720 * torch.rand(C, generator=g, dtype=torch.float64)
    radius = 0.5 + 5 * torch.rand(C, generator=g, dtype=torch.float64)
    cams = orbit_cameras(polar, az, radius, torch.full((C,), 0.5), W, H)
    c = centres(cams)
    p, a = np.deg2rad(polar.numpy()), np.deg2rad(az.numpy())
    r = radius.numpy()
    ref = np.stack([r * np.sin(p) * np.cos(a), r * np.sin(p) * np.sin(a), r * np.cos(p)], -1)
    np.testing.assert_allclose(c.numpy(), ref, atol=2e-5)
    # reported angles: polar as given, azimuth wrapped into (-180, 180] and equal mod 360
    assert ((cams.azimuth > -180) & (cams.azimuth <= 180)).all()
    d = (cams.azimuth.double() - az) / 360
    torch.testing.assert_close(d, d.round(), atol=1e-6, rtol=0)
    # every camera looks at the origin
    uv, z = project(cams, [[0.0, 0.0, 0.0]])
    torch.testing.assert_close(uv[:, 0], torch.tensor([[W / 2, H / 2]] * C, dtype=torch.float64),
                               atol=1e-3, rtol=0)
    assert (z > 0).all()


def test_wrap_azimuth():
    a = torch.tensor([-180.0, 180.0, 0.0, 190.0, -190.0, 540.0, -540.0, 359.0, 360.0])
    out = wrap_azimuth(a)
    torch.testing.assert_close(out, torch.tensor([180.0, 180, 0, -170, 170, 180, 180, -1, 0]))


# ------------------------------------------------------------------------------ look_at
def test_look_at_rigid_and_defined_by_its_properties():
    g = torch.Generator().manual_seed(0)
    C = 64
    centers = 3 * torch.randn(C, 3, generator=g, dtype=torch.float64)
    targets = 0.3 * torch.randn(C, 3, generator=g, dtype=torch.float64)
    ups = torch.randn(C, 3, generator=g, dtype=torch.float64)
    V = look_at(centers, targets, ups)
    assert V.shape == (C, 4, 4) and V.dtype == torch.float64
    R, t = V[:, :3, :3], V[:, :3, 3]
    eye = torch.eye(3, dtype=torch.float64).expand(C, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(C, dtype=torch.float64))
    torch.testing.assert_close(V[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(C, 4))
    # the centre maps to the camera origin
    torch.testing.assert_close(R @ centers.unsqueeze(-1) + t.unsqueeze(-1),
                               torch.zeros(C, 3, 1, dtype=torch.float64), atol=1e-12, rtol=0)
    # the target lies on the +z (forward) axis
    tc = (R @ targets.unsqueeze(-1)).squeeze(-1) + t
    torch.testing.assert_close(tc[:, :2], torch.zeros(C, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (tc[:, 2] > 0).all()
    # the up vector lies in the camera's y-z plane and points to -y (up in the image)
    uc = (R @ ups.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(uc[:, 0], torch.zeros(C, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (uc[:, 1] < 0).all()


def test_look_at_rejects_degenerate():
    c = torch.tensor([[0.0, 0.0, 3.0]])
    with pytest.raises(CameraError, match="parallel"):
        look_at(c, torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]]))
    with pytest.raises(CameraError, match="coincides"):
        look_at(c, c.clone(), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(CameraError):
        orbit_cameras(torch.tensor([90.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                      torch.tensor([0.5]), W, H)


# ------------------------------------------------------------------------------ intrinsics
def test_intrinsics_closed_form_and_fov_edges():
    fovy = torch.tensor([0.2, 0.55, 1.0, 2.0], dtype=torch.float64)
    K = intrinsics(fovy, W, H)
    f = (H / 2) / np.tan(fovy.numpy() / 2)
    np.testing.assert_allclose(K[:, 0, 0].numpy(), f, rtol=1e-12)
    np.testing.assert_allclose(K[:, 1, 1].numpy(), f, rtol=1e-12)
    np.testing.assert_allclose(K[:, 0, 2].numpy(), W / 2)
    np.testing.assert_allclose(K[:, 1, 2].numpy(), H / 2)
    np.testing.assert_allclose(K[:, 2].numpy(), [[0, 0, 1]] * 4)
    assert (K[:, 1, 0] == 0).all() and (K[:, 0, 1] == 0).all()
    # geometric check: a ray fovy/2 above the optical axis hits the top image edge (v = 0)
    cams = orbit_cameras(torch.full((4,), 90.0), torch.zeros(4), torch.full((4,), 3.0), fovy, W, H)
    for i, fv in enumerate(fovy.tolist()):
        pt = [[0.0, 0.0, 3.0 * math.tan(fv / 2)]]       # seen from (3, 0, 0): angle fv/2 above
        uv, _ = project(cams[i], pt)
        assert uv[0, 0, 1] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(CameraError):
        intrinsics(torch.tensor([0.0]), W, H)
    with pytest.raises(CameraError):
        intrinsics(torch.tensor([math.pi]), W, H)


# ------------------------------------------------------------------------------ schedule
def reference_schedule(cfg, step, phi=(-180.0, 180.0), max_phi=(-180.0, 180.0)):
    """Independent iterative version of the reference's train.py: in-place updates at the START of
    iterations it = 500, 1000, ... (counted from 1); our 0-based step s runs iteration s + 1."""
    r = list(cfg.radius_range)
    f = list(cfg.fovy_range)
    p = list(phi)
    for it in range(1, step + 2):
        if it >= cfg.decay_every and it % cfg.decay_every == 0:
            f[0] = max(cfg.fovy_floor, f[0] * cfg.fovy_decay)
            f[1] = min(cfg.fovy_range[1], f[1] * 1.1)
            r[1] = max(cfg.radius_floor[1], r[1] * cfg.radius_decay)
            r[0] = max(cfg.radius_floor[0], r[0] * cfg.radius_decay)
            p[0] = max(max_phi[0], p[0] * 1.5)
            p[1] = min(max_phi[1], p[1] * 1.5)
    return (*r, *f), tuple(p)


@pytest.mark.parametrize("step", [0, 1, 498, 499, 500, 998, 999, 1000, 1499, 2000, 3999, 4000,
                                  5000, 20000])
def test_schedule_matches_iterative_reference(step):
    cfg = CameraConfig()
    assert camera_schedule(cfg, step) == pytest.approx(reference_schedule(cfg, step)[0], rel=1e-12)
    # the head configs' azimuth widening (+-80 -> +-120 -> +-180, rand_cam_gamma aside)
    heads = CameraConfig(azimuth_range=(-80.0, 80.0), azimuth_range_max=(-180.0, 180.0))
    assert azimuth_schedule(heads, step) == pytest.approx(
        reference_schedule(heads, step, (-80.0, 80.0))[1], rel=1e-12)


def test_azimuth_widening_by_hand():
    heads = CameraConfig(azimuth_range=(-80.0, 80.0))
    assert azimuth_schedule(heads, 0) == (-80.0, 80.0)
    assert azimuth_schedule(heads, 498) == (-80.0, 80.0)        # iteration 499
    assert azimuth_schedule(heads, 499) == (-120.0, 120.0)      # iteration 500
    assert azimuth_schedule(heads, 999) == (-180.0, 180.0)      # 1000: 180 (capped from 180)
    assert azimuth_schedule(CameraConfig(), 4999) == (-180.0, 180.0)
    fixed = CameraConfig(azimuth_range=(-80.0, 80.0), azimuth_range_max=(-80.0, 80.0))
    assert azimuth_schedule(fixed, 4999) == (-80.0, 80.0)
    # the sampler draws inside the widened range and, at angle_gamma 1.5, closer to its middle
    g = torch.Generator().manual_seed(0)
    early = sample_orbit(heads, 0, 4000, 8, 8, g).azimuth
    late = sample_orbit(heads, 999, 4000, 8, 8, g).azimuth
    assert early.abs().max() <= 80.0 and early.abs().max() > 79.0
    assert late.abs().max() > 170.0
    gam = CameraConfig(azimuth_range=(-80.0, 80.0), angle_gamma=1.5)
    a = sample_orbit(gam, 0, 20000, 8, 8, g).azimuth.double()
    # |a| / 80 = U^1.5: E = 1 / 2.5 = 0.4 (uniform: 0.5); P(|a| < 40) = 0.5^(1/1.5) = 0.63
    assert (a.abs() / 80).mean().item() == pytest.approx(0.4, abs=0.01)
    assert (a.abs() < 40).double().mean().item() == pytest.approx(0.5 ** (1 / 1.5), abs=0.01)
    assert (a > 0).double().mean().item() == pytest.approx(0.5, abs=0.015)


def test_schedule_values_and_floors():
    cfg = CameraConfig()
    assert camera_schedule(cfg, 0) == pytest.approx((5.2, 5.5, 0.32, 0.60))
    assert camera_schedule(cfg, 498) == pytest.approx((5.2, 5.5, 0.32, 0.60))
    assert camera_schedule(cfg, 499) == pytest.approx((5.2 * 0.95, 5.5 * 0.95, 0.24, 0.60))
    # fovy floor reached at the 3rd decay (0.32 * 0.75^3 = 0.135 < 0.16)
    assert camera_schedule(cfg, 1500)[2] == pytest.approx(0.16)
    # radius max end floors at the 2nd decay, min end at the 8th (5.2 * 0.95^8 = 3.45 < 3.5)
    assert camera_schedule(cfg, 1000)[1] == pytest.approx(5.0)
    assert camera_schedule(cfg, 3500)[0] == pytest.approx(5.2 * 0.95 ** 7)
    assert camera_schedule(cfg, 4000) == pytest.approx((3.5, 5.0, 0.16, 0.60))
    assert camera_schedule(cfg, 10 ** 6) == pytest.approx((3.5, 5.0, 0.16, 0.60))
    # a floor above the start value does not raise the range
    cfg2 = CameraConfig(radius_range=(1.0, 2.0), fovy_range=(0.1, 0.3))
    assert camera_schedule(cfg2, 0) == pytest.approx((1.0, 2.0, 0.1, 0.3))
    assert camera_schedule(cfg2, 5000) == pytest.approx((1.0, 2.0, 0.1, 0.3))
    with pytest.raises(ConfigError):
        camera_schedule(CameraConfig(radius_floor=(5.0, 3.0)), 0)


# ------------------------------------------------------------------------------ sampler
def fovy_of(cams):
    return 2 * torch.atan(0.5 * cams.height / cams.Ks[:, 1, 1].double())


@pytest.mark.parametrize("step", [0, 500, 1500, 4000])
def test_sampler_respects_ranges(step):
    cfg = CameraConfig()
    g = torch.Generator().manual_seed(step)
    B = 4000
    cams = sample_orbit(cfg, step, B, W, H, g)
    assert len(cams) == B and cams.width == W and cams.height == H
    assert cams.viewmats.shape == (B, 4, 4) and cams.Ks.shape == (B, 3, 3)
    assert cams.viewmats.dtype == torch.float32 and cams.viewmats.device.type == "cpu"
    r_lo, r_hi, f_lo, f_hi = camera_schedule(cfg, step)
    eps = 1e-4
    assert cams.polar.min() >= 45 - eps and cams.polar.max() <= 105 + eps
    assert cams.azimuth.min() > -180 and cams.azimuth.max() <= 180
    assert cams.radius.min() >= r_lo - eps and cams.radius.max() <= r_hi + eps
    fv = fovy_of(cams)
    assert fv.min() >= f_lo - eps and fv.max() <= f_hi + eps
    # the draws fill their ranges (not stuck at one end)
    assert cams.radius.min() < r_lo + 0.05 * (r_hi - r_lo) + eps
    assert cams.radius.max() > r_hi - 0.05 * (r_hi - r_lo) - eps
    assert fv.min() < f_lo + 0.05 * (f_hi - f_lo) and fv.max() > f_hi - 0.05 * (f_hi - f_lo)
    # actual camera distance = nominal radius up to the jitter (|centre jitter| <= 0.025*sqrt(3))
    dist = centres(cams).norm(dim=-1)
    assert (dist - cams.radius.double()).abs().max() < 0.05


def test_sampler_distribution_uniform_in_angle():
    # reference: polar and azimuth uniform in angle (gamma 1, no uniform-sphere branch)
    g = torch.Generator().manual_seed(3)
    cams = sample_orbit(CameraConfig(), 0, 20000, W, H, g)
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    pq = torch.quantile(cams.polar.double(), q.double())
    torch.testing.assert_close(pq, 45 + 60 * q.double(), atol=1.5, rtol=0)  # cos-uniform: 72.2 at q=.5
    aq = torch.quantile(cams.azimuth.double(), q.double())
    torch.testing.assert_close(aq, -180 + 360 * q.double(), atol=8.0, rtol=0)


def test_stratified_azimuth_puts_one_view_in_each_slice():
    # view k of B lies in [lo + k w, lo + (k + 1) w), w = (hi - lo) / B, at a uniform place in it;
    # the other draws (polar, radius, ...) are the uniform sampler's, draw for draw
    B, steps = 4, 3000
    strat = CameraConfig(azimuth_sampling="stratified", azimuth_range=(-180.0, 180.0))
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    az, az_uniform = [], []
    for _ in range(steps):
        a, b = sample_orbit(strat, 0, B, W, H, ga), sample_orbit(CameraConfig(), 0, B, W, H, gb)
        assert torch.equal(a.polar, b.polar) and torch.equal(a.radius, b.radius)
        az.append(a.azimuth.double())
        az_uniform.append(b.azimuth.double())
    az, az_uniform = torch.stack(az), torch.stack(az_uniform)            # [steps, B]
    k = torch.arange(B, dtype=torch.float64)
    # the same uniform draw u, mapped to slice k: az_strat = -180 + 90 (k + u), u = (az_unif + 180) / 360
    expect = -180.0 + 90.0 * (k + (az_uniform + 180.0) / 360.0)            # in [-180, 180)
    torch.testing.assert_close(az, expect, atol=1e-4, rtol=0)
    for j in range(B):                                                     # uniform inside slice j
        lo = -180.0 + 90.0 * j
        frac = ((az[:, j] - lo) % 360.0) / 90.0
        assert frac.min() >= 0 and frac.max() < 1.0 + 1e-6
        torch.testing.assert_close(torch.quantile(frac, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)),
                                   torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), atol=0.03, rtol=0)
    # so no step has two views within one slice, which the uniform sampler often does
    slots = ((az_uniform + 180.0) // 90.0).clamp(max=B - 1)
    assert (slots.sort(dim=1).values.diff(dim=1) == 0).any(dim=1).float().mean() > 0.8


def test_sampler_deterministic_per_seed():
    cfg = CameraConfig()
    a = sample_orbit(cfg, 700, 6, W, H, torch.Generator().manual_seed(42))
    b = sample_orbit(cfg, 700, 6, W, H, torch.Generator().manual_seed(42))
    c = sample_orbit(cfg, 700, 6, W, H, torch.Generator().manual_seed(43))
    for k in ("viewmats", "Ks", "polar", "azimuth", "radius"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.viewmats, c.viewmats)
    # the generator advances: two successive calls differ
    g = torch.Generator().manual_seed(42)
    d1, d2 = sample_orbit(cfg, 0, 6, W, H, g), sample_orbit(cfg, 0, 6, W, H, g)
    assert not torch.equal(d1.viewmats, d2.viewmats)


def test_sampler_without_jitter_is_exact_orbit():
    cfg = CameraConfig(jitter_center=0.0, jitter_target=0.0, jitter_up=0.0)
    cams = sample_orbit(cfg, 0, 200, W, H, torch.Generator().manual_seed(5))
    ref = orbit_cameras(cams.polar.double(), cams.azimuth.double(), cams.radius.double(),
                        fovy_of(cams), W, H)
    torch.testing.assert_close(cams.viewmats, ref.viewmats, atol=2e-5, rtol=0)
    # camera x axis horizontal (no roll), origin exactly at the image centre
    assert cams.viewmats[:, 0, 2].abs().max() < 1e-6
    uv, _ = project(cams, [[0.0, 0.0, 0.0]])
    assert (uv[:, 0] - torch.tensor([W / 2, H / 2], dtype=torch.float64)).abs().max() < 1e-3


def test_jitter_statistics_small_and_as_configured():
    cfg = CameraConfig()
    B = 20000
    cams = sample_orbit(cfg, 0, B, W, H, torch.Generator().manual_seed(9))
    p, a = torch.deg2rad(cams.polar.double()), torch.deg2rad(cams.azimuth.double())
    r = cams.radius.double()
    nominal = torch.stack([r * p.sin() * a.cos(), r * p.sin() * a.sin(), r * p.cos()], -1)
    # polar/azimuth/radius are float32: allow their rounding (~5 * 2^-24 * 5.5) on top of 0.025
    d = centres(cams) - nominal                                           # [B, 3]
    assert d.abs().max() <= 0.025 + 1e-4
    # uniform on [-0.025, 0.025): std 0.05 / sqrt(12) = 0.01443
    assert d.std(0).numpy() == pytest.approx([0.05 / math.sqrt(12)] * 3, rel=0.05)
    assert d.mean(0).abs().max() < 1e-3
    # target jitter N(0, 0.05^2 I): the optical axis misses the origin by the target's offset
    # perpendicular to it, RMS sqrt(2) * 0.05 = 0.0707
    R = cams.viewmats.double()[:, :3, :3]
    fwd = R[:, 2]                                                         # [B, 3] world forward
    c = centres(cams)
    perp = -c - (-c * fwd).sum(-1, keepdim=True) * fwd
    rms = perp.norm(dim=-1).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(math.sqrt(2) * 0.05, rel=0.05)
    # up jitter N(0, 0.01^2 I) added to the camera's own up vector (reference): the roll angle psi
    # about the optical axis has std 0.01 rad at every polar angle. right_z = sin(psi) * sin(polar)
    # (world-z noise instead would give a roll std of 0.01 / sin(polar), 0.013 looking down).
    right_z = R[:, 0, 2]
    roll = torch.asin(right_z / (1 - fwd[:, 2] ** 2).sqrt())
    assert roll.std().item() == pytest.approx(0.01, rel=0.05)
    assert roll.abs().max() < 0.06
    high = cams.polar < 55
    assert roll[high].std().item() == pytest.approx(0.01, rel=0.06)


def test_sampler_returns_nominal_angles_wrapped():
    cfg = CameraConfig(azimuth_range=(170.0, 190.0))
    cams = sample_orbit(cfg, 0, 500, W, H, torch.Generator().manual_seed(0))
    assert ((cams.azimuth > -180) & (cams.azimuth <= 180)).all()
    assert ((cams.azimuth >= 170 - 1e-4) | (cams.azimuth <= -170 + 1e-4)).all()
    assert (cams.azimuth < 0).any() and (cams.azimuth > 0).any()


# ------------------------------------------------------------------------------ eval ring
def test_eval_ring():
    cams = eval_ring(8, W, H, radius=3.5, fovy=0.55, polar=90.0)
    torch.testing.assert_close(cams.azimuth,
                               torch.tensor([0.0, 45, 90, 135, 180, -135, -90, -45]))
    torch.testing.assert_close(cams.polar, torch.full((8,), 90.0))
    torch.testing.assert_close(cams.radius, torch.full((8,), 3.5))
    c = centres(cams)
    torch.testing.assert_close(c[0], torch.tensor([3.5, 0, 0], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(c[2], torch.tensor([0, 3.5, 0], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(fovy_of(cams), torch.full((8,), 0.55, dtype=torch.float64))
    tt = turntable(120, 32, 3.5, 0.55, 60.0)
    assert len(tt) == 120 and tt.width == tt.height == 32
    torch.testing.assert_close(tt.polar, torch.full((120,), 60.0))
    assert centres(tt)[:, 2].min() > 0  # polar 60: above the equator
    # indexing and .to keep everything aligned
    sub = cams[2:4].to("cpu")
    assert len(sub) == 2 and torch.equal(sub.viewmats, cams.viewmats[2:4])
