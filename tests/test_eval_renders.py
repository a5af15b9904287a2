"""Evaluation renders (ism3d/export/views.py, `ism3d render`): normals from depth against closed
forms (a plane, a sphere), the display modes, and the GPTEval3D folder layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ism3d import cli
from ism3d.cameras import eval_ring
from ism3d.export.views import depth_normals, render_views
from ism3d.ply import save_ply
from ism3d.scene import deactivate
from ism3d.toyworld import world


def intrinsics(f: float, c: float) -> torch.Tensor:
    return torch.tensor([[[f, 0, c], [0, f, c], [0, 0, 1.0]]], dtype=torch.float64)


def plane_depth(n: np.ndarray, point: np.ndarray, K: torch.Tensor, H: int, W: int) -> np.ndarray:
    """[H, W] camera z of the plane n . X = n . point seen through pixel centres (OpenCV)."""
    Kinv = np.linalg.inv(K[0].numpy())
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ Kinv.T                 # [H, W, 3], z = 1
    return (n @ point) / (rays @ n)


def display(n_cv: np.ndarray) -> np.ndarray:
    """Unit OpenCV camera normal facing the camera -> display convention (x, -y, -z)."""
    n = n_cv / np.linalg.norm(n_cv)
    if n[2] > 0:
        n = -n
    return n * [1, -1, -1]


def test_depth_normals_of_planes_match_the_closed_form():
    H = W = 16
    K = intrinsics(20.0, 8.0)
    na, nb = np.array([0.3, -0.2, -1.0]), np.array([-0.5, 0.4, -1.0])
    za = plane_depth(na, np.array([0, 0, 3.0]), K, H, W)
    zb = plane_depth(nb, np.array([0, 0, 6.0]), K, H, W)
    depth = np.where(np.arange(W)[None, :] < 8, za, zb)                   # a depth edge at u = 8
    alpha = np.ones((H, W))
    alpha[0, 0] = 0.2                                                     # one empty pixel
    n = depth_normals(torch.from_numpy(depth)[None, None], torch.from_numpy(alpha)[None, None], K)
    n = n[0].permute(1, 2, 0).numpy()                                     # [H, W, 3]
    assert n.dtype == np.float64
    np.testing.assert_allclose(n[1:, :8], np.broadcast_to(display(na), (H - 1, 8, 3)), atol=1e-9)
    np.testing.assert_allclose(n[:, 8:], np.broadcast_to(display(nb), (H, 8, 3)), atol=1e-9)
    np.testing.assert_array_equal(n[0, 0], 0.0)                            # alpha < 0.5
    np.testing.assert_allclose(n[0, 1:8], np.broadcast_to(display(na), (7, 3)), atol=1e-9)


def test_depth_normals_need_a_usable_neighbour():
    K = intrinsics(10.0, 2.0)
    depth = torch.full((1, 1, 4, 4), 2.0, dtype=torch.float64)
    alpha = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    alpha[0, 0, 1, 1] = 1.0                                               # an isolated pixel
    alpha[0, 0, 3, :] = 1.0                                               # a one-pixel row
    n = depth_normals(depth, alpha, K)
    assert (n == 0).all()                                                 # no tangent along v


@pytest.fixture(scope="module")
def sphere_views():
    g = world.make_object("sphere", "red")
    cams = eval_ring(4, 64, 64, 3.5, 0.55, polar=60.0)
    images = render_views(g, cams, ("rgb", "depth", "normal", "alpha"), backend="torch")
    return cams, images


def analytic_sphere_normals(cams, c: int, radius: float):
    """([H, W] hit mask, [H, W, 3] display-convention normals) of the sphere at the origin."""
    V = cams.viewmats[c].double().numpy()
    R, t = V[:3, :3], V[:3, 3]
    centre = -R.T @ t
    Kinv = np.linalg.inv(cams.Ks[c].double().numpy())
    H, W = cams.height, cams.width
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d = np.stack([u, v, np.ones_like(u)], -1) @ Kinv.T @ R                 # world ray directions
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    b = d @ centre
    disc = b * b - (centre @ centre - radius ** 2)
    hit = disc > 0
    tt = -b - np.sqrt(np.maximum(disc, 0))
    p = centre + tt[..., None] * d                                        # first hit (world)
    n_cam = (p / radius) @ R.T                                            # OpenCV camera frame
    return hit, n_cam * [1, -1, -1]


def test_sphere_normal_map_points_at_the_camera_and_matches_the_sphere(sphere_views):
    cams, images = sphere_views
    for mode in ("rgb", "depth", "normal", "alpha"):
        assert images[mode].shape == (4, 64, 64, 3) and images[mode].dtype == np.uint8
    normal = images["normal"].astype(np.float64) / 255.0 * 2.0 - 1.0      # decode (n + 1) / 2
    for c in range(4):
        # the centre faces the camera: (0.5, 0.5, 1.0) -> (128, 128, 255)
        np.testing.assert_allclose(images["normal"][c, 31:33, 31:33].reshape(-1, 3).mean(0),
                                   [127.5, 127.5, 255], atol=8)
        _, ref = analytic_sphere_normals(cams, c, world.SPHERE_R)
        inner, _ = analytic_sphere_normals(cams, c, 0.8 * world.SPHERE_R)  # away from the rim
        nn = normal[c][inner] / np.linalg.norm(normal[c][inner], axis=-1, keepdims=True)
        ang = np.degrees(np.arccos(np.clip((nn * ref[inner]).sum(-1), -1, 1)))
        # measured ~6 degrees mean at 64 x 64: 1-pixel differences of the depth of 4000 discs
        assert ang.mean() < 8 and np.percentile(ang, 95) < 12, (ang.mean(), np.percentile(ang, 95))
        # right of the image faces right (red up), top faces up (green up)
        assert images["normal"][c, 32, 50, 0] > 200 and images["normal"][c, 14, 32, 1] > 200
        # background: white behind rgb and normal, black in alpha and depth
        for mode, value in (("rgb", 255), ("normal", 255), ("alpha", 0), ("depth", 0)):
            assert (images[mode][c, :3, :3] == value).all(), mode


def test_alpha_and_depth_display(sphere_views):
    _, images = sphere_views
    alpha, depth = images["alpha"].astype(int), images["depth"].astype(int)
    assert (alpha[:, 32, 32] == 255).all()
    assert (alpha[..., 0] == alpha[..., 1]).all() and (depth[..., 0] == depth[..., 2]).all()
    # nearer is brighter: the sphere's centre is its nearest point
    assert (depth[:, 32, 32, 0] > depth[:, 32, 46, 0] + 40).all()
    # one scale for the whole ring: the symmetric sphere looks the same from every side
    assert np.ptp(depth[:, 32, 32, 0]) <= 3 and depth[:, 32, 32, 0].min() >= 240


def _mug_ply(tmp_path):
    g = world.make_object("mug", "blue", n_points=1500)
    path = tmp_path / "mug.ply"
    save_ply(path, deactivate(g), 0)
    return path


def run_cli(capsys, *args):
    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_render_folder_is_the_gpteval3d_layout(tmp_path, capsys):
    ply = _mug_ply(tmp_path)
    out = tmp_path / "views"
    rc, stdout, err = run_cli(capsys, "render", str(ply), "--out", str(out), "--views", "3",
                              "--size", "32", "--device", "cpu")
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{m}_{k}.png" for m in ("rgb", "normal") for k in range(3)])
    assert np.asarray(Image.open(out / "normal_0.png")).shape == (32, 32, 3)
    rc, _, err = run_cli(capsys, "render", str(ply), "--out", str(out), "--views", "2",
                         "--size", "32", "--mode", "depth,alpha", "--device", "cpu")
    assert rc == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"depth_0.png", "depth_1.png", "alpha_0.png", "alpha_1.png"} <= names
    grid = tmp_path / "grid.png"
    rc, _, err = run_cli(capsys, "render", str(ply), "--out", str(grid), "--size", "16",
                         "--mode", "normal", "--device", "cpu")
    assert rc == 0, err
    assert np.asarray(Image.open(grid)).shape == (32, 64, 3)             # 8 views, 4 x 2


@pytest.mark.parametrize("extra, message", [
    (["--out", "OUT/x.mp3"], "--out"),
    (["--out", "OUT/v", "--mode", "rgb,bogus"], "--mode"),
    (["--out", "OUT/t.gif", "--mode", "rgb,depth"], "one mode"),
    (["--out", "OUT/v", "--views", "0"], "--views"),
])
def test_cli_render_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, message):
    ply = _mug_ply(tmp_path)
    extra = [a.replace("OUT", str(tmp_path)) for a in extra]
    rc, _, err = run_cli(capsys, "render", str(ply), *extra)
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mug.ply"]     # nothing written
