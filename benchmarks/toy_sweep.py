"""Tune the `toy` preset: distil a few ToyWorld prompts under several settings, score against the
ground truth (silhouette IoU at alpha > 0.5, PSNR inside the union of masks, 16-view ring).

    python benchmarks/toy_sweep.py [--iters 400] [--device cuda] [--out /tmp/sweep] SETTING...

A SETTING is a name=KEY=VALUE,KEY=VALUE list, e.g. `ism75=guidance.scale=7.5` (a value may hold
commas: `clr=optim.colors_lr=(0.02,0.01)`). The prior is
loaded once; runs are in-process. The full benchmark is `ism3d eval`; this is the quick tuner.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from ism3d import config as C
from ism3d.cameras import eval_ring
from ism3d.eval import metrics as M
from ism3d.generate import prepare, run
from ism3d.ply import load_ply
from ism3d.priors import load_prior
from ism3d.render import render
from ism3d.scene import activate
from ism3d.toyworld.world import make_object, parse_prompt

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow mug"]


@torch.no_grad()
def score(g, gt, device, size=64, n=16):
    cams = eval_ring(n, size, size, 3.5, 0.55, polar=90.0).to(device)
    white = torch.ones(3, device=device)
    a, b = render(g, cams, white), render(gt, cams, white)
    iou = M.silhouette_iou(a.alpha, b.alpha).mean().item()
    return iou, float(M.masked_psnr(a.rgb, a.alpha, b.rgb, b.alpha))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="/tmp/sweep")
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device(args.device)
    base = C.preset_config("toy")
    prior = load_prior(base.prior, device)
    rows = []
    for setting in args.settings:
        name, _, kv = setting.partition("=")
        # split at the commas that start the next KEY=
        over = dict(item.split("=", 1) for item in re.split(r",(?=\w+\.\w+=)", kv) if item)
        for prompt in args.prompts.split(","):
            cfg = C.apply_overrides(base, {"train.iters": args.iters, "train.device": args.device,
                                           "train.seed": args.seed, "output.video": False,
                                           "output.gif": False, "output.mesh": False, **over})
            out = Path(args.out) / name / prompt.replace(" ", "_")
            t0 = time.perf_counter()
            plan = prepare(prompt, cfg=cfg, preset="toy", out_dir=out, force=True)
            summary = run(plan, prior=prior, progress=False)
            params, deg = load_ply(out / "gaussians.ply")
            colour, family = parse_prompt(prompt)
            iou, psnr = score(activate(params.to(device), deg), make_object(family, colour, device=device), device)
            rows.append({"setting": name, "prompt": prompt, "iou": iou, "psnr": psnr,
                         "n": summary["num_gaussians"], "s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'setting':<14}{'IoU':>7}{'PSNR':>7}   per prompt IoU/PSNR")
    for name in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == name]
        per = "  ".join(f"{r['iou']:.2f}/{r['psnr']:.1f}" for r in rs)
        print(f"{name:<14}{sum(r['iou'] for r in rs) / len(rs):>7.3f}"
              f"{sum(r['psnr'] for r in rs) / len(rs):>7.2f}   {per}")


if __name__ == "__main__":
    main()
