"""ism3d/frames.py and the PLY frame mark: the file frames are proper rotations that put our up and
front where each ecosystem expects them, turned gaussians render the same pixels from turned
cameras (SH included), and save_ply/load_ply round-trip through every frame and SH padding."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ism3d.cameras import eval_ring
from ism3d.frames import (FILE_FROM_WORLD, FRAMES, matrix_to_quat, quat_multiply, rotate_params,
                          sh_rotation)
from ism3d.ply import load_ply, read_ply_frame, read_ply_vertices, save_ply
from ism3d.render import render
from ism3d.render.torch_backend import quat_scale_to_covar
from ism3d.scene import activate


def random_params(n: int = 200, sh_degree: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    return {"means": torch.randn(n, 3, generator=g) * 0.4,
            "scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.randn(n, generator=g) + 1.0,
            "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
            "shN": torch.randn(n, k1, 3, generator=g) * 0.1}


def test_file_frames_put_up_and_front_where_each_ecosystem_expects():
    up, front = torch.tensor([0.0, 0.0, 1.0]).double(), torch.tensor([1.0, 0.0, 0.0]).double()
    expect = {"z-up": ([0, 0, 1], [1, 0, 0]),
              "y-down": ([0, -1, 0], [0, 0, -1]),    # 3DGS/COLMAP: -y up, default camera at -z
              "y-up": ([0, 1, 0], [0, 0, 1])}        # glTF: +Y up, front +Z; SPZ: RUB
    for f in FRAMES:
        R = FILE_FROM_WORLD[f]
        torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=R.dtype))
        assert torch.linalg.det(R).item() == pytest.approx(1.0)
        assert (R @ up).tolist() == expect[f][0] and (R @ front).tolist() == expect[f][1]
    # y-up is y-down turned 180 degrees about x (what SPZ readers undo for a PLY's RDF)
    torch.testing.assert_close(FILE_FROM_WORLD["y-up"],
                               torch.diag(torch.tensor([1.0, -1.0, -1.0])).double()
                               @ FILE_FROM_WORLD["y-down"])


def rotmat(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                       -1).reshape(-1, 3, 3)


def test_matrix_to_quat_inverts_rotmat_and_quats_compose():
    g = torch.Generator().manual_seed(4)
    for q in torch.randn(20, 4, generator=g, dtype=torch.float64):
        q = q / q.norm()
        q2 = matrix_to_quat(rotmat(q[None])[0])
        torch.testing.assert_close(rotmat(q2[None]), rotmat(q[None]))
    for f in FRAMES:
        torch.testing.assert_close(rotmat(matrix_to_quat(FILE_FROM_WORLD[f])[None])[0],
                                   FILE_FROM_WORLD[f])
    a, b = torch.randn(5, 4, generator=g).double(), torch.randn(5, 4, generator=g).double()
    torch.testing.assert_close(rotmat(quat_multiply(a, b)), rotmat(a) @ rotmat(b))


@pytest.mark.parametrize("deg", [1, 2, 3])
def test_sh_rotation_keeps_the_colour_along_turned_directions(deg):
    """f'(R d) = f(d) for random coefficients and directions (independent of the 64 fit ones)."""
    from ism3d.render.sh import eval_sh
    g = torch.Generator().manual_seed(deg)
    R = rotmat(torch.randn(1, 4, generator=g, dtype=torch.float64))[0]
    c = torch.randn(7, (deg + 1) ** 2, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=-1)
    T = sh_rotation(R, deg)
    c2 = torch.einsum("kj,njc->nkc", T, c)
    torch.testing.assert_close(eval_sh(deg, d @ R.T, c2), eval_sh(deg, d, c))


@pytest.mark.parametrize("frame", ["y-down", "y-up"])
def test_turned_gaussians_render_the_same_pixels_from_turned_cameras(frame):
    p = random_params(sh_degree=3)
    R = FILE_FROM_WORLD[frame]
    cams = eval_ring(3, 24, 24, 3.0, 0.6, polar=65.0)
    turn = torch.eye(4, dtype=cams.viewmats.dtype)
    turn[:3, :3] = R.T.to(turn)                                 # x_cam = V x_w = (V R^T)(R x_w)
    turned_cams = replace(cams, viewmats=cams.viewmats @ turn)
    white = torch.ones(3)
    a = render(activate(p, 3), cams, white, backend="torch")
    t = rotate_params(p, R)
    b = render(activate(t, 3), turned_cams, white, backend="torch")
    assert a.alpha.mean() > 0.05
    torch.testing.assert_close(b.rgb, a.rgb, rtol=1e-4, atol=1e-4)
    # covariances: R S R^T (independent: the renderer's own quat_scale_to_covar)
    cov = quat_scale_to_covar(p["quats"].double(), p["scales"].double().exp())
    cov_t = quat_scale_to_covar(t["quats"].double(), t["scales"].double().exp())
    torch.testing.assert_close(cov_t, R @ cov @ R.T, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("frame", FRAMES)
def test_ply_marks_its_frame_and_reads_back_in_the_world_frame(tmp_path, frame):
    p = random_params(sh_degree=2, seed=1)
    save_ply(tmp_path / "g.ply", p, 2, frame=frame)
    assert read_ply_frame(tmp_path / "g.ply") == frame
    raw = read_ply_vertices(tmp_path / "g.ply")
    file_means = np.stack([raw["x"], raw["y"], raw["z"]], 1)
    np.testing.assert_allclose(file_means, p["means"].double().numpy()
                               @ FILE_FROM_WORLD[frame].numpy().T, atol=1e-6)
    q, deg = load_ply(tmp_path / "g.ply")
    assert deg == 2
    for k in p:
        torch.testing.assert_close(q[k].detach(), p[k], rtol=1e-5, atol=1e-5)
    # an unmarked file is read in the frame the caller names
    body = (tmp_path / "g.ply").read_bytes().replace(f"comment ism3d frame {frame}\n".encode(), b"")
    (tmp_path / "u.ply").write_bytes(body)
    assert read_ply_frame(tmp_path / "u.ply") is None
    u, _ = load_ply(tmp_path / "u.ply", unmarked=frame)
    torch.testing.assert_close(u["means"].detach(), p["means"], rtol=1e-5, atol=1e-6)


def test_sh_padding_adds_zero_coefficients_up_to_the_degree(tmp_path):
    p = random_params(sh_degree=0, seed=2)
    save_ply(tmp_path / "g.ply", p, 0, frame="y-down", pad_degree=3)
    raw = read_ply_vertices(tmp_path / "g.ply")
    assert sum(k.startswith("f_rest_") for k in raw) == 45
    assert all(np.all(raw[f"f_rest_{i}"] == 0) for i in range(45))
    q, deg = load_ply(tmp_path / "g.ply")
    assert deg == 3 and torch.count_nonzero(q["shN"]) == 0
    torch.testing.assert_close(q["sh0"].detach(), p["sh0"], rtol=1e-6, atol=1e-6)
    save_ply(tmp_path / "h.ply", random_params(sh_degree=2), 2, pad_degree=1)   # never truncates
    assert load_ply(tmp_path / "h.ply")[1] == 2
    with pytest.raises(ValueError, match="frame"):
        save_ply(tmp_path / "x.ply", p, 0, frame="x-up")
