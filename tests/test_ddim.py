"""DDIM steps (ism3d/guidance/ddim.py) against closed forms, in float64."""
import math

import pytest
import torch

from ism3d.guidance.ddim import abar_at, ddim_step, gamma, q_sample, x0_hat


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule (betas 0.00085..0.012, 1000 steps), float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


AC = sd_alphas_cumprod()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_step_equals_closed_form_both_directions():
    x, e = rand(3, 4, 5, 5, seed=1), rand(3, 4, 5, 5, seed=2)
    for a_idx, b_idx in [(1, 201), (201, 1), (500, 580), (980, 20), (0, 999)]:
        a, b = AC[a_idx].item(), AC[b_idx].item()
        # rearranged form: sqrt(b/a) x + (sqrt(1-b) - sqrt(b (1-a) / a)) e
        ref = math.sqrt(b / a) * x + (math.sqrt(1 - b) - math.sqrt(b * (1 - a) / a)) * e
        torch.testing.assert_close(ddim_step(x, e, a, b), ref, rtol=1e-12, atol=1e-12)
        # 0-dim tensors as abar give the same
        torch.testing.assert_close(ddim_step(x, e, AC[a_idx], AC[b_idx]), ref, rtol=1e-12, atol=1e-12)


def test_per_sample_abar_matches_scalar_steps():
    x, e = rand(3, 2, 4, 4, seed=3), rand(3, 2, 4, 4, seed=4)
    ta, tb = torch.tensor([5, 300, 900]), torch.tensor([100, 50, 999])
    out = ddim_step(x, e, abar_at(AC, ta), abar_at(AC, tb))
    for i in range(3):
        ref = ddim_step(x[i:i + 1], e[i:i + 1], AC[ta[i]].item(), AC[tb[i]].item())
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-14, atol=1e-14)


def test_identity_step_and_x0_inverse_of_q_sample():
    z0, n = rand(2, 4, 3, 3, seed=5), rand(2, 4, 3, 3, seed=6)
    for t in (0, 1, 400, 999):
        a = AC[t].item()
        x = q_sample(z0, n, a)
        torch.testing.assert_close(x, math.sqrt(a) * z0 + math.sqrt(1 - a) * n, rtol=0, atol=1e-14)
        torch.testing.assert_close(x0_hat(x, a, n), z0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ddim_step(x, n, a, a), x, rtol=1e-13, atol=1e-13)


def test_gamma_values():
    assert gamma(0.5).item() == pytest.approx(1.0)
    assert gamma(0.2).item() == pytest.approx(2.0)
    torch.testing.assert_close(gamma(AC[[20, 500]]), ((1 - AC[[20, 500]]) / AC[[20, 500]]).sqrt())


def test_abar_at_index_convention():
    # index 0 is the first noisy step (abar_0 = 1 - beta_1), not clean data
    assert abar_at(AC, 0).item() == pytest.approx(1 - 0.00085, rel=1e-12)
    assert abar_at(AC, 999).item() == AC[-1].item()
    torch.testing.assert_close(abar_at(AC, torch.tensor([0, 1, 999])), AC[[0, 1, 999]])
    with pytest.raises(AssertionError):
        abar_at(AC, 1000)
    with pytest.raises(AssertionError):
        abar_at(AC, torch.tensor([-1]))


def test_point_mass_invert_then_denoise_round_trip_is_exact():
    """Data = one point x0*: the exact eps is (x - sqrt(a) x0*) / sqrt(1-a), DDIM then solves the
    probability-flow ODE exactly, so every state equals q_sample(x0*, n, t) and the round trip
    (any strides, eps at the source step) returns the start to rounding."""
    x0s, n = rand(2, 4, 6, 6, seed=7), rand(2, 4, 6, 6, seed=8)

    def eps_exact(x, t):
        a = AC[t].item()
        return (x - math.sqrt(a) * x0s) / math.sqrt(1 - a)

    x = q_sample(x0s, n, AC[1].item())
    start = x.clone()
    path = [1, 201, 401, 601, 801, 901, 650, 300, 2, 1]   # invert with stride 200, then denoise
    for a, b in zip(path[:-1], path[1:]):
        x = ddim_step(x, eps_exact(x, a), AC[a].item(), AC[b].item())
        torch.testing.assert_close(x, q_sample(x0s, n, AC[b].item()), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x, start, rtol=1e-10, atol=1e-10)


def test_gaussian_data_inversion_converges_to_the_flow():
    """Data x0 ~ N(mu, sigma^2) per element: the exact eps is
    sqrt(1-a) (x - sqrt(a) mu) / (a sigma^2 + 1 - a), and the probability-flow ODE keeps
    (x_t - sqrt(a_t) mu) / sqrt(a_t sigma^2 + 1 - a_t) constant. DDIM inversion (eps at the source
    step) approaches that closed form with first-order error in the stride."""
    mu, sig = 0.3, 0.5
    x0 = mu + sig * rand(1, 1, 8, 8, seed=9)

    def eps_exact(x, t):
        a = AC[t].item()
        return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * sig ** 2 + 1 - a)

    def flow(x_a, a, b):
        u = (x_a - math.sqrt(a) * mu) / math.sqrt(a * sig ** 2 + 1 - a)
        return math.sqrt(b) * mu + math.sqrt(b * sig ** 2 + 1 - b) * u

    def invert(x, stride):
        cur = 1
        while cur < 801:
            nxt = min(cur + stride, 801)
            x = ddim_step(x, eps_exact(x, cur), AC[cur].item(), AC[nxt].item())
            cur = nxt
        return x

    x1 = flow(x0, 1.0, AC[1].item())                  # the data (abar = 1) carried to t = 1
    target = flow(x1, AC[1].item(), AC[801].item())   # and on to t = 801
    err = {s: (invert(x1, s) - target).abs().max().item() for s in (100, 10, 1)}
    assert err[1] < 0.02                                  # measured 0.0075
    assert err[10] > 8 * err[1] and err[100] > 6 * err[10]  # first order: ~10x per 10x stride
