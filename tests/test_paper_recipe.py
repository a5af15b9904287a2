"""The run around the guidance in the `paper` recipe (#22), each against an independent computation:
flip augmentation, scale augmentation, the reference's loss balance, its disparity, the preset's
values and the nine reference configs (examples/luciddreamer/) running on a tiny random SD.

The reference facts (EnVision-Research/LucidDreamer, read for them, never copied): train.py stacks
one render per view and adds lambda_tv * (tv_loss(images) + tv_loss(depths)) + lambda_scale *
mean(scales) to the guidance loss, whose gradient on each view's latent is summed over views;
utils/loss_utils.py tv_loss = 2 * (h_tv / count_h + w_tv / count_w) / batch; gaussian_renderer
draws scales + randn * sqrt(0.2) * scales / 4 (clamped at 0) per view and returns the disparity
focal / (depth + 10 T + 1e-5) normalised by min over T <= 0.1 and max, clamped to [0, 1]
(T: its "alpha" output, the transmittance); sd_utils flips the batch with one RandomHorizontalFlip.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ism3d import config as C
from ism3d import train as T
from ism3d.cameras import orbit_cameras
from ism3d.render import render
from ism3d.scene import SH_C0, Gaussians
from ism3d.types import GuidanceOut

from fake_point_e import fake_point_e  # noqa: F401 (a fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "luciddreamer"
B, S = 2, 32


def small_cfg(**over) -> C.Config:
    base = {"train.iters": 1, "train.batch": B, "train.checkpoint_every": 0,
            "train.preview_every": 0, "init.num_points": 300, "strategy.densify_from": 10**6,
            "render.width": S, "render.height": S, "train.disparity_prob": 0.0,
            "train.bg_aug_prob": 0.0, "train.device": "cpu"}
    base.update(over)
    return C.apply_overrides(C.preset_config("tiny"), base)


class StubGuidance:
    """A guidance of known gradient: loss = sum(images * G) (/ B with reduce=mean): d loss / d
    images = G (or G / B), as the real ones' stop-gradient injection. Records what it saw."""

    def __init__(self, G: torch.Tensor, reduce: str):
        self.G, self.reduce, self.seen = G, reduce, []

    def __call__(self, images, azimuth, warm, generator, return_images=False):
        self.seen.append(images.detach().clone())
        loss = (images * self.G).sum()
        return GuidanceOut(loss=loss / images.shape[0] if self.reduce == "mean" else loss, logs={})


def run_stub(monkeypatch, tmp_path, cfg, G, spy=None):
    stub = StubGuidance(G, cfg.guidance.reduce)
    monkeypatch.setattr(T, "make_guidance", lambda prior, gcfg, prompt: stub)
    if spy is not None:
        monkeypatch.setattr(T, "render", spy)
    logs = []
    res = T.train(cfg, "a red cube", None, tmp_path, progress=False,
                  callback=lambda p: logs.append(p.logs) and False)
    return stub, res, logs


# ---------------------------------------------------------------------------------------------
# 5. flip augmentation
# ---------------------------------------------------------------------------------------------
def test_flip_flips_the_guided_batch_and_the_gradient_flows_back(monkeypatch, tmp_path):
    G = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(0))
    plain, res_plain, _ = run_stub(monkeypatch, tmp_path / "a", small_cfg(**{"train.flip_prob": 0.0}), G)
    # flip_prob 1 with the mirrored known gradient: the same total loss as a function of the
    # gaussians, so the very same parameters after the step (the flip is differentiated through)
    flipped, res_flip, _ = run_stub(monkeypatch, tmp_path / "b", small_cfg(**{"train.flip_prob": 1.0}),
                                    torch.flip(G, dims=(-1,)))
    assert torch.equal(flipped.seen[0], torch.flip(plain.seen[0], dims=(-1,)))
    assert not torch.equal(flipped.seen[0], plain.seen[0])          # not a symmetric picture
    for k in res_plain.params:
        torch.testing.assert_close(res_flip.params[k], res_plain.params[k], rtol=1e-6, atol=1e-9)


def test_flip_coin_is_one_per_step_with_the_asked_probability(monkeypatch, tmp_path):
    cfg = small_cfg(**{"train.flip_prob": 0.5, "train.iters": 40, "init.num_points": 50})
    calls = []
    real = torch.flip
    monkeypatch.setattr(T.torch, "flip", lambda x, dims: calls.append(dims) or real(x, dims))
    run_stub(monkeypatch, tmp_path, cfg, torch.zeros(B, 3, S, S))
    assert 8 <= len(calls) <= 32 and all(d == (-1,) for d in calls)    # Binomial(40, 0.5)


# ---------------------------------------------------------------------------------------------
# 6. scale augmentation
# ---------------------------------------------------------------------------------------------
def test_scale_augmentation_statistics_and_reproducibility():
    scales = torch.rand(4000, 3, dtype=torch.float64) * 0.1 + 0.01
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    noisy = T.augment_scales(scales, 3, 1.0, g)                         # [3, N, 3]
    assert noisy.shape == (3, 4000, 3)
    rel = noisy / scales[None] - 1                                      # = sqrt(0.2) / 4 * n
    assert rel.mean().item() == pytest.approx(0.0, abs=0.003)
    assert rel.std().item() == pytest.approx(math.sqrt(0.2) / 4, rel=0.02)
    # fresh per view (and per gaussian and axis): views are independent draws
    assert abs(np.corrcoef(rel[0].flatten(), rel[1].flatten())[0, 1]) < 0.03
    torch.testing.assert_close(T.augment_scales(scales, 3, 1.0, torch.Generator().set_state(state)),
                               noisy, rtol=0, atol=0)
    # strength 10: N(0, 1.12^2) factors below -1 happen and are clamped at 0, never negative
    strong = T.augment_scales(scales, 3, 10.0, g)
    assert (strong >= 0).all() and (strong == 0).any()


def test_per_view_scales_render_as_each_view_alone():
    """One batched render with [C, N, 3] scales equals C renders of one view with its scales:
    values and gradients (torch backend; the gsplat twin is tests/test_render_gpu.py)."""
    gen = torch.Generator().manual_seed(2)
    N, Cv, f64 = 60, 3, torch.float64
    means = (torch.rand(N, 3, generator=gen, dtype=f64) - 0.5).requires_grad_(True)
    quats = torch.randn(N, 4, generator=gen, dtype=f64)
    base = (torch.rand(N, 3, generator=gen, dtype=f64) * 0.05 + 0.02)
    per_view = (base[None] * (1 + 0.3 * torch.randn(Cv, N, 3, generator=gen, dtype=f64))).abs()
    per_view.requires_grad_(True)
    ops = torch.rand(N, generator=gen, dtype=f64) * 0.8 + 0.1
    sh = torch.randn(N, 1, 3, generator=gen, dtype=f64)
    cams = orbit_cameras(torch.tensor([80.0, 90.0, 60.0]), torch.tensor([0.0, 100.0, -150.0]),
                         torch.full((Cv,), 3.0), torch.full((Cv,), 0.6), S, S)
    out = render(Gaussians(means, quats, per_view, ops, sh), cams, torch.ones(3, dtype=f64),
                 backend="torch")
    w = torch.randn_like(out.rgb)
    gm, gs = torch.autograd.grad((out.rgb * w).sum() + out.depth.sum(), (means, per_view))
    for v in range(Cv):
        one = render(Gaussians(means, quats, per_view[v], ops, sh), cams[v],
                     torch.ones(3, dtype=f64), backend="torch")
        torch.testing.assert_close(out.rgb[v:v + 1], one.rgb, rtol=1e-10, atol=1e-12)
        gm1, gs1 = torch.autograd.grad((one.rgb * w[v:v + 1]).sum() + one.depth.sum(),
                                       (means, per_view))
        if v == 0:
            acc_m, acc_s = gm1, gs1
        else:
            acc_m, acc_s = acc_m + gm1, acc_s + gs1
    torch.testing.assert_close(gm, acc_m, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gs, acc_s, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 7. loss balance, 8. disparity (inside the trainer, against the reference's formulas)
# ---------------------------------------------------------------------------------------------
def reference_tv(x: torch.Tensor) -> torch.Tensor:
    """utils/loss_utils.py tv_loss, with its sums and counts."""
    b, c, h, w = x.shape
    h_tv = (x[:, :, 1:, :] - x[:, :, :h - 1, :]).pow(2).sum()
    w_tv = (x[:, :, :, 1:] - x[:, :, :, :w - 1]).pow(2).sum()
    return 2 * (h_tv / (c * (h - 1) * w) + w_tv / (c * h * (w - 1))) / b


def reference_disparity_np(D_sum: np.ndarray, T_: np.ndarray, fovx: np.ndarray) -> np.ndarray:
    """gaussian_renderer's disparity, per view, in float64 numpy: D_sum = sum w z, T_ = transmittance."""
    out = np.empty_like(D_sum)
    for v in range(D_sum.shape[0]):
        focal = 1 / (2 * math.tan(fovx[v] / 2))
        disp = focal / (D_sum[v] + T_[v] * 10 + 1e-5)
        sel = disp[T_[v] <= 0.1]
        min_d = sel.min() if sel.size else disp.min()
        out[v] = np.clip((disp - min_d) / (disp.max() - min_d), 0.0, 1.0)
    return out


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_loss_balance_is_the_references_in_both_reductions(monkeypatch, tmp_path, reduce):
    cfg = small_cfg(**{"guidance.reduce": reduce, "train.lambda_tv": 0.7, "train.lambda_scale": 1.3,
                       "train.scale_aug": 1.0, "train.disparity": "reference"})
    G = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(4))
    seen = {}

    def spy(gauss, cams, bg, **kw):
        out = render(gauss, cams, bg, **kw)
        out.rgb.retain_grad()
        seen.update(gauss=gauss, cams=cams, out=out, kw=kw)
        return out

    _, _, logs = run_stub(monkeypatch, tmp_path, cfg, G, spy)
    out, gauss, cams = seen["out"], seen["gauss"], seen["cams"]
    assert gauss.scales.shape == (B, 300, 3) and seen["kw"]["depth_grad"] is False
    # the total loss, computed here from the reference's formulas (float64)
    rgb = out.rgb.detach().double()
    D = (out.depth * out.alpha).detach().double().numpy()[:, 0]
    Tr = 1 - out.alpha.detach().double().numpy()[:, 0]
    fovx = 2 * np.arctan(0.5 * S / cams.Ks[:, 0, 0].double().numpy())
    disp = torch.from_numpy(reference_disparity_np(D, Tr, fovx))[:, None]
    ref = ((rgb * G.double()).sum() + 0.7 * (reference_tv(rgb) + reference_tv(disp))
           + 1.3 * gauss.scales.detach().double().mean())
    expect = ref / B if reduce == "mean" else ref
    assert logs[0]["loss"] == pytest.approx(expect.item(), rel=2e-5)
    # d loss / d rgb: guidance : tv at the reference's 1 : lambda_tv in both reductions
    rgb_ = rgb.clone().requires_grad_(True)
    (g_tv,) = torch.autograd.grad(0.7 * reference_tv(rgb_), rgb_)
    scale = B if reduce == "mean" else 1
    torch.testing.assert_close(out.rgb.grad.double() * scale, G.double() + g_tv, rtol=1e-4, atol=1e-7)


def test_reference_disparity_matches_the_references_formula():
    gen = torch.Generator().manual_seed(5)
    alpha = torch.rand(3, 1, 6, 7, generator=gen, dtype=torch.float64)
    alpha[0, 0, :2] = 0.95                                   # view 0 has solid pixels
    alpha[2] = alpha[2] * 0.5                                # view 2 has none: min over all
    depth = 3 + torch.rand(3, 1, 6, 7, generator=gen, dtype=torch.float64)
    fov = torch.tensor([0.5, 0.3, 0.6], dtype=torch.float64)
    Ks = torch.zeros(3, 3, 3, dtype=torch.float64)
    Ks[:, 0, 0] = 0.5 * 7 / torch.tan(fov / 2)
    got = T.reference_disparity(depth, alpha, Ks)
    want = reference_disparity_np((depth * alpha).numpy()[:, 0], (1 - alpha).numpy()[:, 0], fov.numpy())
    np.testing.assert_allclose(got.numpy()[:, 0], want, rtol=1e-12, atol=1e-12)
    assert got.min() == 0 and got.max() == 1


def test_depth_without_z_gradient_is_a_colour_of_constant_z():
    """depth_grad=False: D = sum w z differentiates through the weights only. Twin: render the
    camera z of every gaussian (taken as constants) as its colour, on black: rgb = sum w z."""
    gen = torch.Generator().manual_seed(6)
    N = 80
    means = ((torch.rand(N, 3, generator=gen) - 0.5) * 0.8).requires_grad_(True)
    quats = torch.randn(N, 4, generator=gen)
    scales = (torch.rand(N, 3, generator=gen) * 0.05 + 0.03).requires_grad_(True)
    ops = (torch.rand(N, generator=gen) * 0.8 + 0.1).requires_grad_(True)
    cams = orbit_cameras(torch.tensor([75.0]), torch.tensor([30.0]), torch.tensor([3.0]),
                         torch.tensor([0.6]), S, S)
    sh = torch.zeros(N, 1, 3)
    out = render(Gaussians(means, quats, scales, ops, sh), cams, torch.zeros(3), backend="torch",
                 depth_grad=False)
    D = out.depth * out.alpha                                             # [1, 1, H, W]
    z = (means.detach() @ cams.viewmats[0, :3, :3].T + cams.viewmats[0, :3, 3])[:, 2]
    sh_z = ((z - 0.5) / SH_C0)[:, None, None].expand(N, 1, 3)             # colour = z, constant
    twin = render(Gaussians(means, quats, scales, ops, sh_z), cams, torch.zeros(3), backend="torch")
    torch.testing.assert_close(D[:, 0], twin.rgb[:, 0], rtol=1e-5, atol=1e-5)
    w = torch.randn_like(D[:, 0])
    g = torch.autograd.grad((D[:, 0] * w).sum(), (means, scales, ops))
    g_twin = torch.autograd.grad((twin.rgb[:, 0] * w).sum(), (means, scales, ops))
    for a, b in zip(g, g_twin):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # with the z gradient (the default) the means' gradient differs: the check above is not vacuous
    full = render(Gaussians(means, quats, scales, ops, sh), cams, torch.zeros(3), backend="torch")
    (gm_full,) = torch.autograd.grad(((full.depth * full.alpha)[:, 0] * w).sum(), means)
    assert (gm_full - g[0]).abs().max() > 1e-3 * g[0].abs().max()


# ---------------------------------------------------------------------------------------------
# 11., 12.: the preset, and the presets built on it
# ---------------------------------------------------------------------------------------------
def test_paper_preset_is_the_reference_recipe():
    c = C.preset_config("paper")
    g, t, s, i, cam, p = c.guidance, c.train, c.strategy, c.init, c.camera, c.prior
    assert (g.method, g.scale, g.lambda_guidance, g.warmup_iters) == ("ism", 7.5, 0.1, 1500)
    assert g.negative_prompt == ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, "
                                 "dull, dark, low-resolution, oversaturation.")
    assert (g.perp_neg, g.delta_t, g.delta_t_start, g.delta_t_rounding) == (False, 50, 100, "floor")
    assert (g.t_min, g.t_max_end, g.t_max_start, g.t_first) == (21, 500, 980, 1)
    assert (g.delta_s, g.xs_inv_steps, g.offset_noise, g.sds_weighting) == (200, 5, 0.1, "gamma")
    assert (g.reduce, p.latent, s.stats_views, s.max_screen_radius, s.max_gaussians) == \
        ("sum", "sample", "last", 0.0, 0)
    assert (t.flip_prob, t.scale_aug, t.disparity, t.disparity_prob, t.bg_aug_prob) == \
        (0.5, 1.0, "reference", 0.2, 0.66)
    assert (t.lambda_tv, t.lambda_scale, t.iters, t.batch) == (1.0, 1.0, 5000, 4)
    assert (i.kind, i.num_points, i.radius, i.volume_uniform, i.opacity) == ("ball", 100_000, 0.5, False, 0.1)
    assert (s.densify_from, s.densify_every, s.densify_until, s.opacity_reset_every) == (100, 100, 3000, 300)
    assert (s.prune_big_after, s.max_world_scale, s.grad_threshold) == (300, 0.35, 0.00075)
    assert (cam.polar_range, cam.azimuth_range, cam.angle_gamma) == ((45, 105), (-180, 180), 1.0)
    assert (c.render.width, c.render.height, p.name) == (512, 512, "stabilityai/stable-diffusion-2-1-base")


def test_fast_is_paper_with_its_three_levers_and_toy_keeps_its_tuned_balance():
    paper, fast = C.to_dict(C.preset_config("paper")), C.to_dict(C.preset_config("fast"))
    diff = {f"{s}.{k}" for s in paper for k in paper[s] if paper[s][k] != fast[s][k]}
    assert diff == {"train.iters", "render.width", "render.height", "guidance.delta_s",
                    "guidance.xs_inv_steps", "guidance.warmup_iters", "strategy.densify_from",
                    "strategy.densify_every", "strategy.densify_until", "strategy.opacity_reset_every",
                    "strategy.reset_until", "strategy.prune_big_after", "camera.decay_every"}
    f = C.preset_config("fast")
    assert (f.render.width, f.prior.resolution, f.guidance.delta_s, f.guidance.xs_inv_steps) == (256, 0, 1000, 1)
    # every iteration schedule scaled by the same 0.3
    for k, v in {"guidance.warmup_iters": 1500, "strategy.densify_until": 3000,
                 "strategy.opacity_reset_every": 300, "camera.decay_every": 500}.items():
        s_, n = k.split(".")
        assert fast[s_][n] == round(v * 0.3)
    toy = C.preset_config("toy")
    # B = 8 with a view mean: tv and scale weighed as before the reference's balance came in
    assert (toy.train.batch, toy.guidance.reduce, toy.train.lambda_tv, toy.train.lambda_scale) == (8, "mean", 4.0, 8.0)
    assert (toy.train.disparity, toy.train.flip_prob, toy.train.scale_aug) == ("foreground", 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# The nine reference configs
# ---------------------------------------------------------------------------------------------
NEG_DARK = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
            "low-resolution, oversaturation.")
NEG = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, low-resolution, oversaturation."
# name: (text, negative, perpneg, delta_t, init_prompt or None for the sphere, theta, phi, gamma)
REFERENCE = {
    "axe": ("Viking axe, fantasy, weapon, blender, 8k, HDR.", NEG, False, 25, "A flag.", (45, 105), (-180, 180), 1.0),
    "bagel": ("a DSLR photo of a bagel filled with cream cheese and lox.", NEG_DARK, False, 80, "a bagel.",
              (45, 105), (-180, 180), 1.0),
    "cat_armor": ("a DSLR photo of a cat wearing armor.", NEG, True, 80, "a cat.", (60, 90), (-180, 180), 1.5),
    "crown": ("a DSLR photo of the Imperial State Crown of England.", "unrealistic, blurry, low quality.", False,
              80, "the Imperial State Crown of England.", (45, 105), (-180, 180), 1.0),
    "football_helmet": ("a DSLR photo of a football helmet.", NEG, False, 50, "a football helmet.", (45, 90),
                        (-180, 180), 1.0),
    "hamburger": ("A delicious hamburger.", NEG_DARK, False, 50, None, (45, 105), (-180, 180), 1.0),
    "ts_lora": ("A <Taylor_Swift> wearing sunglasses.", NEG_DARK, True, 80, "a girl head.", (60, 120), (-80, 80),
                1.5),
    "white_hair_ironman": ("A portrait of IRONMAN, white hair, head, photorealistic, 8K, HDR.",
                           "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, "
                           "low-resolution.", True, 50, "a man head.", (45, 90), (-80, 80), 1.5),
    "zombie_joker": ("Zombie JOKER, head, photorealistic, 8K, HDR.", NEG_DARK, True, 50, "a man head.", (45, 90),
                     (-80, 80), 1.5),
}


def example(name: str) -> tuple[str, dict]:
    path = EXAMPLES / f"{name}.yaml"
    prompt = next(ln.split(":", 1)[1].strip() for ln in path.read_text().splitlines()
                  if ln.startswith("# prompt:"))
    return prompt, yaml.safe_load(path.read_text())


def test_the_nine_examples_hold_the_reference_values():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(REFERENCE)
    for name, (text, neg, perp, dt, init, theta, phi, gamma) in REFERENCE.items():
        prompt, data = example(name)
        c = C.from_dict(data, base=C.preset_config("paper"))
        if name == "ts_lora":      # its LoRA_path: the reference's embedding of <Taylor_Swift>
            assert c.prior.textual_inversion == ("step_inv_1000.safetensors:<Taylor_Swift>",)
        assert prompt == text, name
        g = c.guidance
        assert (g.negative_prompt, g.perp_neg, g.delta_t, g.delta_t_start) == (neg, perp, dt, 100), name
        assert g.delta_t_rounding == ("ceil" if perp else "floor"), name
        assert (c.init.kind, c.init.prompt) == (("point-e", init) if init else ("ball", "")), name
        assert (c.camera.polar_range, c.camera.azimuth_range, c.camera.azimuth_range_max,
                c.camera.angle_gamma) == (theta, phi, (-180, 180), gamma), name
        # everything else is paper's: the reference's defaults
        assert (g.reduce, c.train.flip_prob, c.train.scale_aug, c.train.iters) == ("sum", 0.5, 1.0, 5000)


@pytest.fixture(scope="module")
def tiny_prior(tiny_sd_dir):
    from ism3d.priors import load_prior
    return load_prior(replace(C.PriorConfig(), name=tiny_sd_dir, dtype="fp32"), torch.device("cpu"))


# ts_lora needs its embedding file and a text encoder 1024 wide: it runs as shipped in
# tests/test_custom_models.py::test_the_reference_ts_lora_config_runs_with_an_embedding_file
@pytest.mark.parametrize("name", sorted(set(REFERENCE) - {"ts_lora"}))
def test_each_example_runs_on_a_tiny_random_sd(name, tiny_sd_dir, tiny_prior, fake_point_e, tmp_path):
    from ism3d.generate import prepare, run

    prompt, data = example(name)
    cfg = C.from_dict(data, base=C.preset_config("paper"))
    cfg = C.apply_overrides(cfg, {
        "prior.name": tiny_sd_dir, "prior.dtype": "fp32", "train.device": "cpu", "train.iters": 2,
        "render.width": 32, "render.height": 32, "init.num_points": 400 if cfg.init.kind == "point-e" else 300,
        "train.checkpoint_every": 0, "train.preview_every": 0, "output.video": False, "output.gif": False,
        "output.mesh": False, "output.video_size": 32})
    plan = prepare(prompt, cfg=cfg, preset="paper", out_dir=tmp_path / name)
    summary = run(plan, prior=tiny_prior, progress=False)
    assert summary["iterations"] == 2 and (tmp_path / name / "gaussians.ply").is_file()
    if cfg.init.kind == "point-e":
        assert fake_point_e["sample"][1]["texts"] == [cfg.init.prompt]


@pytest.mark.parametrize("before", [True, False])
def test_densify_before_the_step_skips_the_replaced_parameters_update(monkeypatch, tmp_path, before):
    """The reference densifies (and resets opacities) before optimizer.step(): a replaced
    Parameter has no gradient, so it keeps its value through that iteration. Here an opacity
    reset to min(o, 0.5) at the first iteration replaces the opacities only."""
    from ism3d.scene import init_params
    cfg = small_cfg(**{"strategy.densify_before_step": before, "strategy.opacity_reset_every": 1,
                       "strategy.reset_until": 10, "strategy.reset_opacity": 0.5})
    init = init_params(cfg.init, torch.Generator().manual_seed(cfg.train.seed))
    G = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(8))
    _, res, _ = run_stub(monkeypatch, tmp_path, cfg, G)
    same_opacity = torch.equal(res.params["opacities"].detach(), init["opacities"].detach())
    assert same_opacity == before
    assert not torch.equal(res.params["means"].detach(), init["means"].detach())   # stepped either way
    assert C.preset_config("paper").strategy.densify_before_step
