"""View-dependent prompting: interpolated "front / side / back view" text embeddings by azimuth.

Spec (shared/spec/ism.md, "View-dependent prompting"), azimuth az in (-180, 180], 0 = front:

    |az| < 90:  r = 1 - |az| / 90;          y = r * front + (1 - r) * side
    otherwise:  r = 1 - (|az| - 90) / 90;   y = r * side + (1 - r) * back

The reference treats az = -90 as front hemisphere (r = 0) while this table puts it in the back
hemisphere (r = 1); both give y = side, so the embeddings agree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..priors.base import DiffusionPrior

# Indices of the three view embeddings, in the order `ViewPrompts.views` stores them.
FRONT, SIDE, BACK = 0, 1, 2
VIEW_SUFFIXES = (", front view", ", side view", ", back view")


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Azimuth in degrees mapped to [-180, 180) (same direction; |az| is what matters below)."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def view_weights(azimuth: Tensor) -> tuple[Tensor, Tensor]:
    """Hemisphere and interpolation weight r per view.

    Args:
        azimuth: `[B]` degrees, 0 = front (any real value; it is wrapped to [-180, 180)).

    Returns:
        front: `[B]` bool, True where |az| < 90 (y interpolates front/side), else side/back.
        r: `[B]` float64 in [0, 1]: the weight of front (front hemisphere) or of side (back).
    """
    assert azimuth.ndim == 1, azimuth.shape
    a = wrap_azimuth(azimuth.double()).abs()             # [B] in [0, 180], float64 (B values: cheap)
    front = a < 90.0
    r = torch.where(front, 1.0 - a / 90.0, 1.0 - (a - 90.0) / 90.0)
    return front, r


class ViewPrompts:
    """Text embeddings of one prompt, embedded once: three view variants, negative, empty.

    Args:
        prior: the diffusion prior (its `embed` is called once here).
        prompt: the user prompt.
        negative: the negative prompt ("" allowed), the unconditional CFG branch.
        view_prompts: False embeds the plain prompt and ignores the azimuth.
    """

    def __init__(self, prior: "DiffusionPrior", prompt: str, negative: str, view_prompts: bool = True):
        self.view_prompts = view_prompts
        texts = [prompt + sfx for sfx in VIEW_SUFFIXES] if view_prompts else [prompt]
        for text in texts + ([negative] if negative else []):   # "" is a valid negative prompt
            prior.check_prompt(text)
        emb = prior.embed(texts + [negative, ""])        # [V + 2, L, D]
        assert emb.ndim == 3 and emb.shape[0] == len(texts) + 2, emb.shape
        self.views = emb[: len(texts)]                   # [3, L, D] (front, side, back) or [1, L, D]
        self.negative_emb = emb[-2:-1]                   # [1, L, D]
        self.empty_emb = emb[-1:]                        # [1, L, D]

    def positive(self, azimuth: Tensor) -> Tensor:
        """`[B]` azimuths (degrees) -> `[B, L, D]` interpolated prompt embeddings."""
        assert azimuth.ndim == 1, azimuth.shape
        B = azimuth.shape[0]
        if not self.view_prompts:
            return self.views.expand(B, -1, -1)
        front, r = view_weights(azimuth.to(self.views.device))
        work = torch.promote_types(self.views.dtype, torch.float32)
        f, s, b = (v.to(work) for v in self.views)       # [L, D] each
        r = r.to(work)[:, None, None]                    # [B, 1, 1]
        y_front = r * f + (1 - r) * s                    # [B, L, D]
        y_back = r * s + (1 - r) * b
        return torch.where(front[:, None, None], y_front, y_back).to(self.views.dtype)

    def view(self, idx: Tensor) -> Tensor:
        """`[B]` view indices (FRONT / SIDE / BACK) -> `[B, L, D]` plain view embeddings."""
        assert self.view_prompts, "view embeddings need view_prompts=True"
        assert idx.ndim == 1, idx.shape
        return self.views[idx.to(self.views.device)]

    def negative(self, batch: int) -> Tensor:
        """`[B, L, D]` negative-prompt embedding."""
        return self.negative_emb.expand(batch, -1, -1)

    def empty(self, batch: int) -> Tensor:
        """`[B, L, D]` empty-prompt embedding (DDIM inversion, the ISM target)."""
        return self.empty_emb.expand(batch, -1, -1)
