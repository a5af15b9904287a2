"""What a world-space smoothing filter of one training pixel does to a ToyWorld result: the eval's
IoU / PSNR (16 views x polar 90, 60 at 64x64, as `ism3d eval` scores) and a 256x256 view grid, for
scales' = sqrt(scales^2 + k * eps2d * px^2), px = the size of a 32x32 training pixel at the toy
preset's fixed framing (radius 3.5, fovy 0.55). BENCHMARKS.md, "ism3d generate on the CPU" (session 5).

    python benchmarks/toy_filter.py RUN/gaussians.ply red cube --png /tmp/filter
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
from ism3d.scene import activate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ply")
    ap.add_argument("colour")
    ap.add_argument("family")
    ap.add_argument("--ks", default="0,0.5,1,2,4", help="filter strengths, in training pixels^2 / eps2d")
    ap.add_argument("--png", default=None, help="write PREFIX_k<k>.png view grids at 256x256")
    args = ap.parse_args()
    cfg = C.preset_config("toy")
    cam, r = cfg.camera, cfg.render
    rings = Rings.from_config(cfg, 16, 64, "cpu")
    ref = make_reference(args.colour, args.family, rings)
    params, deg = load_ply(args.ply)
    g = activate(params, deg)
    focal = 0.5 * r.height / math.tan(0.5 * cam.fovy_range[0])      # training focal, pixels
    px = cam.radius_range[0] / focal                                 # world size of one pixel
    for k in (float(x) for x in args.ks.split(",")):
        g2 = dataclasses.replace(g, scales=(g.scales ** 2 + k * r.eps2d * px * px).sqrt())
        m, _ = evaluate_gaussians(g2, ref, rings)
        print(f"k={k:g}: IoU {m['iou']:.3f} PSNR {m['psnr']:.2f} dB")
        if args.png:
            ring = eval_ring(8, 256, 256, cam.eval_radius, cam.eval_fovy, polar=cam.eval_polars[0])
            write_png(views_grid(render_ring_frames(g2, ring, torch.ones(3)), cols=4), f"{args.png}_k{k:g}.png")


if __name__ == "__main__":
    main()
