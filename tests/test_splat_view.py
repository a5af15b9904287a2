"""export/splat_view.py: the web app's upright copy of gaussians.ply for Gradio's splat viewer."""
from __future__ import annotations

import math
import os
from dataclasses import replace

import torch

from ism3d.cameras import eval_ring
from ism3d.export.splat_view import (VIEW_SCALE, VIEWER_FROM_WORLD, VIEWER_FROM_WORLD_QUAT,
                                     VIEWER_PLY, quat_multiply, turn_for_viewer, viewer_ply)
from ism3d.ply import load_ply, save_ply
from ism3d.render import render
from ism3d.render.torch_backend import quat_scale_to_covar
from ism3d.scene import activate

M64 = VIEWER_FROM_WORLD.double()


def random_params(n: int = 200, sh_degree: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    return {"means": torch.randn(n, 3, generator=g) * 0.4,
            "scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.randn(n, generator=g) + 1.0,
            "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
            "shN": torch.randn(n, k1, 3, generator=g) * 0.1}


def test_the_turn_puts_our_up_on_the_viewers_up_and_our_front_towards_its_camera():
    assert torch.allclose(M64 @ M64.T, torch.eye(3, dtype=torch.float64))
    assert math.isclose(torch.linalg.det(M64).item(), 1.0)
    up, front = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    assert torch.equal(VIEWER_FROM_WORLD @ up, torch.tensor([0.0, -1.0, 0.0]))      # gsplat.js up = -y
    assert torch.equal(VIEWER_FROM_WORLD @ front, torch.tensor([0.0, 0.0, -1.0]))   # its camera: -z side
    # the quaternion is the same rotation: R S^2 R^T of it equals M S^2 M^T (independent code)
    s = torch.tensor([[0.1, 0.7, 2.0]], dtype=torch.float64)
    cov = quat_scale_to_covar(VIEWER_FROM_WORLD_QUAT.double()[None], s)[0]
    torch.testing.assert_close(cov, M64 @ torch.diag(s[0] ** 2) @ M64.T)


def test_turned_gaussians_have_turned_means_and_covariances():
    p = random_params()
    t = turn_for_viewer(p)
    k = VIEW_SCALE
    torch.testing.assert_close(t["means"].double(), k * p["means"].double() @ M64.T)
    cov = quat_scale_to_covar(p["quats"].double(), p["scales"].double().exp())      # [N, 3, 3]
    cov_t = quat_scale_to_covar(t["quats"].double(), t["scales"].double().exp())
    torch.testing.assert_close(cov_t, k * k * M64 @ cov @ M64.T, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(t["scales"], p["scales"] + math.log(k))
    for key in ("opacities", "sh0"):
        assert torch.equal(t[key], p[key]), key
    assert t["shN"].shape == (200, 0, 3)


def rotmat(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3], written out here independently of the package."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                       -1).reshape(-1, 3, 3)


def test_quat_multiply_composes_rotations():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 4, generator=g).double(), torch.randn(5, 4, generator=g).double()
    torch.testing.assert_close(rotmat(quat_multiply(a, b)), rotmat(a) @ rotmat(b))
    assert not torch.allclose(rotmat(quat_multiply(a, b)), rotmat(quat_multiply(b, a)))


def test_turned_copy_renders_the_same_images_from_the_turned_cameras():
    """Render the original from a ring, and the copy from the same cameras moved along: same pixels."""
    p = random_params(sh_degree=0)
    cams = eval_ring(4, 32, 32, 3.0, 0.6, polar=70.0)
    turn = torch.eye(4, dtype=cams.viewmats.dtype)
    turn[:3, :3] = VIEWER_FROM_WORLD.T.to(turn) / VIEW_SCALE   # x_cam = V x_w = (V M^T / k)(k M x_w)
    turned_cams = replace(cams, viewmats=cams.viewmats @ turn)
    white = torch.ones(3)
    a = render(activate(p, 0), cams, white, backend="torch")
    b = render(activate(turn_for_viewer(p), 0), turned_cams, white, backend="torch")
    assert a.alpha.mean() > 0.05                            # something is in view
    torch.testing.assert_close(b.rgb, a.rgb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.alpha, a.alpha, rtol=1e-4, atol=1e-5)


def test_viewer_ply_is_written_once_refreshed_when_the_run_changes_and_never_raises(tmp_path):
    run = tmp_path / "run"
    src = run / "gaussians.ply"
    p = random_params(sh_degree=1)
    save_ply(src, p, sh_degree=1)
    dst = viewer_ply(run)
    assert dst == run / VIEWER_PLY
    params, deg = load_ply(dst)
    assert deg == 0
    torch.testing.assert_close(params["means"], turn_for_viewer(p)["means"])
    orig, orig_deg = load_ply(src)                                          # the original is untouched
    assert orig_deg == 1 and torch.equal(orig["means"], p["means"])
    stamp = dst.stat().st_mtime_ns
    assert viewer_ply(run) == dst and dst.stat().st_mtime_ns == stamp       # not rewritten
    # the run is resumed and writes a new gaussians.ply: the copy follows it
    p2 = random_params(sh_degree=1, seed=3)
    save_ply(src, p2, sh_degree=1)
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    viewer_ply(run)
    torch.testing.assert_close(load_ply(dst)[0]["means"], turn_for_viewer(p2)["means"])
    # no gaussians.ply, or a broken one: None, nothing raised
    assert viewer_ply(tmp_path / "empty") is None
    src.write_bytes(b"ply\nnot really\n")
    os.utime(src, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))
    assert viewer_ply(run) is None
