"""Deterministic DDIM (eta = 0) between any two timesteps, as pure functions.

Interval Score Matching needs DDIM steps of arbitrary stride in both directions, with the noise
predictor evaluated at the SOURCE step (shared/spec/ism.md). diffusers' `DDIMInverseScheduler`
evaluates it at the destination and keeps scheduler state, so we use these functions instead:
every step takes its two abar values explicitly and holds no state.

Notation (variable -> symbol in the spec / DDIM paper, Song et al. 2021, Eq. 12 with sigma = 0):

    abar_a, abar_b  ->  abar_a, abar_b   cumulative products prod_{i<=t} (1 - beta_i)
    x               ->  x_a              the sample at timestep a
    e               ->  eps(x_a, a, c)   the noise predicted at the SOURCE step a
    x0_hat          ->  x0_hat(x, a, e)  the predicted clean sample
    gamma           ->  gamma(t)         sqrt((1 - abar_t) / abar_t), the ISM/SDS weight

Timestep index convention (the "index 0" question, stated once here): an integer timestep t in
[0, T-1] reads `abar_t = alphas_cumprod[t]` directly, as diffusers' schedulers and UNets do.
t = 0 is NOT clean data: it is one step of noise (abar_0 = 1 - beta_1 = 0.99915 for SD).
Clean data (abar = 1) has no index and is never fed to these functions. The reference code labels
its first index with timestep 1 (DDIM `steps_offset = 1`), which is why its inversion starts at
t_first = 1; in our units that is `alphas_cumprod[1]`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def abar_at(alphas_cumprod: Tensor, t: int | Tensor) -> Tensor:
    """abar_t = alphas_cumprod[t] (index 0 = first noisy step, see the module docstring).

    Args:
        alphas_cumprod: `[T]` cumulative schedule.
        t: a Python int or a `[B]` integer tensor of timesteps in [0, T-1].

    Returns:
        A 0-dim tensor for an int `t`, else `[B]`, on `alphas_cumprod`'s device and dtype.
    """
    assert alphas_cumprod.ndim == 1, alphas_cumprod.shape
    T = alphas_cumprod.shape[0]
    if isinstance(t, Tensor):
        assert t.ndim <= 1 and not t.is_floating_point(), (t.shape, t.dtype)
        assert bool(((t >= 0) & (t < T)).all()), f"timesteps out of [0, {T - 1}]: {t}"
        return alphas_cumprod[t.to(alphas_cumprod.device)]
    assert 0 <= int(t) < T, f"timestep {t} out of [0, {T - 1}]"
    return alphas_cumprod[int(t)]


def _bcast(abar: float | Tensor, x: Tensor) -> Tensor:
    """A scalar, 0-dim or `[B]` abar as a tensor broadcastable against `x` `[B, ...]`."""
    a = torch.as_tensor(abar, dtype=x.dtype, device=x.device)
    if a.ndim == 1:
        assert a.shape[0] == x.shape[0], (a.shape, x.shape)
        a = a.reshape(-1, *([1] * (x.ndim - 1)))
    else:
        assert a.ndim == 0, a.shape
    return a


def gamma(abar: float | Tensor) -> Tensor:
    """gamma = sqrt((1 - abar) / abar), the ISM weight (spec "Notation").

    Args:
        abar: a float or a tensor of any shape, in (0, 1].

    Returns:
        A tensor of the same shape (float64 for a Python float).
    """
    a = torch.as_tensor(abar, dtype=torch.float64) if not isinstance(abar, Tensor) else abar
    return ((1 - a) / a).sqrt()


def x0_hat(x: Tensor, abar_a: float | Tensor, e: Tensor) -> Tensor:
    """Predicted clean sample x0_hat(x, a, e) = (x - sqrt(1 - abar_a) e) / sqrt(abar_a).

    Args:
        x: `[B, C, h, w]` sample at timestep a.
        abar_a: scalar or `[B]` abar of timestep a.
        e: `[B, C, h, w]` noise predicted at (x, a).

    Returns:
        `[B, C, h, w]` in `x`'s dtype.
    """
    assert x.shape == e.shape, (x.shape, e.shape)
    a = _bcast(abar_a, x)
    return (x - (1 - a).sqrt() * e) / a.sqrt()


def ddim_step(x: Tensor, eps: Tensor, abar_from: float | Tensor, abar_to: float | Tensor) -> Tensor:
    """One deterministic DDIM step x_a -> x_b between any two timesteps, either direction.

    step(x, a -> b, e) = sqrt(abar_b) * x0_hat(x, a, e) + sqrt(1 - abar_b) * e

    With abar_to < abar_from (b > a) it is DDIM inversion (towards noise); with abar_to >
    abar_from it denoises; with abar_to == abar_from it returns x to within rounding. `eps` must be
    the noise predicted at the SOURCE step a: this function never calls the model.

    Args:
        x: `[B, C, h, w]` sample at the source step a.
        eps: `[B, C, h, w]` eps(x, a, c).
        abar_from: scalar or `[B]` abar_a.
        abar_to: scalar or `[B]` abar_b.

    Returns:
        `[B, C, h, w]` sample at the destination step b.
    """
    assert x.ndim == 4 and x.shape == eps.shape, (x.shape, eps.shape)
    # 1. predicted clean sample from the source step (DDIM Eq. 12, "predicted x0")
    pred_x0 = x0_hat(x, abar_from, eps)
    # 2. direction pointing to x_b, with the same eps (eta = 0: no fresh noise)
    b = _bcast(abar_to, x)
    direction = (1 - b).sqrt() * eps
    # 3. x_b
    return b.sqrt() * pred_x0 + direction


def q_sample(z0: Tensor, noise: Tensor, abar_t: float | Tensor) -> Tensor:
    """Forward diffusion x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise.

    Args:
        z0: `[B, C, h, w]` clean sample.
        noise: `[B, C, h, w]` noise.
        abar_t: scalar or `[B]` abar of timestep t.

    Returns:
        `[B, C, h, w]`.
    """
    assert z0.ndim == 4 and z0.shape == noise.shape, (z0.shape, noise.shape)
    a = _bcast(abar_t, z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise
