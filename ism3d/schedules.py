"""Learning-rate schedules (pure functions of the step) and the per-parameter Adam optimizers.

Step convention (shared with strategy.py and train.py): `step` is the 0-based index of the
training iteration, 0..total-1, as in gsplat's trainer; `lr_for_step(cfg, step, total)` is the
rate used by that iteration's optimizer step. Like the reference (3DGS's expon_lr, called with
iterations counted from 1), it evaluates the schedule at iteration = step + 1, clamped to
[0, total]: the first step already runs 1/total of the way, the last one (step total-1) at the end
rates exactly.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .config import OptimConfig

__all__ = ["log_linear", "lr_for_step", "make_optimizers", "set_lrs", "SHN_LR_FACTOR"]

# 3DGS trains the higher-order SH (f_rest) at 1/20 of the DC rate.
SHN_LR_FACTOR = 1.0 / 20.0


def log_linear(step: float, total: float, start: float, end: float) -> float:
    """Exponential interpolation from `start` (step 0) to `end` (step `total`).

    The 3DGS "expon_lr" without its delay term:
        t  = clamp(step / total, 0, 1)
        lr = exp((1 - t) log(start) + t log(end))
    so the midpoint is the geometric mean sqrt(start * end). `start == end` returns `start`
    exactly (a constant rate).
    """
    if total <= 0:
        raise ValueError(f"log_linear: total must be > 0, got {total}")
    if start <= 0 or end <= 0:
        raise ValueError(f"log_linear: rates must be > 0, got start={start}, end={end}")
    if start == end:
        return float(start)
    t = min(max(step / total, 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(start) + t * math.log(end))


def lr_for_step(cfg: OptimConfig, step: int, total: int) -> dict[str, float]:
    """Learning rate of every parameter at `step` of `total` (see the module's step convention).

    Returns:
        {"means", "sh0", "shN", "opacities", "scales", "quats": lr}; shN runs at 1/20 of sh0.
    """
    it = step + 1                                   # the reference's 1-based iteration
    colors = log_linear(it, total, *cfg.colors_lr)
    return {
        "means": log_linear(it, total, *cfg.means_lr),
        "sh0": colors,
        "shN": colors * SHN_LR_FACTOR,
        "opacities": log_linear(it, total, *cfg.opacities_lr),
        "scales": log_linear(it, total, *cfg.scales_lr),
        "quats": log_linear(it, total, *cfg.quats_lr),
    }


def make_optimizers(params: Mapping[str, torch.nn.Parameter],
                    cfg: OptimConfig) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter, each with a single param_group (gsplat's trainer layout).

    The rates start at the schedule's start values; eps = cfg.adam_eps, default betas.
    strategy.py relies on this layout (it swaps the one parameter of each optimizer).
    """
    lrs = lr_for_step(cfg, -1, 1)                   # iteration 0: the start rates
    unknown = [k for k in params if k not in lrs]
    if unknown:
        raise ValueError(f"make_optimizers: no learning rate for parameters {', '.join(unknown)}")
    return {
        name: torch.optim.Adam([{"params": [p], "lr": lrs[name], "name": name}],
                               eps=cfg.adam_eps)
        for name, p in params.items()
    }


def set_lrs(optimizers: Mapping[str, torch.optim.Optimizer], lrs: Mapping[str, float]) -> None:
    """Set every param_group of `optimizers[name]` to `lrs[name]`."""
    missing = [k for k in optimizers if k not in lrs]
    if missing:
        raise ValueError(f"set_lrs: no learning rate for {', '.join(missing)}")
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = lrs[name]
