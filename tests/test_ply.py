"""PLY I/O: exact round trip, the INRIA layout checked by an independent parser, error cases."""
import os

import numpy as np
import pytest
import torch

from ism3d import ply as P
from ism3d.ply import PlyError, load_ply, read_ply_vertices, save_ply


def random_params(n: int, deg: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k1 = (deg + 1) ** 2 - 1
    p = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 4,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k1, 3, generator=g),
    }
    # awkward float32 values that a text detour or a float64 cast would not keep bit for bit
    p["means"][0] = torch.tensor([-0.0, 1e-40, 3.4e38])
    p["opacities"][1] = float(np.nextafter(np.float32(0.1), np.float32(1)))
    return p


def parse_independently(path) -> tuple[list[str], np.ndarray]:
    """Header lines by hand, then the body as a plain little-endian float32 matrix."""
    raw = open(path, "rb").read()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = [ln for ln in raw[:end].decode("ascii").splitlines() if not ln.startswith("comment ")]
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    n = int(lines[2].split()[2])
    props = [ln.split() for ln in lines[3:-1]]
    assert all(p[0] == "property" and p[1] == "float" for p in props)
    names = [p[2] for p in props]
    body = np.frombuffer(raw[end:], dtype="<f4")
    assert body.size == n * len(names)
    return names, body.reshape(n, len(names))


@pytest.mark.parametrize("deg", [0, 1, 3])
def test_round_trip_is_bitwise_exact(tmp_path, deg):
    p = random_params(57, deg)
    save_ply(tmp_path / "g.ply", p, deg)
    q, deg2 = load_ply(tmp_path / "g.ply")
    assert deg2 == deg
    assert set(q.keys()) == set(p.keys())
    for k in p:
        assert q[k].dtype == torch.float32 and q[k].shape == p[k].shape, k
        # bitwise: compare the integer views (catches -0.0 vs 0.0, denormals)
        assert torch.equal(q[k].detach().view(torch.int32), p[k].view(torch.int32)), k
        assert isinstance(q[k], torch.nn.Parameter)


@pytest.mark.parametrize("deg", [0, 3])
def test_layout_matches_inria_order(tmp_path, deg):
    p = random_params(11, deg, seed=3)
    save_ply(tmp_path / "g.ply", p, deg)
    names, m = parse_independently(tmp_path / "g.ply")
    k1 = (deg + 1) ** 2 - 1
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(3 * k1)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    col = {name: m[:, i] for i, name in enumerate(names)}
    np.testing.assert_array_equal(np.stack([col["x"], col["y"], col["z"]], 1), p["means"].numpy())
    np.testing.assert_array_equal(np.stack([col["nx"], col["ny"], col["nz"]], 1), 0)
    for c in range(3):
        np.testing.assert_array_equal(col[f"f_dc_{c}"], p["sh0"][:, 0, c].numpy())
        np.testing.assert_array_equal(col[f"scale_{c}"], p["scales"][:, c].numpy())
        # channel-major: all coefficients of R, then G, then B
        for k in range(k1):
            np.testing.assert_array_equal(col[f"f_rest_{c * k1 + k}"], p["shN"][:, k, c].numpy())
    for j in range(4):
        np.testing.assert_array_equal(col[f"rot_{j}"], p["quats"][:, j].numpy())
    np.testing.assert_array_equal(col["opacity"], p["opacities"].numpy())


def test_save_accepts_parameterdict_on_any_dtype_path(tmp_path):
    p = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in random_params(5, 0).items()})
    save_ply(tmp_path / "sub" / "dir" / "g.ply", p, 0)  # parents are created
    q, _ = load_ply(tmp_path / "sub" / "dir" / "g.ply")
    assert torch.equal(q["quats"], p["quats"].detach())


def test_save_rejects_wrong_sh_degree(tmp_path):
    with pytest.raises(AssertionError):
        save_ply(tmp_path / "g.ply", random_params(4, 1), 0)
    assert not os.listdir(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "g.ply"
    save_ply(path, random_params(6, 0, seed=1), 0)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(P.os, "replace", boom)
    with pytest.raises(OSError):
        save_ply(path, random_params(9, 0, seed=2), 0)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["g.ply"]  # the temp file is gone too


def test_overwrite_leaves_no_temp_files(tmp_path):
    for seed in range(3):
        save_ply(tmp_path / "g.ply", random_params(4 + seed, 0, seed), 0)
    assert os.listdir(tmp_path) == ["g.ply"]
    q, _ = load_ply(tmp_path / "g.ply")
    assert q["means"].shape == (6, 3)


def test_truncated_file(tmp_path):
    path = tmp_path / "g.ply"
    save_ply(path, random_params(20, 0), 0)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(PlyError, match=r"g\.ply.*truncated"):
        load_ply(path)
    header_only = data[: data.index(b"end_header")]
    path.write_bytes(header_only)
    with pytest.raises(PlyError, match=r"g\.ply.*truncated"):
        load_ply(path)


def test_not_a_ply(tmp_path):
    path = tmp_path / "notes.ply"
    path.write_text("hello world\n")
    with pytest.raises(PlyError, match=r"notes\.ply.*not a PLY"):
        load_ply(path)
    path.write_bytes(os.urandom(300))
    with pytest.raises(PlyError, match=r"notes\.ply"):
        load_ply(path)
    with pytest.raises(PlyError, match=r"missing\.ply.*not found"):
        load_ply(tmp_path / "missing.ply")


def test_point_cloud_ply_is_not_a_gaussian_ply(tmp_path):
    path = tmp_path / "pc.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                    "property float z\nproperty uchar red\nproperty uchar green\n"
                    "property uchar blue\nend_header\n0 0 0 255 0 0\n1 2 3 0 128 255\n")
    with pytest.raises(PlyError, match=r"pc\.ply.*missing properties f_dc_0"):
        load_ply(path)
    assert not P.is_gaussian_ply(path)


def test_bad_f_rest_count(tmp_path):
    names = P.gs_property_names(0) + ["f_rest_0", "f_rest_1"]  # 2 is not 3 * ((d+1)^2 - 1)
    head = ("ply\nformat binary_little_endian 1.0\nelement vertex 1\n"
            + "".join(f"property float {n}\n" for n in names) + "end_header\n")
    path = tmp_path / "odd.ply"
    path.write_bytes(head.encode() + np.zeros(len(names), "<f4").tobytes())
    with pytest.raises(PlyError, match=r"odd\.ply.*f_rest"):
        load_ply(path)


def test_read_vertices_ascii_and_big_endian_and_extra_elements(tmp_path):
    xyz = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5], [0.0, 0.0, 1.0]], np.float32)
    rgb = np.array([[255, 0, 7], [1, 2, 3], [10, 20, 30]], np.uint8)
    # ascii, with a comment and a face element after the vertices
    lines = [f"{a} {b} {c} {r} {g} {bl} 9" for (a, b, c), (r, g, bl) in zip(xyz, rgb)]
    (tmp_path / "a.ply").write_text(
        "ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 3\nproperty float x\n"
        "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
        "property uchar blue\nproperty int extra\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n" + "\n".join(lines) + "\n3 0 1 2\n")
    v = read_ply_vertices(tmp_path / "a.ply")
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)
    assert v["red"].dtype == np.uint8 and v["x"].dtype == np.float32
    np.testing.assert_array_equal(v["extra"], 9)

    # binary big endian, with a list element (faces) BEFORE the vertices, which must be skipped
    rows = np.zeros(3, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("red", "u1"),
                              ("green", "u1"), ("blue", "u1")])
    for i, n in enumerate("xyz"):
        rows[n] = xyz[:, i]
    for i, n in enumerate(["red", "green", "blue"]):
        rows[n] = rgb[:, i]
    faces = (np.array([3], "u1").tobytes() + np.array([0, 1, 2], ">i4").tobytes()
             + np.array([4], "u1").tobytes() + np.array([0, 1, 2, 0], ">i4").tobytes())
    head = ("ply\nformat binary_big_endian 1.0\nelement face 2\n"
            "property list uchar int vertex_indices\nelement vertex 3\nproperty float x\n"
            "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
            "property uchar blue\nend_header\n")
    (tmp_path / "b.ply").write_bytes(head.encode() + faces + rows.tobytes())
    w = read_ply_vertices(tmp_path / "b.ply")
    np.testing.assert_array_equal(np.stack([w["x"], w["y"], w["z"]], 1), xyz)
    np.testing.assert_array_equal(w["blue"], rgb[:, 2])
    assert w["x"].dtype.byteorder in ("=", "<", "|") and w["x"].flags.writeable


def test_ascii_gaussian_ply_loads(tmp_path):
    names = P.gs_property_names(0)
    vals = np.arange(len(names) * 2, dtype=np.float32).reshape(2, -1) / 8
    head = ("ply\nformat ascii 1.0\nelement vertex 2\n"
            + "".join(f"property float {n}\n" for n in names) + "end_header\n")
    body = "\n".join(" ".join(repr(float(x)) for x in row) for row in vals)
    (tmp_path / "g.ply").write_text(head + body + "\n")
    q, deg = load_ply(tmp_path / "g.ply")
    assert deg == 0
    np.testing.assert_array_equal(q["opacities"].detach().numpy(), vals[:, names.index("opacity")])
    np.testing.assert_array_equal(q["quats"].detach().numpy()[:, 3], vals[:, names.index("rot_3")])


def test_ascii_truncated(tmp_path):
    (tmp_path / "t.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                    "property float y\nproperty float z\nend_header\n"
                                    "1 2 3\n4 5 6\n")
    with pytest.raises(PlyError, match=r"t\.ply.*truncated"):
        read_ply_vertices(tmp_path / "t.ply")
