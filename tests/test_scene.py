"""Scene: activation, initialisers (distributions, knn scales, determinism), init from files."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from ism3d.config import InitConfig
from ism3d.ply import PlyError, save_ply
from ism3d.scene import (KNN_EPS, SH_C0, SceneInitError, activate, deactivate, init_params,
                         knn_log_scale, rgb_to_sh0, sample_ball, sh0_to_rgb)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- synthetic
def test_ball_volume_uniform_distribution():
    R, n = 0.5, 4000
    pts = sample_ball(n, R, True, gen(1)).numpy()
    r = np.linalg.norm(pts, axis=1)
    assert pts.shape == (n, 3) and r.max() <= R
    # uniform in volume: (r/R)^3 ~ U(0, 1), cos(theta) ~ U(-1, 1), azimuth ~ U(-pi, pi)
    assert stats.kstest((r / R) ** 3, "uniform").pvalue > 1e-3
    assert stats.kstest(r / R, "uniform").pvalue < 1e-6            # not centre-heavy
    assert stats.kstest(pts[:, 2] / r, "uniform", args=(-1, 2)).pvalue > 1e-3
    assert stats.kstest(np.arctan2(pts[:, 1], pts[:, 0]), "uniform",
                        args=(-math.pi, 2 * math.pi)).pvalue > 1e-3


def test_ball_reference_distribution():
    """The reference draws r = R U and theta = pi U: centre-heavy and pole-heavy."""
    R, n = 0.5, 4000
    pts = sample_ball(n, R, False, gen(2)).numpy()
    r = np.linalg.norm(pts, axis=1)
    assert r.max() <= R
    assert stats.kstest(r / R, "uniform").pvalue > 1e-3
    assert stats.kstest((r / R) ** 3, "uniform").pvalue < 1e-6
    theta = np.arccos(np.clip(pts[:, 2] / r, -1, 1))
    assert stats.kstest(theta, "uniform", args=(0, math.pi)).pvalue > 1e-3
    assert stats.kstest(pts[:, 2] / r, "uniform", args=(-1, 2)).pvalue < 1e-6
    # half of the points within R/2 (a volume-uniform ball has 1/8 there)
    assert abs((r < R / 2).mean() - 0.5) < 0.03


def test_init_counts_bounds_and_attributes():
    for kind in ("ball", "shell", "box"):
        cfg = InitConfig(kind=kind, num_points=1500, radius=0.7, color=(0.2, 0.4, 0.9),
                         opacity=0.1, sh_degree=3)
        p = init_params(cfg, gen(0))
        n = 1500
        assert p["means"].shape == (n, 3) and p["means"].dtype == torch.float32
        m = p["means"].detach().double()
        if kind == "ball":
            assert m.norm(dim=1).max() <= 0.7 + 1e-6
        elif kind == "shell":
            torch.testing.assert_close(m.norm(dim=1), torch.full((n,), 0.7, dtype=torch.float64),
                                       atol=1e-6, rtol=0)
            assert m.mean(0).abs().max() < 0.06   # directions centred
        else:
            assert m.abs().max() <= 0.7 and m.abs().max() > 0.69
            for i in range(3):
                assert stats.kstest(m[:, i].numpy(), "uniform", args=(-0.7, 1.4)).pvalue > 1e-3
        assert p["shN"].shape == (n, 15, 3) and not p["shN"].detach().any()
        assert torch.equal(p["quats"].detach(), torch.tensor([1.0, 0, 0, 0]).expand(n, 4))
        torch.testing.assert_close(p["opacities"].detach(),
                                   torch.full((n,), math.log(0.1 / 0.9)), rtol=0, atol=1e-7)
        torch.testing.assert_close(p["sh0"].detach()[:, 0],
                                   ((torch.tensor([0.2, 0.4, 0.9]) - 0.5) / SH_C0).expand(n, 3))
        s = p["scales"].detach()
        assert torch.equal(s[:, 0], s[:, 1]) and torch.equal(s[:, 0], s[:, 2])  # isotropic
        assert all(isinstance(v, torch.nn.Parameter) for v in p.values())


def test_init_is_deterministic_per_seed():
    cfg = InitConfig(num_points=500)
    a, b, c = init_params(cfg, gen(7)), init_params(cfg, gen(7)), init_params(cfg, gen(8))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["means"], c["means"])


def brute_force_log_scale(pts: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    mean3 = np.sort(d, axis=1)[:, :3].mean(axis=1)
    return np.log(np.maximum(mean3, KNN_EPS))


def test_knn_scale_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(400, 3)) * np.array([1.0, 0.3, 2.0])
    pts[10] = pts[11]                  # a duplicate pair
    pts[20:23] = pts[30]               # four coincident points: mean distance 0 -> clamped
    ref = brute_force_log_scale(pts)
    np.testing.assert_allclose(knn_log_scale(pts), ref, rtol=1e-12, atol=1e-12)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(knn_log_scale(pts)[20], math.log(KNN_EPS))
    # and through init_params (float32 points) for a box
    p = init_params(InitConfig(kind="box", num_points=600, radius=1.0), gen(3))
    ref32 = brute_force_log_scale(p["means"].detach().double().numpy())
    np.testing.assert_allclose(p["scales"].detach()[:, 0].numpy(), ref32, rtol=0, atol=1e-6)


def test_knn_scale_degenerate_inputs():
    assert np.isfinite(knn_log_scale(np.zeros((5, 3)))).all()
    np.testing.assert_allclose(knn_log_scale(np.zeros((1, 3))), [math.log(KNN_EPS)])
    # two points: the only neighbour
    np.testing.assert_allclose(knn_log_scale(np.array([[0, 0, 0], [0, 0, 2.0]])), [math.log(2)] * 2)


def test_deactivate_inverts_activate():
    p = init_params(InitConfig(num_points=40, sh_degree=1), gen(1))
    with torch.no_grad():
        p["opacities"].uniform_(-8.0, 8.0)
        p["shN"].normal_()
        p["quats"].copy_(torch.nn.functional.normalize(p["quats"] + torch.randn(40, 4), dim=-1))
    raw = deactivate(activate(p, 1))
    assert set(raw) == set(p.keys()) and not any(v.requires_grad for v in raw.values())
    for k in ("means", "sh0", "shN"):
        assert torch.equal(raw[k], p[k].detach()), k
    torch.testing.assert_close(raw["quats"], p["quats"].detach(), rtol=0, atol=1e-6)   # unit already
    torch.testing.assert_close(raw["scales"], p["scales"].detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(raw["opacities"], p["opacities"].detach(), rtol=0, atol=1e-3)
    # an opacity of 1 - 1e-7 (1 - 1.2e-7 in float32) still has a finite logit (float64 inside)
    g = activate(p, 1)
    g.opacities[0] = 1.0 - 1e-7
    assert torch.isfinite(deactivate(g)["opacities"]).all()


def test_activate_and_sh_helpers():
    p = init_params(InitConfig(num_points=50, sh_degree=2, color=(0.1, 0.5, 0.8)), gen(0))
    with torch.no_grad():
        p["quats"].mul_(3.0)
        p["shN"].normal_()
    g = activate(p, 2)
    assert g.sh.shape == (50, 9, 3) and g.sh_degree == 2
    assert torch.equal(g.sh[:, 0], p["sh0"][:, 0]) and torch.equal(g.sh[:, 1:], p["shN"])
    torch.testing.assert_close(g.quats.norm(dim=1), torch.ones(50))
    torch.testing.assert_close(g.scales, torch.exp(p["scales"]))
    torch.testing.assert_close(g.opacities, torch.full((50,), 0.1))
    torch.testing.assert_close(sh0_to_rgb(g.sh[:, 0]), torch.tensor([0.1, 0.5, 0.8]).expand(50, 3))
    assert float(rgb_to_sh0(torch.tensor(0.5))) == 0.0
    # a lower degree renders the leading coefficients; a higher one is an error
    assert torch.equal(activate(p, 1).sh, g.sh[:, :4])
    with pytest.raises(ValueError, match="sh_degree 3"):
        activate(p, 3)
    # differentiable
    activate(p, 2).opacities.sum().backward()
    assert p["opacities"].grad is not None


# ------------------------------------------------------------------------------- files
def file_cfg(path, **kw):
    return InitConfig(kind="file", path=str(path), **kw)


def write_ascii_cloud(path, xyz, rgb=None):
    props = "property float x\nproperty float y\nproperty float z\n"
    if rgb is not None:
        props += "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    rows = [" ".join(f"{v:.9g}" for v in p) + ("" if rgb is None else " " + " ".join(map(str, c)))
            for p, c in zip(xyz, rgb if rgb is not None else [None] * len(xyz))]
    path.write_text(f"ply\nformat ascii 1.0\nelement vertex {len(xyz)}\n{props}end_header\n"
                    + "\n".join(rows) + ("\n" if rows else ""))


def test_point_cloud_ply_keeps_points_and_colours(tmp_path):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(300, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(300, 3), dtype=np.uint8)
    write_ascii_cloud(tmp_path / "pc.ply", xyz, rgb)
    p = init_params(file_cfg(tmp_path / "pc.ply", num_points=0), gen(0))
    np.testing.assert_array_equal(p["means"].detach().numpy(), xyz)
    torch.testing.assert_close(sh0_to_rgb(p["sh0"].detach()[:, 0]),
                               torch.from_numpy(rgb / 255.0).float(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(p["scales"].detach()[:, 0].numpy(),
                               brute_force_log_scale(xyz.astype(np.float64)), atol=1e-6)
    # subsampling: num_points random points, a subset, deterministic per seed
    q = init_params(file_cfg(tmp_path / "pc.ply", num_points=120), gen(5))
    q2 = init_params(file_cfg(tmp_path / "pc.ply", num_points=120), gen(5))
    assert q["means"].shape == (120, 3) and torch.equal(q["means"], q2["means"])
    rows = {tuple(r) for r in xyz.tolist()}
    assert all(tuple(r) in rows for r in q["means"].detach().numpy().tolist())
    # without colours: cfg.color
    write_ascii_cloud(tmp_path / "plain.ply", xyz[:10])
    r = init_params(file_cfg(tmp_path / "plain.ply", num_points=0, color=(1.0, 0.0, 0.5)), gen(0))
    torch.testing.assert_close(sh0_to_rgb(r["sh0"].detach()[:, 0]),
                               torch.tensor([1.0, 0.0, 0.5]).expand(10, 3))


CUBE_OBJ = """v -1 -1 -1
v 1 -1 -1
v 1 1 -1
v -1 1 -1
v -1 -1 1
v 1 -1 1
v 1 1 1
v -1 1 1
f 1 3 2
f 1 4 3
f 5 6 7
f 5 7 8
f 1 2 6
f 1 6 5
f 2 3 7
f 2 7 6
f 3 4 8
f 3 8 7
f 4 1 5
f 4 5 8
"""


def test_obj_mesh_surface_sampling(tmp_path):
    (tmp_path / "cube.obj").write_text(CUBE_OBJ)
    cfg = file_cfg(tmp_path / "cube.obj", num_points=3000, color=(0.3, 0.3, 0.3))
    p = init_params(cfg, gen(0))
    m = p["means"].detach().double().numpy()
    assert m.shape == (3000, 3)
    # on the surface of the cube [-1, 1]^3: the largest |coordinate| is 1
    np.testing.assert_allclose(np.abs(m).max(axis=1), 1.0, atol=1e-6)
    # area-weighted: each of the 6 faces gets ~1/6 of the points
    face = np.argmax(np.abs(m), axis=1) * 2 + (m[np.arange(3000), np.argmax(np.abs(m), 1)] > 0)
    frac = np.bincount(face, minlength=6) / 3000
    assert np.abs(frac - 1 / 6).max() < 0.03
    # uniform within a face (the u+v>1 reflection keeps triangles uniform): top face x ~ U(-1, 1)
    top = m[m[:, 2] > 1 - 1e-6]
    assert stats.kstest(top[:, 0], "uniform", args=(-1, 2)).pvalue > 1e-3
    assert stats.kstest(top[:, 1], "uniform", args=(-1, 2)).pvalue > 1e-3
    torch.testing.assert_close(sh0_to_rgb(p["sh0"].detach()[:, 0]), torch.full((3000, 3), 0.3))
    assert torch.equal(init_params(cfg, gen(0))["means"], p["means"])


def test_mesh_ply_vertex_colours_are_interpolated(tmp_path):
    """One triangle with pure R, G, B corners: a sample's colour is its barycentric weights."""
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 3, 1]], np.float64)
    (tmp_path / "tri.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 255 0 0\n2 0 0 0 255 0\n0 3 1 0 0 255\n3 0 1 2\n")
    p = init_params(file_cfg(tmp_path / "tri.ply", num_points=500), gen(0))
    rgb = sh0_to_rgb(p["sh0"].detach()[:, 0]).double().numpy()
    pts = p["means"].detach().double().numpy()
    assert (rgb >= -1e-6).all()
    np.testing.assert_allclose(rgb.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rgb @ v, pts, atol=1e-5)


def test_glb_mesh(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    trimesh.creation.box(extents=(2.0, 4.0, 6.0)).export(tmp_path / "box.glb")
    p = init_params(file_cfg(tmp_path / "box.glb", num_points=800), gen(0))
    m = p["means"].detach().double().numpy()
    assert m.shape == (800, 3)
    np.testing.assert_allclose(np.abs(m / np.array([1.0, 2.0, 3.0])).max(axis=1), 1.0, atol=1e-5)


def test_gaussian_ply_loaded_as_is(tmp_path):
    src = init_params(InitConfig(num_points=64, sh_degree=1), gen(0))
    with torch.no_grad():
        for v in src.values():
            v.add_(torch.randn(v.shape, generator=gen(1)))
    save_ply(tmp_path / "g.ply", src, 1)
    p = init_params(file_cfg(tmp_path / "g.ply", sh_degree=1, num_points=5), gen(0))
    for k in src:
        assert torch.equal(p[k], src[k]), k
    # a higher init degree pads zeros; a lower one is an error naming the fix
    q = init_params(file_cfg(tmp_path / "g.ply", sh_degree=2), gen(0))
    assert q["shN"].shape == (64, 8, 3)
    assert torch.equal(q["shN"][:, :3], src["shN"]) and not q["shN"][:, 3:].any()
    with pytest.raises(SceneInitError, match="init.sh_degree=1"):
        init_params(file_cfg(tmp_path / "g.ply", sh_degree=0), gen(0))


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(SceneInitError, match=r"nope\.ply: file not found"):
        init_params(file_cfg(tmp_path / "nope.ply"), gen(0))
    write_ascii_cloud(tmp_path / "empty.ply", np.zeros((0, 3)))
    with pytest.raises(SceneInitError, match=r"empty\.ply.*zero points"):
        init_params(file_cfg(tmp_path / "empty.ply"), gen(0))
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(PlyError, match=r"junk\.ply.*not a PLY"):
        init_params(file_cfg(tmp_path / "junk.ply"), gen(0))
    (tmp_path / "cloud.xyz").write_text("0 0 0\n")
    with pytest.raises(SceneInitError, match=r"cloud\.xyz.*unsupported file type"):
        init_params(file_cfg(tmp_path / "cloud.xyz"), gen(0))
    (tmp_path / "empty.obj").write_text("# nothing here\n")
    with pytest.raises(ValueError, match=r"empty\.obj"):
        init_params(file_cfg(tmp_path / "empty.obj"), gen(0))
    write_ascii_cloud(tmp_path / "nan.ply", np.array([[0, 0, np.nan], [1, 1, 1]]))
    with pytest.raises(SceneInitError, match=r"nan\.ply.*NaN"):
        init_params(file_cfg(tmp_path / "nan.ply", num_points=0), gen(0))
    with pytest.raises(SceneInitError, match="init.path"):
        init_params(replace(InitConfig(kind="file"), path=""), gen(0))
