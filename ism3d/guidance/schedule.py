"""The random draws of one guidance step: the timestep t (with the ISM interval) and the noise.

Pure functions of the step or of `warm`; every random number comes from a `torch.Generator`
passed in by the trainer (guidance never creates one), so a run is reproducible from its seed.
Spec: shared/spec/ism.md, "ISM gradient for one iteration", step 1, and "Noise".
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import ConfigError

if TYPE_CHECKING:
    from ..config import GuidanceConfig


class GuidanceError(ConfigError):
    """The guidance settings cannot work with this prior or input (the message says which key);
    a ConfigError, so the CLI prints its one line and exits 2."""


def warm(step: int, warmup_iters: int) -> float:
    """warm = 1 - min(iteration / warmup_iters, 1) with the reference's iteration = step + 1.

    `step` is our 0-based step; the reference counts iterations from 1, so its first iteration
    already has warm = 1 - 1 / warmup_iters, and warm reaches 0 at step `warmup_iters - 1`.
    """
    assert warmup_iters >= 1, warmup_iters
    assert step >= 0, step
    return 1.0 - min((step + 1) / warmup_iters, 1.0)


def delta_t_rounding(cfg: "GuidanceConfig") -> str:
    """ceil | floor; `auto` is the reference's choice: ceil on its Perp-Neg path, floor (int())
    on its plain path."""
    r = cfg.delta_t_rounding
    if r == "auto":
        return "ceil" if cfg.perp_neg else "floor"
    if r not in ("ceil", "floor"):
        raise GuidanceError(f"guidance.delta_t_rounding must be auto, ceil or floor, got {r!r}")
    return r


def interval_and_range(warm: float, cfg: "GuidanceConfig") -> tuple[int, int, int]:
    """The ISM interval dT and the timestep range [t_lo, t_hi] at a given `warm` (spec step 1).

        dT   = delta_t + ceil(warm * (delta_t_start - delta_t))   (floor: `delta_t_rounding`)
        t_lo = t_min
        t_hi = t_max_end + floor(warm * (t_max_start - t_max_end))   (INCLUSIVE)

    With the defaults (t_min 21, t_max_end 500, t_max_start 980) this is the reference's index
    draw randint(20, 500 + floor(warm * 480)) shifted by its timestep = index + 1. The rounding
    applies to the raw float product, as the reference's: at warm = 1 - 1050/1500 the product
    (0.30000000000000004 * 20) rounds up to 7, not 6.

    Args:
        warm: in [0, 1], from `warm(step, warmup_iters)`.
        cfg: the guidance config (delta_t, delta_t_start, delta_t_rounding, t_min, t_max_*).

    Returns:
        `(dT, t_lo, t_hi)` as Python ints, timestep units (index into alphas_cumprod).
    """
    assert 0.0 <= warm <= 1.0, warm
    rnd = math.ceil if delta_t_rounding(cfg) == "ceil" else math.floor
    dT = cfg.delta_t + int(rnd(warm * (cfg.delta_t_start - cfg.delta_t)))
    t_hi = cfg.t_max_end + int(math.floor(warm * (cfg.t_max_start - cfg.t_max_end)))
    return dT, cfg.t_min, t_hi


def sample_t(warm: float, cfg: "GuidanceConfig", generator: torch.Generator) -> tuple[int, int, int]:
    """Draw ONE timestep t for the whole batch and its interval start s (spec step 1).

        t ~ UniformInt[t_lo, t_hi] (inclusive);   s = max(t - dT, t_first)

    s is never below t_first (timestep 1 for SD: the reference clips the INDEX at 0).

    One `torch.randint` draw from `generator` (on the generator's device).

    Args:
        warm: in [0, 1].
        cfg: the guidance config.
        generator: the trainer's generator.

    Returns:
        `(t, s, dT)` as Python ints.
    """
    dT, t_lo, t_hi = interval_and_range(warm, cfg)
    if t_hi < t_lo:
        raise GuidanceError(f"empty timestep range [{t_lo}, {t_hi}]: need guidance.t_min <= guidance.t_max_end")
    t = int(torch.randint(t_lo, t_hi + 1, (1,), generator=generator, device=generator.device).item())
    return t, max(t - dT, cfg.t_first), dT


def sample_noise(shape: tuple[int, int, int, int], offset: float, generator: torch.Generator,
                 device: torch.device | str) -> Tensor:
    """Gaussian noise with optional "offset noise" (spec "Noise").

        noise = randn(B, C, h, w) + offset * randn(1, C, 1, 1)

    Drawn in float32 on the generator's device (so the stream does not depend on the prior's
    dtype), then moved to `device`. The second draw is made only when `offset > 0`.

    Args:
        shape: `(B, C, h, w)`.
        offset: offset-noise strength k (0 disables).
        generator: the trainer's generator.
        device: where the result goes.

    Returns:
        `[B, C, h, w]` float32 on `device`.
    """
    assert len(shape) == 4, shape
    B, C, h, w = shape
    gdev = generator.device
    noise = torch.randn(B, C, h, w, generator=generator, device=gdev, dtype=torch.float32)
    if offset > 0:
        noise = noise + offset * torch.randn(1, C, 1, 1, generator=generator, device=gdev,
                                             dtype=torch.float32)
    return noise.to(device)
