"""init.kind=prior-hull (ism3d/inits/prior_hull.py): the DDIM sampler against a prior whose data
is known, the foreground split, the vote carving against masks made from a known box, and the
whole init with the shipped ToyWorld prior through `ism3d generate`."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from ism3d import config as C
from ism3d.inits import INIT_CLOUD, InitError, check_init
from ism3d.inits import cloud as CL
from ism3d.inits import prior_hull as PH


class ConstantImagePrior:
    """A pixel 'prior' whose data distribution is one image x0 (a point mass): its exact noise
    prediction is eps(x, t) = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), whatever the text."""
    is_latent = False
    device = torch.device("cpu")

    def __init__(self, x0: torch.Tensor):
        self.x0 = x0                                                    # [3, S, S] in [-1, 1]
        self.image_size = x0.shape[-1]
        self.latent_shape = tuple(x0.shape)
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()

    def eps(self, x, t, emb):
        a = self.alphas_cumprod.double()[t][:, None, None, None]
        return ((x.double() - a.sqrt() * self.x0.double()) / (1 - a).sqrt()).float()

    def decode(self, z):
        return (z + 1) / 2


def test_sampler_lands_on_the_only_image_a_point_mass_prior_knows():
    x0 = torch.rand(3, 8, 8) * 2 - 1
    prior = ConstantImagePrior(x0)
    emb = torch.zeros(3, 2, 4)
    out = PH.sample_views(prior, emb, torch.zeros(1, 2, 4), steps=5, scale=7.5,
                          gen=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 8, 8)
    torch.testing.assert_close(out, ((x0 + 1) / 2).expand(3, -1, -1, -1), atol=1e-5, rtol=0)


def test_foreground_is_what_differs_from_the_border_colour():
    img = torch.zeros(2, 3, 10, 10)
    img[0] += torch.tensor([0.2, 0.9, 0.4])[:, None, None]             # green background
    img[1] += 1.0                                                       # white background
    img[0, :, 3:6, 2:7] = torch.tensor([0.2, 0.9, 0.7])[:, None, None]  # differs by 0.3 in blue
    img[1, :, 4:9, 4:9] = 0.9                                           # differs by 0.1 only
    mask, bg = PH.foreground(img, 0.15)
    torch.testing.assert_close(bg, torch.tensor([[0.2, 0.9, 0.4], [1.0, 1.0, 1.0]]))
    want = torch.zeros(2, 10, 10, dtype=torch.bool)
    want[0, 3:6, 2:7] = True
    assert torch.equal(mask, want)


def box_masks(cams, lo, hi, n=40):
    """Pixels hit by a dense grid of points of the box [lo, hi]^3 (an independent projection:
    camera centre and axes from the inverse viewmat, pinhole by hand)."""
    g = torch.linspace(0, 1, n, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pts = torch.tensor(lo) + pts * (torch.tensor(hi) - torch.tensor(lo))          # [P, 3]
    masks = torch.zeros(len(cams), cams.height, cams.width, dtype=torch.bool)
    for s in range(len(cams)):
        c2w = torch.linalg.inv(cams.viewmats[s].double())
        centre, axes = c2w[:3, 3], c2w[:3, :3]                                     # columns x y z
        d = (pts - centre) @ axes                                                  # camera coords
        K = cams.Ks[s].double()
        col = torch.floor(K[0, 0] * d[:, 0] / d[:, 2] + K[0, 2]).long()
        row = torch.floor(K[1, 1] * d[:, 1] / d[:, 2] + K[1, 2]).long()
        masks[s, row, col] = True
    return masks, pts


def test_carving_keeps_a_superset_of_a_box_and_votes_as_documented():
    cfg = C.preset_config("toy")
    cams = PH.hull_cameras(cfg, 32)
    assert len(cams) == cfg.init.hull_views * len(cfg.init.hull_polars)
    assert sorted(set(cams.azimuth.round().tolist())) == [-135, -90, -45, 0, 45, 90, 135, 180]
    lo, hi = (-0.3, -0.2, -0.4), (0.3, 0.2, 0.1)
    masks, pts = box_masks(cams, lo, hi)
    images = torch.rand(len(cams), 3, 32, 32)
    half = 3.5 * math.tan(0.275)
    centres, rgb, side = PH.carve(masks, images, cams, grid=40, half=half, keep=1.0)
    assert side == pytest.approx(2 * half / 40)
    # every voxel centre inside the box is kept (a visual hull holds the object; a margin of
    # two spacings of the dense points, so that each such centre's pixel is surely hit) ...
    all_pts, _ = PH._grid(40, half)
    m = 2 * 0.6 / 39
    inner = ((all_pts > torch.tensor(lo) + m) & (all_pts < torch.tensor(hi) - m)).all(1)
    kept = {tuple(v) for v in centres.tolist()}
    assert int(inner.sum()) > 100 and all(tuple(v) in kept for v in all_pts[inner].tolist())
    # ... and nothing far from it (perspective cones from 8 azimuths, one-pixel masks)
    slack = 0.2
    assert bool((centres >= torch.tensor(lo) - slack).all() and (centres <= torch.tensor(hi) + slack).all())
    # votes: with one view blank, keep=1 keeps nothing, and keep=(S-1)/S keeps what the other
    # views alone keep with keep=1
    blank = masks.clone()
    blank[3] = False
    assert PH.carve(blank, images, cams, grid=40, half=half, keep=1.0)[0].shape[0] == 0
    again, _, _ = PH.carve(blank, images, cams, grid=40, half=half, keep=(len(cams) - 1) / len(cams))
    rest = torch.tensor([s for s in range(len(cams)) if s != 3])
    alone, _, _ = PH.carve(masks[rest], images[rest], cams[rest], grid=40, half=half, keep=1.0)
    assert torch.equal(again, alone) and again.shape[0] > centres.shape[0]
    # colour = mean of the sampled pixels over the views that hold the voxel (one voxel, by hand)
    j = centres.shape[0] // 2
    p = centres[j]
    vals = []
    for s in range(len(cams)):
        q = cams.viewmats[s].double() @ torch.cat([p, torch.ones(1, dtype=torch.float64)])
        uvw = cams.Ks[s].double() @ q[:3]
        c, r = int(math.floor(uvw[0] / uvw[2])), int(math.floor(uvw[1] / uvw[2]))
        if masks[s, r, c]:
            vals.append(images[s, :, r, c].double())
    torch.testing.assert_close(rgb[j], torch.stack(vals).mean(0))


def test_check_init_rejects_bad_hull_values_naming_the_key():
    base = replace(C.preset_config("toy").init, kind="prior-hull")
    check_init(base)
    for key, value in [("hull_views", 0), ("hull_polars", (0.0,)), ("hull_polars", ()),
                       ("hull_steps", 0), ("hull_guidance", -1.0), ("hull_threshold", 1.0),
                       ("hull_grid", 2), ("hull_keep", 0.0), ("hull_keep", 1.5)]:
        with pytest.raises(InitError, match=f"init.{key}"):
            check_init(replace(base, **{key: value}))


def test_generate_with_a_prior_hull_of_the_toy_prior(tmp_path, monkeypatch):
    """The shipped prior's hull of a red cube: a red blob where the cube is, cached in the run."""
    from ism3d.cli import main
    calls = []
    real = PH.generate
    monkeypatch.setattr(PH, "generate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    out = tmp_path / "run"
    args = ["generate", "a red cube", "--out", str(out), "--quiet", "train.iters=1",
            "init.kind=prior-hull", "init.copies=1", "init.jitter=0", "init.use_colors=true",
            "output.video=false", "output.gif=false", "output.mesh=false"]
    assert main(args) == 0
    cloud, key = CL.load_cloud(out / INIT_CLOUD)
    assert key["kind"] == "prior-hull" and key["model"] == "toy" and key["keep"] == 0.75
    assert len(cloud.points) == C.preset_config("toy").init.num_points
    # the true cube is [-0.4, 0.4]^3: the hull holds its middle and stays near it
    lo, hi = cloud.points.min(0), cloud.points.max(0)
    assert (lo < -0.3).all() and (hi > 0.3).all() and (lo > -0.8).all() and (hi < 0.8).all()
    r, g, b = cloud.colors.mean(0)
    assert r > 0.35 and r > 2 * g and r > 2 * b
    assert json.loads((out / "summary.json").read_text())["num_gaussians"] > 0
    assert main(args + ["--force"]) == 0          # same settings: the cloud is reused
    assert calls == ["a red cube"]
    assert main(args + ["--force", "init.hull_keep=0.9"]) == 0
    assert calls == ["a red cube", "a red cube"]


def test_prior_hull_init_prompt_outside_the_vocabulary_is_exit_2(tmp_path, capsys):
    from ism3d.cli import main
    rc = main(["generate", "a red cube", "--out", str(tmp_path / "r"), "--quiet",
               "init.kind=prior-hull", "init.prompt=a hamburger"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "hamburger" in err and len(err.strip().splitlines()) == 1


def test_orient_mirrors_back_the_views_drawn_from_the_wrong_side():
    """An L-shaped object (a seat with a backrest at -x, like a chair): its true silhouettes, with
    four of the side views mirrored as a prior may draw them, come back as they were."""
    cfg = C.preset_config("toy")
    cams = PH.hull_cameras(cfg, 32)
    seat, _ = box_masks(cams, (-0.35, -0.3, -0.1), (0.35, 0.3, 0.0))
    back, _ = box_masks(cams, (-0.35, -0.3, 0.0), (-0.25, 0.3, 0.5))
    masks = seat | back
    images = masks[:, None].float().expand(-1, 3, -1, -1).clone()
    wrong = torch.tensor([1, 2, 6, 11])             # azimuths 45, 90, 270 (polar 90); 135 (polar 60)
    bad = masks.clone()
    bad[wrong] = bad[wrong].flip(-1)
    half = 3.5 * math.tan(0.275)
    fixed, fixed_images, flipped = PH.orient(bad, images, cams, grid=40, half=half, keep=0.75)
    assert flipped.nonzero().flatten().tolist() == wrong.tolist()
    assert torch.equal(fixed, masks)
    assert torch.equal(fixed_images[wrong], images[wrong].flip(-1))
