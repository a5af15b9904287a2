"""What a world-space smoothing filter of one training pixel does to a ToyWorld result: the eval's
IoU / PSNR (16 views x polar 90, 60 at 64x64, as `ism3d eval` scores) and a 256x256 view grid, for
scales' = sqrt(scales^2 + k * eps2d * px^2), px = the size of a 32x32 training pixel at the toy
preset's fixed framing (radius 3.5, fovy 0.55). BENCHMARKS.md, "ism3d generate on the CPU" (session 5).
With --prune: instead, drop the gaussians whose total blending weight (pixels) over 80 views at the
training resolution (16 azimuths x polar 45..105, the training range) is at most each threshold.

    python benchmarks/toy_filter.py RUN/gaussians.ply red cube --png /tmp/filter
    python benchmarks/toy_filter.py RUN/gaussians.ply red cube --ks 0 --prune 0.001,0.01,0.05,0.2
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from ism3d import config as C
from ism3d.cameras import eval_ring
from ism3d.eval.bench import Rings, evaluate_gaussians, make_reference
from ism3d.export.video import render_ring_frames, views_grid, write_png
from ism3d.ply import load_ply
from ism3d.render import render
from ism3d.scene import SH_C0, activate
from ism3d.types import Gaussians


def blend_weights(g: Gaussians, size: int, radius: float, fovy: float) -> torch.Tensor:
    """[N] total blending weight of each gaussian over 16 azimuths x 5 polars at size x size:
    rgb = sum_i w_i c_i, so d(sum of red) / d(red_i) = sum over pixels of w_i."""
    colour = torch.zeros(len(g), 3, requires_grad=True)                 # added to the colour
    sh = g.sh.detach().clone()
    total = torch.zeros(len(g))
    for polar in (45.0, 60.0, 75.0, 90.0, 105.0):
        sh_i = sh.clone()
        sh_i[:, 0] = sh_i[:, 0] + colour / SH_C0                       # colour = 0.5 + C0 * sh
        gi = dataclasses.replace(g, sh=sh_i)
        out = render(gi, eval_ring(16, size, size, radius, fovy, polar=polar), torch.zeros(3))
        (grad,) = torch.autograd.grad(out.rgb[:, 0].sum(), colour)
        total += grad[:, 0]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ply")
    ap.add_argument("colour")
    ap.add_argument("family")
    ap.add_argument("--ks", default="0,0.5,1,2,4", help="filter strengths, in training pixels^2 / eps2d")
    ap.add_argument("--png", default=None, help="write PREFIX_k<k>.png view grids at 256x256")
    ap.add_argument("--prune", default=None, help="weight thresholds (pixels) for the pruning test")
    args = ap.parse_args()
    cfg = C.preset_config("toy")
    cam, r = cfg.camera, cfg.render
    rings = Rings.from_config(cfg, 16, 64, "cpu")
    ref = make_reference(args.colour, args.family, rings)
    params, deg = load_ply(args.ply)
    g = activate({k: v.detach() for k, v in params.items()}, deg)
    focal = 0.5 * r.height / math.tan(0.5 * cam.fovy_range[0])      # training focal, pixels
    px = cam.radius_range[0] / focal                                 # world size of one pixel
    for k in (float(x) for x in args.ks.split(",")):
        g2 = dataclasses.replace(g, scales=(g.scales ** 2 + k * r.eps2d * px * px).sqrt())
        m, _ = evaluate_gaussians(g2, ref, rings)
        print(f"k={k:g}: IoU {m['iou']:.3f} PSNR {m['psnr']:.2f} dB")
        if args.png:
            ring = eval_ring(8, 256, 256, cam.eval_radius, cam.eval_fovy, polar=cam.eval_polars[0])
            write_png(views_grid(render_ring_frames(g2, ring, torch.ones(3)), cols=4), f"{args.png}_k{k:g}.png")
    if args.prune:
        w = blend_weights(g, r.height, cam.radius_range[0], cam.fovy_range[0])
        for thr in (float(x) for x in args.prune.split(",")):
            keep = w > thr
            g2 = Gaussians(g.means[keep], g.quats[keep], g.scales[keep], g.opacities[keep], g.sh[keep], g.sh_degree)
            m, _ = evaluate_gaussians(g2, ref, rings)
            print(f"prune weight <= {thr:g}: {int(keep.sum())} of {len(g)} kept, IoU {m['iou']:.3f} PSNR {m['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
