"""Image metrics of the ToyWorld benchmark: silhouette IoU and PSNR inside the union of two masks.

Both compare a result's renders with the ground truth's renders from the SAME cameras:

    mask(alpha)      = alpha > 0.5                                   (the rendered silhouette)
    IoU_v            = |mask_a & mask_b| / |mask_a | mask_b|         (view v; 1 when both are empty)
    U                = mask_a | mask_b                               (union of the silhouettes)
    MSE              = mean over the pixels of U and the 3 channels of (rgb_a - rgb_b)^2
    PSNR             = 10 log10(1 / max(MSE, MSE_FLOOR))             (images in [0, 1])

The images are composited over WHITE, so inside U a pixel the result misses (background) is
compared with the object's colour, and the other way round. Outside U both images are white and
would only inflate the PSNR, which is why it is restricted to U. `MSE_FLOOR` caps the PSNR of
identical images at 100 dB instead of infinity (finite JSON).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ALPHA_THRESHOLD", "MSE_FLOOR", "silhouette", "silhouette_iou", "union_mask",
           "masked_mse", "psnr_from_mse", "masked_psnr"]

ALPHA_THRESHOLD = 0.5
MSE_FLOOR = 1e-10  # -> at most 100 dB


def silhouette(alpha: Tensor, threshold: float = ALPHA_THRESHOLD) -> Tensor:
    """[C, 1, H, W] accumulated alpha -> [C, 1, H, W] bool mask `alpha > threshold`."""
    assert alpha.ndim == 4 and alpha.shape[1] == 1, alpha.shape
    return alpha > threshold


def silhouette_iou(
    alpha_a: Tensor,  # [C, 1, H, W] in [0, 1]
    alpha_b: Tensor,  # [C, 1, H, W] in [0, 1]
    threshold: float = ALPHA_THRESHOLD,
) -> Tensor:
    """Per-view IoU of the silhouettes `alpha > threshold`.

    Args:
        alpha_a, alpha_b: accumulated opacity of C views of two objects, same cameras.
        threshold: silhouette level (0.5).
    Returns:
        iou: [C] float64 in [0, 1]; a view where both silhouettes are empty counts as 1.
    """
    assert alpha_a.shape == alpha_b.shape and alpha_a.ndim == 4, (alpha_a.shape, alpha_b.shape)
    a, b = silhouette(alpha_a, threshold), silhouette(alpha_b, threshold)
    inter = (a & b).sum(dim=(1, 2, 3)).double()                    # [C]
    union = (a | b).sum(dim=(1, 2, 3)).double()                    # [C]
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def union_mask(alpha_a: Tensor, alpha_b: Tensor, threshold: float = ALPHA_THRESHOLD) -> Tensor:
    """[C, 1, H, W] bool: pixels inside either silhouette."""
    assert alpha_a.shape == alpha_b.shape, (alpha_a.shape, alpha_b.shape)
    return silhouette(alpha_a, threshold) | silhouette(alpha_b, threshold)


def masked_mse(
    rgb_a: Tensor,  # [C, 3, H, W] in [0, 1]
    rgb_b: Tensor,  # [C, 3, H, W] in [0, 1]
    mask: Tensor,   # [C, 1, H, W] bool
    pooled: bool = True,
) -> Tensor:
    """Mean squared error over the masked pixels (all 3 channels), in float64.

    Args:
        rgb_a, rgb_b: C views composited on the same background.
        mask: the pixels to compare.
        pooled: True -> one MSE over the masked pixels of every view (a view with a larger
            silhouette weighs more); False -> one MSE per view.
    Returns:
        [] (pooled) or [C] float64; NaN where the mask is empty.
    """
    assert rgb_a.shape == rgb_b.shape and rgb_a.ndim == 4 and rgb_a.shape[1] == 3, \
        (rgb_a.shape, rgb_b.shape)
    assert mask.shape == (rgb_a.shape[0], 1, *rgb_a.shape[2:]) and mask.dtype == torch.bool, \
        (mask.shape, mask.dtype)
    m = mask.double()                                              # [C, 1, H, W]
    se = ((rgb_a.double() - rgb_b.double()) ** 2 * m).sum(dim=1)   # [C, H, W] summed channels
    dims = (0, 1, 2) if pooled else (1, 2)
    total = se.sum(dim=dims)                                       # [] or [C]
    count = 3.0 * m.sum(dim=(0, 1, 2, 3) if pooled else (1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, math.nan))


def psnr_from_mse(mse: Tensor) -> Tensor:
    """10 log10(1 / max(mse, MSE_FLOOR)) for images in [0, 1]; NaN stays NaN."""
    return -10.0 * torch.log10(mse.clamp_min(MSE_FLOOR))


def masked_psnr(
    rgb_a: Tensor,    # [C, 3, H, W] in [0, 1], composited on white
    alpha_a: Tensor,  # [C, 1, H, W]
    rgb_b: Tensor,    # [C, 3, H, W] in [0, 1], composited on white
    alpha_b: Tensor,  # [C, 1, H, W]
    pooled: bool = True,
    threshold: float = ALPHA_THRESHOLD,
) -> Tensor:
    """PSNR inside the union of the two silhouettes (see the module docstring).

    Returns:
        [] (pooled over every view) or [C] (per view) float64 dB; NaN where the union is empty.
    """
    return psnr_from_mse(masked_mse(rgb_a, rgb_b, union_mask(alpha_a, alpha_b, threshold), pooled))
