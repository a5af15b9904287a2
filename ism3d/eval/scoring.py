"""Scoring one `ism3d eval` result against the ToyWorld ground truth (step 3 of `run_bench`).

- `Rings`: the fixed evaluation cameras (`views` per polar angle of camera.eval_polars, `size`
  pixels, camera.eval_radius / eval_fovy), rendered in chunks;
- `make_reference`: the true object rendered on the same rings (+ the Janus reference of the
  asymmetric families, ism3d/eval/janus.py);
- `evaluate_gaussians`: mean per-view silhouette IoU (alpha > 0.5) and PSNR inside the union of
  the silhouettes (both on white, pooled over the views; ism3d/eval/metrics.py), per polar too,
  and the Janus test;
- `evaluate_run`: the same for a run folder's gaussians.ply, cached in eval.json (keyed by the
  metric version, the rings and the PLY's size and mtime), with the GT-vs-result picture
  eval_views.png.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import config as C
from ..generate import write_text_atomic
from . import janus as J
from . import metrics as M
from .spec import BenchSpec

METRICS_VERSION = 1  # bump when a metric changes: cached eval.json files are recomputed


@dataclass
class Rings:
    """The fixed evaluation cameras: one ring of `views` per polar angle, rendered in chunks."""
    cams: list                 # [CameraBatch] one per polar
    polars: tuple[float, ...]
    device: torch.device
    backend: str = "auto"
    chunk: int = 16

    @classmethod
    def from_config(cls, cfg: C.Config, views: int, size: int, device) -> "Rings":
        from ..cameras import eval_ring
        c = cfg.camera
        cams = [eval_ring(views, size, size, c.eval_radius, c.eval_fovy, polar=p)
                for p in c.eval_polars]
        return cls(cams, tuple(c.eval_polars), torch.device(device), cfg.render.backend)

    @torch.no_grad()
    def render(self, g, background: float) -> tuple[Tensor, Tensor]:
        """-> rgb [V, 3, S, S] on a grey-level background, alpha [V, 1, S, S], every ring (CPU)."""
        from ..render import render
        bg = torch.full((3,), float(background), device=self.device)
        rgbs, alphas = [], []
        for ring in self.cams:
            for i in range(0, len(ring), self.chunk):
                out = render(g, ring[i:i + self.chunk].to(self.device), bg, backend=self.backend)
                rgbs.append(out.rgb.float().cpu())
                alphas.append(out.alpha.float().cpu())
        return torch.cat(rgbs), torch.cat(alphas)


@dataclass
class Reference:
    """Ground truth of one prompt on the rings: renders on white, and the Janus reference."""
    rgb: Tensor                # [V, 3, S, S] on white
    alpha: Tensor              # [V, 1, S, S]
    janus: J.JanusReference | None


def make_reference(colour: str, family: str, rings: Rings) -> Reference:
    from ..toyworld.world import ASYMMETRIC, COLOURS, make_object

    gt = make_object(family, colour, device=rings.device)
    rgb, alpha = rings.render(gt, 1.0)
    janus = None
    if family in ASYMMETRIC:
        janus = J.janus_reference(family, gt, lambda g: rings.render(g, 0.0),
                                  torch.tensor(COLOURS[colour], device=rings.device))
    return Reference(rgb, alpha, janus)


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


def evaluate_gaussians(g, ref: Reference, rings: Rings) -> tuple[dict, Tensor]:
    """Step 3 for one result. Returns (metrics dict, result rgb [V, 3, S, S] on white)."""
    rgb, alpha = rings.render(g, 1.0)
    iou = M.silhouette_iou(alpha, ref.alpha)                                   # [V]
    psnr_pooled = M.masked_psnr(rgb, alpha, ref.rgb, ref.alpha, pooled=True)   # []
    psnr_views = M.masked_psnr(rgb, alpha, ref.rgb, ref.alpha, pooled=False)   # [V]
    per_polar = {}
    n = rgb.shape[0] // len(rings.polars)
    for k, p in enumerate(rings.polars):
        sl = slice(k * n, (k + 1) * n)
        per_polar[f"{p:g}"] = {
            "iou": _num(iou[sl].mean()),
            "psnr": _num(M.masked_psnr(rgb[sl], alpha[sl], ref.rgb[sl], ref.alpha[sl])),
        }
    out = {
        "iou": _num(iou.mean()),
        "psnr": _num(psnr_pooled),
        "per_polar": per_polar,
        "iou_per_view": [_num(x) for x in iou],
        "psnr_per_view": [_num(x) for x in psnr_views],
        "janus": J.janus_test(rgb, alpha, ref.janus).to_dict() if ref.janus is not None else None,
    }
    return out, rgb


def _eval_key(spec: BenchSpec, rings: Rings, ply: Path) -> dict:
    st = ply.stat()
    return {"metrics_version": METRICS_VERSION, "views": spec.views, "size": spec.size,
            "polars": list(rings.polars), "radius": spec.base_cfg.camera.eval_radius,
            "fovy": spec.base_cfg.camera.eval_fovy, "ply_bytes": st.st_size,
            "ply_mtime_ns": st.st_mtime_ns}


def evaluate_run(folder: Path, reference: Callable[[], Reference], rings: Rings,
                 spec: BenchSpec) -> tuple[dict, bool]:
    """Metrics of the run in `folder` (cached in eval.json; `reference()` gives the ground
    truth, only called when the metrics are computed). Returns (metrics, from_cache)."""
    from ..export.video import to_uint8, views_grid, write_png
    from ..ply import load_ply
    from ..scene import activate

    ply = folder / "gaussians.ply"
    key = _eval_key(spec, rings, ply)
    with contextlib.suppress(OSError, ValueError):  # no cache, or an unreadable one: recompute
        cached = json.loads((folder / "eval.json").read_text())
        if cached.get("key") == key:
            return cached["metrics"], True
    params, deg = load_ply(ply)
    g = activate({k: v.detach().to(rings.device) for k, v in params.items()}, deg)
    ref = reference()
    metrics, rgb = evaluate_gaussians(g, ref, rings)
    # GT (top row) over the result (bottom row), the first ring, at most 8 views
    n = min(8, rgb.shape[0] // len(rings.polars))
    step = max(1, (rgb.shape[0] // len(rings.polars)) // n)
    idx = list(range(0, n * step, step))
    write_png(views_grid(to_uint8(torch.cat([ref.rgb[idx], rgb[idx]])), cols=len(idx)),
              folder / "eval_views.png")
    write_text_atomic(folder / "eval.json", json.dumps({"key": key, "metrics": metrics}) + "\n")
    return metrics, False
