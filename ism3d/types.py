"""The few data types that cross module seams. Each is owned by one module, which re-exports it.

- `Gaussians` (scene.py): activated gaussian parameters, what the renderer reads.
- `CameraBatch` (cameras.py): matrices for the renderer, angles for the guidance.
- `RenderOut` (render/): what one batched render returns.
- `GuidanceOut` (guidance/): a loss whose gradient w.r.t. the images is the distillation gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor


@dataclass
class Gaussians:
    """Activated gaussians (what `scene.activate(params)` returns). N gaussians, K = (deg+1)^2."""
    means: Tensor      # [N, 3] world positions (z-up)
    quats: Tensor      # [N, 4] unit quaternions (w, x, y, z)
    scales: Tensor     # [N, 3] standard deviations along the local axes (world units, > 0)
    opacities: Tensor  # [N] in (0, 1)
    sh: Tensor         # [N, K, 3] SH coefficients; colour = 0.5 + SH_C0 * sh[:, 0] for degree 0
    sh_degree: int = 0

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass
class CameraBatch:
    """C pinhole cameras. Conventions (stated once, tested in tests/test_cameras.py):

    - world: right-handed, z up; the object's front faces +x.
    - viewmats are world-to-camera in the OpenCV convention (x right, y down, z forward).
    - polar: degrees from +z (90 = equator; < 90 is above the object, looking down).
    - azimuth: degrees in (-180, 180], 0 = camera on the +x axis (front view), increasing
      counter-clockwise seen from above (90 = camera on +y).
    """
    viewmats: Tensor  # [C, 4, 4] world-to-camera
    Ks: Tensor        # [C, 3, 3] intrinsics in pixels
    width: int
    height: int
    polar: Tensor     # [C] degrees
    azimuth: Tensor   # [C] degrees, (-180, 180], 0 = front
    radius: Tensor    # [C] distance from the look-at target

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def to(self, device) -> "CameraBatch":
        return replace(self, **{k: getattr(self, k).to(device)
                                for k in ("viewmats", "Ks", "polar", "azimuth", "radius")})

    def __getitem__(self, idx) -> "CameraBatch":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(self, **{k: getattr(self, k)[idx]
                                for k in ("viewmats", "Ks", "polar", "azimuth", "radius")})


@dataclass
class RenderOut:
    rgb: Tensor    # [C, 3, H, W] in [0, 1], composited over the background
    alpha: Tensor  # [C, 1, H, W] accumulated opacity (1 - transmittance), in [0, 1]
    depth: Tensor  # [C, 1, H, W] expected camera-space z: sum(w_i z_i) / alpha (0 where alpha ~ 0)
    # For densification: "means2d" [C, N, 2] pixel coords (a tensor whose .grad is filled by
    # backward), "radii" [C, N] (pixels, 0 = not visible), "width", "height", "n_cameras".
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class GuidanceOut:
    loss: Tensor                                  # scalar; d loss / d images = the guidance gradient
    # t, s, grad_norm, ...: floats, or 0-d tensors the trainer reads in its one host sync per step
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    images: dict[str, Tensor] | None = None       # optional debug images [B, 3, H, W] in [0, 1]
