"""Score distillation: turn renders into a loss whose gradient is the ISM (or SDS) gradient.

    guidance = make_guidance(prior, cfg.guidance, prompt)
    out = guidance(images [B,3,H,W] in [0,1], azimuth [B] deg, warm, generator)  # -> GuidanceOut
    out.loss.backward()

Files: ddim.py (pure DDIM steps), schedule.py (t and noise draws), prompts.py (view-dependent
embeddings), perpneg.py (CFG, plain or Perp-Neg), distill.py (what ISM and SDS share: latents,
noise, the counted denoiser, the gradient injection), ism.py, sds.py. Spec: shared/spec/ism.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..types import GuidanceOut
from .ism import ISMGuidance
from .schedule import GuidanceError
from .sds import SDSGuidance

if TYPE_CHECKING:
    from ..config import GuidanceConfig
    from ..priors.base import DiffusionPrior

__all__ = ["GuidanceError", "GuidanceOut", "ISMGuidance", "SDSGuidance", "make_guidance"]


def make_guidance(prior: "DiffusionPrior", cfg: "GuidanceConfig", prompt: str) -> ISMGuidance | SDSGuidance:
    """The guidance named by `cfg.method` ("ism" or "sds"), with the prompt embedded once."""
    if cfg.method == "ism":
        return ISMGuidance(prior, cfg, prompt)
    if cfg.method == "sds":
        return SDSGuidance(prior, cfg, prompt)
    raise GuidanceError(f"guidance.method must be ism or sds, got {cfg.method!r}")
