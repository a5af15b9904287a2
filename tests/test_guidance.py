"""ISM / SDS guidance, Perp-Neg and the t sampler, against independent float64 computations.

The fake prior below is an explicit function eps = tanh(A x + b(t) + mean(emb) P) with identity
encode (z0 = 2 * image - 1) at 8x8, and a log of (batch size, t values) of every eps call.
"""
import dataclasses
import math
import zlib

import numpy as np
import pytest
import torch

from ism3d.config import GuidanceConfig
from ism3d.guidance import GuidanceError, ISMGuidance, SDSGuidance, make_guidance
from ism3d.guidance.perpneg import combine, guided_eps, perp_neg_weights, perpendicular
from ism3d.guidance.prompts import BACK, FRONT, SIDE, ViewPrompts
from ism3d.guidance.schedule import interval_and_range, sample_noise, sample_t, warm

F64 = torch.float64
B, C, S = 3, 3, 8
AZ = torch.tensor([0.0, 135.0, -45.0])
PROMPT = "a corgi"


def emb_of(text: str, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return torch.randn(3, 4, generator=g, dtype=F64).to(dtype)   # [L=3, D=4]


class FakePrior:
    name = "fake"
    num_train_timesteps = 1000
    image_size = S
    latent_shape = (C, S, S)
    is_latent = False

    def __init__(self, device="cpu", dtype=F64):
        self.device, self.dtype = torch.device(device), dtype
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=F64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)   # [T] float32
        g = torch.Generator().manual_seed(123)
        self.A = (0.6 * torch.randn(C, C, generator=g, dtype=F64)).to(device, dtype)
        self.P = torch.randn(4, C, generator=g, dtype=F64).to(device, dtype)
        self.phase = torch.arange(C, dtype=F64).to(device, dtype)
        self.calls: list[tuple[int, list[int]]] = []
        self.embedded: list[str] = []

    def check_prompt(self, text):
        pass

    def embed(self, prompts):
        self.embedded += prompts
        return torch.stack([emb_of(p, self.dtype) for p in prompts]).to(self.device)

    def encode(self, images):
        return 2 * images.to(self.dtype) - 1

    def decode(self, z):
        return ((z + 1) / 2).clamp(0, 1)

    def eps_fn(self, x, t, emb):
        """The pure model, no logging: tanh(A x + 0.4 sin(t / 97 + c) + mean_L(emb) P)."""
        h = torch.einsum("cd,bdhw->bchw", self.A.to(x.dtype), x)
        h = h + 0.4 * torch.sin(t.to(x.dtype)[:, None] / 97 + self.phase.to(x.dtype))[:, :, None, None]
        h = h + (emb.to(x.dtype).mean(1) @ self.P.to(x.dtype))[:, :, None, None]
        return torch.tanh(h)

    def eps(self, x, t, emb):
        n = x.shape[0]
        assert x.shape[1:] == (C, S, S) and t.shape == (n,) and t.dtype == torch.long
        assert emb.shape[0] == n
        self.calls.append((n, t.tolist()))
        return self.eps_fn(x, t, emb)


def make_cfg(**kw) -> GuidanceConfig:
    return dataclasses.replace(GuidanceConfig(), **kw)


def fixed_t_cfg(t: int, **kw) -> GuidanceConfig:
    """A config whose sampler can only draw `t` (with warm = 0, dT = delta_t)."""
    return make_cfg(t_min=t, t_max_end=t, t_max_start=t, **kw)


def images_(seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, S, S, generator=g, dtype=F64).to(dtype).requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Independent float64 reference (no ism3d.guidance code)
# ---------------------------------------------------------------------------------------------
def hand_view(az: float) -> tuple[bool, float]:
    a = abs(az)
    return (True, 1 - a / 90) if a < 90 else (False, 1 - (a - 90) / 90)


def hand_perp_weights(az: float) -> tuple[list[str], list[float]]:
    """The spec's table, with negative_w = -2, front_decay 2, side_decay 10."""
    front, r = hand_view(az)
    if front:
        w_front = 0.0 if r > 0.8 else -2 * math.exp(-2 * r)
        w_side = 0.0 if r < 0.2 else -2 * math.exp(-10 * (1 - r))
        return ["front", "side"], [w_front, w_side]
    w_side = 0.0 if r > 0.8 else -math.exp(-10 * r)
    return ["side", "front"], [w_side, -2.0]


def reference_draws(gen_state, idx_lo, idx_hi, offset=0.1):
    """The reference's draws: an INDEX ~ randint(idx_lo, idx_hi) (exclusive), timestep = index + 1
    (SD 2.1-base's DDIM timesteps with steps_offset 1), then the noise."""
    g = torch.Generator().set_state(gen_state)
    t = int(torch.randint(idx_lo, idx_hi, (1,), generator=g).item()) + 1
    noise = torch.randn(B, C, S, S, generator=g)
    if offset > 0:
        noise = noise + offset * torch.randn(1, C, 1, 1, generator=g)
    return t, noise.double()


def reference_eps_cfg(fake, x_t, t, az, cfg):
    tt = torch.full((B,), t)
    neg = emb_of(cfg.negative_prompt).expand(B, -1, -1)
    pos = []
    for a in az.tolist():
        if not cfg.view_prompts:
            pos.append(emb_of(PROMPT))
            continue
        front, r = hand_view(a)
        e = {k: emb_of(f"{PROMPT}, {k} view") for k in ("front", "side", "back")}
        pos.append(r * e["front"] + (1 - r) * e["side"] if front else r * e["side"] + (1 - r) * e["back"])
    eps_u = fake.eps_fn(x_t, tt, neg)
    eps_c = fake.eps_fn(x_t, tt, torch.stack(pos))
    if not cfg.perp_neg:
        return eps_u + cfg.scale * (eps_c - eps_u)
    out = []
    for i, a in enumerate(az.tolist()):
        names, ws = hand_perp_weights(a)
        d_pos = (eps_c[i] - eps_u[i]).flatten()
        delta = d_pos.clone()
        for name, w in zip(names, ws):
            e_n = fake.eps_fn(x_t[i:i + 1], tt[:1], emb_of(f"{PROMPT}, {name} view")[None])[0]
            d = (e_n - eps_u[i]).flatten()
            delta = delta + w * (d - torch.dot(d, d_pos) / torch.dot(d_pos, d_pos) * d_pos)
        out.append(eps_u[i] + cfg.scale * delta.reshape(C, S, S))
    return torch.stack(out)


def reference_ism_grad(fake, images, az, cfg, t, dT, noise):
    """grad = lambda * gamma(t) * (eps_cfg - eps_s), spec steps 2-5, written out in float64."""
    ac = fake.alphas_cumprod.double()
    ab = lambda i: ac[i].item()                                       # noqa: E731
    z0 = 2 * images.detach().double() - 1
    empty = emb_of("").expand(B, -1, -1)
    E = lambda x, tt: fake.eps_fn(x, torch.full((B,), tt), empty)    # noqa: E731
    s = max((t - 1) - dT, 0) + 1         # the reference clips the INDEX at 0: s >= timestep 1
    start = max(s - cfg.delta_s * cfg.xs_inv_steps, cfg.t_first)
    x = math.sqrt(ab(start)) * z0 + math.sqrt(1 - ab(start)) * noise
    cur = start
    while cur != s:
        nxt = s if s < cur else min(cur + cfg.delta_s, s)
        e = E(x, cur)
        x = math.sqrt(ab(nxt)) * (x - math.sqrt(1 - ab(cur)) * e) / math.sqrt(ab(cur)) + math.sqrt(1 - ab(nxt)) * e
        cur = nxt
    eps_s = E(x, s)
    x_t = math.sqrt(ab(t)) * (x - math.sqrt(1 - ab(s)) * eps_s) / math.sqrt(ab(s)) + math.sqrt(1 - ab(t)) * eps_s
    eps_cfg = reference_eps_cfg(fake, x_t, t, az, cfg)
    return cfg.lambda_guidance * math.sqrt((1 - ab(t)) / ab(t)) * (eps_cfg - eps_s)


# ---------------------------------------------------------------------------------------------
# ISM
# ---------------------------------------------------------------------------------------------
ISM_CASES = [  # (t, overrides)
    (30, {}), (81, {}), (81, {"skip_identity_inversion": False}), (281, {}), (500, {}),
    (979, {}), (979, {"xs_inv_steps": 2}), (700, {"delta_s": 1000, "xs_inv_steps": 1}),
    (500, {"view_prompts": False, "perp_neg": False}), (500, {"offset_noise": 0.0}),
]


@pytest.mark.parametrize("perp_neg", [False, True])
@pytest.mark.parametrize("t,over", ISM_CASES)
def test_ism_gradient_equals_float64_closed_form(t, over, perp_neg):
    over = {"perp_neg": perp_neg, **over}
    cfg = fixed_t_cfg(t, **over)
    fake = FakePrior()
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    imgs = images_()
    out = ISMGuidance(fake, cfg, PROMPT)(imgs, AZ, 0.0, gen)
    out.loss.backward()
    t_ref, noise = reference_draws(state, t - 1, t, cfg.offset_noise)
    assert t_ref == t == out.logs["t"] and out.logs["s"] == max(t - cfg.delta_t, 1)
    grad = reference_ism_grad(fake, imgs, AZ, cfg, t, cfg.delta_t, noise)
    # d loss / d image = 2 * d loss / d z0 (z0 = 2 image - 1); reduce = mean divides by B
    torch.testing.assert_close(imgs.grad, 2 * grad / B, rtol=1e-10, atol=1e-12)
    assert grad.abs().max() > 1e-3  # the check is not vacuous
    assert out.logs["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-10)


def test_ism_random_t_at_warm_matches_reference():
    cfg = make_cfg(perp_neg=True)
    fake = FakePrior()
    w = warm(1049, 1500)      # iteration 1050: 1 - 0.7 = 0.30000000000000004; the reference's
    #                           dT = int(80 + ceil(6.000000000000001)) = 87, index < 500 + 144
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        state = gen.get_state()
        imgs = images_(seed)
        out = ISMGuidance(fake, cfg, PROMPT)(imgs, AZ, w, gen)
        out.loss.backward()
        t, noise = reference_draws(state, 20, 644)
        assert out.logs["t"] == t and out.logs["dT"] == 87
        grad = reference_ism_grad(fake, imgs, AZ, cfg, t, 87, noise)
        torch.testing.assert_close(imgs.grad, 2 * grad / B, rtol=1e-10, atol=1e-12)


CALL_CASES = [  # (t, overrides, timesteps of the inversion calls); delta_t 80, delta_s 200, 5 steps
    (30, {}, []),                      # s = max(30 - 80, 1) = 1 = start: no call
    (30, {"skip_identity_inversion": False}, [1]),
    (81, {}, []),                      # s = 1 = start: identity call skipped
    (81, {"skip_identity_inversion": False}, [1]),
    (100, {}, [1]),
    (281, {}, [1]),                    # s = 201: 1 -> 201
    (282, {}, [1, 201]),               # s = 202
    (500, {}, [1, 201, 401]),
    (979, {}, [1, 201, 401, 601, 801]),
    (979, {"xs_inv_steps": 2}, [499, 699]),   # start = max(899 - 400, 1)
    (979, {"delta_s": 1000, "xs_inv_steps": 1}, [1]),
    (700, {"delta_s": 100, "xs_inv_steps": 3}, [320, 420, 520]),
]


@pytest.mark.parametrize("perp_neg", [False, True])
@pytest.mark.parametrize("t,over,inv", CALL_CASES)
def test_ism_eps_calls_match_cost_line(t, over, inv, perp_neg):
    cfg = fixed_t_cfg(t, perp_neg=perp_neg, **over)
    fake = FakePrior()
    out = ISMGuidance(fake, cfg, PROMPT)(images_(), AZ, 0.0, torch.Generator().manual_seed(0))
    s = max(t - cfg.delta_t, 1)
    rows = 4 * B if perp_neg else 2 * B
    # inversion calls at the SOURCE step, then eps_s at s, then one CFG call at t
    expected = [(B, [c] * B) for c in inv] + [(B, [s] * B), (rows, [t] * rows)]
    assert fake.calls == expected
    assert out.logs["inv_calls"] == len(inv)
    assert out.logs["eps_calls"] == len(inv) + 2
    assert out.logs["eps_rows"] == B * (len(inv) + 1) + rows


def test_skip_identity_inversion_gives_the_same_gradient():
    grads = {}
    for skip in (True, False):
        fake = FakePrior()
        imgs = images_()
        out = ISMGuidance(fake, fixed_t_cfg(81, skip_identity_inversion=skip), PROMPT)(
            imgs, AZ, 0.0, torch.Generator().manual_seed(3))
        out.loss.backward()
        grads[skip] = (imgs.grad.clone(), len(fake.calls))
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-12, atol=1e-14)
    assert grads[False][1] == grads[True][1] + 1


def test_reduce_sum_is_b_times_mean():
    res = {}
    for reduce in ("mean", "sum"):
        imgs = images_()
        out = ISMGuidance(FakePrior(), fixed_t_cfg(400, reduce=reduce), PROMPT)(
            imgs, AZ, 0.0, torch.Generator().manual_seed(5))
        out.loss.backward()
        res[reduce] = (out.loss.detach(), imgs.grad.clone())
    torch.testing.assert_close(res["sum"][0], B * res["mean"][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(res["sum"][1], B * res["mean"][1], rtol=1e-13, atol=0)


def test_ism_is_deterministic_given_the_generator_and_leaves_nan_visible():
    g = ISMGuidance(FakePrior(), make_cfg(), PROMPT)
    a = g(images_(), AZ, 0.5, torch.Generator().manual_seed(11))
    b = g(images_(), AZ, 0.5, torch.Generator().manual_seed(11))
    assert a.logs == b.logs and torch.equal(a.loss, b.loss)
    imgs = images_().detach().clone()
    imgs[0, 0, 0, 0] = float("nan")
    imgs.requires_grad_(True)
    out = g(imgs, AZ, 0.5, torch.Generator().manual_seed(11))
    out.loss.backward()
    assert not torch.isfinite(out.loss) and not torch.isfinite(imgs.grad).all()


def test_return_images_shapes_and_grad_unchanged():
    cfg = fixed_t_cfg(600)
    imgs1, imgs2 = images_(), images_()
    o1 = ISMGuidance(FakePrior(), cfg, PROMPT)(imgs1, AZ, 0.0, torch.Generator().manual_seed(1))
    o2 = ISMGuidance(FakePrior(), cfg, PROMPT)(imgs2, AZ, 0.0, torch.Generator().manual_seed(1),
                                               return_images=True)
    o1.loss.backward()
    o2.loss.backward()
    assert o1.images is None
    assert set(o2.images) == {"render", "x0_cfg", "x0_target"}
    for v in o2.images.values():
        assert v.shape == (B, 3, S, S) and v.min() >= 0 and v.max() <= 1 and not v.requires_grad
    torch.testing.assert_close(o2.images["render"], imgs2.detach())
    torch.testing.assert_close(imgs1.grad, imgs2.grad, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# SDS and CFG
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["constant", "dreamfusion", "gamma"])
@pytest.mark.parametrize("perp_neg", [False, True])
def test_sds_equals_closed_form(weighting, perp_neg):
    t = 450
    cfg = fixed_t_cfg(t, sds_weighting=weighting, perp_neg=perp_neg, reduce="sum", method="sds")
    fake = FakePrior()
    gen = torch.Generator().manual_seed(9)
    state = gen.get_state()
    imgs = images_()
    guidance = make_guidance(fake, cfg, PROMPT)
    assert isinstance(guidance, SDSGuidance)
    out = guidance(imgs, AZ, 0.0, gen)
    out.loss.backward()
    _, noise = reference_draws(state, t - 1, t)
    a = fake.alphas_cumprod.double()[t].item()
    x_t = math.sqrt(a) * (2 * imgs.detach() - 1) + math.sqrt(1 - a) * noise
    w = {"constant": 1.0, "dreamfusion": 1 - a, "gamma": math.sqrt((1 - a) / a)}[weighting]
    grad = cfg.lambda_guidance * w * (reference_eps_cfg(fake, x_t, t, AZ, cfg) - noise)
    torch.testing.assert_close(imgs.grad, 2 * grad, rtol=1e-10, atol=1e-12)
    rows = 4 * B if perp_neg else 2 * B
    assert fake.calls == [(rows, [t] * rows)] and out.logs["eps_calls"] == 1


def test_cfg_scale_one_is_conditional_and_zero_is_negative():
    fake = FakePrior()
    vp = ViewPrompts(fake, PROMPT, "blurry")
    x_t = torch.randn(B, C, S, S, generator=torch.Generator().manual_seed(2), dtype=F64)
    tt = torch.full((B,), 321)
    for scale, emb in ((1.0, vp.positive(AZ)), (0.0, vp.negative(B))):
        cfg = make_cfg(scale=scale, perp_neg=False)
        eps_cfg, eps_c = guided_eps(fake.eps, vp, x_t, 321, AZ, cfg)
        torch.testing.assert_close(eps_cfg, fake.eps_fn(x_t, tt, emb), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(eps_c, fake.eps_fn(x_t, tt, vp.positive(AZ)), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Perp-Neg
# ---------------------------------------------------------------------------------------------
def test_perp_neg_weights_hand_values():
    az = [0.0, 30.0, 89.0, 90.0, 135.0, 180.0, -45.0, -90.0, -180.0]
    weights, negatives = perp_neg_weights(torch.tensor(az))
    assert weights.shape == (len(az), 2) and negatives.shape == (len(az), 2)
    idx = {"front": FRONT, "side": SIDE, "back": BACK}
    # literal values, by hand from the spec's table
    literal = {0.0: [0.0, -2.0], 30.0: [-2 * math.exp(-4 / 3), -2 * math.exp(-10 / 3)],
               89.0: [-2 * math.exp(-2 / 90), 0.0], 90.0: [0.0, -2.0], 135.0: [-math.exp(-5), -2.0],
               180.0: [-1.0, -2.0], -45.0: [-2 * math.exp(-1), -2 * math.exp(-5)]}
    for i, a in enumerate(az):
        names, ws = hand_perp_weights(a)
        assert negatives[i].tolist() == [idx[n] for n in names], a
        assert weights[i].tolist() == pytest.approx(ws, rel=1e-6, abs=1e-7), a
        if a in literal:
            assert weights[i].tolist() == pytest.approx(literal[a], rel=1e-6, abs=1e-7), a
    assert negatives[0].tolist() == [FRONT, SIDE] and negatives[4].tolist() == [SIDE, FRONT]


def test_perpendicular_is_orthogonal_per_sample_and_combine_matches_naive():
    g = torch.Generator().manual_seed(4)
    d_i = torch.randn(4, 4, 5, 5, generator=g, dtype=F64)
    d_pos = torch.randn(4, 4, 5, 5, generator=g, dtype=F64)
    p = perpendicular(d_i, d_pos)
    for b in range(4):
        assert abs(torch.dot(p[b].flatten(), d_pos[b].flatten()).item()) < 1e-12
        # and d_i - p is parallel to d_pos
        q = (d_i[b] - p[b]).flatten()
        cos = torch.dot(q, d_pos[b].flatten()) / (q.norm() * d_pos[b].norm())
        assert abs(abs(cos.item()) - 1) < 1e-12
    # a d_pos of zero gives no projection (no 0/0)
    torch.testing.assert_close(perpendicular(d_i, torch.zeros_like(d_pos)), d_i)
    eps_u, eps_pos = torch.randn(2, 4, 4, 5, 5, generator=g, dtype=F64)
    eps_negs = torch.randn(4, 2, 4, 5, 5, generator=g, dtype=F64)
    w = torch.tensor([[0.0, -2.0], [-0.5, -1.0], [-2.0, 0.0], [-0.1, -0.3]], dtype=F64)
    out = combine(eps_u, eps_pos, eps_negs, w)
    for b in range(4):
        dp = (eps_pos[b] - eps_u[b]).flatten()
        ref = dp.clone()
        for k in range(2):
            d = (eps_negs[b, k] - eps_u[b]).flatten()
            ref += w[b, k] * (d - torch.dot(d, dp) / torch.dot(dp, dp) * dp)
        torch.testing.assert_close(out[b].flatten(), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------
def test_warm():
    # the reference's warm_up_rate = 1 - min(iteration / 1500, 1), iterations counted from 1
    assert [warm(s, 1500) for s in (0, 749, 1499, 3000)] == [1 - 1 / 1500, 0.5, 0.0, 0.0]
    assert all(warm(s, 1500) == 1.0 - min((s + 1) / 1500, 1.0) for s in range(0, 2000, 7))


@pytest.mark.parametrize("w,ceil_,floor_", [
    (1.0, (100, 21, 980), (100, 21, 980)),
    (0.5, (90, 21, 740), (90, 21, 740)),
    (0.0, (80, 21, 500), (80, 21, 500)),
    (0.33, (87, 21, 658), (86, 21, 658)),           # 6.6 -> 7 | 6; 158.4 -> 158
    (1 - 1050 / 1500, (87, 21, 644), (86, 21, 644)),  # raw 6.000000000000001: ceil 7, as the reference
    (warm(1049, 1500), (87, 21, 644), (86, 21, 644)),  # the same iteration 1050
    (0.999, (100, 21, 979), (99, 21, 979)),         # 19.98 -> 20 | 19; 479.52 -> 479
])
def test_interval_and_range_by_hand(w, ceil_, floor_):
    assert interval_and_range(w, make_cfg(delta_t_rounding="ceil")) == ceil_
    assert interval_and_range(w, make_cfg(delta_t_rounding="floor")) == floor_
    # auto: the reference's ceil on its Perp-Neg path, int() on its plain path
    assert interval_and_range(w, make_cfg(delta_t_rounding="auto", perp_neg=True)) == ceil_
    assert interval_and_range(w, make_cfg(delta_t_rounding="auto", perp_neg=False)) == floor_


def reference_index_sampler(gen, step, perp_neg, delta_t=80, delta_t_start=100, warmup=1500):
    """The reference's sd_utils, written out in its own terms: iteration from 1, an INDEX draw,
    the index clipped at 0, timesteps = index + 1."""
    iteration = step + 1
    warm_up_rate = 1. - min(iteration / warmup, 1.)
    if perp_neg:
        dT = int(delta_t + np.ceil(warm_up_rate * (delta_t_start - delta_t)))
    else:
        dT = int(delta_t + warm_up_rate * (delta_t_start - delta_t))
    ind_t = int(torch.randint(20, 500 + int(480 * warm_up_rate), (1,), generator=gen)[0])
    ind_s = max(ind_t - dT, 0)
    return ind_t + 1, ind_s + 1, dT


@pytest.mark.parametrize("perp_neg", [False, True])
def test_sampler_matches_the_reference_index_draws(perp_neg):
    cfg = make_cfg(perp_neg=perp_neg, delta_t=50, delta_t_start=100)
    ours, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    seen_s1 = False
    for step in [0, 1, 2, 700, 1049, 1498, 1499, 1500, 4999] + list(range(3, 1600, 37)):
        for _ in range(5):
            got = sample_t(warm(step, cfg.warmup_iters), cfg, ours)
            want = reference_index_sampler(ref, step, perp_neg, 50, 100)
            assert got == want, (step, got, want)
            seen_s1 |= got[1] == 1
    assert seen_s1                                      # the clip at timestep 1 was exercised


def test_sample_t_stays_in_range_and_reaches_both_ends():
    g = torch.Generator().manual_seed(0)
    cfg = make_cfg(t_min=20, t_max_end=25, t_max_start=30)
    for w, hi in ((0.0, 25), (1.0, 30)):
        draws = [sample_t(w, cfg, g) for _ in range(300)]
        ts = {t for t, _, _ in draws}
        assert ts == set(range(20, hi + 1))           # both ends included and reached
        for t, s, dT in draws:
            assert s == max(t - dT, 1) == 1           # dT >= 80 > t: s clipped at t_first
    cfg = make_cfg(delta_t=25, delta_t_start=25)
    for _ in range(300):
        t, s, dT = sample_t(0.5, cfg, g)
        assert 21 <= t <= 740 and dT == 25 and s == max(t - 25, 1)


def test_sample_noise_is_randn_plus_offset_in_draw_order():
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    n = sample_noise((2, 4, 3, 3), 0.1, g, "cpu")
    g2 = torch.Generator().set_state(state)
    ref = torch.randn(2, 4, 3, 3, generator=g2) + 0.1 * torch.randn(1, 4, 1, 1, generator=g2)
    torch.testing.assert_close(n, ref, rtol=0, atol=0)
    # the offset is shared by the batch and the pixels: the per-channel mean shift is common
    n0 = sample_noise((2, 4, 3, 3), 0.0, torch.Generator().set_state(state), "cpu")
    torch.testing.assert_close(n - n0, (n - n0)[:1, :, :1, :1].expand_as(n), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_config_errors_are_clear():
    fake = FakePrior()
    with pytest.raises(GuidanceError, match="perp_neg"):
        ISMGuidance(fake, make_cfg(view_prompts=False, perp_neg=True), PROMPT)
    with pytest.raises(GuidanceError, match="t_max_start"):
        ISMGuidance(fake, make_cfg(t_max_start=1200), PROMPT)
    with pytest.raises(GuidanceError, match="method"):
        make_guidance(fake, make_cfg(method="dds"), PROMPT)
    with pytest.raises(GuidanceError, match="sds_weighting"):
        SDSGuidance(fake, make_cfg(sds_weighting="linear"), PROMPT)
    assert isinstance(make_guidance(fake, make_cfg(), PROMPT), ISMGuidance)


# ---------------------------------------------------------------------------------------------
# GPU: the same numbers with the prior on CUDA and the trainer's CPU generator
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ism_on_cuda_matches_cpu():
    grads = []
    for device in ("cpu", "cuda"):
        fake = FakePrior(device, torch.float32)
        imgs = images_(dtype=torch.float32).detach().to(device).requires_grad_(True)
        out = ISMGuidance(fake, make_cfg(), PROMPT)(imgs, AZ.to(device), 0.5,
                                                    torch.Generator().manual_seed(2))
        out.loss.backward()
        assert imgs.grad.device.type == device
        grads.append(imgs.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
