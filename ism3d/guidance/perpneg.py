"""Classifier-free guidance at x_t, plain or with Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968).

Spec (shared/spec/ism.md, step 4 and "Perp-Neg"). The negative prompt is the unconditional branch:

    plain:     one call of 2B rows [neg, pos];               eps_cfg = eps_u + g * (eps_c - eps_u)
    Perp-Neg:  one call of 4B rows [neg, pos, negv1, negv2]; eps_cfg = eps_u + g * delta_perp
               d_i = eps_i - eps_u,
               delta_perp = d_pos + sum_i w_i * (d_i - <d_i, d_pos> / ||d_pos||^2 * d_pos)

with the projection over each sample's whole C, h, w tensor. Weights, r from `view_weights`:

    front hemisphere (|az| < 90): negatives [front, side]
        w_front = 0 if r > 0.8 else  negative_w * exp(-front_decay * r)
        w_side  = 0 if r < 0.2 else  negative_w * exp(-side_decay * (1 - r))
    back hemisphere: negatives [side, front]
        w_side  = 0 if r > 0.8 else  negative_w / 2 * exp(-side_decay * r)
        w_front = negative_w

The spec writes the back-hemisphere side weight as -exp(-10 r); the reference computes it as
negative_w / 2 * exp(-side_decay * r), equal at the defaults (negative_w = -2); we follow the
reference's form so a changed negative_w scales every weight. The reference also skips weights
with |w| <= 1e-4; no weight of this table falls in (0, 1e-4] at the defaults, so that is omitted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .prompts import FRONT, SIDE, ViewPrompts, view_weights

if TYPE_CHECKING:
    from ..config import GuidanceConfig

# ||d_pos||^2 floor: d_pos = 0 then gives a zero projection instead of 0/0. The reference floors
# at 1e-6, which never binds for a real UNet's output; a smaller floor keeps small tests exact.
_NORM_FLOOR = 1e-30


def perp_neg_weights(azimuth: Tensor, negative_w: float = -2.0, front_decay: float = 2.0,
                     side_decay: float = 10.0) -> tuple[Tensor, Tensor]:
    """Perp-Neg weights and which view prompts are the two negatives, per sample.

    Args:
        azimuth: `[B]` degrees, 0 = front.
        negative_w, front_decay, side_decay: the spec's constants (-2, 2, 10).

    Returns:
        weights: `[B, 2]` float64, weight of negative 1 and negative 2.
        negatives: `[B, 2]` long, view index (prompts.FRONT / SIDE / BACK) of each negative:
            [FRONT, SIDE] in the front hemisphere, [SIDE, FRONT] in the back one.
    """
    assert azimuth.ndim == 1, azimuth.shape
    front, r = view_weights(azimuth)                                      # [B], [B]
    zero = torch.zeros_like(r)
    nw = torch.full_like(r, negative_w)
    # 1. front hemisphere: positive = interp(front, side), negatives [front, side]
    f_w_front = torch.where(r > 0.8, zero, negative_w * torch.exp(-front_decay * r))
    f_w_side = torch.where(r < 0.2, zero, negative_w * torch.exp(-side_decay * (1 - r)))
    # 2. back hemisphere: positive = interp(side, back), negatives [side, front]
    b_w_side = torch.where(r > 0.8, zero, negative_w / 2 * torch.exp(-side_decay * r))
    b_w_front = nw
    weights = torch.stack([torch.where(front, f_w_front, b_w_side),
                           torch.where(front, f_w_side, b_w_front)], dim=1)  # [B, 2]
    f_idx = torch.tensor([FRONT, SIDE], device=r.device)
    b_idx = torch.tensor([SIDE, FRONT], device=r.device)
    negatives = torch.where(front[:, None], f_idx, b_idx)                   # [B, 2]
    return weights, negatives


def perpendicular(d_i: Tensor, d_pos: Tensor) -> Tensor:
    """Component of d_i orthogonal to d_pos, per sample over its whole C, h, w tensor.

    Args:
        d_i: `[B, C, h, w]`.
        d_pos: `[B, C, h, w]`.

    Returns:
        `[B, C, h, w]`: d_i - <d_i, d_pos> / ||d_pos||^2 * d_pos.
    """
    assert d_i.ndim == 4 and d_i.shape == d_pos.shape, (d_i.shape, d_pos.shape)
    dot = (d_i * d_pos).sum(dim=(1, 2, 3), keepdim=True)                  # [B, 1, 1, 1]
    nrm2 = (d_pos * d_pos).sum(dim=(1, 2, 3), keepdim=True).clamp_min(_NORM_FLOOR)
    return d_i - dot / nrm2 * d_pos


def combine(eps_u: Tensor, eps_pos: Tensor, eps_negs: Tensor, weights: Tensor) -> Tensor:
    """Perp-Neg guidance direction delta_perp.

    Args:
        eps_u: `[B, C, h, w]` eps under the negative (unconditional) prompt.
        eps_pos: `[B, C, h, w]` eps under the positive (interpolated view) prompt.
        eps_negs: `[B, K, C, h, w]` eps under the K negative view prompts.
        weights: `[B, K]` their weights.

    Returns:
        `[B, C, h, w]`: d_pos + sum_k w_k * perpendicular(d_k, d_pos).
    """
    B, K = weights.shape
    assert eps_u.shape == eps_pos.shape and eps_negs.shape == (B, K, *eps_u.shape[1:]), \
        (eps_u.shape, eps_pos.shape, eps_negs.shape, weights.shape)
    d_pos = eps_pos - eps_u                                               # [B, C, h, w]
    out = d_pos
    for k in range(K):
        d_k = eps_negs[:, k] - eps_u                                      # [B, C, h, w]
        w_k = weights[:, k].to(d_pos.dtype).reshape(B, 1, 1, 1)
        out = out + w_k * perpendicular(d_k, d_pos)
    return out


def guided_eps(eps_fn: Callable[[Tensor, Tensor, Tensor], Tensor], prompts: ViewPrompts,
               x_t: Tensor, t: int, azimuth: Tensor, cfg: "GuidanceConfig") -> tuple[Tensor, Tensor]:
    """eps_cfg at x_t from ONE batched call of 2B rows, or 4B with cfg.perp_neg.

    Args:
        eps_fn: `(x [N,C,h,w], t [N] long, emb [N,L,D]) -> [N,C,h,w]` (the prior's eps, counted).
        prompts: the embedded prompts.
        x_t: `[B, C, h, w]`.
        t: the timestep shared by the batch.
        azimuth: `[B]` degrees.
        cfg: scale, perp_neg and the Perp-Neg constants.

    Returns:
        eps_cfg: `[B, C, h, w]` in `x_t`'s dtype.
        eps_c: `[B, C, h, w]` the conditional (positive-prompt) eps, for diagnostics.
    """
    assert x_t.ndim == 4 and azimuth.shape == (x_t.shape[0],), (x_t.shape, azimuth.shape)
    B = x_t.shape[0]
    pos = prompts.positive(azimuth)                                       # [B, L, D]
    neg = prompts.negative(B)                                             # [B, L, D]
    if not cfg.perp_neg:
        # 1a. rows [neg, pos]
        emb = torch.cat([neg, pos])                                       # [2B, L, D]
        out = _call(eps_fn, x_t, t, emb, 2).to(x_t.dtype)                 # [2B, C, h, w]
        eps_u, eps_c = out.chunk(2)
        return eps_u + cfg.scale * (eps_c - eps_u), eps_c
    # 1b. rows [neg, pos, neg view 1, neg view 2]
    weights, negatives = perp_neg_weights(azimuth.cpu(), cfg.perp_neg_w,
                                          cfg.perp_neg_front_decay, cfg.perp_neg_side_decay)
    emb = torch.cat([neg, pos, prompts.view(negatives[:, 0]), prompts.view(negatives[:, 1])])
    out = _call(eps_fn, x_t, t, emb, 4).to(x_t.dtype)                     # [4B, C, h, w]
    eps_u, eps_c, eps_n1, eps_n2 = out.chunk(4)
    # 2. eps_cfg = eps_u + g * delta_perp
    delta = combine(eps_u, eps_c, torch.stack([eps_n1, eps_n2], dim=1), weights.to(x_t.device))
    return eps_u + cfg.scale * delta, eps_c


def _call(eps_fn, x: Tensor, t: int, emb: Tensor, rep: int) -> Tensor:
    B = x.shape[0]
    x_in = x.repeat(rep, 1, 1, 1)                                         # [rep*B, C, h, w]
    t_in = torch.full((rep * B,), t, dtype=torch.long, device=x.device)
    return eps_fn(x_in, t_in, emb)
