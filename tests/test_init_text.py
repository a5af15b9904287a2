"""Text-to-3D initialisers (ism3d/inits): Shap-E end to end on a tiny random pipeline whose decoder
makes a known shape, Point-E through a stand-in `point_e` package, the frame conversion, the
init_points.ply cache, and the CLI."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from ism3d import config as C
from ism3d.config import InitConfig
from ism3d.inits import (
    INIT_CLOUD,
    InitError,
    check_init,
    init_from_config,
    text_init_params,
)
from ism3d.inits import cloud as CL
from ism3d.inits import point_e as PE
from ism3d.inits import shap_e as SE
from ism3d.scene import SH_C0

from fake_point_e import fake_point_e, fake_point_e_cloud  # noqa: F401 (fake_point_e: a fixture)

ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y, z) -> (-y, x, z)


def to_generator_frame(q: np.ndarray) -> np.ndarray:
    """Scene-frame points back to the generator frame (the inverse rotation, written out)."""
    return np.stack([q[:, 1], -q[:, 0], q[:, 2]], axis=1)


@pytest.fixture(scope="module")
def tiny_shap_e_dir(tmp_path_factory) -> str:
    from tiny_shap_e import make_tiny_shap_e
    return str(make_tiny_shap_e(tmp_path_factory.mktemp("shap_e") / "se"))


def shap_e_cfg(folder: str, **kw) -> C.Config:
    cfg = C.preset_config("tiny")
    init = replace(cfg.init, kind="shap-e", model=folder, steps=2, shap_e_grid=32,
                   num_points=2000, copies=4, use_colors=True)
    return replace(cfg, init=replace(init, **kw))


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------
def test_frame_conversion_is_a_proper_rotation_taking_front_to_x_and_up_to_z():
    R = CL.GENERATOR_TO_SCENE
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=0)
    assert np.linalg.det(R) == pytest.approx(1.0)  # a rotation, not the reference's mirror
    front, up, left = np.array([[0.0, -1, 0]]), np.array([[0.0, 0, 1]]), np.array([[1.0, 0, 0]])
    np.testing.assert_allclose(CL.to_scene_frame(front, 1.0), [[1, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(CL.to_scene_frame(up, 2.0, lift=0.15), [[0, 0, 2.3]], atol=1e-15)
    # Shap-E's +x is on the right of its front camera (on -y); ours, seen from +x, is -y
    np.testing.assert_allclose(CL.to_scene_frame(left, 1.0), [[0, 1, 0]], atol=1e-15)
    p = np.random.default_rng(0).normal(size=(50, 3))
    q = CL.to_scene_frame(p, 0.7, lift=0.15)
    np.testing.assert_allclose(q, 0.7 * np.stack([-p[:, 1], p[:, 0], p[:, 2] + 0.15], 1), atol=1e-14)


def test_linear_to_srgb_undoes_the_pipelines_srgb_to_linear():
    from diffusers.pipelines.shap_e.renderer import _convert_srgb_to_linear
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    np.testing.assert_allclose(CL.linear_to_srgb(_convert_srgb_to_linear(u).numpy()), u.numpy(),
                               atol=1e-12)
    assert CL.linear_to_srgb(np.array([0.5]))[0] == pytest.approx(0.735356983, abs=1e-8)


def test_sample_surface_is_area_weighted_and_interpolates_colours():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 2, 5]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 3
    col = np.clip(v / 5.0, 0, 1)          # linear in position -> interpolation is exact
    pts, cols = CL.sample_surface(v, f, col, 20000, torch.Generator().manual_seed(0))
    upper = pts[:, 2] > 2.5
    assert upper.mean() == pytest.approx(3 / 3.5, abs=0.01)
    np.testing.assert_allclose(cols, np.clip(pts / 5.0, 0, 1), atol=1e-12)
    lo, hi = pts[~upper], pts[upper]
    assert (lo[:, :2] >= -1e-12).all() and (lo[:, 0] + lo[:, 1] <= 1 + 1e-12).all()
    assert (hi[:, 0] / 3 + hi[:, 1] / 2 <= 1 + 1e-12).all() and np.allclose(hi[:, 2], 5)
    with pytest.raises(InitError, match="no surface"):
        CL.sample_surface(v[:3], np.array([[0, 0, 1]]), col[:3], 5, torch.Generator())


def test_marching_cubes_tables_make_closed_outward_meshes():
    """The tables the tiny pipelines carry: every edge of the decoded mesh is shared by two
    faces with opposite directions (closed, consistently wound) and the volume is positive."""
    from diffusers.pipelines.shap_e.renderer import MeshDecoder
    from tiny_shap_e import marching_cubes_tables
    cases, masks = marching_cubes_tables()
    dec = MeshDecoder()
    dec.cases.copy_(cases)
    dec.masks.copy_(masks)
    g = 18
    x = torch.linspace(-1, 1, g)
    X, Y, Z = torch.meshgrid(x, x, x, indexing="ij")
    fields = {"sphere": 0.6 - torch.sqrt(X**2 + Y**2 + Z**2),
              "noise": torch.randn(g, g, g, generator=torch.Generator().manual_seed(0))}
    vols = {}
    for name, f in fields.items():
        full = torch.nn.functional.pad(f, (1,) * 6, value=-1.0)  # the decoder's closed border
        out = dec(full, torch.tensor([-1.0] * 3), torch.tensor([2.0] * 3))
        v, fa = out.verts.double(), out.faces
        e = torch.cat([fa[:, [0, 1]], fa[:, [1, 2]], fa[:, [2, 0]]])
        key, rkey = e[:, 0] * len(v) + e[:, 1], e[:, 1] * len(v) + e[:, 0]
        assert torch.unique(key).numel() == key.numel(), name   # no directed edge twice
        assert torch.isin(rkey, key).all(), name                # every edge has its twin
        vols[name] = float((v[fa[:, 0]] * torch.linalg.cross(v[fa[:, 1]], v[fa[:, 2]])).sum() / 6)
        assert vols[name] > 0, name                             # wound outwards
    # the decoder maps the field onto (g-1)/(g+1) of the box: a sphere of that radius
    r = 0.6 * (g - 1) / (g + 1)
    assert vols["sphere"] == pytest.approx(4 / 3 * np.pi * r**3, rel=0.06)


def test_check_init_rejects_bad_values_naming_the_key():
    for kw, key in [({"copies": 0}, "init.copies"), ({"jitter": -1.0}, "init.jitter"),
                    ({"scale": 0.0}, "init.scale"), ({"num_points": 3, "copies": 4}, "init.num_points"),
                    ({"shap_e_grid": 4}, "init.shap_e_grid")]:
        with pytest.raises(InitError, match=key.replace(".", r"\.")):
            check_init(InitConfig(kind="point-e", **kw))
    check_init(InitConfig(kind="ball", copies=0))  # other kinds: not our business


# ---------------------------------------------------------------------------------------------
# Shap-E
# ---------------------------------------------------------------------------------------------
def test_shap_e_decoded_mesh_matches_the_known_shape(tiny_shap_e_dir):
    """Vertex level: the decoded surface is the slab n.p <= 0.25 (the decoder's (g-1)/(g+1)
    shrink undone) and the colours are the renderer's sRGB output where the decoder queried them
    (the shrunk positions)."""
    from tiny_shap_e import SLAB_LEVEL, SLAB_NORMAL, known_srgb
    pipe = SE.load_pipeline(tiny_shap_e_dir, "cpu")
    latent = torch.randn(pipe.prior.config.num_embeddings, pipe.prior.config.embedding_dim)
    verts, faces, srgb = SE.decode_mesh(pipe, latent, grid=24)
    assert faces.shape[1] == 3 and len(faces) > 100 and faces.max() < len(verts)
    level = verts @ np.asarray(SLAB_NORMAL)
    assert level.max() == pytest.approx(SLAB_LEVEL, abs=2e-4)
    assert (level <= SLAB_LEVEL + 2e-4).all()
    np.testing.assert_allclose(srgb, known_srgb(verts * 23 / 25), atol=2e-4)


def test_shap_e_init_end_to_end_in_scene_frame(tiny_shap_e_dir, tmp_path):
    """init_from_config -> 500 generated points x 4 copies, z up, front +x, right side +y: the
    slab's top (n.p = 0.25, n = up + front/2 + right/4 in Shap-E's frame: (0.25, -0.5, 1)) is
    z + x/2 + y/4 = 0.25 in ours."""
    from tiny_shap_e import known_srgb
    cfg = shap_e_cfg(tiny_shap_e_dir)
    params = init_from_config(cfg, "a red cube", tmp_path, "cpu", torch.Generator().manual_seed(0))
    n = params["means"].shape[0]
    assert n == 2000 and params["shN"].shape == (2000, 0, 3)
    found = CL.load_cloud(tmp_path / INIT_CLOUD)
    assert found is not None
    cloud, key = found
    assert cloud.points.shape == (500, 3)
    assert key["prompt"] == "a red cube" and key["model"] == tiny_shap_e_dir and key["seed"] == 0
    q = cloud.points.astype(np.float64)
    top = q[:, 2] + 0.5 * q[:, 0] + 0.25 * q[:, 1]
    assert top.max() == pytest.approx(0.25, abs=2e-3) and (top <= 0.25 + 2e-3).all()
    assert (top > 0.24).sum() > 20                      # the tilted top face is there
    assert q[:, 2].min() == pytest.approx(-1.0, abs=0.04)
    # a wrong frame fails: unrotated, mirrored (the reference's y flip) or y-up clouds
    for wrong in (to_generator_frame(q), q * [1, -1, 1], q[:, [0, 2, 1]]):
        assert (wrong[:, 2] + 0.5 * wrong[:, 0] + 0.25 * wrong[:, 1]).max() > 0.6
    # colours: the renderer's sRGB at the point (interpolated on grid-32 triangles)
    err = np.abs(cloud.colors - known_srgb(to_generator_frame(q)))
    assert err.max() < 0.03 and err.mean() < 0.005
    # gaussians: 4 jittered copies of each point, its colour, the init opacity
    means = params["means"].detach().reshape(500, 4, 3).double()
    d = (means - torch.from_numpy(q)[:, None]).norm(dim=-1)
    assert (d <= 0.05 + 1e-6).all() and (d > 0).all()
    rgb = params["sh0"].detach()[:, 0] * SH_C0 + 0.5
    torch.testing.assert_close(rgb, torch.from_numpy(cloud.colors).repeat_interleave(4, 0),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(params["opacities"].detach()),
                               torch.full((n,), 0.1), atol=1e-6, rtol=0)
    assert torch.isfinite(params["scales"]).all()


def test_cached_cloud_is_reused_only_for_the_same_model_prompt_and_seed(tiny_shap_e_dir, tmp_path,
                                                                      monkeypatch):
    """The cache logic with a stand-in generator (the real one runs in the tests above/below)."""
    calls = []

    def fake(cfg, prompt, seed, device, **kw):
        calls.append((prompt, seed))
        rng = np.random.default_rng(abs(hash((prompt, seed, cfg.model))) % 2**32)
        return CL.GeneratedCloud(rng.uniform(-0.5, 0.5, (500, 3)), rng.uniform(0, 1, (500, 3)))

    monkeypatch.setattr(SE, "generate", fake)
    cfg = shap_e_cfg(tiny_shap_e_dir)
    path = tmp_path / INIT_CLOUD

    def run(c, prompt="a red cube"):
        return text_init_params(c, prompt, tmp_path, "cpu", torch.Generator().manual_seed(3))

    first = run(cfg)
    assert calls == [("a red cube", 0)] and path.is_file()
    again = run(cfg)  # same everything: reused, and the same gaussians as generating it
    assert len(calls) == 1
    for k in first:
        assert torch.equal(first[k], again[k]), k
    other_init = replace(cfg, init=replace(cfg.init, prompt="a hamburger."))
    run(other_init)
    assert calls[-1] == ("a hamburger.", 0) and json.dumps(CL.load_cloud(path)[1]).count("hamburger")
    run(other_init, prompt="something else")  # init.prompt set: the main prompt does not matter
    assert len(calls) == 2
    run(cfg, prompt="a blue cube")  # empty init.prompt follows the main prompt
    assert calls[-1] == ("a blue cube", 0)
    run(replace(cfg, train=replace(cfg.train, seed=5)), prompt="a blue cube")
    assert calls[-1] == ("a blue cube", 5)
    run(replace(cfg, init=replace(cfg.init, model=tiny_shap_e_dir + "/")), prompt="a blue cube")
    assert len(calls) == 5  # another model name
    path.write_bytes(path.read_bytes()[:200])  # a damaged file is never trusted
    run(cfg)
    assert len(calls) == 6 and CL.load_cloud(path)[1]["prompt"] == "a red cube"


def test_missing_or_incomplete_shap_e_model_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(InitError, match=r"init.model 'nobody/not-a-cached-shap-e' is not "
                                        r"available offline.*huggingface-cli download"):
        check_init(InitConfig(kind="shap-e", model="nobody/not-a-cached-shap-e"))
    with pytest.raises(InitError, match="no such folder"):
        check_init(InitConfig(kind="shap-e", model=str(tmp_path / "nope")))
    (tmp_path / "half" / "prior").mkdir(parents=True)
    with pytest.raises(InitError, match="missing prior, text_encoder, tokenizer"):
        check_init(InitConfig(kind="shap-e", model=str(tmp_path / "half")))
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------------------------------------
# Point-E through a stand-in package
# ---------------------------------------------------------------------------------------------
def test_point_e_glue_calls_the_reference_recipe_and_converts_axes_and_colours(fake_point_e):
    cfg = InitConfig(kind="point-e", prompt="a chair")
    check_init(cfg)  # installed: no error
    state = torch.get_rng_state()
    cloud = PE.generate(cfg, "a chair", 7, "cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    rec = fake_point_e
    assert [n for n, _ in rec["checkpoints"]] == ["base40M-textvec", "upsample"]
    assert rec["models"] == ["base", "up"]
    s = rec["sampler"]
    assert s["num_points"] == [1024, 3072] and s["aux_channels"] == ["R", "G", "B"]
    assert s["guidance_scale"] == [3.0, 0.0] and tuple(s["model_kwargs_key_filter"]) == ("texts", "")
    assert s["karras_steps"] == [64, 64] and s["diffusions"] == [("diffusion", 1), ("diffusion", 2)]
    assert rec["sample"] == (1, {"texts": ["a chair"]})
    # every point: scene = R (p + noise) + 0.15 z, with the stand-in's seeded noise
    raw = fake_point_e_cloud()
    assert cloud.points.shape == (4096, 3)
    expect = CL.to_scene_frame(raw[:3].T, 1.0, lift=0.15)
    np.testing.assert_allclose(cloud.points, expect, atol=2e-3)
    nose, back = cloud.points[-100:], cloud.points[2048:3996]
    assert nose[:, 0].mean() > 0.4 and abs(nose[:, 1].mean()) < 0.06   # front marker on +x
    assert back[:, 0].mean() < -0.25 and back[:, 2].max() > 0.7        # back behind, tall, lifted
    np.testing.assert_allclose(cloud.colors[-1], np.array([250, 10, 40]) / 255, atol=1e-6)
    np.testing.assert_allclose(cloud.colors[0], np.array([20, 200, 90]) / 255, atol=1e-6)
    # seeded: same seed, same cloud; another seed, another noise
    assert np.array_equal(PE.generate(cfg, "a chair", 7, "cpu").points, cloud.points)
    assert not np.array_equal(PE.generate(cfg, "a chair", 8, "cpu").points, cloud.points)


def test_point_e_init_gives_the_reference_81920_gaussians(fake_point_e, tmp_path):
    cfg = C.preset_config("tiny")
    cfg = replace(cfg, init=replace(C.InitConfig(), kind="point-e", use_colors=True))
    params = init_from_config(cfg, "a chair", tmp_path, "cpu", torch.Generator().manual_seed(0))
    assert params["means"].shape == (81920, 3)
    rgb = (params["sh0"].detach()[:, 0] * SH_C0 + 0.5).reshape(4096, 20, 3)
    torch.testing.assert_close(rgb[-1], torch.tensor([250, 10, 40]).float().expand(20, 3) / 255,
                               atol=1e-5, rtol=0)
    # fewer points asked: a seeded subset of the same converted cloud
    small = replace(cfg.init, num_points=2000)
    sub = PE.generate(small, "a chair", 0, "cpu")
    full = PE.generate(cfg.init, "a chair", 0, "cpu")
    assert len(sub.points) == 100
    assert all((np.abs(full.points - p).max(axis=1) == 0).any() for p in sub.points)


def test_point_e_missing_package_is_one_line_and_exit_2_before_anything_heavy(tmp_path, monkeypatch,
                                                                             capsys):
    from ism3d.cli import main
    monkeypatch.setitem(sys.modules, "point_e", None)  # import point_e -> ImportError
    with pytest.raises(InitError) as e:
        check_init(InitConfig(kind="point-e"))
    assert str(e.value) == PE.MISSING == ("init=point-e needs the point_e package (not on PyPI): "
                                          "pip install git+https://github.com/openai/point-e")
    check_init(InitConfig(kind="point-e"), need_model=False)  # a resumed run generates nothing
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc = main(["generate", "a chair", "--preset", "tiny", "--out", str(out), "--quiet",
               "init.kind=point-e"])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert err.strip() == f"ism3d: error: {PE.MISSING}"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_generate_with_shap_e_init(tiny_shap_e_dir, tmp_path, monkeypatch):
    from ism3d.cli import main
    from ism3d.ply import load_ply
    calls = []
    real = SE.generate
    monkeypatch.setattr(SE, "generate", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    out = tmp_path / "run"
    args = ["generate", "a red cube", "--preset", "tiny", "--out", str(out), "--quiet",
            "init.kind=shap-e", f"init.model={tiny_shap_e_dir}", "init.steps=2",
            "init.shap_e_grid=16", "init.num_points=400", "init.copies=4", "train.iters=1",
            "train.batch=1", "train.preview_every=0", "guidance.method=sds",
            "output.video=false", "output.gif=false", "output.mesh=false"]
    assert main(args) == 0
    cloud, key = CL.load_cloud(out / INIT_CLOUD)
    assert key["kind"] == "shap-e" and key["prompt"] == "a red cube" and len(cloud.points) == 100
    params, _ = load_ply(out / "gaussians.ply")
    summary = json.loads((out / "summary.json").read_text())
    assert params["means"].shape[0] == summary["num_gaussians"] > 0
    assert C.load_config_file(out / "config.yaml").init.kind == "shap-e"
    assert calls == ["a red cube"]
    assert main(args + ["--force"]) == 0  # same run again in the folder: the cloud is reused
    assert calls == ["a red cube"]
    assert main(args + ["--force", "init.prompt=a hamburger."]) == 0  # another init prompt
    assert calls == ["a red cube", "a hamburger."]
    assert CL.load_cloud(out / INIT_CLOUD)[1]["prompt"] == "a hamburger."
