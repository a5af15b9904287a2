"""Textured mesh export (export/mesh_texture.py, mesh_files.write_textured_mesh): the baked
texture carries colour detail the vertex colours cannot (checked against the known pattern on
the surface), the GLB passes the Khronos validator with no issue, the OBJ comes with its MTL and
PNG and reads back with its UVs."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from ism3d.export import mesh as M
from ism3d.export.mesh_texture import field_colour
from test_mesh import fibonacci_sphere, surface_gaussians, validate_gltf


def stripes(points: np.ndarray) -> np.ndarray:
    """[P, 3] -> [P, 3] colour: 12 red/blue bands in longitude (finer than a coarse mesh's faces)."""
    lon = np.arctan2(points[:, 1], points[:, 0])
    red = (np.floor(lon / (2 * np.pi) * 12) % 2 == 0)
    return np.where(red[:, None], [0.9, 0.1, 0.1], [0.1, 0.2, 0.9])


@pytest.fixture(scope="module")
def striped():
    pts = 0.5 * fibonacci_sphere(6000)
    g = surface_gaussians(pts, stripes(pts))
    stats: dict = {}
    mesh = M.gaussians_to_mesh(g, resolution=64, faces=600, stats=stats)
    return g, mesh, stats


def sample_texture(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup, v = 0 at row 0, texel centres at (i + 0.5) / T."""
    T = tex.shape[0]
    x, y = uv[:, 0] * T - 0.5, uv[:, 1] * T - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    c = lambda yy, xx: tex[np.clip(yy, 0, T - 1), np.clip(xx, 0, T - 1)] / 255.0  # noqa: E731
    return ((1 - fy) * ((1 - fx) * c(y0, x0) + fx * c(y0, x0 + 1))
            + fy * ((1 - fx) * c(y0 + 1, x0) + fx * c(y0 + 1, x0 + 1)))


def test_texture_holds_detail_the_vertex_colours_lose(striped):
    g, mesh, stats = striped
    tm = M.texture_mesh(mesh, g, 256, h=stats["h"])
    assert tm.texture.shape == (256, 256, 3) and len(tm.faces) == len(mesh.faces)
    # random points on the textured surface: barycentric mix of a random face's corners
    rng = np.random.default_rng(0)
    f = rng.integers(0, len(tm.faces), 4000)
    b = rng.dirichlet([1, 1, 1], 4000)
    p = np.einsum("pk,pkd->pd", b, tm.vertices[tm.faces[f]])
    truth = stripes(p)
    tex = sample_texture(tm.texture, np.einsum("pk,pkd->pd", b, tm.uv[tm.faces[f]]))
    # the same points in the vertex-coloured mesh (the mesh before unwrapping)
    vc = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    vmesh = np.einsum("pk,pkd->pd", b, vc[tm.vmap[tm.faces[f]]])
    err_tex = np.abs(tex - truth).mean()
    err_vc = np.abs(vmesh - truth).mean()
    print(f"mean |error| on the stripes: texture {err_tex:.3f}, vertex colours {err_vc:.3f}")
    assert err_tex < 0.6 * err_vc, (err_tex, err_vc)
    assert err_tex < 0.12, err_tex


def test_field_colour_matches_vertex_colours_float64_twin(striped):
    g, mesh, stats = striped
    pts = np.asarray(mesh.vertices)[:500]
    floor = M.SHEET_FLOOR * stats["h"]
    np.testing.assert_allclose(field_colour(g, floor)(pts), M.vertex_colors(g, pts, floor),
                               atol=1e-5)


def test_textured_glb_passes_the_validator_with_no_issue(striped, tmp_path):
    g, mesh, stats = striped
    path = M.export_mesh(g, tmp_path / "t.glb", resolution=64, faces=600, texture_size=128)
    report = validate_gltf(path)
    issues = report["issues"]
    assert issues["numErrors"] == issues["numWarnings"] == 0, issues["messages"]
    assert issues["numInfos"] == issues["numHints"] == 0, issues["messages"]
    b = path.read_bytes()
    doc = json.loads(b[20:20 + struct.unpack("<I", b[12:16])[0]])
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorTexture"] == {"index": 0} and "metallicRoughnessTexture" not in pbr
    assert doc["images"][0]["mimeType"] == "image/png"
    back = trimesh.load(path, force="mesh", process=False)
    assert isinstance(back.visual, trimesh.visual.TextureVisuals)
    assert back.visual.material.baseColorTexture.size == (128, 128)


def test_obj_comes_with_mtl_and_png_and_reads_back(striped, tmp_path):
    g, mesh, stats = striped
    M.export_mesh(g, tmp_path / "t.obj", resolution=64, faces=600, texture_size=64)
    assert (tmp_path / "t.mtl").read_text().strip().endswith("map_Kd t.png")
    assert Image.open(tmp_path / "t.png").size == (64, 64)
    back = trimesh.load(tmp_path / "t.obj", force="mesh", process=False)
    assert back.visual.uv is not None and len(back.visual.uv) == len(back.vertices)
    # upright like the GLB: world +z (up) is the file's +Y
    ys = np.asarray(back.vertices)[:, 1]
    assert ys.max() == pytest.approx(np.asarray(mesh.vertices)[:, 2].max(), abs=1e-4)


def test_render_and_project_bake_also_recovers_the_stripes(striped):
    """The other bake (output.texture_bake=render): renders from 2 x 8 views, projected."""
    from ism3d.export.mesh_texture import bake_texture, render_colour

    g, mesh, stats = striped
    tm = bake_texture(np.asarray(mesh.vertices), np.asarray(mesh.faces),
                      np.asarray(mesh.vertex_normals), render_colour(g, views=8, size=128), 128)
    rng = np.random.default_rng(1)
    f = rng.integers(0, len(tm.faces), 3000)
    b = rng.dirichlet([1, 1, 1], 3000)
    p = np.einsum("pk,pkd->pd", b, tm.vertices[tm.faces[f]])
    tex = sample_texture(tm.texture, np.einsum("pk,pkd->pd", b, tm.uv[tm.faces[f]]))
    err = np.abs(tex - stripes(p)).mean()
    assert err < 0.12, err
    with pytest.raises(M.MeshError, match="bake"):
        M.texture_mesh(mesh, g, 64, h=stats["h"], bake="paint")


def test_face_budget_respects_both_limits():
    from ism3d import config as C

    toy = C.preset_config("toy").output
    assert M.face_budget(toy) == min(toy.mesh_faces, toy.texture_faces) == 20_000
    small = C.apply_overrides(C.preset_config("toy"), {"output.mesh_faces": 5000}).output
    assert M.face_budget(small) == 5000                       # a preset's smaller budget wins
    plain = C.apply_overrides(C.preset_config("toy"), {"output.mesh_texture": False}).output
    assert M.face_budget(plain) == plain.mesh_faces           # vertex colours: as before
    none = C.apply_overrides(C.preset_config("toy"), {"output.mesh_faces": 0,
                                                      "output.texture_faces": 0}).output
    assert M.face_budget(none) == 0
