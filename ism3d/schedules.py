"""Learning-rate schedules (pure functions of the step) and the per-parameter Adam optimizers.

Step convention (shared with strategy.py and train.py): `step` is the 0-based index of the
training iteration, 0..total-1, as in gsplat's trainer; `lr_for_step(cfg, step, total)` is the
rate used by that iteration's optimizer step. The schedule is defined for any step and clamped
to [0, total]: step 0 gives the start rates, step `total` the end rates (so the last iteration,
total-1, runs one 1/total-th of the log-interval short of the end; the reference, which counts
iterations from 1, reaches it: a one-iteration shift, 0.09% of the xyz rate at 5000 steps).
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
    colors = log_linear(step, total, *cfg.colors_lr)
    return {
        "means": log_linear(step, total, *cfg.means_lr),
        "sh0": colors,
        "shN": colors * SHN_LR_FACTOR,
        "opacities": log_linear(step, total, *cfg.opacities_lr),
        "scales": log_linear(step, total, *cfg.scales_lr),
        "quats": log_linear(step, total, *cfg.quats_lr),
    }


def make_optimizers(params: Mapping[str, torch.nn.Parameter],
                    cfg: OptimConfig) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter, each with a single param_group (gsplat's trainer layout).

    The rates start at the schedule's step-0 values; eps = cfg.adam_eps, default betas.
    strategy.py relies on this layout (it swaps the one parameter of each optimizer).
    """
    lrs = lr_for_step(cfg, 0, 1)
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
