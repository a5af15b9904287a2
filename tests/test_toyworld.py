"""ToyWorld: objects (counts, colours, shading, geometry, symmetry), captions, vocabulary, data
batches, the training script (2 CPU steps -> a loadable prior) and its metrics.

CPU only, small images; the whole file runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from ism3d.cameras import orbit_cameras
from ism3d.guidance.prompts import VIEW_SUFFIXES, view_weights
from ism3d.priors import PixelPrior
from ism3d.priors.base import PriorError
from ism3d.priors.pixel import PixelPriorConfig
from ism3d.render import render
from ism3d.render.sh import SH_C0
from ism3d.toyworld import model_card
from ism3d.toyworld import prior_eval as pe
from ism3d.toyworld import prior_model as pm
from ism3d.toyworld import train_prior as tp
from ism3d.toyworld.data import ObjectBank, DataConfig, ToyWorldData
from ism3d.toyworld.world import (AMBIENT, ASYMMETRIC, COLOURS, FAMILIES, LIGHTS, SYMMETRIC, VIEWS,
                                  WorldError, asymmetric_part_mask, caption, make_object,
                                  parse_prompt, view_of_azimuth, vocabulary)
from ism3d.types import Gaussians


def quat_to_R(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3], float64, written out independently of the world code."""
    q = q.double() / q.double().norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
    ], -2)


def rgb_of(g: Gaussians) -> torch.Tensor:
    return (0.5 + SH_C0 * g.sh[:, 0].double())                     # [N, 3]


def shade_ref(n: torch.Tensor) -> torch.Tensor:
    s = torch.full(n.shape[:1], AMBIENT, dtype=torch.float64)
    for d, w in LIGHTS:
        l = torch.tensor(d, dtype=torch.float64)
        s = s + w * (n.double() @ (l / l.norm())).clamp_min(0)
    return s.clamp(max=1)


def cams_at(az, res=24, polar=75.0, radius=3.5, fovy=0.55):
    az = torch.tensor(az, dtype=torch.float64)
    n = az.shape[0]
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return orbit_cameras(full(polar), az, full(radius), full(fovy), res, res)


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_with_count_size_and_colour(family):
    for colour in ("red", "cyan"):
        g = make_object(family, colour, n_points=1500)
        N = len(g)
        assert 1400 <= N <= 2000, N                                 # ~n_points (+ small-patch minimums)
        assert g.means.shape == (N, 3) and g.quats.shape == (N, 4) and g.scales.shape == (N, 3)
        assert g.opacities.shape == (N,) and g.sh.shape == (N, 1, 3) and g.sh_degree == 0
        for t in (g.means, g.quats, g.scales, g.opacities, g.sh):
            assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(N), atol=1e-5)
        # flat discs: two equal in-plane scales, a thin third one
        assert torch.all(g.scales[:, 2] < 0.2 * g.scales[:, 0])
        assert torch.allclose(g.scales[:, 0], g.scales[:, 1])
        assert torch.all((g.opacities > 0.9) & (g.opacities < 1))
        # about one world unit across
        ext = g.means.amax(0) - g.means.amin(0)
        assert 0.75 <= float(ext.max()) <= 1.05, ext
        assert float((0.5 * (g.means.amax(0) + g.means.amin(0))).abs().max()) < 0.15
        # every saturated gaussian has the colour's hue (shade and tint only scale the value)
        rgb = rgb_of(g)
        base = torch.tensor(COLOURS[colour], dtype=torch.float64)
        sat = (rgb.amax(1) - rgb.amin(1)) / rgb.amax(1).clamp_min(1e-9)
        coloured = sat > 0.2
        assert coloured.float().mean() > 0.85
        ratio = rgb[coloured] / base                                # [M, 3]: one scale per gaussian
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
        assert torch.all((ratio[:, 0] > 0.2) & (ratio[:, 0] <= 1.0 + 1e-6))


def test_sphere_and_cube_closed_form():
    # sphere: means on the sphere, thin axis along the radius, colour = base x shade(normal)
    g = make_object("sphere", "blue", n_points=2000)
    m = g.means.double()
    r = m.norm(dim=-1)
    assert torch.allclose(r, torch.full_like(r, 0.5), atol=1e-5)
    n = m / r[:, None]
    axis = quat_to_R(g.quats)[:, :, 2]                              # local z in world
    assert torch.allclose((axis * n).sum(-1).abs(), torch.ones_like(r), atol=1e-5)
    expect = torch.tensor(COLOURS["blue"], dtype=torch.float64) * shade_ref(n)[:, None]
    assert torch.allclose(rgb_of(g), expect, atol=1e-5)
    # cube: on the surface, the front face has the ambient shade only
    g = make_object("cube", "red", n_points=2000)
    m = g.means.double()
    assert torch.allclose(m.abs().amax(-1), torch.full((len(g),), 0.4, dtype=torch.float64), atol=1e-5)
    front = m[:, 0] > 0.4 - 1e-6
    assert front.sum() > 200
    base = torch.tensor(COLOURS["red"], dtype=torch.float64)
    assert torch.allclose(rgb_of(g)[front], (AMBIENT * base).expand(int(front.sum()), 3), atol=1e-5)
    top = m[:, 2] > 0.4 - 1e-6
    top_shade = AMBIENT + sum(w * max(0.0, d[2] / math.sqrt(sum(c * c for c in d))) for d, w in LIGHTS)
    assert torch.allclose(rgb_of(g)[top], (min(top_shade, 1.0) * base).expand(int(top.sum()), 3), atol=1e-5)


def test_sphere_renders_opaque_with_the_projected_size():
    res = 32
    out = render(make_object("sphere", "green"), cams_at([0.0], res=res, polar=90.0), torch.ones(3),
                 backend="torch")
    alpha = out.alpha[0, 0]
    assert float(alpha[res // 2 - 2: res // 2 + 2, res // 2 - 2: res // 2 + 2].min()) > 0.99
    # silhouette radius of a sphere (R 0.5) at distance 3.5: f * R / sqrt(d^2 - R^2) pixels
    f = 0.5 * res / math.tan(0.5 * 0.55)
    r_px = f * 0.5 / math.sqrt(3.5 ** 2 - 0.25)
    r_seen = math.sqrt(float((alpha > 0.5).sum()) / math.pi)
    # edge-on discs at the rim, blurred by the renderer's eps2d (0.3 px^2), widen it by ~1 pixel
    assert r_px <= r_seen <= r_px + 1.5, (r_seen, r_px)


def _mirror_gap(g: Gaussians, res: int = 32) -> float:
    """Largest share of pixels that differ (> 0.2 in some channel) between the view at azimuth a
    and the horizontally mirrored view at 180 - a, over a = 0, 30, 60, 90. The mirror x -> -x maps
    one camera onto the other, so the share is ~0 for an object (and lighting) symmetric under it;
    disc sampling leaves a few edge pixels."""
    az = [0.0, 30.0, 60.0, 90.0]
    out = render(g, cams_at(az + [180.0 - a for a in az], res=res), torch.ones(3), backend="torch")
    a, b = out.rgb[:4], out.rgb[4:].flip(-1)
    return float(((a - b).abs().amax(1) > 0.2).float().mean(dim=(1, 2)).max())


def _without(g: Gaussians, drop: torch.Tensor) -> Gaussians:
    k = ~drop
    return Gaussians(g.means[k], g.quats[k], g.scales[k], g.opacities[k], g.sh[k], 0)


def test_symmetric_families_look_the_same_from_the_back_asymmetric_do_not():
    objs = {f: make_object(f, "orange") for f in FAMILIES}
    gaps = {f: _mirror_gap(g) for f, g in objs.items()}
    for f in SYMMETRIC:
        assert gaps[f] < 0.01, (f, gaps[f])
        assert not asymmetric_part_mask(f, objs[f]).any()
    for f in ASYMMETRIC:
        assert gaps[f] > 0.018, (f, gaps[f])
        # ... and the asymmetric part is exactly what breaks the symmetry
        mask = asymmetric_part_mask(f, objs[f])
        assert 0.01 < float(mask.float().mean()) < 0.35, (f, float(mask.float().mean()))
        assert _mirror_gap(_without(objs[f], mask)) < 0.01, f


def test_asymmetric_parts_sit_on_the_documented_side():
    side = {"mug": 1.0, "house": 1.0, "chair": -1.0}                # +x = front
    for f in ASYMMETRIC:
        g = make_object(f, "pink")
        x = g.means[asymmetric_part_mask(f, g), 0]
        assert bool((x * side[f] > 0.2).all()), f


def test_seed_moves_the_discs_not_the_object():
    a, b = make_object("torus", "red", seed=0), make_object("torus", "red", seed=1)
    assert len(a) == len(b) and not torch.allclose(a.means, b.means)
    ra = render(a, cams_at([30.0]), torch.ones(3), backend="torch").rgb
    rb = render(b, cams_at([30.0]), torch.ones(3), backend="torch").rgb
    assert float((ra - rb).abs().mean()) < 0.01


def test_make_object_rejects_unknown_words():
    with pytest.raises(WorldError, match="family"):
        make_object("dragon", "red")
    with pytest.raises(WorldError, match="colour"):
        make_object("cube", "magenta")


# ---------------------------------------------------------------------------------------------
# Language
# ---------------------------------------------------------------------------------------------
def test_caption_grammar_and_errors():
    assert caption("red", "cube") == "a red cube"
    assert caption("blue", "mug", "back") == "a blue mug, back view"
    assert caption("orange", "torus", "side") == "an orange torus, side view"
    # the guidance appends ", front view" to the user prompt: the same text
    assert caption("green", "cone") + VIEW_SUFFIXES[0] == caption("green", "cone", "front")
    for bad in (("red", "cube", "top"), ("teal", "cube", None), ("red", "ball", None)):
        with pytest.raises(WorldError):
            caption(*bad)


def test_view_of_azimuth_thresholds_and_guidance_consistency():
    az = torch.tensor([0.0, 44.9, 45.0, -45.0, 90.0, -90.0, 134.9, 135.0, -135.0, 180.0, -180.0,
                       360.0, 225.0, -44.9])
    assert view_of_azimuth(az) == ["front", "front", "side", "side", "side", "side", "side", "back",
                                   "back", "back", "back", "front", "back", "front"]
    # the caption names the view whose interpolation weight is the larger one in the guidance
    a = torch.linspace(-179.3, 179.3, 721)
    front, r = view_weights(a)
    expect = [("front" if rr > 0.5 else "side") if fr else ("side" if rr > 0.5 else "back")
              for fr, rr in zip(front.tolist(), r.tolist())]
    assert view_of_azimuth(a) == expect


def test_vocabulary_covers_every_caption_and_guidance_prompt():
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab))
    for w in ("a", "front", "side", "back", "view", *COLOURS, *FAMILIES):
        assert w in vocab
    cfg = PixelPriorConfig(image_size=16, vocab=vocab, permissive=False, text_dim=16, text_layers=1,
                           text_heads=2, text_ff=16,
                           unet=dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                     block_out_channels=[8, 16], norm_num_groups=4,
                                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                                     cross_attention_dim=16, attention_head_dim=2))
    prior = PixelPrior(cfg)
    for f in FAMILIES:
        for c in COLOURS:
            prior.check_prompt(caption(c, f))                       # raises on an unknown word
            for sfx in VIEW_SUFFIXES:
                prior.check_prompt(caption(c, f) + sfx)
            for v in VIEWS:
                words = prior.split_words(caption(c, f, v))
                assert set(words) <= set(vocab)
                assert len(words) + 1 <= pm.prior_config(32, "small").max_length


def test_parse_prompt():
    assert parse_prompt("a red cube") == ("red", "cube")
    assert parse_prompt("a orange house") == ("orange", "house")
    assert parse_prompt("A Yellow MUG, back view") == ("yellow", "mug")
    assert parse_prompt("a cube") is None
    assert parse_prompt("a red blue cube") is None
    assert parse_prompt("a red cube and a torus") is None
    assert parse_prompt("hello") is None
    for f in FAMILIES:
        for c in COLOURS:
            for v in (None, *VIEWS):
                assert parse_prompt(caption(c, f, v)) == (c, f)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bank():
    return ObjectBank(n_points=500)


def test_bank_render_equals_a_plain_render_of_each_object(small_bank):
    keys = [("cube", "red"), ("mug", "blue"), ("chair", "pink")]
    obj = torch.tensor([small_bank.index(*k) for k in keys] * 2)        # 6 cameras, 3 objects
    cams = cams_at([10.0, 100.0, -60.0, 200.0, 33.0, 0.0], res=16)
    bg = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    rgb, alpha, depth = small_bank.render(obj, cams, bg, objects_per_call=2, backend="torch")
    for c in range(6):
        g = small_bank.gaussians(int(obj[c]))
        ref = render(g, cams[c], bg[c], backend="torch", near=0.01, far=8.0)
        assert torch.allclose(rgb[c], ref.rgb[0].clamp(0, 1), atol=2e-4)
        assert torch.allclose(alpha[c], ref.alpha[0], atol=2e-4)
        assert torch.allclose(depth[c], ref.depth[0], atol=2e-3)


def test_batches_are_deterministic_per_seed_and_well_formed(small_bank):
    cfg = DataConfig(res=16, n_points=500, p_disparity=0.25)
    data = ToyWorldData(cfg, bank=small_bank)
    a = data.batch(16, torch.Generator().manual_seed(3))
    b = data.batch(16, torch.Generator().manual_seed(3))
    c = data.batch(16, torch.Generator().manual_seed(4))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 16, 16)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    views = view_of_azimuth(a.azimuth)
    for i, text in enumerate(a.captions):
        f, col = small_bank.keys[int(a.obj[i])]
        ok = ("", caption(col, f), caption(col, f, views[i]))
        assert text in ok or text.replace("a ", "an ", 1) in ok, text
    # polar in the orbit range; disparity images are grey on black
    assert bool(((a.polar >= 45) & (a.polar <= 105)).all())
    for i in range(16):
        img = a.images[i]
        if a.disparity[i]:
            assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
            assert float(img.max()) > 0.1                           # the object, in [0.1, 1]
    assert 0 < int(a.disparity.sum()) < 16


def test_training_views_ignore_a_stratified_azimuth_sampler(small_bank):
    # the views of one object are consecutive in a batch: with the distillation's stratified
    # sampler they would all sit in one slice of azimuths, so the data draws them independently
    from ism3d.config import CameraConfig
    base = DataConfig(res=8, n_points=500, objects_per_batch=2)
    strat = DataConfig(res=8, n_points=500, objects_per_batch=2,
                       camera=CameraConfig(azimuth_sampling="stratified"))
    a = ToyWorldData(base, bank=small_bank).batch(16, torch.Generator().manual_seed(1))
    b = ToyWorldData(strat, bank=small_bank).batch(16, torch.Generator().manual_seed(1))
    assert torch.equal(a.azimuth, b.azimuth) and torch.equal(a.images, b.images)
    # 8 views of one object spread over the circle, not over one eighth of it
    assert float(a.azimuth[:8].max() - a.azimuth[:8].min()) > 45.0


def test_caption_shares_and_backgrounds(small_bank):
    cfg = DataConfig(res=8, n_points=500, p_disparity=0.0, p_empty=0.1, p_plain=0.2)
    data = ToyWorldData(cfg, bank=small_bank)
    n = 200                                                         # tolerances ~2.5 sd
    b = data.batch(n, torch.Generator().manual_seed(0))
    empty = sum(t == "" for t in b.captions) / n
    plain = sum(t != "" and "view" not in t for t in b.captions) / n
    assert abs(empty - 0.1) < 0.055 and abs(plain - 0.2) < 0.075
    white = (b.background == 1).all(1).float().mean()
    assert abs(float(white) - (1 - cfg.bg_aug_prob)) < 0.085
    # where the object does not cover a corner pixel, it shows the background
    corner = b.images[:, :, 0, 0]                                   # [B, 3]
    close = (corner - b.background).abs().amax(1) < 1e-4
    assert float(close.float().mean()) > 0.5


def test_data_rejects_bad_shares():
    with pytest.raises(WorldError):
        ToyWorldData(DataConfig(p_empty=0.7, p_plain=0.5), bank=object())


# ---------------------------------------------------------------------------------------------
# Training script and metrics
# ---------------------------------------------------------------------------------------------
def test_two_step_training_writes_a_loadable_fp16_prior(tmp_path):
    out = tmp_path / "prior"
    metrics = tp.main(["--out", str(out), "--arch", "tiny", "--res", "16", "--batch", "4",
                       "--steps", "2", "--warmup", "1", "--quick", "--points", "400",
                       "--device", "cpu", "--log-every", "1"])
    assert metrics["training"]["steps"] == 2
    for name in ("config.json", "model.safetensors", "samples.png", "metrics.json", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    prior = PixelPrior.from_pretrained(out)
    assert prior.image_size == 16 and prior.words == vocabulary() and not prior.config.permissive
    emb = prior.embed(["a red cube, front view", ""])
    e = prior.eps(torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), emb)
    assert e.shape == (2, 3, 16, 16) and torch.isfinite(e).all()
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["summary"]) == {"hue_match", "iou", "shape_acc", "framed"}
    assert saved["gt_reference"]["hue_match"] == 1.0 and saved["data_reference"]["hue_match"] > 0.9
    # the card says which cameras the data had: the toy framing, without look-at jitter
    assert saved["training"]["camera"]["jitter_target"] == 0.0
    # ...with azimuths drawn independently, though the toy preset distils with stratified ones
    assert saved["training"]["camera"]["azimuth_sampling"] == "uniform"
    assert "look-at jitter none;" in (out / "MODEL_CARD.md").read_text()
    assert model_card._jitter({"jitter_center": 0.05, "jitter_target": 0.05, "jitter_up": 0.01}) == \
        "centre U(+-0.025), target N(0, 0.05^2), up N(0, 0.01^2)"
    # --init-from continues from the saved weights (with lr ~ 0 they come back unchanged); a
    # time budget of 3 s cuts 100000 steps to what fits, and the run still ends cleanly and saves
    again = tmp_path / "again"
    m2 = tp.main(["--out", str(again), "--init-from", str(out), "--batch", "2", "--steps", "100000",
                  "--warmup", "4", "--minutes", "0.05", "--lr", "1e-12", "--no-eval", "--points", "300",
                  "--device", "cpu"])
    assert 1 <= m2["training"]["steps"] < 1000 and not (again / "metrics.json").exists()
    assert m2["training"]["train_seconds"] < 20.0
    a, b = prior.state_dict(), PixelPrior.from_pretrained(again).state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(pm.TrainPriorError, match="--res"):
        tp.main(["--out", str(tmp_path / "bad"), "--init-from", str(out), "--res", "32", "--device", "cpu"])


def test_patchify_starts_as_the_small_prior_on_pooled_images():
    # Independent computation: run the patch-1 prior on the 2x2-mean image and upsample its output
    # by repetition; the patch-2 prior made from it must give exactly that (float64).
    small = PixelPrior(pm.prior_config(16, "tiny"), dtype=torch.float64, seed=3)
    with torch.no_grad():
        for p in small.unet.parameters():   # non-trivial conv_in/out biases and weights
            p.add_(0.05 * torch.randn_like(p))
    big = pm.patchify(small, 2)
    assert (big.image_size, big.patch, big.latent_shape) == (32, 2, (3, 32, 32))
    assert big.config.unet["in_channels"] == big.config.unet["out_channels"] == 12
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([5, 400, 990])
    emb = small.text_encoder(small.tokens(["a red cube", "", "a blue mug, back view"]))
    with torch.no_grad():
        want = small.unet_forward(torch.nn.functional.avg_pool2d(x, 2), t, emb)      # [3, 3, 16, 16]
        want = want.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)          # [3, 3, 32, 32]
        got = big.unet_forward(x, t, emb)
    assert got.shape == (3, 3, 32, 32)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), (got - want).abs().max()
    # and the unshuffle is the real thing: a patch-2 UNet sees sub-pixels, not the mean image
    with torch.no_grad():
        big.unet.conv_in.weight[:, 1::4] += 0.3   # sub-pixel (0, 1) of each colour
        assert not torch.allclose(big.unet_forward(x, t, emb), want, atol=1e-3)
    with pytest.raises(pm.TrainPriorError, match="patch-1"):
        pm.patchify(big, 2)


def test_patched_prior_saves_loads_and_trains(tmp_path):
    cfg = pm.prior_config(32, "tiny", patch=2)
    assert (cfg.image_size, cfg.patch, cfg.unet["sample_size"], cfg.unet["in_channels"]) == (32, 2, 16, 12)
    prior = PixelPrior(cfg, seed=1)
    prior.save_pretrained(tmp_path / "p")
    back = PixelPrior.from_pretrained(tmp_path / "p")
    assert back.patch == 2 and back.latent_shape == (3, 32, 32)
    x, t, emb = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), back.embed(["a red cube", ""])
    assert torch.equal(back.eps(x, t, emb), prior.eps(x, t, emb))
    # a config that disagrees with its patch fails with the reason
    bad = PixelPriorConfig(**{**cfg.__dict__, "patch": 1})
    with pytest.raises(PriorError, match="3 \\* patch"):
        PixelPrior(bad)
    # --init-from a 16x16 patch-1 prior with --patch 2 trains a 32x32 patch-2 prior (the warm start)
    small = tmp_path / "small"
    PixelPrior(pm.prior_config(16, "tiny")).save_pretrained(small)
    m = tp.main(["--out", str(tmp_path / "big"), "--init-from", str(small), "--patch", "2",
                 "--batch", "2", "--steps", "2", "--warmup", "1", "--no-eval", "--points", "300",
                 "--device", "cpu"])
    assert m["training"]["steps"] == 2
    trained = PixelPrior.from_pretrained(tmp_path / "big")
    assert (trained.image_size, trained.patch) == (32, 2)
    # its config says version 2 (older readers ask for an upgrade); patch-1 configs stay version 1
    assert json.loads((tmp_path / "big" / "config.json").read_text())["version"] == 2
    assert json.loads((small / "config.json").read_text())["version"] == 1
    assert "patch" not in json.loads((small / "config.json").read_text())
    # --patch 2 again continues the patch-2 prior (no second patchify)
    m = tp.main(["--out", str(tmp_path / "big2"), "--init-from", str(tmp_path / "big"), "--patch", "2",
                 "--batch", "2", "--steps", "1", "--warmup", "1", "--no-eval", "--points", "300",
                 "--device", "cpu"])
    assert PixelPrior.from_pretrained(tmp_path / "big2").image_size == 32
    with pytest.raises(pm.TrainPriorError, match="--patch must be"):
        tp.main(["--out", str(tmp_path / "bad"), "--patch", "0", "--device", "cpu"])
    with pytest.raises(pm.TrainPriorError, match="--res 16"):
        tp.main(["--out", str(tmp_path / "bad"), "--init-from", str(small), "--patch", "2",
                 "--res", "16", "--device", "cpu"])


def test_shipped_architecture_fits_the_weight_limit():
    cfg = pm.prior_config(32, "small")
    prior = PixelPrior(cfg)
    n = sum(p.numel() for p in prior.state_dict().values())
    assert 2 * n < pm.WEIGHTS_LIMIT, n
    with pytest.raises(pm.TrainPriorError):
        pm.prior_config(20, "small")                                # 3 downsamplings need res % 8 == 0


def test_shipped_prior_was_trained_on_the_toy_presets_cameras():
    """The distillation must render what the prior saw: the shipped prior's recorded training
    cameras (metrics.json) are the `toy` preset's camera section, look-at jitter (none) included."""
    from dataclasses import asdict

    from ism3d.config import preset_config
    from ism3d.priors.stable_diffusion import TOY_PRIOR_DIR

    metrics = json.loads((TOY_PRIOR_DIR / "metrics.json").read_text())
    trained = metrics["training"]["camera"]
    toy = asdict(preset_config("toy").camera)
    for key in ("polar_range", "azimuth_range", "radius_range", "radius_floor", "fovy_range",
                "fovy_floor", "jitter_center", "jitter_target", "jitter_up"):
        assert trained[key] == pytest.approx(toy[key]), key
    assert toy["jitter_center"] == toy["jitter_target"] == toy["jitter_up"] == 0.0


def test_schedules():
    assert tp.lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert tp.lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert tp.lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert tp.lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert tp.lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    # 50 steps done in 100 s at 2 s/step; 600 s budget: 0.97 * 500 / 2 = 242 more
    assert tp.fit_horizon(50, 100.0, 2.0, 600.0, 10 ** 6) == 50 + 242
    assert tp.fit_horizon(50, 100.0, 2.0, 600.0, 120) == 120
    assert tp.fit_horizon(50, 700.0, 2.0, 600.0, 10 ** 6) == 51        # over budget: stop next step
    assert tp.ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert tp.ema_decay_at(10 ** 6, 0.999) == 0.999


class OraclePrior:
    """eps of the data distribution that is one image x* (per prompt): eps(x, t) = (x - sqrt(abar_t)
    x*) / sqrt(1 - abar_t), exactly. DDIM with any guidance scale must return x*."""

    def __init__(self, targets: dict[str, torch.Tensor], size: int = 8):
        from ism3d.priors.base import alphas_cumprod_from_config
        from ism3d.priors.pixel import SD_SCHEDULE
        self.image_size, self.device = size, torch.device("cpu")
        self.alphas_cumprod = alphas_cumprod_from_config(SD_SCHEDULE)
        self.targets = targets                                      # prompt -> [3, S, S] in [-1, 1]
        self.calls = 0

    def embed(self, prompts):
        return torch.stack([self.targets[p] for p in prompts])     # the "embedding" is x* itself

    def eps(self, x, t, emb):
        self.calls += 1
        a = self.alphas_cumprod.double()[t][:, None, None, None]
        return ((x.double() - a.sqrt() * emb.double()) / (1 - a).sqrt()).float()

    def decode(self, z):
        return ((z + 1) / 2).clamp(0, 1)


def test_ddim_sample_recovers_the_oracle_image():
    g = torch.Generator().manual_seed(0)
    red, blue = (torch.rand(3, 8, 8, generator=g) * 2 - 1 for _ in range(2))
    prior = OraclePrior({"a red cube": red, "a blue cube": blue, "": torch.zeros(3, 8, 8)})
    out = pe.ddim_sample(prior, ["a red cube", "a blue cube"], steps=10, cfg_scale=1.0,
                         gen=torch.Generator().manual_seed(1))
    assert prior.calls == 10
    assert torch.allclose(out, (torch.stack([red, blue]) + 1) / 2, atol=1e-4)
    # guidance g: eps_u + g (eps_c - eps_u) is the oracle of x_u + g (x_c - x_u) (linear in x*)
    out = pe.ddim_sample(prior, ["a red cube"], steps=6, cfg_scale=0.5, gen=torch.Generator().manual_seed(2))
    assert torch.allclose(out[0], ((0.5 * red).clamp(-1, 1) + 1) / 2, atol=1e-4)


def test_foreground_and_hue_match_on_a_synthetic_image():
    img = torch.empty(2, 3, 12, 12)
    img[0] = torch.tensor([0.3, 0.6, 0.9])[:, None, None]           # light blue background
    img[1] = 1.0                                                    # white
    red = torch.tensor(COLOURS["red"])[:, None, None]
    img[0, :, 3:7, 4:9] = red * 0.5                                 # shaded red square
    img[1, :, 2:10, 2:5] = red
    img[1, :, 2:10, 5:8] = 0.1                                      # a dark (uncoloured) part
    mask, bg = pe.foreground(img)
    assert torch.allclose(bg[0], torch.tensor([0.3, 0.6, 0.9])) and torch.allclose(bg[1], torch.ones(3))
    expect = torch.zeros(2, 12, 12, dtype=torch.bool)
    expect[0, 3:7, 4:9] = True
    expect[1, 2:10, 2:8] = True
    assert torch.equal(mask, expect)
    assert pe.hue_match(img, mask, "red").tolist() == [1.0, 1.0]
    assert pe.hue_match(img, mask, "pink").tolist() == [0.0, 0.0]
    assert math.isnan(float(pe.hue_match(img, torch.zeros_like(mask), "red")[0]))


def test_iou_matrix_against_a_loop():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 40, generator=g) > 0.5
    b = torch.rand(7, 40, generator=g) > 0.6
    b[0] = False
    a[0] = False
    got = pe.iou_matrix(a, b)
    for i in range(5):
        for j in range(7):
            inter = sum(bool(x and y) for x, y in zip(a[i].tolist(), b[j].tolist()))
            union = sum(bool(x or y) for x, y in zip(a[i].tolist(), b[j].tolist()))
            assert float(got[i, j]) == pytest.approx(inter / union if union else 0.0)


def test_normalise_masks_removes_position_and_scale():
    m = torch.zeros(3, 32, 32, dtype=torch.bool)
    m[0, 4:8, 10:18] = True                                         # a 4 x 8 box
    m[1, 12:24, 2:26] = True                                        # the same box, 3x, elsewhere
    m[2, 0:10, 5:9] = True                                          # touches the border
    flat, framed = pe.normalise_masks(m)
    assert torch.equal(flat[0], flat[1]) and int(flat[0].sum()) == 32 * 16
    assert framed.tolist() == [True, True, False]


# ---------------------------------------------------------------------------------------------
# GPU (run on the device: python -m pytest -q -m gpu tests/test_toyworld.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bank_render_gsplat_matches_torch():
    cpu, gpu = ObjectBank(n_points=800), ObjectBank(n_points=800, device="cuda")
    obj = torch.tensor([0, 5, 40, 70, 5, 33, 61, 12])
    cams = cams_at([0.0, 45.0, 90.0, 135.0, 180.0, -45.0, -90.0, 20.0], res=32)
    bg = torch.rand(8, 3, generator=torch.Generator().manual_seed(1))
    ref = cpu.render(obj, cams, bg, backend="torch")
    got = gpu.render(obj, cams, bg, objects_per_call=3)             # auto: gsplat on CUDA
    for r, g in zip(ref, got):
        d = (g.cpu() - r).abs()
        assert float(d.mean()) < 2e-3 and float(d.max()) < 0.1, (float(d.mean()), float(d.max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_smoke_on_cuda(tmp_path):
    metrics = tp.main(["--out", str(tmp_path / "p"), "--arch", "small", "--batch", "64",
                       "--steps", "30", "--warmup", "20", "--quick", "--device", "cuda"])
    assert metrics["training"]["steps"] == 30
    prior = PixelPrior.from_pretrained(tmp_path / "p", "cuda")
    e = prior.eps(torch.randn(2, 3, 32, 32, device="cuda"), torch.tensor([5, 500]),
                  prior.embed(["a red cube", ""]))
    assert torch.isfinite(e).all()
